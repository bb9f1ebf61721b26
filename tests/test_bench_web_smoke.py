"""scripts/bench_web.py at a toy size, so its machinery (synthetic COPY fill, the served app, the timing
middleware) does not rot. The figures of a toy run mean nothing; that every page answers 200 is asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DSN = os.environ.get("TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/test")


def test_bench_web_renders_every_page() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_web.py"), "--dsn", DSN, "--accounts", "120",
         "--repeat", "1"], check=False, capture_output=True, text=True, timeout=100, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("filled in") and "ig_account 120" in line for line in lines)
    rows = {line[:40].strip(): line for line in lines if line.rstrip().endswith(" KB")}
    for page in ("/", "/accounts", "/accounts?limit=200", "/accounts/{id}", "/accounts last page"):
        assert page in rows, proc.stdout
