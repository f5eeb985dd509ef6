"""``python -m cluster.bench large`` end to end, at a small size: it loads, restarts a member,
makes a follower catch up by the leader's backend, and reports memory, restart and stalls."""

from __future__ import annotations

import json
import subprocess
import sys


def test_large_reports_memory_restart_and_stalls_through_a_snapshot_catch_up() -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "cluster.bench", "large", "--keys", "2000",
            "--snapshot-count", "500", "--catchup-entries", "100", "--json",
        ],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["load"]["keys"] == 2000
    members = {m["member"] for m in report["memory_after_load"]}
    assert len(members) == 3
    assert all(m["VmRSS"] > 0 and m["db_bytes"] > 0 for m in report["memory_end"])
    assert 0 < report["restart"]["start_to_serving_seconds"] < 60
    events = {e["event"]: e for e in report["stalls"]["events"]}
    # the stopped follower was behind the leader's compacted log: it got the backend
    assert events["follower serving"]["backend_installed"] == 1
    for series in report["stalls"]["series"]:
        assert series["requests"] > 0 and series["errors"] == 0
        assert set(series["max_gap_ms_by_window"]) == {
            "quiet",
            "snapshots",
            "follower down",
            "catch-up",
        }
