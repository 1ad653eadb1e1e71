"""`noisesweep dashboard`: optuna-dashboard on 127.0.0.1 with the SRDD profile and settings visible.

optuna-dashboard shows a study's note (markdown) and its artifacts. Before serving, every
noisesweep study in the storage gets:

- a note: the study's settings (objective, metric, space, budget, pruning, sampler; the storage
  URL masked), the best config so far, and the per-layer SRDD table (error, zone);
- two artifacts: `srdd_profile.json` (the study's stored profile) and `srdd_profile.png` (the
  per-layer errors coloured by zone with the best multipliers, as in `noisesweep report`).

Idempotent: an artifact whose file name and bytes already exist in the study is not uploaded
again; a changed one replaces the old entry (the old meta is cleared the way the dashboard's
own delete does, its file removed from the store). The note is rewritten only when its text
changed. The artifact store is a folder: next to a sqlite database file by default
(`<db folder>/noisesweep-artifacts`), else ./noisesweep-artifacts; `--artifact-dir` sets it.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

from sweep import optuna_private
from sweep.best import best_result
from sweep.best_text import applied_text, ci_text
from sweep.errors import UserError
from sweep.record import StudyRecord, attach_spec, set_metric_name
from sweep.secrets import mask_url

PROFILE_JSON = "srdd_profile.json"
PROFILE_PNG = "srdd_profile.png"
ARTIFACTS_PREFIX = "artifacts:"


def default_artifact_dir(url: str) -> Path:
    """`noisesweep-artifacts` beside a sqlite file, else in the current folder."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:  # noqa: BLE001
        return Path("noisesweep-artifacts")
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database).expanduser().resolve().parent / "noisesweep-artifacts"
    return Path("noisesweep-artifacts")


def _table_md(record: StudyRecord, multipliers: list[float] | None) -> list[str]:
    profile = record.profile
    errs = profile.errors()
    head = "| layer | zone | output rel. error % |" + (" best multiplier |" if multipliers else "")
    lines = [head, "|---|---|---|" + ("---|" if multipliers else "")]
    for i, e in enumerate(errs):
        row = f"| {i} | {profile.zone_of(i) or '-'} | {e * 100:.2f} |"
        if multipliers and i < len(multipliers):
            row += f" {multipliers[i]:.3f} |"
        lines.append(row)
    return lines


def note_text(record: StudyRecord) -> str:
    """The markdown note: settings, best so far, per-layer profile table."""
    L = [f"## noisesweep study {record.name}", "", f"Storage: `{record.masked_url}`", ""]
    spec = record.spec_record
    if spec:
        L.append(f"Metric: `{record.spec.metric if record.spec is not None else '?'}`")
        L.append("")
        L.append("### Settings")
        L.append("")
        L.append("```json")
        shown = {k: v for k, v in spec.items()}
        shown["storage"] = mask_url(str(shown.get("storage", "")))
        L.append(json.dumps(shown, indent=1, default=str))
        L.append("```")
        L.append("")
    multipliers = None
    try:
        best = best_result(record)
        multipliers = best.multipliers
        L.append("### Best so far")
        L.append("")
        L.append(
            f"Trial {best.trial.number}" + (f" ({best.seed_config})" if best.seed_config else "")
            + f": {best.value:.4f} (single run); confirmed: {ci_text(best.confirmation) or 'unconfirmed'}; "
            + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
        )
        L.append("")
        L.append(f"Applied noise: {applied_text(best.trial.user_attrs.get('applied'))}")
        L.append("")
    except UserError:
        pass
    if record.profile is not None:
        p = record.profile
        L.append(f"### SRDD profile: {p.model} ({p.format}), {p.num_layers} layers")
        L.append("")
        L.append("Zones: " + "; ".join(f"{z.name}: {_runs(z.layers)}" for z in p.zones))
        L.append("")
        L.extend(_table_md(record, multipliers))
        L.append("")
        L.append(f"Artifacts: `{PROFILE_JSON}` (the profile), `{PROFILE_PNG}` (per-layer plot).")
    return "\n".join(L) + "\n"


def _runs(layers: list[int]) -> str:
    from quant.srdd import layer_runs

    return layer_runs(layers)


def _current_note(study: optuna.Study) -> str | None:
    from optuna_dashboard._note import get_note_from_system_attrs

    attrs = optuna_private.study_storage(study).get_study_system_attrs(optuna_private.study_id(study))
    note = get_note_from_system_attrs(attrs, None)
    return note.get("body") if note else None


