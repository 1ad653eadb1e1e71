"""Fake-quantize the linear layers of a model (W4A4 / W4A16), plain transformers or peft LoRA.

What gets quantized: every ``nn.Linear`` whose qualified name matches ``scheme.include`` (empty =
all) and none of ``scheme.exclude``. Names are matched with ``re.search``; for a peft wrapper the
name matched is the wrapper's (``...q_proj``, the name without ``.base_layer``), so a pattern such
as ``q_proj$`` means the same with and without LoRA.

peft LoRA (any ``BaseTunerLayer``, e.g. ``peft.tuners.lora.Linear``): the wrapper is never
quantized, only its ``base_layer``; the adapters (``lora_A``/``lora_B``/...) are always kept in
full precision, whatever the patterns say. The activation pre-hook sits on the ``base_layer``, so
only the frozen matmul sees a 4-bit input while the adapter path gets the full-precision input
(QLoRA-style; the adapters would run in high precision on real W4A4 hardware too). This gives
exactly one activation hook per quantized projection (the user's fork hooked both the wrapper and
its base_layer and counted 364 hooks for 182 projections).

Weights:
- frozen (``requires_grad=False`` when ``quantize_model`` runs, e.g. a LoRA base model): replaced
  once by their fake-quantized values (``param.data`` swap; the original tensor is kept for
  ``remove()``). Forward passes cost nothing extra.
- trainable (full fine-tuning): an instance-level ``forward`` on the ``nn.Linear`` computes
  ``F.linear(x, fake_quantize(W, ste=scheme.ste), b)`` at every call, so the gradient reaches W
  through the straight-through estimator and the optimizer updates the full-precision W.

``refresh_weights()`` after the frozen weights were changed in place (e.g. ``merge_adapter()``
added ``B @ A`` to the quantized weight): the change since quantization is carried over to the
stashed original (``original += current - fake_quantize(original)`` where they differ), then the
weight is re-quantized from that. So a merge is quantized once, and ``remove()`` restores the
merged full-precision weight.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quant.format_names import check_format
from quant.formats import fake_quantize

DEFAULT_EXCLUDE: tuple[str, ...] = ("lm_head", "embed_tokens", "lora_A", "lora_B")
_MARK = "_noisesweep_quant_handle"


@dataclass(frozen=True)
class QuantScheme:
    """Which format, which operands, and which layers to fake-quantize."""

    fmt: str = "mxfp4"
    weights: bool = True
    activations: bool = True
    ste: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE

    def __post_init__(self) -> None:
        check_format(self.fmt)
        if not self.weights and not self.activations:
            raise ValueError("quant scheme quantizes nothing: weights and activations are both off")
        for key in ("include", "exclude"):
            value = getattr(self, key)
            if isinstance(value, str):
                value = (value,)
            value = tuple(value)
            for pattern in value:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"quant scheme {key} pattern {pattern!r} is not a valid regex: {exc}") from None
            object.__setattr__(self, key, value)

    @classmethod
    def w4a4(cls, fmt: str = "mxfp4", **kw: Any) -> QuantScheme:
        """Weights and input activations (needs ste=True to train, the default)."""
        return cls(fmt=fmt, weights=True, activations=True, **kw)

    @classmethod
    def w4a16(cls, fmt: str = "mxfp4", **kw: Any) -> QuantScheme:
        """Weights only; activations stay in the model's precision."""
        return cls(fmt=fmt, weights=True, activations=False, **kw)

    @property
    def label(self) -> str:
        """E.g. 'MXFP4 W4A4 (STE)'."""
        kind = "W4A4" if self.activations and self.weights else ("W4A16" if self.weights else "W16A4")
        ste = " (STE)" if self.ste and self.activations else ""
        return f"{self.fmt.upper()} {kind}{ste}"


_LAYER_LIST_NAMES = ("layers", "h", "blocks")


