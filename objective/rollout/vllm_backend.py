"""The `vllm` rollout backend: a colocated vLLM engine fed the policy's weights every step.

Per step (trainer: `rollout.sync()` inside `injector.rollout()`, then `generate`):
1. objective.rollout.vllm_sync.vllm_state_dict flattens the policy: LoRA merged into the
   fake-quantized base, this step's noisy RMSNorm weights (the final norm included), HF names.
   The first push is the full dict; later ones only the tensors that can change (LoRA-merged
   projections, RMSNorm weights).
2. The dict goes into the engine through the model's own `load_weights` (V1 `LLM.apply_model`
   first, the V0 driver-worker path otherwise): it does the q/k/v and gate/up stacking.
3. The prefix cache is reset (`LLM.reset_prefix_cache()`, as TRL and QeRL do): its KV blocks
   were computed with the previous weights and noise.
4. `generate` sends token ids (our tokenizer's, so both backends see identical prompts) with one
   SamplingParams for the batch, no per-request seed (the engine's `seed` drives sampling), and
   returns the hf backend's `Rollout`.
Validation syncs again with the noise off (quantized, un-noised weights) and decodes greedily.
`close()` shuts the engine down, drops the last reference, then empties the CUDA cache
(objective/device_memory.py), so the next trial in a reused worker gets the memory back.
Scope: one GPU, engine colocated with training (no tensor parallelism); the trial deadline is
checked before each `generate` (a vLLM batch cannot be interrupted); noise site "linear" is
refused before any model loads (objective.rollout.checks; studies call check_noise_sites): the
engine receives weights, not hooks on outputs.

Tested pair (package metadata, not run): vllm 0.32.0 with torch 2.13.0 and transformers
>=5.16.1,<5.20 (pyproject's gpu extra). vLLM API used, read in vllm/entrypoints/llm.py (`LLM`:
seed, gpu_memory_utilization, enforce_eager, max_model_len, logprobs_mode; generate,
apply_model, reset_prefix_cache) and vllm/v1/engine/llm_engine.py (LLMEngine.shutdown).

W4A4: the weights arrive already on the format grid; the activation fake-quant runs as Python
forward pre-hooks on vLLM's linear modules, registered once through apply_model. Names map HF ->
vLLM as q/k/v_proj -> qkv_proj, gate/up_proj -> gate_up_proj, o_proj and down_proj unchanged
(vllm_sync.vllm_module_name); the fused module's input is the tensor each member would receive,
so one hook there quantizes exactly as the separate hooks do. This needs `enforce_eager=True` (no
CUDA graphs / torch.compile bypassing Python hooks) and an in-process engine
(VLLM_ENABLE_V1_MULTIPROCESSING=0), so hooks and weight copies act on the model that serves.

Verified on CPU (tests/test_vllm_engine.py, tests/test_vllm_sync.py, tests/test_trainer.py): the
state dict's names (exactly the plain HF model's) and values; the HF -> vLLM name mapping and the
refusal of half-excluded fused groups; the engine arguments (`llm_kwargs`); and the whole trainer
path through a test double of the engine that implements the surface used here (apply_model,
generate) on a plain HF Qwen2 rebuilt with real fused qkv_proj/gate_up_proj modules and vLLM's
stacking in its load_weights: a push every step (full, then changing tensors only), pushed norms
equal to the injector's noisy ones and different between steps, clean norms at validation, hooks
registered once, W4A16 logits identical to the policy's after a LoRA update, W4A4 identical at
B @ A == 0 and drifting after (the documented merge limitation), greedy tokens identical to the
hf backend's, the engine's generations reaching the loss, the prefix cache reset after every
push (the double caches prefills and counts stale hits), no per-request seeds, the engine
released on close so that two trials in one process do not grow memory (a stand-in device whose
cache only frees unreferenced blocks), an out-of-memory trial failing as such and leaving the
memory to the next, and the missing-vLLM / linear-noise errors raised before any model loads.
Read, not run (vLLM sources via code search): V1 `LLM.apply_model(fn)` -> `llm_engine.apply_model`
-> `collective_rpc("apply_model", args=(fn,))`, i.e. fn(worker's model) per worker, a list back;
in-process that is a direct call, with multiprocessing fn is cloudpickled (needs
VLLM_ALLOW_INSECURE_SERIALIZATION=1 and copies every pushed tensor between processes), hence the
env var below. Qwen2's `load_weights` stacks HF names (see objective/rollout/vllm_sync.py).
NOT verified (no GPU, vLLM not installed here): the real `vllm.LLM` constructor arguments,
whether this vLLM version's `apply_model` runs in-process with the env var set, the real
`load_weights`/output structures, vLLM's log-prob semantics (V1 returns the raw model's
log-probs before temperature; `llm_kwargs` asks for processed ones on vLLM >= 0.10.2, older V1
cannot: there, with temperature != 1 keep algo.old_logprobs == "policy" (the default, which uses
the engine's log-probs only for metrics)), the real engine's memory release between trials, and
speed. Sampling uses
explicit SamplingParams (pure temperature, no top-p/top-k, like the hf backend), so the model's
generation_config defaults should not apply; unverified too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from objective.device_memory import free_device_memory
from objective.rollout.base import Rollout, TrialTimeout, encode_prompts, pad_token_id
from objective.rollout.checks import check_noise_site, require_vllm
from objective.rollout.vllm_sync import activation_hook_targets, apply_model, load_into_vllm, vllm_state_dict

if TYPE_CHECKING:
    from objective.config import TrialConfig
    from quant.model import QuantHandle
    from quant.noise import NoiseInjector

DEFAULT_GPU_MEMORY_UTILIZATION = 0.4  # objective.config.RolloutCfg's default (the rest: training)
MAX_MODEL_LEN_CAP = 8192


def model_dir(cfg: TrialConfig) -> str:
    """The local directory vLLM loads (the tiny checkpoint's for `tiny`)."""
    if cfg.model.path == "tiny":
        from objective.tiny import TINY_CHECKPOINT_DIR

        return str(TINY_CHECKPOINT_DIR)
    return str(Path(cfg.model.path).expanduser())


def check_config(cfg: TrialConfig) -> None:
    """Refuse, before any model loads, what the engine cannot serve (it only receives weights)."""
    check_noise_site(cfg)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def llm_kwargs(cfg: TrialConfig, max_model_len: int, vllm_version: str) -> dict[str, Any]:
    """Arguments for vllm.LLM (a pure function, so the choices are tested without vLLM).

    enforce_eager: CUDA graphs / torch.compile would bypass the Python activation hooks.
    logprobs_mode="processed_logprobs" (vLLM >= 0.10.2): log-probs after temperature, as the hf
    backend and the policy-gradient ratio use them; V1 before 0.10.2 can only return raw ones.
    """
    kw: dict[str, Any] = {
        "model": model_dir(cfg),
        "dtype": cfg.model.dtype,
        "enforce_eager": True,
        "gpu_memory_utilization": cfg.rollout.gpu_memory_utilization,
        "seed": cfg.seed,  # the engine's sampling generator; requests carry no seed of their own
        "max_model_len": max_model_len,
    }
    if _version(vllm_version) >= (0, 10, 2):
        kw["logprobs_mode"] = "processed_logprobs"
    return kw


def build_engine(cfg: TrialConfig, max_model_len: int) -> Any:  # pragma: no cover - needs vLLM and a GPU
    """The real engine: in-process (hooks and weight copies reach the serving model), eager."""
    vllm = require_vllm()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    return vllm.LLM(**llm_kwargs(cfg, max_model_len, str(getattr(vllm, "__version__", "0"))))


def reset_prefix_cache(engine: Any) -> None:
    """Forget every cached KV block: they were computed with the previous weights and noise.

    vLLM's prefix caching (on by default) would otherwise serve this step's prompts, GRPO's
    repeated prompts and the validation set above all, from KV of an older policy. TRL's GRPO
    trainer and QeRL call `LLM.reset_prefix_cache()` after each weight load for this reason.
    vLLM 0.32 (vllm/entrypoints/llm.py) returns False when it could not (requests still
    running); that must not pass silently.
    """
    if engine.reset_prefix_cache() is False:
        raise RuntimeError("vLLM did not reset its prefix cache after a weight sync (requests still running)")


def shutdown_engine(engine: Any) -> None:
    """Stop the engine's core so it drops its executor (weights, KV cache) now, not at some gc.

    vLLM V1: LLM.llm_engine is vllm/v1/engine/llm_engine.py's LLMEngine, whose shutdown() calls
    engine_core.shutdown() (in-process: EngineCore.shutdown, which shuts the model executor down).
    Then the tensor-parallel state of vllm.distributed.parallel_state, which outlives the engine.
    """
    core = getattr(engine, "llm_engine", None)
    stop = getattr(core, "shutdown", None) or getattr(getattr(core, "engine_core", None), "shutdown", None)
    if callable(stop):
        stop()
    try:
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel
    except ImportError:  # a test double, or a layout without them
        return
    destroy_model_parallel()
    destroy_distributed_environment()


def _activation_hook(fmt: str):
    from quant.formats import fake_quantize

    def hook(module: torch.nn.Module, args: tuple) -> tuple | None:
        if not args:
            return None
        return (fake_quantize(args[0], fmt), *args[1:])

    return hook


def register_activation_hooks(model: torch.nn.Module, targets: list[str], fmt: str) -> int:
    """Hook each target module of the engine's model; every target must exist (else a silent A16)."""
    modules = dict(model.named_modules())
    missing = [t for t in targets if t not in modules]
    if missing:
        raise RuntimeError(f"vLLM model has no module {missing[0]} for activation quantization")
    for t in targets:
        modules[t].register_forward_pre_hook(_activation_hook(fmt))
    return len(targets)


class VllmRollout:
    """Rollout backend on a vLLM engine (real or a test double with the same surface)."""

    def __init__(
        self,
        cfg: TrialConfig,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        quant: QuantHandle | None = None,
        injector: NoiseInjector | None = None,
        deadline: float | None = None,
        engine: Any = None,
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.injector = injector
        self.deadline = deadline
        self.vllm = require_vllm()
        pos = int(getattr(getattr(model, "config", None), "max_position_embeddings", MAX_MODEL_LEN_CAP))
        self.engine = engine if engine is not None else build_engine(cfg, min(pos, MAX_MODEL_LEN_CAP))
        self.pushes = 0
        self.hooked = 0
        if quant is not None and quant.scheme.activations:
            targets = activation_hook_targets(quant.module_names, quant.excluded_names)
            fmt = quant.scheme.fmt
            self.hooked = sum(apply_model(self.engine, lambda m: register_activation_hooks(m, targets, fmt)))

    def close(self) -> None:
        """Shut the engine down, drop the last reference to it, then hand its memory back.

        The order matters (objective/device_memory.py): emptying the CUDA cache while this frame
        still held the engine freed nothing, so the next trial in a reused worker started short.
        """
        engine, self.engine = self.engine, None
        if engine is None:
            return
        try:
            shutdown_engine(engine)
        finally:
            del engine
            free_device_memory()

    def sync(self) -> None:
        """Push the policy as it is now (call inside the noise context that the generation needs),
        then drop the prefix cache: its KV came from the previous weights and noise."""
        sd = vllm_state_dict(self.model, self.injector, changing_only=self.pushes > 0)
        load_into_vllm(self.engine, sd)
        del sd
        reset_prefix_cache(self.engine)
        self.pushes += 1

    def generate(self, prompts: list[str], temperature: float) -> Rollout:
        if self.deadline is not None:
            import time

            if time.monotonic() > self.deadline:
                raise TrialTimeout("timed out before generation")
        ids, mask = encode_prompts(self.tokenizer, prompts)
        eos = self.tokenizer.eos_token_id
        pad = pad_token_id(self.tokenizer)
        # One SamplingParams for the batch and no per-request seed: the engine samples from its
        # own generator (LLM(seed=cfg.seed)), so the 8 copies of a prompt still draw different
        # responses, and vLLM stays on its batched sampling path (a per-request seed makes its
        # sampler draw request by request with a generator each).
        params = self.vllm.SamplingParams(
            n=1,
            temperature=temperature,
            max_tokens=self.cfg.response_len,
            logprobs=0 if temperature > 0 else None,
            stop_token_ids=[eos] if eos is not None else None,
        )
        reqs = [{"prompt_token_ids": [int(t) for t, m in zip(row, mrow) if m]} for row, mrow in zip(ids, mask)]
        outputs = self.engine.generate(reqs, params, use_tqdm=False)
        return _to_rollout(outputs, ids, mask, self.tokenizer, eos, pad)


def _to_rollout(outputs: list[Any], ids: torch.Tensor, mask: torch.Tensor, tokenizer: Any, eos: int, pad: int) -> Rollout:
    """vLLM RequestOutputs -> Rollout, same layout as hf_generate (EOS kept in the mask, pad after)."""
    rows: list[list[int]] = []
    lps: list[list[float]] = []
    for out in outputs:
        comp = out.outputs[0]
        toks = [int(t) for t in comp.token_ids]
        if eos in toks:
            toks = toks[: toks.index(eos) + 1]
        rows.append(toks)
        if comp.logprobs:
            lps.append([float(d[t].logprob) for d, t in zip(comp.logprobs, toks)])
        else:
            lps.append([0.0] * len(toks))
    width = max(1, max(len(r) for r in rows))
    resp = torch.full((len(rows), width), pad, dtype=torch.long)
    rmask = torch.zeros((len(rows), width), dtype=torch.long)
    logp = torch.zeros((len(rows), width))
    for i, (r, lp) in enumerate(zip(rows, lps)):
        resp[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        rmask[i, : len(r)] = 1
        logp[i, : len(r)] = torch.tensor(lp)
    texts = [tokenizer.decode([t for t in r if t != eos], skip_special_tokens=True) for r in rows]
    return Rollout(ids, mask, resp, rmask, logp, texts)
