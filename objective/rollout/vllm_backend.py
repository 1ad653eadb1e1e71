"""The `vllm` rollout backend: a colocated vLLM engine fed the policy's weights every step.

Per step (trainer: `rollout.sync()` inside `injector.rollout()`, then `generate`):
1. objective.rollout.vllm_sync.vllm_state_dict flattens the policy: LoRA merged into the fake-quantized
   base, this step's noisy RMSNorm weights, HF names. The first push is the full dict; later ones
   only the tensors that can change (LoRA-merged projections, RMSNorm weights).
2. The dict goes into the engine through the model's own `load_weights` (V1 `LLM.apply_model`
   first, the V0 driver-worker path otherwise): it does the q/k/v and gate/up stacking.
3. `generate` sends token ids (our tokenizer's, so both backends see identical prompts) with one
   SamplingParams per request and returns the hf backend's `Rollout`.
Validation syncs again with the noise off (quantized, un-noised weights) and decodes greedily.
Scope: one GPU, engine colocated with training (no tensor parallelism); the trial deadline is
checked before each `generate` (a vLLM batch cannot be interrupted); noise site "linear" is
refused before any model loads (objective.rollout.checks): the engine receives weights, not hooks
on outputs.

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
hf backend's, the engine's generations reaching the loss, the engine released on close, and the
missing-vLLM / linear-noise errors raised before any model loads.
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
the engine's log-probs only for metrics)), engine release between trials, and speed. Sampling uses
explicit SamplingParams (pure temperature, no top-p/top-k, like the hf backend), so the model's
generation_config defaults should not apply; unverified too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from objective.rollout.base import Rollout, TrialTimeout, encode_prompts, pad_token_id
from objective.rollout.checks import check_noise_site, require_vllm
from objective.rollout.vllm_sync import activation_hook_targets, apply_model, load_into_vllm, vllm_state_dict

if TYPE_CHECKING:
    from objective.config import TrialConfig
    from quant.model import QuantHandle
    from quant.noise import NoiseInjector

DEFAULT_GPU_MEMORY_UTILIZATION = 0.4  # leaves the rest of the GPU to the training forward/backward
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
        "gpu_memory_utilization": float(
            getattr(cfg.rollout, "gpu_memory_utilization", None) or DEFAULT_GPU_MEMORY_UTILIZATION
        ),
        "seed": cfg.seed,
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


def release_engine(engine: Any) -> None:
    """Best effort: free the engine's GPU memory so the next trial in this process can start one."""
    import gc

    try:
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
    except Exception:  # older/newer layouts: the gc below still drops the engine
        pass
    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
        self.seed_gen = torch.Generator().manual_seed(cfg.seed)
        self.hooked = 0
        if quant is not None and quant.scheme.activations:
            targets = activation_hook_targets(quant.module_names, quant.excluded_names)
            fmt = quant.scheme.fmt
            self.hooked = sum(apply_model(self.engine, lambda m: register_activation_hooks(m, targets, fmt)))

    def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            release_engine(engine)

    def sync(self) -> None:
        """Push the policy as it is now (call inside the noise context that the generation needs)."""
        sd = vllm_state_dict(self.model, self.injector, changing_only=self.pushes > 0)
        load_into_vllm(self.engine, sd)
        self.pushes += 1

    def generate(self, prompts: list[str], temperature: float) -> Rollout:
        if self.deadline is not None:
            import time

            if time.monotonic() > self.deadline:
                raise TrialTimeout("timed out before generation")
        ids, mask = encode_prompts(self.tokenizer, prompts)
        eos = self.tokenizer.eos_token_id
        pad = pad_token_id(self.tokenizer)
        # one seed per request: identical prompts in a GRPO group must still draw different samples
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),), generator=self.seed_gen).tolist()
        params = [
            self.vllm.SamplingParams(
                n=1,
                temperature=temperature,
                max_tokens=self.cfg.response_len,
                seed=int(s),
                logprobs=0 if temperature > 0 else None,
                stop_token_ids=[eos] if eos is not None else None,
            )
            for s in seeds
        ]
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
