"""The team's verl fork's Hydra vocabulary: the keys its noise code reads and how values are written.

One module, shared by the command objective (a trial's overrides, `fork_overrides`) and by
``noisesweep export --format verl|hydra`` (`noise_block`, `fork_overrides`), so a sweep trial
and an export hand the fork identical keys and values. Both read a `NoisePlan`.

What the fork (zhshgmail/verl, branch feature/npu-aqn-test) reads, and where:

- verl/trainer/config/ppo_trainer.yaml declares ``trainer.noise_injection.{enabled,
  sigma_start, sigma_end, num_stages, target_modules: [], exclude_patterns: []}`` (so plain
  overrides work for these; anything else needs Hydra's force-add ``++``).
- verl/trainer/ppo/ray_trainer.py, ``RayPPOTrainer.__init__``: builds
  ``sigma_trend = get_sigma_schedule(sigma_start, sigma_end, num_stages)`` and reads
  ``target_modules``, ``exclude_patterns``, ``layer_types``; after ``_create_dataloader`` the
  schedule length is ``total_epochs * len(train_dataloader)`` (``noise_injection_total_steps``),
  whatever ``trainer.total_training_steps`` says. ``init_workers`` copies exactly these into
  ``actor_rollout_ref.rollout.noise_injection_*`` (sigma_trend, total_steps, target_modules,
  exclude_patterns, layer_types, epoch-aware fields), and never ``layer_sigma_config``.
- verl/workers/config/rollout.py, ``RolloutConfig``: has fields for those keys only; the worker
  builds it with ``omega_conf_to_dataclass`` (Hydra ``instantiate``), so an extra key such as
  ``actor_rollout_ref.rollout.noise_injection_layer_sigma_config`` makes the worker fail with
  ``TypeError: RolloutConfig.__init__() got an unexpected keyword argument``.
- verl/workers/rollout/vllm_rollout/vllm_rollout.py, ``vLLMAsyncRollout.__init__``: reads
  ``getattr(config, 'noise_injection_layer_sigma_config', None)`` from that dataclass (always
  None as the fork is), turns empty target/exclude/layer-type lists into None (= the noise
  code's auto defaults), and ``_aqn_apply_noise`` calls
  verl/utils/noise_injection.py ``generate_expert_gaussian_noise(model, step, total_step,
  sigma_trend, target_modules, exclude_patterns, layer_types, layer_sigma_config)``: substring
  matching of module names against target/exclude patterns, RMSNorm/Linear by class name, and
  per layer ``layer_sigma_config['layer_multipliers'].get(str(layer) or layer,
  default_multiplier)`` when ``layer_sigma_config['enabled']``.

Hence, for the fork as it is (``noise_keys: verl-fork``) the schedule, the zones (as target
patterns ``layers.N.``, one per noised layer) and the site (``layer_types``) reach the noise
code; per-layer multipliers (alpha > 0) cannot, and such a trial fails before it starts. For a
fork with the two-line fix of docs/verl-fork.md (``noise_keys: verl-fork-patched``) the
multipliers go in ``trainer.noise_injection.layer_sigma_config`` (the keys the fork's own
scripts/test_mxfp4_w4a4_e13l_variable_rin.sh sets), one entry per decoder layer, zeros included.

Every value is written so Hydra's override grammar reads back the same value and type
(checked against hydra-core 1.3.8): floats with repr() (``1e-05``, bit-exact), ints,
``true``/``false``, ``null``, lists ``[a,b]``, dicts ``{0:0.83,1:0.89}``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Literal

from quant.noise_plan import NoisePlan

NoiseKeys = Literal["verl-fork", "verl-fork-patched"]
NOISE_KEYS: tuple[NoiseKeys, ...] = ("verl-fork", "verl-fork-patched")

NOISE_PREFIX = "trainer.noise_injection"
# Keys ppo_trainer.yaml declares: plain overrides (a typo then fails under Hydra's struct mode).
DECLARED_KEYS = ("enabled", "sigma_start", "sigma_end", "num_stages", "target_modules", "exclude_patterns")
LAYER_SIGMA_KEY = "layer_sigma_config"
# The fork's module names for a decoder layer (vLLM's Qwen2/Llama: model.layers.N.<module>);
# the trailing dot keeps layers.1. from matching layers.11.
LAYER_PATTERN = "layers.{}."
ALL_LAYERS_PATTERN = "layers."
# Never noised, and a non-empty list keeps the noise code off its MoE/dense auto defaults.
EXCLUDE_PATTERNS = ("lm_head", "embed_tokens")

# The schedule keys as a param_map (for a user's own trainer that reads the fork's names).
FORK_PARAM_MAP: dict[str, str] = {
    "sigma_start": f"{NOISE_PREFIX}.sigma_start",
    "sigma_end": f"{NOISE_PREFIX}.sigma_end",
    "num_stages": f"{NOISE_PREFIX}.num_stages",
}

_PLAIN_STR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_HYDRA_KEYWORDS = {"true", "false", "null", "nan", "inf"}


class UnreachableNoise(ValueError):
    """The plan asks for noise this fork cannot apply (a failed trial, not a bad spec)."""


# --------------------------------------------------------------------------- the plan in the fork's keys


def noised_layers(plan: NoisePlan) -> list[int] | None:
    """Decoder layers the plan noises (multiplier > 0); None = every layer (no profile)."""
    return plan.target_layers


def target_patterns(plan: NoisePlan) -> list[str]:
    """The fork's ``target_modules`` for the plan's zones: ``layers.N.`` per noised layer."""
    layers = noised_layers(plan)
    if layers is None:
        return [ALL_LAYERS_PATTERN]
    return [LAYER_PATTERN.format(i) for i in layers]


def layer_types(plan: NoisePlan) -> list[str]:
    """The fork's ``layer_types`` for the plan's site (``rmsnorm`` or ``linear``)."""
    return [plan.site]


def noise_off(plan: NoisePlan) -> bool:
    """True when the plan injects nothing (sigma 0, or no layer noised)."""
    return plan.sigma_start == 0 or noised_layers(plan) == []


def noise_block(plan: NoisePlan, *, layer_sigma: bool = True) -> dict[str, Any]:
    """The fork's ``trainer.noise_injection`` mapping for the plan (what an export writes).

    ``layer_sigma=False`` leaves out ``layer_sigma_config`` (the fork as it is drops it anyway).
    It is written only for non-uniform multipliers: uniform noise on the target layers is what
    the fork does without it.
    """
    if noise_off(plan):
        return {"enabled": False}
    block: dict[str, Any] = {
        "enabled": True,
        "sigma_start": plan.sigma_start,
        "sigma_end": plan.sigma_end,
        "num_stages": plan.num_stages,
        "target_modules": target_patterns(plan),
        "exclude_patterns": list(EXCLUDE_PATTERNS),
        "layer_types": layer_types(plan),
    }
    if layer_sigma and not plan.uniform:
        block[LAYER_SIGMA_KEY] = {
            "enabled": True,
            "default_multiplier": 0.0,  # layers not listed (none: every layer is) get no noise
            "layer_multipliers": plan.multipliers_dict(),
        }
    return block


def check_reachable(plan: NoisePlan, noise_keys: NoiseKeys) -> None:
    """Raise UnreachableNoise when the fork as it is cannot apply the plan (non-uniform multipliers)."""
    if noise_keys == "verl-fork" and not noise_off(plan) and not plan.uniform:
        raise UnreachableNoise(
            "per-layer multipliers requested but the fork as it is cannot apply them: its trainer never "
            f"forwards {NOISE_PREFIX}.{LAYER_SIGMA_KEY} to the rollout (docs/verl-fork.md); patch it and set "
            "noise_keys: verl-fork-patched, or search alpha = 0 only"
        )


def override_key(key: str) -> str:
    """``trainer.noise_injection.<key>``, force-added (``++``) unless ppo_trainer.yaml declares it."""
    top = key.split(".", 1)[0]
    return f"{NOISE_PREFIX}.{key}" if top in DECLARED_KEYS else f"++{NOISE_PREFIX}.{key}"


def flatten_block(block: Mapping[str, Any]) -> dict[str, Any]:
    """{override key: value} of a noise block; ``layer_sigma_config`` one key per entry, as the
    fork's own E13l script writes it (``++trainer.noise_injection.layer_sigma_config.enabled=True``...)."""
    out: dict[str, Any] = {}
    for key, value in block.items():
        if key == LAYER_SIGMA_KEY and isinstance(value, Mapping):
            for sub, item in value.items():
                out[override_key(f"{key}.{sub}")] = item
        else:
            out[override_key(key)] = value
    return out


