"""`noisesweep dashboard`: the real optuna-dashboard over HTTP, with the note and artifacts.

The browser-level test (Chromium through Playwright) belongs to the robustness suite; this one
talks to the JSON API the dashboard's pages read.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from test_export import STUDY, make_study

from sweep.dashboard import PROFILE_JSON, PROFILE_PNG, prepare
from sweep.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listen_addresses(port: int) -> set[str]:
    """IPv4/IPv6 addresses with a TCP listener on `port`, read from /proc/net/tcp{,6} (Linux)."""
    out: set[str] = set()
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            addr, hexport = fields[1].split(":")
            if fields[3] != "0A" or int(hexport, 16) != port:  # 0A = LISTEN
                continue
            if len(addr) == 8:
                out.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1]))
            else:  # four little-endian 32-bit words
                raw = b"".join(bytes.fromhex(addr[i:i + 8])[::-1] for i in range(0, 32, 8))
                out.add(socket.inet_ntop(socket.AF_INET6, raw))
    return out


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_dashboard_serves_the_study_with_its_note_and_artifacts(tmp_path):
    url, _, _ = make_study(tmp_path)
    port = _free_port()
    art = tmp_path / "artifacts"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "dash.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweep.cli", "dashboard", "--storage", url, "--port", str(port), "--artifact-dir", str(art)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        studies = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"dashboard exited {proc.returncode}: {(tmp_path / 'dash.log').read_text()}")
            try:
                studies = _get(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                time.sleep(0.3)
        assert studies is not None, "dashboard never answered"
        (summary,) = [s for s in studies if s["study_name"] == STUDY]
        detail = _get(f"{base}/api/studies/{summary['study_id']}")
        assert len(detail["trials"]) == 8
        assert sorted(t["state"] for t in detail["trials"]) == sorted(["Complete"] * 6 + ["Pruned", "Fail"])
        note = detail["note"]["body"]
        assert f"## noisesweep study {STUDY}" in note
        assert "| 4 | high | 42.00 |" in note  # the per-layer profile table
        assert '"sampler"' in note and '"budget"' in note  # the study's settings
        names = sorted(a["filename"] for a in detail["artifacts"])
        assert names == [PROFILE_JSON, PROFILE_PNG]
        art_id = next(a["artifact_id"] for a in detail["artifacts"] if a["filename"] == PROFILE_JSON)
        with urllib.request.urlopen(f"{base}/artifacts/{summary['study_id']}/{art_id}", timeout=5) as r:
            assert json.loads(r.read())["num_layers"] == 8
        out = (tmp_path / "dash.log").read_text()
        assert f"serving {url} at http://127.0.0.1:{port}/" in out
        # the default bind is loopback only: no listener on 0.0.0.0 or any other address
        assert _listen_addresses(port) == {"127.0.0.1"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        log.close()


def test_prepare_is_idempotent_and_masks_the_password(tmp_path):
    url, _, _ = make_study(tmp_path)
    storage = open_storage(url)
    lines, _ = prepare(storage, url, tmp_path / "a")
    assert lines == [f"study {STUDY}: note written, {PROFILE_JSON} uploaded, {PROFILE_PNG} uploaded"]
    lines, _ = prepare(storage, url, tmp_path / "a")
    assert lines == [f"study {STUDY}: note kept, {PROFILE_JSON} kept, {PROFILE_PNG} kept"]
    assert len(list((tmp_path / "a").iterdir())) == 2
    study = optuna.load_study(study_name=STUDY, storage=storage)
    from optuna.artifacts import get_all_artifact_meta

    assert sorted(m.filename for m in get_all_artifact_meta(study)) == [PROFILE_JSON, PROFILE_PNG]
    # a password-bearing URL reaches the note only masked
    from sweep.dashboard import note_text
    from sweep.record import StudyRecord, attach_spec

    rec = StudyRecord(study=study, storage_url="postgresql://u:hunter2@db/x")
    attach_spec(rec, None)
    text = note_text(rec)
    assert "hunter2" not in text and "postgresql://u:***@db/x" in text


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--port", "70000"], "--port: must be 1-65535"),
        (["--port", "0"], "--port: must be 1-65535"),
    ],
)
def test_bad_port_is_one_line_and_writes_no_note(tmp_path, extra, expect):
    """A bad port fails before `prepare` touches the study (no note, no artifact folder)."""
    url, _, _ = make_study(tmp_path)
    art = tmp_path / "art"
    proc = subprocess.run(
        [sys.executable, "-m", "sweep.cli", "dashboard", "--storage", url, "--artifact-dir", str(art), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], proc.stderr
    assert not art.exists()
    study = optuna.load_study(study_name=STUDY, storage=open_storage(url))
    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert not any(k.startswith("dashboard:") for k in attrs), attrs


def test_missing_sqlite_file_is_not_created(tmp_path):
    missing = tmp_path / "typo.db"
    proc = subprocess.run(
        [sys.executable, "-m", "sweep.cli", "dashboard", "--storage", f"sqlite:///{missing}", "--port", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "no such database file" in proc.stderr and "Traceback" not in proc.stderr
    assert not missing.exists()
