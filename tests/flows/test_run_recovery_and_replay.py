"""`volgraph run` resumes from its recovery snapshots by default; `volgraph replay` runs on the
recording's clock and ends with a summary. Real processes (python -m flows.cli) with their real
children (simulator, gateway) over loopback; every wait is on a line appearing, with a deadline.

- A recording made on 2026-01-05 (every expiry in the wall clock's past) replays to fits of
  every one of its expiries: before, the flow ran on the wall clock and dropped each chain as
  expired (0 fits).
- `volgraph run` twice on one data_dir: the first makes data_dir/recovery and snapshots into
  it; the second resumes from it, routes every book (no unknown_instrument) and publishes;
  `--fresh` discards it.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import time

from connectors.capture.replay import write_frames
from connectors.sim.deribit import Simulator
from tests.helpers.config import sim_kwargs
from tests.helpers.recordings import START_MS, record
from tests.helpers.volgraph_run import Run, small_config


def test_a_recording_from_last_month_replays_to_fits_of_every_expiry_on_its_own_clock(tmp_path):
    frames = record()
    path = tmp_path / "btc-2026-01-05.jsonl.gz"
    write_frames(path, frames)
    run = Run.to_the_end(str(path), "--speed", "max", "--no-postgres", "--port", "0",
                         "--config", str(small_config(tmp_path)), command="replay")
    done = run.wait_line(r"replay done in [\d.]+ s: ([\d,]+) events read, recording clock at "
                         r"(\S+ \S+) UTC, ([\d,]+) fits of (\d+) expiries \((.*)\), run (file-\S+)$")
    sim = Simulator(**sim_kwargs(scale="small", seed=7, now_ms=START_MS, currencies=("BTC",)))
    assert all(e < time.time() * 1000 for e in sim.expiries("BTC"))  # all in the past of the wall clock
    assert int(done.group(4)) == len(sim.expiries("BTC")), run.text()
    assert done.group(5) == "deribit:BTC"
    assert done.group(2) == time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(max(ts for ts, _ in frames) / 1000))
    assert int(done.group(1).replace(",", "")) > 0 and int(done.group(3).replace(",", "")) >= int(done.group(4))


def snapshots(recovery_dir) -> int:
    """The epoch of the last snapshot bytewax committed in the recovery folder (0: none)."""
    with sqlite3.connect(recovery_dir / "part-0.sqlite3") as db:
        return db.execute("SELECT coalesce(max(commit_epoch), 0) FROM commits").fetchone()[0]


def stop(run: Run) -> int:
    run.proc.send_signal(signal.SIGTERM)
    return run.finish()


def test_volgraph_run_snapshots_by_default_and_the_next_run_resumes_from_them(tmp_path):
    config = small_config(tmp_path, snapshot_interval_s=0.5)
    recovery = tmp_path / "data" / "recovery"
    first = Run("--config", str(config), "--port", "0", "--no-postgres")
    try:
        first.wait_line(r"recovery: new snapshots in .*recovery every 0.5 s")
        run_id = first.wait_line(r"run (live-\S+) \(code ").group(1)
        first.wait_line(r"first patch of deribit:BTC", stream="err")
        assert stop(first) == 0, first.text()
    except BaseException:
        first.kill()
        raise
    taken = snapshots(recovery)
    assert taken > 0, "the first run left no snapshot"

    second = Run("--config", str(config), "--port", "0", "--no-postgres")
    try:
        second.wait_line(r"recovery: resuming from .*recovery \(1 partition\(s\); --fresh starts over\)")
        assert second.wait_line(r"run (live-\S+) \(code ").group(1) == run_id  # the same run, continued
        second.wait_line(r"first patch of deribit:BTC", stream="err")
        line = second.wait_line(r"msgs/s .* errors ([\d,]+)$")
        assert stop(second) == 0, second.text()
    except BaseException:
        second.kill()
        raise
    assert not any("unknown_instrument" in x for x in second.out + second.err), second.text()
    assert int(line.group(1).replace(",", "")) == 0, second.text()
    assert snapshots(recovery) > taken  # the resumed run went on snapshotting

    third = Run("--config", str(config), "--port", "0", "--no-postgres", "--fresh", "--seconds", "1")
    try:
        third.wait_line(r"recovery: --fresh, discarded .*recovery")
        third.wait_line(r"recovery: new snapshots in")
        assert third.wait_line(r"run (live-\S+) \(code ").group(1) != run_id  # a fresh start is a new run
        assert third.finish() == 0, third.text()
    except BaseException:
        third.kill()
        raise
    assert re.search(r"volgraph: recovery: new snapshots", "\n".join(third.out))
