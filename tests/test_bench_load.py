"""bench/load.py: its percentile, and a quick run end to end (real drivers, PostgreSQL, SQLite)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import load  # noqa: E402


def test_percentile_interpolates_between_ranks() -> None:
    assert load._percentile([], 0.5) is None
    assert load._percentile([3.0], 0.99) == 3.0
    assert load._percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert load._percentile([float(i) for i in range(101)], 0.99) == pytest.approx(99.0)


@pytest.mark.slow
def test_quick_load_run_prints_its_table_with_nothing_duplicated_or_lost(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, str(BENCH / "load.py"), "--quick", "--trials", "6", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "| storage | drivers x trials | concurrent each | trials/s |" in proc.stdout
    rows = {r["storage"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"postgresql", "sqlite"}
    assert rows["postgresql"]["drivers"] == 2 and rows["postgresql"]["finished"] == 12
    assert rows["sqlite"]["finished"] == 6
    for r in rows.values():
        assert r["duplicates"] == 0 and r["lost"] == 0
        assert r["trials_per_s"] > 0 and 0 < r["p50_s"] <= r["p99_s"]
    assert all(n > 0 for n in rows["postgresql"]["drivers_ran"]), "both drivers ran trials"
