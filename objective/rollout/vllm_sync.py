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

Names (verified by reading vLLM's `vllm/model_executor/models/qwen2.py` at commit 013a279, not by
running it):
vLLM's Qwen2 fuses q/k/v into `self_attn.qkv_proj` and gate/up into `mlp.gate_up_proj`, but its
`load_weights` takes the checkpoint's HF names (`...q_proj.weight`) and stacks them itself through
its `stacked_params_mapping` (qkv_proj <- q/k/v with shard ids "q"/"k"/"v", gate_up_proj <-
gate/up with shard ids 0/1, matching by substring); Qwen2ForCausalLM.load_weights skips `lm_head.`
when the embeddings are tied. So the dict
keeps HF names and `vllm_module_name` is only needed for modules we hook (activation quant).
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
def vllm_state_dict(model: nn.Module, injector: Any = None, *, changing_only: bool = False) -> dict[str, torch.Tensor]:
    """Plain HF state dict of the policy as it is now (LoRA merged, quantized base, current norms).

    Pass the step's NoiseInjector (optional) so a site the engine cannot represent is refused
    instead of silently dropped. changing_only=True keeps only what can differ between steps (the
    LoRA-merged projections and the RMSNorm weights): peft freezes everything else and the base is
    quantized once, so after one full push the engine needs just these.
    """
    if injector is not None and getattr(injector, "site", "rmsnorm") != "rmsnorm" and getattr(injector, "active", False):
        raise ValueError("vllm weight sync: noise site 'linear' cannot be expressed as weights; use noise.site=rmsnorm")
    base = _base_model(model)
    lora = _lora_layers(base)
    out: dict[str, torch.Tensor] = {}
    skip_prefixes = tuple(f"{name}." for name in lora)
    norms = {n for n, m in base.named_modules() if type(m).__name__.endswith("RMSNorm")}
    for name, tensor in base.state_dict(keep_vars=False).items():
        if name.startswith(skip_prefixes):
            continue
        if changing_only and name.rpartition(".")[0] not in norms:
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


# HF projection -> the vLLM module that computes it. The fused module's input is the same tensor
# the separate projections receive, so one activation hook on it equals a hook on each member.
VLLM_FUSED: dict[str, str] = {
    "q_proj": "qkv_proj",
    "k_proj": "qkv_proj",
    "v_proj": "qkv_proj",
    "gate_proj": "gate_up_proj",
    "up_proj": "gate_up_proj",
}
_PEFT_PREFIXES = ("base_model.model.",)


def hf_module_name(name: str) -> str:
    """A (possibly peft-wrapped) module name as the plain HF model names it."""
    for prefix in _PEFT_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
    while name.endswith(".base_layer"):
        name = name[: -len(".base_layer")]
    return name


def vllm_module_name(name: str) -> str:
    """The vLLM module that runs the HF module `name` (q/k/v -> qkv_proj, gate/up -> gate_up_proj)."""
    name = hf_module_name(name)
    head, _, leaf = name.rpartition(".")
    fused = VLLM_FUSED.get(leaf)
    if fused is None:
        return name
    return f"{head}.{fused}" if head else fused


def activation_hook_targets(quantized: list[str], excluded: list[str] = ()) -> list[str]:  # type: ignore[assignment]
    """vLLM module names that need an activation-quant hook, given quant.model's module names.

    A fused vLLM module is one matmul, so its members are quantized together or not at all: a
    scheme that quantizes q_proj's input but excludes k_proj's cannot be served and is refused.
    """
    targets = sorted({vllm_module_name(n) for n in quantized})
    mixed = sorted(set(targets) & {vllm_module_name(n) for n in excluded})
    if mixed:
        raise ValueError(
            f"quant.exclude: vLLM fuses q/k/v and gate/up; exclude all members of {mixed[0]} or none"
        )
    return targets


def apply_model(llm: Any, fn: Any) -> list[Any]:
    """Run fn(model) on the engine's in-process model(s); newest API first.

    vLLM V1 (and late V0) have `LLM.apply_model(fn)` (a collective_rpc to each worker); older V0
    exposes the model at llm_engine.model_executor.driver_worker[.worker].model_runner.model.
    """
    if callable(getattr(llm, "apply_model", None)):
        return list(llm.apply_model(fn))
    engine = getattr(llm, "llm_engine", None)
    for path in ("model_executor.driver_worker.model_runner", "model_executor.driver_worker.worker.model_runner"):
        obj: Any = engine
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return [fn(obj.model)]
    raise RuntimeError("cannot reach the vLLM model (no LLM.apply_model, no V0 driver worker): unsupported vLLM version")


def load_into_vllm(llm: Any, state_dict: dict[str, torch.Tensor]) -> None:
    """Push HF-named weights into the engine through the model's own `load_weights` (it stacks q/k/v)."""
    items = list(state_dict.items())

    def _load(model: Any) -> None:
        model.load_weights(weights=items)

    apply_model(llm, _load)
