"""Starting or joining Ray quietly, and where Ray's own output goes.

Bound to 127.0.0.1 when local; RAY_ADDRESS joins a cluster (RAY_AUTH_MODE=token for clusters
that use an auth token). Ray's log records go to a file beside the results (route_ray_logs) and
trial output stays in Ray's session logs unless NOISESWEEP_RAY_LOGS=1.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from sweep.errors import UserError
from sweep.secrets import mask_url

RAY_LOG_NAME = "ray-driver.log"


def route_ray_logs(log_path: Path | None) -> None:
    """Ray's and Tune's own log records (the token-authentication notice, "Trial task failed"
    with its traceback, "Trials did not complete") go to `log_path`, not the terminal, unless
    NOISESWEEP_RAY_LOGS=1. The progress lines say what happened to the trials.

    Why before ray.init: its notices are logged while it starts. ray.init(configure_logging=
    True) only sets the level and format of the handlers the "ray" logger already has
    (ray/_private/ray_logging/__init__.py `setup_logger`), so the file handler stays.
    """
    if log_path is None or os.environ.get("NOISESWEEP_RAY_LOGS") == "1":
        return
    import ray  # noqa: F401 - importing ray installs its stderr handler, which is replaced here

    ray_logger = logging.getLogger("ray")
    for handler in list(ray_logger.handlers):
        if not isinstance(handler, logging.FileHandler):
            ray_logger.removeHandler(handler)
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == log_path.resolve()
               for h in ray_logger.handlers):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        ray_logger.addHandler(logging.FileHandler(log_path, encoding="utf-8", delay=True))
    ray_logger.propagate = False


def ensure_ray(num_cpus: int | None = None, *, log_path: Path | None = None) -> None:
    """Connect to RAY_ADDRESS when set, else start a quiet local Ray bound to 127.0.0.1."""
    import ray

    route_ray_logs(log_path)
    for name in ("ray.tune.analysis.experiment_analysis", "ray.tune.tune", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose=0 then prints no tables
    # Trial output (model loading, library warnings) would drown the progress lines; it stays
    # in Ray's session logs. NOISESWEEP_RAY_LOGS=1 streams it to the console again.
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "log_to_driver": os.environ.get("NOISESWEEP_RAY_LOGS") == "1",
                              "configure_logging": True}
    # Ray records the driver's command line (job table, session logs): a --storage URL with a
    # password must not travel there.
    sys.argv = [mask_url(a) if "://" in a else a for a in sys.argv]
    if os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as exc:
            # Ray 2.60 clusters started with an auth token (~/.ray/auth_token) only accept
            # drivers that set RAY_AUTH_MODE=token; say so instead of a bare ConnectionError.
            hint = "" if os.environ.get("RAY_AUTH_MODE") else "; if the cluster uses an auth token, set RAY_AUTH_MODE=token"
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"RAY_ADDRESS={address}: cannot connect to the Ray cluster ({first}){hint}") from None
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, _node_ip_address="127.0.0.1", **kwargs)


def default_results_dir(study_name: str) -> Path:
    """Ray's results live in a local folder named after the study, never the storage URL."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in study_name)
    return Path(os.environ.get("NOISESWEEP_RAY_DIR", Path(tempfile.gettempdir()) / "noisesweep-ray")) / safe
