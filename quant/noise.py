"""AQN/RIN noise: the injector that puts a NoisePlan's noise into a model.

The schedule (`sigma_at`) and the per-layer multipliers (`layer_multipliers`) live in
quant/noise_plan.py, torch-free, beside the NoisePlan that every consumer reads.

The injector adds Gaussian noise to a model for the rollout (and optionally the training) forward
passes of one optimizer step, and takes it away again bit-exactly:

- site ``"rmsnorm"`` (QeRL's AQN): additive N(0, (sigma*m_l)^2) on the weight of every RMSNorm
  inside decoder layer l (for Qwen2 ``input_layernorm`` and ``post_attention_layernorm``; any
  module in the layer whose class name ends in ``RMSNorm``). Scaling a norm weight is row-wise
  multiplicative noise on the inputs of the q/k/v and gate/up projections. RMSNorms outside every
  decoder layer (Qwen2's final ``model.norm``, the LM head's input) are noised too, with the LAST
  layer's multiplier: QeRL (trl_trainer/noise_scheduler.py, generate_gaussian_noise) and the
  team's fork (verl/utils/noise_injection.py, all RMSNorms of a dense model) noise every RMSNorm;
  the final norm sits on the last layer's output, so zones that leave the last layers clean leave
  it clean too, and with uniform multipliers it gets sigma exactly as in QeRL. (The fork gives it
  ``default_multiplier``, 1.0 unless set: an export that lists every layer can set
  default_multiplier to the last layer's multiplier to match.) Its draw comes after all layers'
  draws, so adding it changed no layer's noise; ``records`` reports it as ``final_norm``.
- site ``"linear"`` (hypothesis H5): the output of every projection of layer l (for peft LoRA the
  wrapper, so base and adapter output alike) becomes ``y * (1 + sigma*m_l*eps)`` with one
  ``eps ~ N(0, 1)`` per output feature, drawn once per step: the output-side analogue of the
  row-wise multiplicative noise above. Applied by a forward hook that is a no-op while inactive.

Noise is drawn by ``begin_step(step, sigma)`` from a ``torch.Generator`` seeded with
(seed, step), as standard normals for every layer (so runs that differ only in multipliers share
their random numbers) scaled by sigma*m_l. It is added to the clean weights each time the noise is
switched on, never to the previous step's noisy ones, so it cannot accumulate. ``records`` keeps,
per step, sigma, the multipliers, the std drawn per layer and the std that survived rounding to the
norm weights' dtype (``std_applied``: in bf16 a sigma of 5e-4 on weights near 1 mostly rounds
away, which is logged as a warning rather than left silent). Switching it off
restores the clean weights bit-exactly; an in-place change made while noisy (an optimizer step on
trainable norms) is carried over to the clean weights.

Usage per optimizer step::

    inj.begin_step(step, sigma_at(step, total, s0, s1, stages))
    with inj.rollout():   # noisy
        generate(...)
    with inj.training():  # clean unless apply_to == "both"
        loss.backward()
    optimizer.step()      # outside the contexts

``apply(sigma, step)`` / ``restore()`` / ``active`` are the same machinery without contexts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from quant.model import find_decoder_layers, peft_tuner_classes
from quant.noise_plan import SITES

log = logging.getLogger("quant.noise")

APPLY_TO = ("rollout", "both")


def _norms(layer: nn.Module) -> list[nn.Module]:
    return [m for m in layer.modules() if type(m).__name__.endswith("RMSNorm") and isinstance(getattr(m, "weight", None), torch.Tensor)]


def _projections(layer: nn.Module) -> list[nn.Module]:
    """The layer's linear projections as the model sees them: peft wrappers, not their insides."""
    tuners = peft_tuner_classes()
    found: list[nn.Module] = []
    inside: set[int] = set()
    for module in layer.modules():
        if id(module) in inside:
            continue
        if tuners and isinstance(module, tuners):
            found.append(module)
            inside.update(id(m) for m in module.modules())
        elif isinstance(module, nn.Linear):
            found.append(module)
    return found


def _weight(module: nn.Module) -> torch.Tensor:
    """A norm's weight as a Tensor (nn.Module's attribute type is Tensor | Module)."""
    w = module.weight
    assert isinstance(w, torch.Tensor)
    return w


def _out_features(module: nn.Module) -> int:
    out = getattr(module, "out_features", None)
    if isinstance(out, int):
        return out
    base = getattr(module, "base_layer", None)
    if base is not None:
        return _out_features(base)
    raise ValueError(f"cannot tell the output size of {type(module).__name__}")


