"""Operating-system resources the tests borrow: a free TCP port, a private temporary directory.
Shared by tests/conftest.py's fixtures and the tests that need one outside a fixture. Test
support only: no servers started here."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from flows.services import free_port  # noqa: F401  (one rule: the CLI picks ports the same way)


def private_dir(prefix: str):
    """A directory of our own, outside pytest's basetemp: pytest deletes all but the newest
    three basetemps of a user, so another pytest run on the same machine would otherwise
    remove a live database's files from under this session. A generator: iterate once."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    yield path
    shutil.rmtree(path, ignore_errors=True)
