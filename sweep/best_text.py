"""How a best config reads: the block `noisesweep best` prints, its JSON, a confirmation's CI."""

from __future__ import annotations

from typing import Any

from sweep.best import BestResult
from sweep.record import StudyRecord, finite_number


def ci_text(entry: dict[str, Any] | None) -> str:
    """'0.512 [0.47, 0.55] (n=3)', 'no interval (n=1)', or '' when unconfirmed."""
    if not entry or not finite_number(entry.get("mean")):
        return ""
    n = len([v for v in entry.get("values", []) if finite_number(v)])
    lo, hi = entry.get("ci_low"), entry.get("ci_high")
    if finite_number(lo) and finite_number(hi):
        return f"{entry['mean']:.4f} [95% CI {lo:.4f}, {hi:.4f}] (n={n})"
    return f"{entry['mean']:.4f} (n={n}, no interval)"


def zone_names_of(record: StudyRecord) -> dict[int, str]:
    """Layer index -> its profile zone name ('-' outside every zone; empty without a profile)."""
    if record.profile is None:
        return {}
    return {i: (record.profile.zone_of(i) or "-") for i in range(record.profile.num_layers)}


def applied_text(applied: Any) -> str:
    """One line on the noise a trial's trainer really applied (user_attrs `applied`, objective.command.applied).

    'verified' when the trainer's own [AQN] lines matched the plan, 'NOT verified' with the
    reason when a warn-mode check found nothing to read, 'not checked' otherwise.
    """
    if not isinstance(applied, dict):
        return "not recorded"
    if "verified" not in applied:
        if applied.get("noise_records") is not None or "noise_site" in applied:
            return "by the built-in trainer's injector (its records: user_attrs applied.noise_records)"
        return "not checked (objective.command.verify_applied: off)"
    if applied["verified"] is not True:
        return "NOT verified: " + str(applied.get("warning") or applied.get("not_applied") or "unknown")
    from objective.command.applied import layers_text  # torch-free, like this module

    layers = applied.get("noised_layers")
    where = "no layer" if layers == [] else "all layers" if layers is None else f"layers {layers_text(layers)}"
    parts = [f"verified from the trainer's [AQN] lines: {applied.get('site', 'rmsnorm')} noise on {where}"]
    if applied.get("modules_noised"):
        parts.append(f"{applied['modules_noised']} modules")
    parts.append("SRDD-guided per-layer multipliers" if applied.get("srdd_guided") else "uniform multipliers")
    total = applied.get("schedule_total_steps")
    if total:
        parts.append(f"schedule over the trainer's {total} steps, last sigma {applied.get('sigma_last') or 0:.4g}")
    return ", ".join(parts)


def format_best(record: StudyRecord, best: BestResult) -> str:
    """The readable block `noisesweep best` prints."""
    t = best.trial
    metric = record.spec.metric if record.spec is not None else "value"
    lines = [
        f"study {record.name} ({record.masked_url}): best config = trial {t.number}"
        + (f" ({best.seed_config})" if best.seed_config else "")
        + f", chosen by {best.chosen_by}",
        f"  {metric}: {best.value:.4f} (single sweep run, seed {best.seed if best.seed is not None else '?'})",
    ]
    if best.replicates:
        lo_hi = best.ci95
        lines.append(
            f"  mean over {len(best.replicates)} tuning seeds: {best.search_score:.4f}"
            + (f" [95% CI {lo_hi[0]:.4f}, {lo_hi[1]:.4f}]" if lo_hi and not best.confirmation else "")
            + f" (seeds {sorted(best.replicates)})"
        )
    if best.confirmation:
        lines.append(f"  confirmed mean: {ci_text(best.confirmation)} on seeds {best.confirmation.get('seeds')}")
    else:
        lines.append("  confirmed mean: unconfirmed (run `noisesweep confirm` to re-run it on fresh seeds)")
    lines.append("  params:")
    for k, v in best.params.items():
        lines.append(f"    {k:<12s} {v:.6g}" if isinstance(v, float) else f"    {k:<12s} {v}")
    lines.append(f"  derived:\n    {'sigma_end':<12s} {best.sigma_end:.6g}")
    lines.append(f"  applied: {applied_text(best.trial.user_attrs.get('applied'))}")
    if best.multipliers is not None:
        zones = zone_names_of(record)
        lines.append("  multipliers per layer (zone):")
        row: list[str] = []
        for i, m in enumerate(best.multipliers):
            row.append(f"{i:>3d} {zones.get(i, '-'):<7s}{m:6.3f}")
            if len(row) == 4:
                lines.append("    " + "   ".join(row))
                row = []
        if row:
            lines.append("    " + "   ".join(row))
    return "\n".join(lines)


def best_json(record: StudyRecord, best: BestResult) -> dict[str, Any]:
    """Everything about the best config (the json export and `best --json`)."""
    zones = zone_names_of(record)
    return {
        "study": record.name,
        "storage": record.masked_url,
        "metric": record.spec.metric if record.spec is not None else None,
        "direction": "maximize" if record.maximize else "minimize",
        "trial": best.trial.number,
        "chosen_by": best.chosen_by,
        "value": best.value,
        "score": best.score,
        "n_seeds": best.n_seeds,
        "ci95": best.ci95,
        "search_score": best.search_score,
        "confirmed_score": best.confirmed_score,
        "search_confirmed_gap": best.search_confirmed_gap,
        "replicates": {str(k): v for k, v in best.replicates.items()},
        "params": best.params,
        "derived": {"sigma_end": best.sigma_end},
        "multipliers": best.multipliers,
        "layer_zones": [zones.get(i) for i in range(len(best.multipliers))] if best.multipliers else None,
        "seed": best.seed,
        "seed_config": best.seed_config,
        "confirmation": best.confirmation,
        "metrics": best.trial.user_attrs.get("metrics"),
        "applied": _applied_summary(best.trial.user_attrs.get("applied")),
        "intermediate_values": {str(k): v for k, v in sorted(best.trial.intermediate_values.items())},
    }


def _applied_summary(applied: Any) -> dict[str, Any] | None:
    """The applied-noise verdict for JSON: the check's fields, without the bulky per-step records."""
    if not isinstance(applied, dict):
        return None
    keep = ("verified", "check", "not_applied", "warning", "noise_keys", "site", "noised_layers", "srdd_guided",
            "modules_noised", "schedule_total_steps", "sigma_max", "sigma_last", "multipliers", "steps")
    out = {k: applied[k] for k in keep if k in applied}
    out["text"] = applied_text(applied)
    return out