def _upload_once(record: StudyRecord, store: Any, filename: str, data: bytes) -> str:
    """Upload unless the same bytes are already there under this name; returns 'kept'/'uploaded'."""
    from optuna.artifacts import get_all_artifact_meta, upload_artifact
    from optuna.artifacts.exceptions import ArtifactNotFound

    study = record.study
    storage = optuna_private.study_storage(study)
    existing = [m for m in get_all_artifact_meta(study) if m.filename == filename]
    digest = hashlib.sha256(data).hexdigest()
    for meta in existing:
        try:
            with store.open_reader(meta.artifact_id) as fh:
                if hashlib.sha256(fh.read()).hexdigest() == digest:
                    return "kept"
        except ArtifactNotFound:  # a meta whose file is gone: replace it
            continue
    with tempfile.TemporaryDirectory(prefix="noisesweep-dash-") as tmp:
        path = Path(tmp) / filename
        path.write_bytes(data)
        upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study)
    for meta in existing:  # the stale copies: cleared as optuna-dashboard's delete does
        storage.set_study_system_attr(optuna_private.study_id(study), ARTIFACTS_PREFIX + meta.artifact_id, json.dumps(None))
        try:
            store.remove(meta.artifact_id)
        except ArtifactNotFound:  # already gone: nothing to clean up
            pass
    return "uploaded"


def _profile_png(record: StudyRecord) -> bytes:
    from sweep.report import plot_profile

    multipliers, label = None, ""
    try:
        best = best_result(record)
        multipliers, label = best.multipliers, f"best config multipliers (trial {best.trial.number})"
    except UserError:
        pass
    with tempfile.TemporaryDirectory(prefix="noisesweep-dash-") as tmp:
        path = Path(tmp) / PROFILE_PNG
        plot_profile(record, path, multipliers, label)
        return path.read_bytes()


def prepare(storage: Any, url: str, artifact_dir: str | Path) -> tuple[list[str], Any]:
    """Write notes and artifacts for every study holding noisesweep attrs: (one line per study, the store)."""
    from optuna.artifacts import FileSystemArtifactStore

    Path(artifact_dir).mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(str(artifact_dir))
    lines = []
    for summary in storage.get_all_studies():
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        attrs = study.user_attrs
        if "noisesweep_spec" not in attrs and "srdd_profile" not in attrs:
            continue
        record = StudyRecord(study=study, storage_url=url)
        attach_spec(record, None)
        if record.spec is not None:  # studies run before the runner named their metric
            set_metric_name(study, record.spec.metric)
        text = note_text(record)
        note_state = "note kept"
        if _current_note(study) != text:
            from optuna_dashboard import save_note

            save_note(study, text)
            note_state = "note written"
        arts = []
        if record.profile is not None:
            arts.append(f"{PROFILE_JSON} {_upload_once(record, store, PROFILE_JSON, record.profile.to_json().encode())}")
            arts.append(f"{PROFILE_PNG} {_upload_once(record, store, PROFILE_PNG, _profile_png(record))}")
        lines.append(f"study {record.name}: {note_state}" + (f", {', '.join(arts)}" if arts else ""))
    return lines, store


def serve(url: str, *, host: str, port: int, artifact_dir: str | Path | None = None, stream: Any = None) -> None:
    """Prepare the notes/artifacts, then block in optuna-dashboard's server."""
    import sys

    from optuna_dashboard import run_server

    from sweep.record import require_sqlite_file
    from sweep.storage import open_storage

    stream = stream if stream is not None else sys.stderr
    if not 0 < port < 65536:  # checked before the notes and artifacts are written
        raise UserError(f"--port: must be 1-65535 (got {port})")
    require_sqlite_file(url)  # a mistyped path must not leave an empty database behind
    storage = open_storage(url)
    art_dir = Path(artifact_dir) if artifact_dir else default_artifact_dir(url)
    lines, store = prepare(storage, url, art_dir)
    for line in lines:
        print(f"noisesweep dashboard: {line}", file=stream, flush=True)
    if not lines:
        print(f"noisesweep dashboard: no noisesweep study in {mask_url(url)} yet", file=stream, flush=True)
    print(
        f"noisesweep dashboard: serving {mask_url(url)} at http://{host}:{port}/ (artifacts in {art_dir}); Ctrl-C stops it",
        file=stream, flush=True,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        run_server(storage, host=host, port=port, artifact_store=store)
    except OSError as exc:
        raise UserError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
