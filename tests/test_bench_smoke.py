"""scripts/bench.py end to end at a toy size, so its machinery (simulator process, scratch database, the
collector child, the baseline replay, the wasted-call analysis, the scale mode) does not rot.

The figures of a toy run mean nothing; the call accounting is exact at any size, so it is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DSN = os.environ.get("TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/test")


def _bench(tmp_path: Path, *args: str) -> dict[str, object]:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--dsn", DSN, "--media", "3", "--days", "3",
         "--latency-ms", "0", "--concurrency", "8", "--log-level", "warning", "--json", str(out), *args],
        check=False, capture_output=True, text=True, timeout=100, cwd=ROOT)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # 1: a toy run misses the ratio targets
    return dict(json.loads(out.read_text()))


def test_report_counts_every_call_and_wastes_none(tmp_path: Path) -> None:
    result = _bench(tmp_path, "--accounts", "4")
    collector, calls = result["collector"], result["calls"]
    assert isinstance(collector, dict) and isinstance(calls, dict)
    assert collector["graph_calls"] == calls["requests"] == result["simulator"]["calls"]  # type: ignore[index]
    assert result["baseline"]["calls"] == calls["requests"]  # type: ignore[index]
    assert collector["data_points"] > 0 and collector["peak_rss_mb"] > 0
    assert calls["repeated_requests"] == 0
    assert calls["trailing_empty_pages"] == 0
    assert calls["accounts_off_minimum"] == 0
    assert calls["accounts_with_insights"] == collector["accounts_ok"]
    assert "media_object" not in result["simulator"]["by_kind"]  # type: ignore[index]


def test_scale_mode_reports_rss_per_size(tmp_path: Path) -> None:
    result = _bench(tmp_path, "--scale", "2,3")
    rows = result["scale"]
    assert isinstance(rows, list) and [row["accounts"] for row in rows] == [2, 3]
    assert all(row["peak_rss_mb"] > 0 and row["graph_calls"] > 0 for row in rows)


def test_history_benchmark_runs_at_a_toy_size() -> None:
    """scripts/bench_history.py end to end on 40k rows: fill, conversion, writer, queries, drop, retention."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_history.py"), "--dsn", DSN, "--rows", "40000",
         "--writer-rows", "2000", "--repeat", "1"],
        check=False, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for line in ("writer fresh", "history insert", "growth curve 90 days part", "Index Scan",
                 "drop one month", "conversion of 40,000 rows", "retention run"):
        assert line in out, line


def test_small_agency_mode_runs_once_and_the_replay(tmp_path: Path) -> None:
    # The world is the (40 x 25, 7 days: --small-agency overrides the toy sizes), once (~25 s).
    result = _bench(tmp_path, "--small-agency", "--repeat", "1")
    agency = result["small_agency"]
    assert isinstance(agency, dict)
    runs = agency["runs"]
    assert len(runs) == 1
    for run in runs:
        assert run["once_exit_code"] in (0, 1)  # 1: the world's invalid-token accounts fail, as they should
        assert run["calls"] == run["baseline_calls"] > 0  # the replay sends exactly what `once` sent
        assert run["first_graph_call_s"] is not None and run["import_aiohttp_s"] > 0
    assert set(agency["median"]) >= {"once_wall_s", "first_graph_call_s", "baseline_wall_s"}


def test_shutdown_benchmark_runs_at_a_toy_size() -> None:
    """scripts/bench_shutdown.py end to end once: it reads bench_throttle's simulator arguments, which grew
    (--usage-after-calls, --usage-lag-calls) without it for a while."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_shutdown.py"), "--repeat", "1", "--accounts", "3",
         "--media", "4", "--throttled", "1"],
        check=False, capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "DATABASE_URL": DSN})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for line in ("once  throttled:", "once  baseline", " run  throttled:", " run  baseline"):
        assert line in proc.stdout, line