def peft_tuner_classes() -> tuple[type, ...]:
    """peft's wrapper base class (e.g. for lora.Linear), or () when peft is not installed."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # peft is optional for plain models
        return ()
    return (BaseTunerLayer,)


def _configured_depth(model: nn.Module) -> int | None:
    """num_hidden_layers of the model's (text) config, also through a peft wrapper; None if absent."""
    cfg = getattr(model, "config", None)
    getter = getattr(cfg, "get_text_config", None)
    if callable(getter):
        try:
            cfg = getter()
        except Exception:  # noqa: BLE001 - an unusual config simply gives no hint
            pass
    depth = getattr(cfg, "num_hidden_layers", None)
    return depth if isinstance(depth, int) and not isinstance(depth, bool) else None


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder-layer list of a causal LM (``model.layers`` in HF), also under a peft wrapper.

    The one rule the SRDD scan and the noise injector share, so a profile's layer i is the
    injector's layer i. Candidates are non-empty ModuleLists named ``layers``/``h``/``blocks``;
    when the config states ``num_hidden_layers``, lists of that length win; then the shallowest
    (a vision tower's blocks usually sit deeper), ties by name. None found is a ValueError.
    """
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0 and name.rsplit(".", 1)[-1] in _LAYER_LIST_NAMES
    ]
    if not candidates:
        raise ValueError(
            f"cannot find the decoder layers of {type(model).__name__} "
            f"(no ModuleList named {'/'.join(_LAYER_LIST_NAMES)})"
        )
    depth = _configured_depth(model)
    matching = [c for c in candidates if len(c[1]) == depth]
    return min(matching or candidates, key=lambda c: (c[0].count("."), c[0]))[1]


def _strip_base(name: str) -> str:
    while name.endswith(".base_layer"):
        name = name[: -len(".base_layer")]
    return name


def _select(model: nn.Module, scheme: QuantScheme) -> tuple[list[tuple[str, nn.Linear]], list[str], int]:
    """(quantized (name, module), excluded names, number of adapter linears kept in full precision)."""
    tuners = peft_tuner_classes()
    adapter_ids: set[int] = set()
    wrapper_ids: set[int] = set()
    if tuners:
        for module in model.modules():
            if isinstance(module, tuners):
                wrapper_ids.add(id(module))
                for attr in getattr(module, "adapter_layer_names", ()):
                    sub = getattr(module, attr, None)
                    if isinstance(sub, nn.Module):
                        adapter_ids.update(id(m) for m in sub.modules())
    chosen: list[tuple[str, nn.Linear]] = []
    excluded: list[str] = []
    adapters = 0
    seen: set[int] = set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or id(module) in seen:
            continue
        seen.add(id(module))
        if id(module) in adapter_ids:
            adapters += 1
            continue
        if id(module) in wrapper_ids:  # a wrapper that is itself an nn.Linear: its base_layer is the target
            continue
        logical = _strip_base(name)
        if scheme.include and not any(re.search(p, logical) for p in scheme.include):
            excluded.append(logical)
        elif any(re.search(p, logical) for p in scheme.exclude):
            excluded.append(logical)
        else:
            chosen.append((name, module))
    return chosen, excluded, adapters


class QuantHandle:
    """What quantize_model did to a model, and how to undo it."""

    def __init__(self, model: nn.Module, scheme: QuantScheme) -> None:
        self.model = model
        self.scheme = scheme
        self.module_names: list[str] = []
        self.excluded_names: list[str] = []
        self.adapter_count = 0
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._frozen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(param) -> (param, original)
        self._forward_patched: list[nn.Linear] = []
        self._removed = False

    def __len__(self) -> int:
        return len(self.module_names)

    def summary(self) -> str:
        """One line a user can check at a glance ('182 linear layers quantized')."""
        parts = [f"{self.scheme.label}: {len(self)} linear layers quantized"]
        if self.scheme.weights:
            if self._frozen and self._forward_patched:
                parts.append(f"{len(self._frozen)} weights cached, {len(self._forward_patched)} quantized every forward")
            elif self._forward_patched:
                parts.append("weights quantized every forward (trainable)")
            else:
                parts.append("weights cached")
        else:
            parts.append("weights untouched")
        if self.adapter_count:
            parts.append(f"{self.adapter_count} adapter layers in full precision")
        shown = self.excluded_names[:6]
        more = len(self.excluded_names) - len(shown)
        excl = ", ".join(shown) + (f", ... (+{more} more)" if more > 0 else "")
        return ", ".join(parts) + f"; excluded: {excl or 'none'}"

    def __repr__(self) -> str:
        return f"QuantHandle({self.summary()})"

    def _check_live(self) -> None:
        if self._removed:
            raise RuntimeError("this QuantHandle was removed; quantize the model again")

    def _original_for(self, pid: int) -> torch.Tensor:
        """The stashed full-precision weight, moved to the parameter's current device and dtype.

        The model may have been moved after quantize_model (the trainer quantizes on the CPU and
        then calls model.to("cuda")): nn.Module.to swaps param.data but not our stash, so without
        this remove() would put CPU tensors back into a CUDA model.
        """
        param, original = self._frozen[pid]
        if original.device != param.device or original.dtype != param.dtype:
            original = original.to(device=param.device, dtype=param.dtype)
            self._frozen[pid] = (param, original)
        return original

    def refresh_weights(self) -> None:
        """Re-quantize frozen weights after an in-place change (e.g. a LoRA merge); see module doc."""
        self._check_live()
        with torch.no_grad():
            for pid, (param, _) in list(self._frozen.items()):
                original = self._original_for(pid)
                current = param.data
                before = fake_quantize(original, self.scheme.fmt)
                changed = current != before
                if bool(changed.any()):
                    moved = (original.float() + (current.float() - before.float())).to(original.dtype)
                    original = torch.where(changed, moved, original)
                    self._frozen[pid] = (param, original)
                param.data = fake_quantize(original, self.scheme.fmt)

    def remove(self) -> None:
        """Restore the model exactly: original weight tensors back, hooks and patches gone."""
        if self._removed:
            return
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for module in self._forward_patched:
            module.__dict__.pop("forward", None)
        self._forward_patched.clear()
        for pid, (param, _) in list(self._frozen.items()):
            param.data = self._original_for(pid)
        self._frozen.clear()
        if getattr(self.model, _MARK, None) is self:
            delattr(self.model, _MARK)
        self._removed = True


_PreHookArgs = tuple[tuple[Any, ...], dict[str, Any]]


def _activation_pre_hook(fmt: str, ste: bool) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], _PreHookArgs]:
    """Forward pre-hook (with_kwargs) that fake-quantizes a Linear's input."""

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _PreHookArgs:
        if args:
            return (fake_quantize(args[0], fmt, ste=ste), *args[1:]), kwargs
        if "input" in kwargs:
            kwargs = dict(kwargs, input=fake_quantize(kwargs["input"], fmt, ste=ste))
        return args, kwargs

    return hook


def _quantized_forward(module: nn.Linear, fmt: str, ste: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """Instance forward for a trainable weight: quantized at every call, gradient through the STE."""

    def forward(input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, fake_quantize(module.weight, fmt, ste=ste), module.bias)

    return forward


def quantize_model(model: nn.Module, scheme: QuantScheme) -> QuantHandle:
    """Fake-quantize the selected linear layers of `model` in place; undo with handle.remove()."""
    if not isinstance(scheme, QuantScheme):
        raise ValueError(f"quantize_model needs a QuantScheme, got {type(scheme).__name__}")
    if isinstance(getattr(model, _MARK, None), QuantHandle):
        raise ValueError("model is already quantized; call remove() on its QuantHandle first")
    handle = QuantHandle(model, scheme)
    chosen, handle.excluded_names, handle.adapter_count = _select(model, scheme)
    try:
        for name, module in chosen:
            if scheme.weights:
                weight = module.weight
                if weight.requires_grad:
                    if type(module).forward is not nn.Linear.forward:
                        raise ValueError(
                            f"cannot quantize the trainable weight of {name} ({type(module).__name__} overrides forward)"
                        )
                    module.__dict__["forward"] = _quantized_forward(module, scheme.fmt, scheme.ste)  # remove() pops it
                    handle._forward_patched.append(module)
                elif id(weight) not in handle._frozen:  # tied weights are quantized once
                    with torch.no_grad():
                        handle._frozen[id(weight)] = (weight, weight.data)
                        weight.data = fake_quantize(weight.data, scheme.fmt)
            if scheme.activations:
                hook = module.register_forward_pre_hook(_activation_pre_hook(scheme.fmt, scheme.ste), with_kwargs=True)
                handle._hooks.append(hook)
            handle.module_names.append(name)
    except BaseException:
        handle.remove()
        raise
    setattr(model, _MARK, handle)
    return handle
