"""Shared helpers for the bench scripts: side-by-side timing, peak RSS, machine info, tables.

Why side by side: these machines are shared, so an absolute time says little; two contenders
timed in the same process, interleaved round-robin and summarised by the median, see the same
contention and their ratio is what a table should carry.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
DATA = BENCH / "data"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def interleaved(fns: Mapping[str, Callable[[], Any]], reps: int, *, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each fn, run round-robin `reps` times after `warmup` untimed rounds."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence (ValueError on empty: a figure needs a measurement)."""
    if not values:
        raise ValueError("median of no measurements")
    return float(statistics.median(values))


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is not positive."""
    if a is None or b is None or b <= 0:
        return None
    return a / b


def peak_rss_mb(who: str = "self") -> float:
    """Peak resident set size in MB of this process (`self`) or its waited-for children."""
    which = {"self": resource.RUSAGE_SELF, "children": resource.RUSAGE_CHILDREN}.get(who)
    if which is None:
        raise ValueError(f"who must be self or children, got {who!r}")
    return resource.getrusage(which).ru_maxrss / 1024.0  # Linux reports KiB


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return None


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # noqa: BLE001 - a missing package is reported, not fatal
        return "not installed"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, Any]:
    """CPU, cores, RAM, load and the versions that matter for these figures."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gb": round(ram_gb() or 0.0, 1),
        "load_avg": [round(x, 2) for x in load] if load else None,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "optuna": _version("optuna"),
        "ray": _version("ray"),
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "torchao": _version("torchao"),
        "noisesweep_commit": git_commit(),
    }


def fmt(value: Any, digits: int = 2) -> str:
    """Numbers for a table: None -> 'n/a', floats rounded, everything else str()."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells go through fmt(); '|' inside a cell is escaped."""
    if any(len(r) != len(headers) for r in rows):
        raise ValueError("every row needs one cell per header")
    cell = lambda v: fmt(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path: str | Path | None, data: Mapping[str, Any]) -> None:
    """Write a result dict as JSON (no-op when path is None)."""
    if path is None:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2, default=float))


def save_plot(fig: Any, ax: Any, path: Path) -> Path:
    """Every bench plot ends the same way: grid, legend, tight layout, PNG written, figure freed."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def quiet_libraries() -> None:
    """Silence optuna's per-trial INFO lines: bench output is the table."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def tiny_study_spec(overrides: Sequence[str] = ()) -> Any:
    """The shipped tiny study (studies/tiny-mxfp4-w4a4.yaml), with --set style overrides."""
    from sweep.study_loader import load_study

    return load_study(ROOT / "studies" / "tiny-mxfp4-w4a4.yaml", overrides)
