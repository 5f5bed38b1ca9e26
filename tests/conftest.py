"""Shared test fixtures: the repo on sys.path, one embedded PostgreSQL per session (a real
server via pgserver in a temp dir), a fresh database per test, free TCP ports, and the CI
rule that no test may skip (a skip fails the run when CI is set).

Keep this small and general; area-specific fixtures live in their test files.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the packages are not installed into the venv
    sys.path.insert(0, str(ROOT))

# No per-example deadline: it is a timed assert, and on a fresh clone the first example of a
# numba kernel includes its compile (0.7 s on this box), which failed CI once.
settings.register_profile("volgraph", deadline=None)
settings.load_profile("volgraph")

from tests.helpers.resources import free_port, private_dir  # noqa: E402  (needs ROOT on sys.path)

# ---------------------------------------------------------------- CI: no test may skip
# Under CI (the CI environment variable set, as .ci/run does) every dependency and data file
# the tests need is installed or in the repository, so a skip can only mean something is
# missing: it fails the run instead of hiding an untested area. A test that may legitimately
# skip in CI is listed here by node id with the reason (none today); xfail is not a skip.
CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
ALLOWED_SKIPS_IN_CI: dict[str, str] = {}


def _fail_skip(report, nodeid: str) -> None:
    if not (CI and report.skipped) or hasattr(report, "wasxfail") or nodeid in ALLOWED_SKIPS_IN_CI:
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    report.outcome = "failed"
    report.longrepr = (f"{nodeid} skipped under CI ({reason}). CI installs every dependency (.ci/run) and the "
                       "data is in tests/data/: install what is missing, or allow the skip by node id in "
                       "ALLOWED_SKIPS_IN_CI in tests/conftest.py with the reason.")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skip(outcome.get_result(), item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield  # a module-level skip (importorskip, allow_module_level) skips its collection
    _fail_skip(outcome.get_result(), collector.nodeid)


@pytest.fixture
def unused_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL 16 for the whole session (pgserver; deleted at exit)."""
    from connectors.postgres import embedded_server

    for base in private_dir("volgraph-pg-"):
        server = embedded_server(base / "data", cleanup_mode="delete")
        yield server
        server.cleanup()  # stop it before its directory goes


@pytest.fixture(scope="session")
def pg_dsn(pg_server) -> str:
    """DSN of the session server's default database (shared: prefer `pg_db`)."""
    return pg_server.get_uri()


@pytest.fixture
def pg_db(pg_server) -> str:
    """DSN of a fresh, empty database on the session server, dropped after the test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.get_uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield pg_server.get_uri(database=name)
    with psycopg.connect(pg_server.get_uri(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# ---------------------------------------------------------------- surface event builders


class SurfaceFactory:
    """Builds consistent SmileFit / ExpiryView / SurfacePatch / SurfaceSnapshot events for
    sink, gateway and persistence tests. Values are arbitrary but deterministic per seed."""

    def __init__(self, venue: str = "deribit", underlying: str = "BTC", seed: int = 7) -> None:
        import random

        self.venue = venue
        self.underlying = underlying
        self.rng = random.Random(seed)
        self.t0_ms = 1_767_225_600_000  # 2026-01-01T00:00Z

    def expiry(self, i: int) -> int:
        return self.t0_ms + (i + 1) * 7 * 86_400_000 + 8 * 3_600_000  # weekly, 08:00 UTC

    def fit(self, expiry_ms: int, epoch: int, **overrides):
        from operators.events import SmileFit

        r = self.rng.random
        values = dict(
            venue=self.venue, underlying=self.underlying, expiry_ms=expiry_ms, epoch=epoch,
            ts_exchange_ms=epoch * 50, ts_emit_ms=epoch * 50 + 3, t_years=0.01 + r(), forward=90_000 + 1000 * r(),
            a=0.01 * r(), b=0.1 + r() * 0.1, rho=-0.5 + r() * 0.4, m=0.01 * r(), sigma=0.05 + 0.1 * r(),
            rmse_vol_pts=0.3 * r(), n_quotes=10 + int(30 * r()), butterfly_ok=r() > 0.2, min_g=r() - 0.1,
            fit_ms=2 + r(), inside_band_frac=r() if r() > 0.3 else None, warm=r() > 0.5,
        )
        values.update(overrides)
        return SmileFit(**values)

    def view(self, expiry_ms: int, epoch: int, n_strikes: int = 5, **overrides):
        from operators.events import ExpiryView

        r = self.rng.random
        strikes = tuple(float(80_000 + 2_500 * i) for i in range(n_strikes))
        values = dict(
            expiry_ms=expiry_ms, fit=self.fit(expiry_ms, epoch),
            analytics={"atm_vol": 0.4 + 0.2 * r(), "rr25": 0.05 * r() - 0.025, "bf25": 0.01 * r(),
                       "rr10": 0.1 * r() - 0.05, "bf10": None if r() < 0.2 else 0.02 * r(),
                       "skew_slope": r(), "missing": None},
            units={"atm_vol": "vol pts"}, strikes=strikes,
            bid_iv=tuple(None if r() < 0.1 else 0.4 + 0.1 * r() for _ in strikes),
            ask_iv=tuple(0.5 + 0.1 * r() for _ in strikes), calendar_ok=r() > 0.1,
        )
        values.update(overrides)
        return ExpiryView(**values)

    def tenors(self):
        from operators.events import TenorPoint

        return tuple(TenorPoint(tenor_days=d, atm_vol=0.5 + 0.1 * self.rng.random()) for d in (1, 7, 30))

    def calendar(self, expiries):
        from operators.events import CalendarCheck

        return tuple(
            CalendarCheck(expiry_ms_1=e1, expiry_ms_2=e2, ok=True, worst=0.001 * self.rng.random())
            for e1, e2 in zip(expiries, expiries[1:])
        )

    def patch(self, epoch: int, changed=(), removed=(), index_px: "float | None" = 95_000.0, n_strikes: int = 5):
        from operators.events import SurfacePatch

        expiries = tuple(self.view(self.expiry(i), epoch, n_strikes) for i in changed)
        return SurfacePatch(
            venue=self.venue, underlying=self.underlying, epoch=epoch, ts_exchange_ms=epoch * 50,
            ts_emit_ms=epoch * 50 + 5, expiries=expiries, removed=tuple(self.expiry(i) for i in removed),
            tenors=self.tenors(), calendar=self.calendar([v.expiry_ms for v in expiries]), index_px=index_px,
        )

    @staticmethod
    def fold(events, start=None):
        """The reference state: apply_patch for patches, a snapshot replaces the state."""
        from operators.events import SurfaceSnapshot
        from operators.merge import apply_patch

        state = start
        for ev in events:
            state = ev if isinstance(ev, SurfaceSnapshot) else apply_patch(state, ev)
        return state

    def snapshot(self, epoch: int, expiries=(), index_px: "float | None" = 95_000.0, n_strikes: int = 5):
        from operators.events import SurfaceSnapshot

        views = tuple(self.view(self.expiry(i), epoch, n_strikes) for i in sorted(expiries))
        return SurfaceSnapshot(
            venue=self.venue, underlying=self.underlying, epoch=epoch, ts_exchange_ms=epoch * 50,
            ts_emit_ms=epoch * 50 + 5, expiries=views, tenors=self.tenors(),
            calendar=self.calendar([v.expiry_ms for v in views]), index_px=index_px,
        )


@pytest.fixture(scope="session")
def surface_factory():
    """The SurfaceFactory class (stateless; instantiate per test with a seed)."""
    return SurfaceFactory