def _device_of(module: nn.Module) -> torch.device:
    """Where the module's parameters live (CPU for a parameterless module)."""
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _generator(seed: int, step: int) -> torch.Generator:
    # A fixed odd-multiplier mix keeps (seed, step) pairs apart for any realistic run.
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step) * 7919 + 12345) % (2**63))


class NoiseInjector:
    """Per-step Gaussian noise on RMSNorm weights or linear outputs; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        *,
        site: str = "rmsnorm",
        multipliers: Sequence[float],
        seed: int = 0,
        apply_to: str = "rollout",
    ) -> None:
        if site not in SITES:
            raise ValueError(f"unknown noise site {site!r}; known sites: {', '.join(SITES)}")
        if apply_to not in APPLY_TO:
            raise ValueError(f"unknown noise apply_to {apply_to!r}; expected one of: {', '.join(APPLY_TO)}")
        layers = find_decoder_layers(model)
        mults = [float(m) for m in multipliers]
        if len(mults) != len(layers):
            raise ValueError(f"got {len(mults)} noise multipliers for {len(layers)} decoder layers")
        bad = [i for i, m in enumerate(mults) if not math.isfinite(m) or m < 0]
        if bad:
            raise ValueError(f"noise multipliers must be finite and >= 0; bad layers: {bad}")
        self.site, self.apply_to, self.seed = site, apply_to, int(seed)
        self.multipliers = mults
        self.records: list[dict[str, Any]] = []
        self.step: int | None = None
        self.sigma = 0.0
        self._active = False
        self._removed = False
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        # per layer: the targets (norm modules or projections)
        self._final: list[nn.Module] = []  # rmsnorm: norms outside every layer (model.norm), last layer's multiplier
        if site == "rmsnorm":
            self._targets = [_norms(layer) for layer in layers]
            if not any(self._targets):
                raise ValueError(f"no RMSNorm modules found in the decoder layers of {type(model).__name__}")
            inside = {id(m) for layer in layers for m in layer.modules()}
            self._final = [m for m in _norms(model) if id(m) not in inside]
        else:
            self._targets = [_projections(layer) for layer in layers]
            if not any(self._targets):
                raise ValueError(f"no linear layers found in the decoder layers of {type(model).__name__}")
            for layer_targets in self._targets:
                for module in layer_targets:
                    self._hooks.append(module.register_forward_hook(self._linear_hook))
        self._noise: dict[int, torch.Tensor] = {}  # id(module) -> noise (rmsnorm: additive; linear: s*eps)
        self._noise_cast: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}  # linear: per output device/dtype
        self._clean: dict[int, torch.Tensor] = {}  # rmsnorm: clean weight while active
        self._noisy: dict[int, torch.Tensor] = {}  # rmsnorm: the noisy weight written while active

    # --- drawing ---------------------------------------------------------------------------
    def begin_step(self, step: int, sigma: float) -> dict[str, Any]:
        """Draw this step's noise (from the clean state; switches the noise off first if on)."""
        self._check_live()
        if not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"noise sigma must be a finite number >= 0, got {sigma}")
        self.restore()
        gen = _generator(self.seed, step)
        self._noise.clear()
        self._noise_cast.clear()
        stds: list[float] = []
        applied: list[float] = []
        for layer_targets, m in zip(self._targets, self.multipliers):
            drawn_std, applied_std = self._draw(layer_targets, float(sigma) * m, gen)
            stds.append(drawn_std)
            applied.append(applied_std)
        final = None
        if self._final:  # after every layer's draw: the layers' noise is what it was without it
            drawn_std, applied_std = self._draw(self._final, float(sigma) * self.multipliers[-1], gen)
            final = {"multiplier": self.multipliers[-1], "std": drawn_std, "std_applied": applied_std}
        self.step, self.sigma = int(step), float(sigma)
        record: dict[str, Any] = {
            "step": int(step),
            "sigma": float(sigma),
            "site": self.site,
            "apply_to": self.apply_to,
            "multipliers": list(self.multipliers),
            "std": stds,
            "std_applied": applied,
        }
        if final is not None:
            record["final_norm"] = final
        self.records.append(record)
        noisy_layers = sum(1 for s in stds if s > 0)
        lost = [i for i, (d, a) in enumerate(zip(stds, applied)) if d > 0 and a < 0.5 * d]
        if lost:
            log.warning(
                "noise step=%d: in layers %s less than half the drawn noise survives rounding to the "
                "norm weights' dtype (sigma too small for it; use fp32 norms)", step, lost,
            )
        log.info(
            "noise step=%d sigma=%.6g site=%s apply_to=%s layers_with_noise=%d/%d multipliers=[%s] std=[%s]",
            step, sigma, self.site, self.apply_to, noisy_layers, len(stds),
            " ".join(f"{m:.3g}" for m in self.multipliers), " ".join(f"{s:.3g}" for s in stds),
        )
        return record

    def _draw(self, modules: list[nn.Module], scale: float, gen: torch.Generator) -> tuple[float, float]:
        """Draw noise of std `scale` for each module; (std drawn, std surviving the dtype), 0 if none."""
        drawn: list[torch.Tensor] = []
        landed: list[torch.Tensor] = []
        for module in modules:
            shape = _weight(module).shape if self.site == "rmsnorm" else (_out_features(module),)
            # drawn on the CPU generator (same numbers on any device), then kept on the module's
            # device so switching the noise on costs no host-to-device copy per forward
            eps = torch.randn(shape, generator=gen, dtype=torch.float32)
            if scale > 0:
                noise = eps * scale
                self._noise[id(module)] = noise.to(_device_of(module))
                drawn.append(noise.flatten())
                if self.site == "rmsnorm":  # what survives rounding to the weight's dtype
                    w = _weight(module).detach().float().cpu()
                    landed.append(((w + noise).to(_weight(module).dtype).float() - w).flatten())
                else:
                    landed.append(noise.flatten())
        drawn_std = float(torch.cat(drawn).std(unbiased=False)) if drawn else 0.0
        return drawn_std, float(torch.cat(landed).std(unbiased=False)) if landed else 0.0

    def _noised_modules(self) -> Iterator[nn.Module]:
        """Every module that can carry noise: the layers' targets, then the final norms."""
        for layer_targets in self._targets:
            yield from layer_targets
        yield from self._final

    # --- switching -------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """True while the noise is applied to the model."""
        return self._active

    def _activate(self) -> None:
        if self._active:
            return
        if self.step is None:
            raise RuntimeError("NoiseInjector: call begin_step(step, sigma) before switching the noise on")
        if self.site == "rmsnorm":
            with torch.no_grad():
                for module in self._noised_modules():
                    noise = self._noise.get(id(module))
                    if noise is None:
                        continue
                    w = _weight(module)
                    self._clean[id(module)] = w.data.clone()
                    noisy = (w.data.float() + noise.to(w.device)).to(w.dtype)
                    w.data.copy_(noisy)
                    self._noisy[id(module)] = noisy
        self._active = True

    def _deactivate(self) -> None:
        if not self._active:
            return
        if self.site == "rmsnorm":
            with torch.no_grad():
                for module in self._noised_modules():
                    clean = self._clean.pop(id(module), None)
                    if clean is None:
                        continue
                    noisy = self._noisy.pop(id(module))
                    w = _weight(module)
                    changed = torch.ne(w.data, noisy)
                    if bool(changed.any()):  # an update made while noisy is kept
                        moved = (clean.float() + (w.data.float() - noisy.float())).to(clean.dtype)
                        clean = torch.where(changed, moved, clean)
                    w.data.copy_(clean)
        self._active = False

    def apply(self, sigma: float, step: int) -> None:
        """Draw this step's noise from the clean state and switch it on (no context manager)."""
        self.begin_step(step, sigma)
        self._activate()

    def restore(self) -> None:
        """Switch the noise off: clean weights back bit-exactly, linear hooks idle."""
        self._deactivate()

    @contextmanager
    def rollout(self) -> Iterator[None]:
        """Noise on for the rollout (generation) forward passes."""
        self._check_live()
        was = self._active
        self._activate()
        try:
            yield
        finally:
            if not was:
                self._deactivate()

    @contextmanager
    def training(self) -> Iterator[None]:
        """Noise on only if apply_to == "both"; clean weights otherwise (QeRL's default)."""
        self._check_live()
        was = self._active
        if self.apply_to == "both":
            self._activate()
        else:
            self._deactivate()
        try:
            yield
        finally:
            if was:
                self._activate()
            else:
                self._deactivate()

    def remove(self) -> None:
        """Clean weights back and hooks gone; the injector cannot be used afterwards."""
        if self._removed:
            return
        self._deactivate()
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._removed = True

    def _check_live(self) -> None:
        if self._removed:
            raise RuntimeError("this NoiseInjector was removed")

    def _linear_hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if not self._active or not isinstance(output, torch.Tensor):
            return None
        key = (id(module), output.device, output.dtype)
        rel = self._noise_cast.get(key)
        if rel is None:  # cast once per step, device and dtype, not at every forward (generation calls many)
            noise = self._noise.get(id(module))
            if noise is None:
                return None
            rel = self._noise_cast[key] = noise.to(device=output.device, dtype=output.dtype)
        # y + y*rel, not y*(1+rel): 1 + 5e-4 rounds to 1 in bf16, y*rel keeps its relative precision
        return output + output * rel
