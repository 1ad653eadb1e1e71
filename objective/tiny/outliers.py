"""Massive activations for the tiny model: a few residual channels that carry huge values in the inner layers.

Why: a real LLM's worst SRDD layers owe their error to activation outliers. Sun et al. (2024,
"Massive Activations in Large Language Models") find that a few fixed hidden channels hold values
thousands of times the median from an early layer on, stay nearly constant across tokens (they act
as fixed bias terms and attention sinks) and are removed again by the last layers; Qwen2.5-1.5B's
profile peaks in its middle layers (10-19 of 28) accordingly. A 1.6M-parameter model trained for
minutes on arithmetic never grows them, and its profile came out flat (max/min 1.16). So the tiny
model is built with them, the way such a model would carry them:

- the value bias of Qwen2 attention is the route: `v_proj.bias[d] = 1` with `v_proj.weight[d] = 0`
  makes value dimension d equal to 1 for every token, so the attention output there is exactly 1
  (softmax weights sum to 1), and `o_proj.weight[c, d]` writes a constant into residual channel c;
- `WRITES` says which layer writes (+) or removes (-) which share of the massive value: two writers
  (layers 1 and 2) and two erasers (layers 5 and 6), so the residual stream has half of it after
  layer 1, all of it after layers 2-4, half after layer 5 and none after layers 6-7: low, medium,
  high, medium, low, like the real profile;
- `CHANNELS` puts one channel in each MXFP4 block of 32 (the format the study tunes); their values
  are spread over one binade (`CHANNEL_GAINS`) so no single rounding point of E2M1 decides the error;
- the massive value is `RATIO` times the residual stream's rms at the first writer's input, measured
  on a fixed calibration batch (`measure_residual_rms`) and re-sized during pretraining, because the
  stream's own scale grows by orders of magnitude while it trains;
- writers and erasers hold the same magnitude, so every 4-bit weight format rounds them alike and the
  removal stays exact in the quantized model too.

`impose` is called after every optimizer step of the pretraining (so neither gradients nor weight
decay move the construction); the rest of the model trains around it, as a real one would.

Pretraining holds the constant at 1; the saved checkpoint holds it at STORED_BIAS = 16 with the
o_proj column divided by 16 (`impose(..., bias=STORED_BIAS)`), which computes the same function.
Why: W4A4 quantizes the o_proj input, constant included. At 1 it sits among the attention outputs
and NVFP4 (per-tensor scale, E4M3 block scales) rounds it differently per token and per layer, so
the erasers no longer cancel the writers (NVFP4 W4A4 fell to 35 % against 41 % for MXFP4); at 16,
a power of two above every attention output, it is the tensor's largest value and both MXFP4 and
NVFP4 keep it exact (NVFP4 W4A4 54 %) -- the way a real model's massive activation is a single
huge value its formats must represent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

CHANNELS = (13, 45, 77, 109)  # one per MXFP4 block of 32 in a 128-wide residual stream
CHANNEL_GAINS = tuple(2 ** (j / len(CHANNELS)) for j in range(len(CHANNELS)))  # 1, 1.19, 1.41, 1.68
WRITES: Mapping[int, float] = {1: 0.5, 2: 0.5, 5: -0.5, 6: -0.5}  # layer -> share of the value written
RATIO = 8.0  # massive value / residual rms at the first writer's input
VALUE_DIM = 31  # the value dimension (of kv head 0) reserved for the constant in each writing layer
STORED_BIAS = 16.0  # the constant in the saved checkpoint (1 while pretraining; see the docstring)


def levels(num_layers: int) -> list[float]:
    """Share of the massive value present in each decoder layer's output (0 = none, 1 = all)."""
    out, level = [], 0.0
    for li in range(num_layers):
        level += WRITES.get(li, 0.0)
        out.append(level)
    return out


def _attention_geometry(attn: Any) -> tuple[int, int]:
    """(head_dim, query heads per kv head) of a Qwen2 attention module."""
    cfg = attn.config
    head_dim = getattr(attn, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return int(head_dim), int(cfg.num_attention_heads // cfg.num_key_value_heads)


@torch.no_grad()
def impose(model: Any, value: float, *, bias: float = 1.0) -> None:
    """Write the construction into the weights for a massive value of `value` (channel 0's size).

    The value dimension is the constant `bias` and the o_proj column holds value / bias, so the
    residual stream receives the same value for any bias. Query heads 0..groups-1 read kv head 0
    (transformers' `repeat_kv`), so each of them sees the constant at VALUE_DIM; only the first
    one's o_proj column writes it, the others' are zero.
    """
    layers = model.model.layers
    gains = torch.tensor(CHANNEL_GAINS)
    for li, share in WRITES.items():
        attn = layers[li].self_attn
        head_dim, groups = _attention_geometry(attn)
        attn.v_proj.weight[VALUE_DIM].zero_()
        attn.v_proj.bias[VALUE_DIM] = bias
        cols = [h * head_dim + VALUE_DIM for h in range(groups)]
        w = attn.o_proj.weight
        w[:, cols] = 0.0
        w[list(CHANNELS), cols[0]] = (share * value * gains / bias).to(w.dtype)


@torch.no_grad()
def measure_residual_rms(model: Any, batch: Mapping[str, torch.Tensor]) -> float:
    """rms of the residual stream entering the first writing layer, over the batch's real tokens."""
    first = min(WRITES)
    seen: dict[str, torch.Tensor] = {}

    def hook(_m: Any, args: Any, kwargs: Any) -> None:
        seen["h"] = (args[0] if args else kwargs["hidden_states"]).detach()

    handle = model.model.layers[first].register_forward_pre_hook(hook, with_kwargs=True)
    was_training = model.training
    model.eval()
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    finally:
        handle.remove()
        model.train(was_training)
    h = seen["h"].reshape(-1, seen["h"].shape[-1])[batch["attention_mask"].reshape(-1).bool()]
    return float(h.float().pow(2).mean().sqrt())


def massive_value(residual_rms: float) -> float:
    """The massive value for channel 0 (the others get CHANNEL_GAINS times it)."""
    return RATIO * residual_rms


def describe() -> dict[str, Any]:
    """The construction's constants, for pretrain_meta.json."""
    return {
        "what": "massive activations written through a reserved value-bias dimension (see objective/tiny/outliers.py)",
        "channels": list(CHANNELS),
        "channel_gains": [round(g, 6) for g in CHANNEL_GAINS],
        "writes": {str(k): v for k, v in WRITES.items()},
        "ratio_to_residual_rms": RATIO,
        "value_dim": VALUE_DIM,
        "stored_bias": STORED_BIAS,
    }


__all__ = ["CHANNELS", "CHANNEL_GAINS", "RATIO", "STORED_BIAS", "VALUE_DIM", "WRITES", "describe", "impose", "levels", "massive_value",
           "measure_residual_rms"]
