"""The weights a vLLM rollout engine receives each step (pure torch, testable on CPU).

vLLM serves a plain Hugging Face architecture, so the policy (a peft LoRA model whose frozen base
linears are fake-quantized in place by quant.quantize_model, with this step's noise on its
RMSNorm weights) is flattened into a plain state dict:

- every LoRA projection becomes one weight: the fake-quantized base weight plus the adapter's
  delta, W = q(W0) + (alpha/r) * B @ A. The adapters stay in full precision, as in training (the
  quant handle never quantizes lora_A/lora_B), so the base is quantized once and the merge does
  not re-round the sum;
- every other parameter is copied as it is, which includes the RMSNorm weights *with the noise*
  when this is called inside `injector.rollout()`;
- names are the base model's (`model.layers.0.self_attn.q_proj.weight`), no peft prefixes.

Equivalence: a plain model loaded with these weights gives the policy's logits exactly for W4A16
and for unquantized runs. For W4A4 the engine still has to quantize its linear inputs (an
activation hook / kernel); training feeds the adapter path the full-precision input (the
quant.model choice), the merged weight sees the 4-bit one, so the two agree exactly only while
B @ A == 0 (step 0) and approximately after: that gap is the price of one merged matmul.
Noise on linear outputs (site "linear") is not expressible as weights of a stock engine and is
refused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _lora_layers(model: nn.Module) -> dict[str, Any]:
    """Map a LoRA wrapper's module name -> module (peft's BaseTunerLayer with a base_layer)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a core dependency
        return {}
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, LoraLayer)}


def _base_model(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


@torch.no_grad()
def vllm_state_dict(model: nn.Module, injector: Any = None) -> dict[str, torch.Tensor]:
    """Plain HF state dict of the policy as it is now (LoRA merged, quantized base, current norms).

    Pass the step's NoiseInjector (optional) so a site the engine cannot represent is refused
    instead of silently dropped.
    """
    if injector is not None and getattr(injector, "site", "rmsnorm") != "rmsnorm" and getattr(injector, "active", False):
        raise ValueError("vllm weight sync: noise site 'linear' cannot be expressed as weights; use noise.site=rmsnorm")
    base = _base_model(model)
    lora = _lora_layers(base)
    out: dict[str, torch.Tensor] = {}
    skip_prefixes = tuple(f"{name}." for name in lora)
    for name, tensor in base.state_dict(keep_vars=False).items():
        if name.startswith(skip_prefixes):
            continue
        out[name] = tensor.detach().clone()
    for name, layer in lora.items():
        weight = layer.get_base_layer().weight.detach().clone()
        for adapter in layer.active_adapters:
            if adapter in getattr(layer, "lora_A", {}):
                weight += layer.get_delta_weight(adapter).to(weight.dtype)
        out[f"{name}.weight"] = weight
        bias = getattr(layer.get_base_layer(), "bias", None)
        if bias is not None:
            out[f"{name}.bias"] = bias.detach().clone()
    return out


def load_into_vllm(llm: Any, state_dict: dict[str, torch.Tensor]) -> None:  # pragma: no cover - GPU only
    """Push the weights into a running vLLM engine (in-process executor) via the model's load_weights."""
    items = list(state_dict.items())

    def _load(model: Any) -> None:
        model.load_weights(weights=items)

    engine = llm.llm_engine
    runner = None
    for path in (
        "model_executor.driver_worker.model_runner",
        "model_executor.driver_worker.worker.model_runner",
    ):
        obj: Any = engine
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        runner = obj
        break
    if runner is not None:
        _load(runner.model)
        return
    if hasattr(llm, "apply_model"):
        llm.apply_model(_load)
        return
    raise RuntimeError("cannot reach the vLLM model to load weights (unsupported vLLM version)")
