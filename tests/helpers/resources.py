"""Operating-system resources the tests borrow: a free TCP port, a private temporary directory.
Shared by tests/conftest.py's fixtures and the tests that need one outside a fixture. Test
support only: no servers started here."""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to 0, read it back, release it).
    Prefer passing port 0 to a server and reading its bound port where the API allows."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def private_dir(prefix: str):
    """A directory of our own, outside pytest's basetemp: pytest deletes all but the newest
    three basetemps of a user, so another pytest run on the same machine would otherwise
    remove a live database's files from under this session. A generator: iterate once."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    yield path
    shutil.rmtree(path, ignore_errors=True)