def fork_overrides(plan: NoisePlan, noise_keys: NoiseKeys = "verl-fork-patched") -> list[str]:
    """The Hydra overrides that hand the plan to the fork (raises UnreachableNoise, see check_reachable)."""
    check_reachable(plan, noise_keys)
    return [f"{key}={hydra_value(value)}" for key, value in flatten_block(noise_block(plan)).items()]


def fork_keys(noise_keys: NoiseKeys | None) -> list[str]:
    """Every override key the vocabulary may write (to catch a study that sets one twice)."""
    if noise_keys is None:
        return []
    keys = [override_key(k) for k in (*DECLARED_KEYS, "layer_types")]
    return keys + [override_key(f"{LAYER_SIGMA_KEY}.{k}") for k in ("enabled", "default_multiplier", "layer_multipliers")]


# --------------------------------------------------------------------------- what the fork computes from them


def fork_sigma_schedule(plan: NoisePlan) -> list[float]:
    """The fork's ``sigma_trend``: verl/utils/noise_injection.py ``get_sigma_schedule`` (num_stages - 1 values)."""
    n = plan.num_stages
    if plan.sigma_start == 0:
        return [0.0] * (n - 1)
    ratio = plan.sigma_end / plan.sigma_start
    return [plan.sigma_start * ratio ** (i / (n - 2)) for i in range(n - 1)]


