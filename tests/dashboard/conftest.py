"""Fixtures every dashboard test shares."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def artifacts(tmp_path) -> Path:
    """Where screenshots and other artifacts go: $VOLGRAPH_TEST_ARTIFACTS, else the test's tmp dir."""
    path = Path(os.environ.get("VOLGRAPH_TEST_ARTIFACTS") or tmp_path)
    path.mkdir(parents=True, exist_ok=True)
    return path
