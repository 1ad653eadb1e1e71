"""`noisesweep report`: PNG plots and a markdown summary that answers the seeds' hypotheses.

Plots (matplotlib, Agg; readable at 100 % zoom):
  history.png        objective per trial by state, best-so-far line, confirmed means with CIs
  intermediate.png   validation accuracy vs training step per trial; pruned dashed, failed dotted
  importances.png    optuna.importance (fANOVA); a note instead of bars when too few trials
  parallel.png       optuna's parallel-coordinate plot of the COMPLETE trials
  profile.png        SRDD per-layer error bars coloured by zone + the best config's multipliers
summary.md embeds them, with counts by state, the best config, the budget ledger, the
confirmations and H1-H5 (sweep.hypotheses).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from sweep import hypotheses  # noqa: E402
from sweep.atomic import write_atomic, write_text_atomic  # noqa: E402
from sweep.best import best_result, count_states  # noqa: E402
from sweep.best_text import applied_text, ci_text  # noqa: E402
from sweep.errors import UserError  # noqa: E402
from sweep.record import StudyRecord, finite_number  # noqa: E402

PLOTS = ("history.png", "intermediate.png", "importances.png", "parallel.png", "profile.png")
ZONE_COLORS = {"high": "#d62728", "medium": "#ff7f0e", "low": "#2ca02c"}
FALLBACK_COLORS = ["#1f77b4", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
STATE_STYLE = {
    "COMPLETE": dict(color="#1f77b4", marker="o"),
    "PRUNED": dict(color="#7f7f7f", marker="x"),
    "FAIL": dict(color="#d62728", marker="v"),
}


def _metric(record: StudyRecord) -> str:
    return record.spec.metric if record.spec is not None else "objective value"


def _save(fig: Any, path: Path) -> None:
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight",
                                                   metadata={"Software": None}))
    finally:
        plt.close(fig)


def _note_figure(path: Path, title: str, text: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 2.5))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=11)
    _save(fig, path)


def plot_history(record: StudyRecord, path: Path) -> None:
    """history.png: value per trial by state, best-so-far line, confirmed means with their CIs."""
    fig, ax = plt.subplots(figsize=(9, 4.8))
    trials = record.trials()
    for state, style in STATE_STYLE.items():
        pts = []
        for t in trials:
            if t.state.name != state:
                continue
            v = t.value if state == "COMPLETE" else (t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
            if finite_number(v):
                pts.append((t.number, v))
        if pts:
            label = {"COMPLETE": "complete", "PRUNED": "pruned (last reported)", "FAIL": "failed (last reported)"}[state]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=label, s=36, **style)
    best_so_far, xs, ys = None, [], []
    for t in sorted(record.complete_trials(), key=lambda t: t.number):
        if best_so_far is None or record.better(t.value, best_so_far):  # type: ignore[arg-type]
            best_so_far = t.value
        xs.append(t.number)
        ys.append(best_so_far)
    if xs:
        ax.step(xs, ys, where="post", color="#2ca02c", lw=1.8, label="best so far")
    first = True
    for key, entry in record.confirmations.items():
        if not isinstance(entry, dict) or not finite_number(entry.get("mean")) or not str(key).isdigit():
            continue  # a hand-edited or foreign entry: not a trial number with a mean
        n = int(key)
        lo, hi = entry.get("ci_low"), entry.get("ci_high")
        yerr = [[entry["mean"] - lo], [hi - entry["mean"]]] if finite_number(lo) and finite_number(hi) else None
        ax.errorbar([n + 0.25], [entry["mean"]], yerr=yerr, fmt="D", color="#9467bd", capsize=4,
                    label="confirmed mean (95% CI)" if first else None)
        first = False
    ys_all = [v for t in trials for v in ([t.value] if t.state == TrialState.COMPLETE else [])]
    ys_all += [e["mean"] for e in record.confirmations.values() if isinstance(e, dict) and finite_number(e.get("mean"))]
    ys_all = [v for v in ys_all if finite_number(v)]
    if ys_all:  # whiskers of a 2-seed interval can span +-3: clip them rather than flatten the points
        lo, hi = min(ys_all + [c.get_offsets()[:, 1].min() for c in ax.collections if len(c.get_offsets())]), max(
            ys_all + [c.get_offsets()[:, 1].max() for c in ax.collections if len(c.get_offsets())])
        pad = max((hi - lo) * 0.15, 0.02)
        ax.set_ylim(lo - pad, hi + pad)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial number")
    ax.set_ylabel(_metric(record))
    ax.set_title(f"Optimization history: {record.name}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=9)
    _save(fig, path)


def plot_intermediate(record: StudyRecord, path: Path, best_number: int | None = None) -> None:
    """intermediate.png: validation value vs real training step per trial, the best one haloed."""
    fig, ax = plt.subplots(figsize=(9, 5))
    trials = [t for t in record.trials() if t.intermediate_values]
    if not trials:
        plt.close(fig)
        _note_figure(path, "Intermediate values", "No trial reported intermediate values yet.")
        return
    cmap = plt.get_cmap("viridis")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    finals = [t.value for t in complete if finite_number(t.value)]
    lo, hi = (min(finals), max(finals)) if finals else (0.0, 1.0)
    labelled: set[str] = set()
    for t in sorted(trials, key=lambda t: t.number):
        steps = sorted(t.intermediate_values)
        vals = [t.intermediate_values[s] for s in steps]
        state = t.state.name
        if state == "COMPLETE":
            frac = 0.5 if hi == lo or not finite_number(t.value) else (t.value - lo) / (hi - lo)  # type: ignore[operator]
            kw = dict(color=cmap(0.15 + 0.8 * frac), lw=1.8, ls="-", marker="o", ms=3.5, alpha=0.9)
            label = "complete (colour: final value)"
        elif state == "PRUNED":
            kw = dict(color="#7f7f7f", lw=1.2, ls="--", marker="x", ms=5, alpha=0.8)
            label = "pruned"
        else:
            kw = dict(color="#d62728", lw=1.2, ls=":", marker="v", ms=4, alpha=0.8)
            label = state.lower()
        ax.plot(steps, vals, label=label if label not in labelled else None, **kw)
        labelled.add(label)
        if state != "COMPLETE" and len(trials) - len(complete) <= 15:  # label a few, not a crowd
            ax.annotate(f"#{t.number}", (steps[-1], vals[-1]), fontsize=7, color=kw["color"],
                        xytext=(3, 0), textcoords="offset points")
    best = next((t for t in complete if t.number == best_number), None)
    if best is not None:  # a halo under the curve, so equal curves stay visible on top of it
        steps = sorted(best.intermediate_values)
        ax.plot(steps, [best.intermediate_values[s] for s in steps], color="black", lw=7, alpha=0.25, zorder=1,
                solid_capstyle="round", label=f"best config (trial {best.number})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("training step")
    ax.set_ylabel(_metric(record))
    ax.set_title("Validation accuracy vs training step (pruned: dashed grey)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    _save(fig, path)


def plot_importances(record: StudyRecord, path: Path) -> str | None:
    """Returns a note when importances cannot be computed (then the PNG says so)."""
    import optuna

    complete = record.complete_trials()
    varying = [k for k in {k for t in complete for k in t.params} if len({repr(t.params.get(k)) for t in complete}) > 1]
    if len(complete) < 3 or not varying:
        note = f"Too few COMPLETE trials with varying params for importances ({len(complete)} complete; need >= 3)."
        _note_figure(path, "Parameter importances", note)
        return note
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(
                record.study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=sorted(varying)
            )
    except Exception as exc:  # noqa: BLE001 - importance is a nicety; never lose the report for it
        note = f"Parameter importances unavailable: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        _note_figure(path, "Parameter importances", note)
        return note
    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    bars = ax.barh(names, [imp[n] for n in names], color="#1f77b4")
    for bar, n in zip(bars, names):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {imp[n]:.2f}", va="center", fontsize=9)
    ax.set_xlabel("importance (fANOVA, share of variance)")
    ax.set_xlim(0, max(1.0, max(imp.values()) * 1.15))
    ax.set_title(f"Parameter importances ({len(complete)} complete trials)")
    _save(fig, path)
    return None


def plot_parallel(record: StudyRecord, path: Path) -> str | None:
    """parallel.png of the COMPLETE trials; returns a note (and draws it) when it cannot be made."""
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    complete = record.complete_trials()
    if len(complete) < 2:
        note = f"Parallel coordinates need >= 2 COMPLETE trials ({len(complete)} so far)."
        _note_figure(path, "Parallel coordinates", note)
        return note
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning; singular ylim on a constant param
            ax = plot_parallel_coordinate(record.study, target_name=_metric(record).split("/")[-2] if "/" in _metric(record) else "value")
        fig = ax.figure
        fig.set_size_inches(12, 5.5)
        ax.set_title(f"Parallel coordinates: {record.name} (COMPLETE trials)", pad=22)
        # optuna's colorbar (pad 0.1) sits on the last axis' tick labels (zone names): redo it further right
        lcs = [c for c in ax.collections if c.get_array() is not None]
        if lcs:
            for other in list(fig.axes):
                if getattr(other, "_colorbar", None) is not None:  # the colorbar's axes, not the twin axes
                    other.remove()
            fig.colorbar(lcs[0], ax=ax, pad=0.16).set_label(_metric(record))
        _save(fig, path)
    except Exception as exc:  # noqa: BLE001
        plt.close("all")
        note = f"Parallel coordinates unavailable: {type(exc).__name__}"
        _note_figure(path, "Parallel coordinates", note)
        return note
    return None


def zone_colors(profile: Any) -> dict[str, str]:
    """Zone name -> colour: the 3-tier names get fixed colours, others a fallback palette."""
    out: dict[str, str] = {}
    extra = iter(FALLBACK_COLORS * 4)
    for z in profile.zones:
        out[z.name] = ZONE_COLORS.get(z.name) or next(extra)
    return out


def plot_profile(record: StudyRecord, path: Path, multipliers: list[float] | None, label: str) -> str | None:
    """profile.png: per-layer SRDD error by zone with the multipliers on a second axis; a note without a profile."""
    profile = record.profile
    if profile is None:
        note = "The study holds no SRDD profile."
        _note_figure(path, "SRDD profile", note)
        return note
    errs = [e * 100 for e in profile.errors()]
    colors = zone_colors(profile)
    n = len(errs)
    fig, ax = plt.subplots(figsize=(max(8, 0.38 * n + 3), 5))
    xs = list(range(n))
    bars = ax.bar(xs, errs, color=[colors.get(profile.zone_of(i) or "", "#bbbbbb") for i in xs], alpha=0.85, width=0.8)
    if n <= 16:  # small models: the values themselves (a flat profile differs in the decimals)
        for bar, e in zip(bars, errs):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() / 2, f"{e:.1f}", ha="center", va="center",
                    fontsize=8, color="white", rotation=90)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("relative quantization error at the layer output (%)")
    ax.set_xticks(xs if n <= 32 else xs[:: max(1, n // 16)])
    ax.set_ylim(0, max(errs) * 1.25)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.85) for c in colors.values()]
    labels = [f"zone {z}" for z in colors]
    if multipliers is not None:
        ax2 = ax.twinx()
        (line,) = ax2.plot(xs[: len(multipliers)], multipliers, color="black", marker="o", ms=5, lw=1.6,
                           drawstyle="steps-mid")  # a level per layer, not a slope between layers
        ax2.set_ylabel("noise multiplier of the best config")
        ax2.set_ylim(0, max(max(multipliers) * 1.25, 0.1))
        ax2.axhline(1.0, color="black", lw=0.6, ls=":")
        handles.append(line)
        labels.append(label)
    ax.legend(handles, labels, loc="upper left", fontsize=9, ncol=2)
    ax.set_title(f"SRDD profile: {profile.model} ({profile.format}), {n} layers")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    return None


def _fmt_params(p: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items())


def write_report(record: StudyRecord, out_dir: str | Path) -> Path:
    """Write the PNGs and summary.md into out_dir; return summary.md's path."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"-o: {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"-o: cannot create folder {out} ({exc.strerror or exc})") from None
    notes: dict[str, str | None] = {}
    best = None
    try:
        best = best_result(record)
    except UserError:  # no COMPLETE trial yet: the report still shows the rest
        best = None
    plot_history(record, out / "history.png")
    plot_intermediate(record, out / "intermediate.png", best.trial.number if best else None)
    notes["importances.png"] = plot_importances(record, out / "importances.png")
    notes["parallel.png"] = plot_parallel(record, out / "parallel.png")
    mult_label = f"best config multipliers (trial {best.trial.number})" if best else ""
    notes["profile.png"] = plot_profile(record, out / "profile.png", best.multipliers if best else None, mult_label)
    summary = out / "summary.md"
    write_text_atomic(summary, summary_markdown(record, best, notes))
    return summary