def fork_sigma_at(plan: NoisePlan, step: int, total_steps: int) -> tuple[int, float]:
    """(sigma_id, sigma) at ``step`` of the fork's ``total_steps``, as its ``get_sigma_by_step`` computes them.

    Float interval length ``total / num_stages`` and ``int(step // length)``, exactly as the fork
    does: at an interval edge this can differ from QeRL's integer formula (`NoisePlan.sigma_at`).
    """
    trend = fork_sigma_schedule(plan)
    step = min(step, total_steps)
    interval = int(step // (total_steps / (len(trend) + 1)))
    if interval == 0:
        return 0, 0.0
    sigma_id = min(interval - 1, len(trend) - 1)
    return sigma_id, trend[sigma_id]


PLAN_VALUE_NAMES = ("sigma_start", "sigma_end", "num_stages", "site", "multipliers", "zones", "alpha")


def plan_from_values(values: Mapping[str, Any]) -> NoisePlan | None:
    """The NoisePlan a command trial's values describe (`SearchSpace.to_command_values`); None without one."""
    if not all(k in values for k in ("sigma_start", "sigma_end", "num_stages")):
        return None
    data = {k: _plain(values[k]) for k in PLAN_VALUE_NAMES if k in values}
    mults = data.get("multipliers")
    data["multipliers"] = list(multipliers_dict(mults).values()) if mults else None  # [] = no profile
    return NoisePlan.from_dict(data)


# --------------------------------------------------------------------------- value encoding


def _quote(text: str) -> str:
    """Single-quote a string for Hydra: escape quotes and the backslashes right before them."""
    out = []
    run = 0
    for ch in text:
        if ch == "\\":
            run += 1
            continue
        if run:
            out.append("\\" * (run * 2 if ch == "'" else run))
            run = 0
        out.append("\\'" if ch == "'" else ch)
    if run:
        out.append("\\" * (run * 2))
    return "'" + "".join(out) + "'"


def _plain(value: Any) -> Any:
    """numpy scalars/arrays and tuples to plain Python values."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    if hasattr(value, "item") and not isinstance(value, (str, bytes, list, dict, tuple)):
        return value.item()
    return value


def hydra_value(value: Any) -> str:
    """Write a Python value so Hydra's override grammar parses it back to the same value and type.

    Strings that could read as something else (``true``, ``1e3``, paths, spaces) are quoted.
    Dict keys must be ints or plain names (Hydra's grammar takes nothing else).
    """
    value = _plain(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        if _PLAIN_STR_RE.match(value) and value.lower() not in _HYDRA_KEYWORDS:
            return value
        return _quote(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            key = _plain(key)
            if isinstance(key, bool) or not (
                isinstance(key, int) or (isinstance(key, str) and _PLAIN_STR_RE.match(key) and key.lower() not in _HYDRA_KEYWORDS)
            ):
                raise ValueError(f"dict key {key!r} cannot be written as a Hydra dict key (use ints or plain names)")
            items.append(f"{key}:{hydra_value(item)}")
        return "{" + ",".join(items) + "}"
    raise ValueError(f"cannot write {type(value).__name__} value {value!r} as a Hydra override")


def multipliers_dict(multipliers: Any) -> dict[int, float]:
    """The fork's ``layer_multipliers`` dict ({layer: multiplier}) from a per-layer list or a dict."""
    multipliers = _plain(multipliers)
    if isinstance(multipliers, Mapping):
        items = [(_plain(k), _plain(v)) for k, v in multipliers.items()]
    elif isinstance(multipliers, (list, tuple)):
        items = list(enumerate(multipliers))
    else:
        raise ValueError(f"multipliers: expected a list (one per layer) or a dict, got {type(multipliers).__name__}")
    out: dict[int, float] = {}
    for layer, mult in items:
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise ValueError(f"multipliers: layer index {layer!r} is not a non-negative int")
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not math.isfinite(mult) or mult < 0:
            raise ValueError(f"multipliers: layer {layer} has invalid multiplier {mult!r} (finite, >= 0)")
        out[layer] = float(mult)
    return dict(sorted(out.items()))
