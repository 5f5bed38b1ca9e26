"""Where the real market data the tests read lives: tests/data/ (see its README.md for the
provenance of each file). A clone carries it, so no real-data test can skip for want of it."""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
FRAMES_DIR = DATA_DIR / "frames"  # hand-written frames in the venues' real shapes
SNAPSHOT = DATA_DIR / "deribit_options_snapshot_20260822T153351Z.csv"  # one real Deribit chain
CHAINS = sorted((DATA_DIR / "chains").glob("deribit_options_snapshot_*.csv.gz"))  # eleven more