def summary_markdown(record: StudyRecord, best: Any, notes: dict[str, str | None]) -> str:
    """summary.md: counts, ledger, best config, confirmations, H1-H5 with verdicts, the plots."""
    metric = _metric(record)
    counts = count_states(record)
    L: list[str] = [f"# noisesweep report: {record.name}", ""]
    L.append(f"Storage: `{record.masked_url}`. Objective: `{metric}` ({'maximize' if record.maximize else 'minimize'}).")
    L.append("")
    L.append("## Overview")
    L.append("")
    L.append("| state | trials |")
    L.append("|---|---|")
    for s, n in counts.items():
        L.append(f"| {s} | {n} |")
    L.append(f"| total | {sum(counts.values())} |")
    L.append("")
    ledger = record.study.user_attrs.get("ledger")
    if isinstance(ledger, dict):
        budget = ""
        if record.spec is not None:
            b = record.spec.budget
            budget = f" of a budget of {b.trials if b.trials is not None else 'unlimited'} trials / " \
                     f"{b.compute_hours if b.compute_hours is not None else 'unlimited'} compute-hours"
        L.append(f"Budget ledger: {ledger.get('trials')} counted trials, {float(ledger.get('compute_hours', 0)):.4f} compute-hours{budget}.")
        L.append("")
    L.append("## Best config")
    L.append("")
    if best is None:
        L.append("No COMPLETE trial yet.")
    else:
        L.append(f"Trial {best.trial.number}" + (f" ({best.seed_config})" if best.seed_config else "")
                 + f", chosen by {best.chosen_by}: single run {best.value:.4f}; confirmed: "
                 + (ci_text(best.confirmation) or "unconfirmed") + ".")
        L.append("")
        L.append(f"Params: {_fmt_params(best.params)}; sigma_end = {best.sigma_end:.4g}.")
        L.append("")
        L.append(f"Applied noise: {applied_text(best.trial.user_attrs.get('applied'))}.")
        if best.multipliers is not None:
            L.append("")
            L.append("Multipliers per layer: " + ", ".join(f"{m:.2f}" for m in best.multipliers))
        L.append("")
        L.append(f"Export: `noisesweep export {record.name} --format verl`")
    L.append("")
    conf = record.confirmations
    if conf:
        L.append("## Confirmations (fresh seeds)")
        L.append("")
        L.append("| trial | sweep run | confirmed mean | 95% CI | n | values |")
        L.append("|---|---|---|---|---|---|")
        for key in sorted(conf, key=lambda k: int(k) if k.isdigit() else 0):
            e = conf[key] if isinstance(conf[key], dict) else {}
            t = next((t for t in record.trials() if str(t.number) == key), None)
            run = f"{t.value:.4f}" if t is not None and finite_number(t.value) else "-"
            ci = f"[{e['ci_low']:.4f}, {e['ci_high']:.4f}]" if finite_number(e.get("ci_low")) and finite_number(e.get("ci_high")) else "no interval"
            mean = f"{e['mean']:.4f}" if finite_number(e.get("mean")) else "-"
            vals = ", ".join(f"{v:.4f}" for v in e.get("values", []) or [])
            L.append(f"| {key} | {run} | {mean} | {ci} | {len(e.get('values', []) or [])} | {vals} |")
        L.append("")
    L.append("## The seeds' hypotheses")
    L.append("")
    hs = analyze_record(record)
    sd = hypotheses.noise_sd(conf)
    L.append(
        "Each side's best trial by confirmed mean where confirmed, else its single run (unconfirmed). "
        f"Verdict rule: {hypotheses.RULE_TEXT} Run-to-run noise estimate: "
        + (f"sd {sd:.4f} (pooled over confirmations)." if sd is not None else "none (no config confirmed on >= 2 seeds).")
    )
    L.append("")
    L.append("| | question | side A | best A | trials A | side B | best B | trials B | verdict |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for h in hs:
        L.append(
            f"| {h.key} | {h.question} | {h.a.label} | {hypotheses.side_text(h.a)} | {h.a.n} | "
            f"{h.b.label} | {hypotheses.side_text(h.b)} | {h.b.n} | **{h.verdict_text}** |"
        )
    L.append("")
    for h in hs:
        L.append(f"- **{h.key}: {h.verdict_text}**: {h.reason}.")
    L.append("")
    L.append("## Plots")
    L.append("")
    titles = {
        "history.png": "Optimization history",
        "intermediate.png": "Intermediate values (validation accuracy vs step)",
        "importances.png": "Parameter importances",
        "parallel.png": "Parallel coordinates",
        "profile.png": "SRDD profile with the best config's multipliers",
    }
    for name in PLOTS:
        L.append(f"### {titles[name]}")
        L.append("")
        if notes.get(name):
            L.append(f"_{notes[name]}_")
            L.append("")
        L.append(f"![{titles[name]}]({name})")
        L.append("")
    return "\n".join(L)


def analyze_record(record: StudyRecord) -> list[hypotheses.Hypothesis]:
    """H1-H5 over the study's COMPLETE trials, the worst zone taken from the search space or profile."""
    worst, layers = None, None
    if record.space is not None and record.space.zone_rank:
        worst = record.space.zone_rank[0]
        layers = sorted(record.space.zone_layers(worst) or [])
    elif record.profile is not None and record.profile.zones:
        errs = record.profile.errors()
        z = max(record.profile.zones, key=lambda z: sum(errs[i] for i in z.layers) / max(1, len(z.layers)))
        worst, layers = z.name, sorted(z.layers)
    site = record.space.sites[0] if record.space is not None else "rmsnorm"
    return hypotheses.analyze(
        record.complete_trials(), record.confirmations, maximize=record.maximize,
        worst_zone=worst, worst_layers=layers, default_site=site,
    )

