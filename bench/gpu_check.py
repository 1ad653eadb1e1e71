"""The prepared check of the real path on one GPU (at most 8 minutes); `--cpu-smoke` runs it on CPU.

What it prints (and writes to --json):
1. the environment (Python, torch, CUDA, transformers, peft, the device and its memory);
2. fake-quant throughput on the device: GB/s of `quant.formats.fake_quantize` (bytes read +
   written) next to `x.clone()`, for fp32 and bf16, MXFP4 and NVFP4, compiled (Triton on CUDA)
   and eager (NOISESWEEP_COMPILE=0), and whether compiled and eager agree bit for bit on random
   and edge-case data;
3. GRPO steps of the Qwen study's setup with the HF backend (studies/qwen2.5-1.5b-mxfp4-w4a4.yaml):
   a random-init Qwen2.5-1.5B-Instruct from bench/data/qwen2.5-1.5b-instruct/config.json, LoRA
   r32/alpha16 on the 7 projections, MXFP4 W4A4 with STE and the study's excludes, RMSNorm noise
   (sigma 0.05, the seeds' first noisy stage, uniform multipliers), the study's algo section
   (DAPO, 128 x 8, mini-batch 32 = 4 updates, micro-batch 8, gradient checkpointing, chunked
   log-probs, warm-up lr): step time split into rollout and train, peak GPU memory of each phase.

Why not objective.trainer.Trainer: the GPU image has torch, transformers, peft and numpy and the
project installed with --no-deps, so pydantic (TrialConfig) may be missing. The step is therefore
assembled from the pieces Trainer.train_step uses (objective.rollout.hf_generate,
quant.model.quantize_model, quant.noise.NoiseInjector, objective.grpo, objective.ppo.ppo_update,
objective.logprobs.response_logprobs), in the same order; nothing here needs pydantic, optuna,
ray or vllm, and nothing is downloaded. Stand-ins, printed as such: the tokenizer is the tiny
character tokenizer (Qwen's tokenizer files are not shipped), prompts are synthetic GSM8K-shaped
chat prompts, rewards are random 0/1 per response (a random-init model solves nothing; DAPO would
drop every group). config.json: Qwen2.5-1.5B-Instruct's published values, taken from public
copies found by code search (they agree key for key).

Shape: the study's batch (128 prompts x 8 samples) with responses up to 256 tokens by default so
the run fits in 8 minutes (the study's 1024: --response-len 1024); on running out of GPU memory
the prompts are halved and the step retried, and the shape that ran is printed.
--cpu-smoke: the same code at 2 layers x hidden 64 (Qwen's vocabulary kept), 4 x 4 x 16 tokens.

    python bench/gpu_check.py [--cpu-smoke] [--steps N] [--response-len R] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

QWEN_CONFIG = ROOT / "bench" / "data" / "qwen2.5-1.5b-instruct" / "config.json"
STUDY = ROOT / "studies" / "qwen2.5-1.5b-mxfp4-w4a4.yaml"
BUDGET_S = 480.0  # the whole script on the GPU machine
SMOKE_BUDGET_S = 120.0
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # the study's LoRA targets
SIGMA = 0.05
SMOKE_MODEL = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
               "num_key_value_heads": 2}
COMPILE_ENV = "NOISESWEEP_COMPILE"


class CheckError(Exception):
    """A precondition of the check is missing (no GPU without --cpu-smoke, a file gone)."""


# ---- environment ---------------------------------------------------------------------------
def environment(device: torch.device) -> dict[str, Any]:
    import peft
    import transformers

    env: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "transformers": transformers.__version__, "peft": peft.__version__, "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1))
    try:
        import vllm  # type: ignore[import-not-found]  # noqa: F401

        env["vllm"] = getattr(vllm, "__version__", "?")
    except Exception:  # noqa: BLE001 - absent or broken: this check uses the hf backend either way
        env["vllm"] = None
    return env


# ---- timing --------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_median(fn: Callable[[], Any], device: torch.device, reps: int, warmup: int = 2) -> float:
    """Median seconds of fn() after `warmup` calls (the compile happens there), device-synchronized."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@contextlib.contextmanager
def compile_mode(on: bool) -> Iterator[None]:
    """quant's fake-quant reads NOISESWEEP_COMPILE at each call: 0 = the eager reference."""
    old = os.environ.get(COMPILE_ENV)
    os.environ[COMPILE_ENV] = "1" if on else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(COMPILE_ENV, None)
        else:
            os.environ[COMPILE_ENV] = old


# ---- fake-quant throughput and bit-exactness -------------------------------------------------
def edge_cases(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Random data at several scales plus blocks that stress the rounding: zeros, E2M1 ties,
    values just below powers of two, huge and tiny magnitudes (4 rows of 4096)."""
    g = torch.Generator().manual_seed(7)
    rows = [torch.randn(4096, generator=g) * s for s in (1e-3, 1.0, 1e3)]
    special = torch.randn(4096, generator=g)
    special[:64] = 0.0
    special[64:128] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] * 8)  # E2M1 midpoints and ends
    special[128:192] = torch.nextafter(torch.tensor(2.0), torch.tensor(0.0))  # just below 2^1
    special[192:256] = torch.tensor([3e38, -3e38, 1e-38, -1e-38] * 16)
    return torch.stack([*rows, special]).to(device=device, dtype=dtype)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> int:
    """Positions where a and b differ (NaN equals NaN)."""
    differ = (a != b) & ~(torch.isnan(a) & torch.isnan(b))
    return int(differ.sum())


def fake_quant_check(device: torch.device, numel: int, reps: int) -> list[dict[str, Any]]:
    from quant.formats import fake_quantize

    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(numel // 4096, 4096, device=device).to(dtype)
        nbytes = 2 * x.numel() * x.element_size()  # read + write
        t_clone = timed_median(lambda: x.clone(), device, reps)
        for fmt in ("mxfp4", "nvfp4"):
            with warnings.catch_warnings(record=True) as caught, compile_mode(True):
                warnings.simplefilter("always")
                t_comp = timed_median(lambda: fake_quantize(x, fmt), device, reps)
                compiled_out = fake_quantize(x, fmt)
                compiled_edge = fake_quantize(edge_cases(device, dtype), fmt)
            # quant's own warning when compiling failed and it went eager (other warnings are noise)
            fell_back = [str(w.message).split(";")[0] for w in caught if "fake-quant failed" in str(w.message)]
            with compile_mode(False):
                t_eager = timed_median(lambda: fake_quantize(x, fmt), device, max(2, reps // 4), warmup=1)
                eager_out = fake_quantize(x, fmt)
                eager_edge = fake_quantize(edge_cases(device, dtype), fmt)
            mismatches = _same_bits(compiled_out, eager_out) + _same_bits(compiled_edge, eager_edge)
            rows.append({
                "dtype": str(dtype).removeprefix("torch."), "format": fmt, "numel": x.numel(),
                "clone_gbs": nbytes / t_clone / 1e9, "compiled_gbs": nbytes / t_comp / 1e9,
                "eager_gbs": nbytes / t_eager / 1e9, "compiled_vs_clone": t_clone / t_comp,
                "bit_exact": mismatches == 0, "mismatches": mismatches,
                "compiled_fell_back": fell_back[0] if fell_back else None,
            })
            del compiled_out, eager_out
    return rows


# ---- the model -----------------------------------------------------------------------------
def model_config(smoke: bool) -> Any:
    from transformers import Qwen2Config

    if not QWEN_CONFIG.is_file():
        raise CheckError(f"{QWEN_CONFIG} is missing (the shipped copy of Qwen2.5-1.5B-Instruct's config.json)")
    values = json.loads(QWEN_CONFIG.read_text())
    if smoke:
        values.update(SMOKE_MODEL)
    return Qwen2Config(**values)


def stand_in_tokenizer(config: Any) -> Any:
    """The tiny character tokenizer (all its ids are < Qwen's vocabulary), ids set on the config."""
    from objective.tiny.tokenizer import build_tokenizer

    tok = build_tokenizer()
    tok.model_max_length = config.max_position_embeddings
    config.pad_token_id, config.eos_token_id, config.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
    return tok


def synthetic_prompts(n: int, smoke: bool, seed: int) -> list[str]:
    """GSM8K-shaped chat prompts (ChatML as Qwen's template writes it, verl's instruction suffix)."""
    rng = random.Random(seed)
    names = ["Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Ken", "Alexis"]
    things = ["clips", "apples", "pages", "marbles", "tickets", "cookies"]
    out = []
    for _ in range(n):
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        who, what = rng.choice(names), rng.choice(things)
        q = (f"{who} sold {a} {what} in April, and then she sold {b} {what} in May. Each of them cost "
             f"${c}. How many dollars did {who} earn altogether in April and May?")
        if smoke:
            q = f"{who} has {a} {what}. How many?"
        out.append("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                   f"{q} Let's think step by step and output the final answer after \"####\".<|im_end|>\n"
                   "<|im_start|>assistant\n")
    return out


def study_sections() -> dict[str, Any]:
    import yaml

    if not STUDY.is_file():
        raise CheckError(f"{STUDY} is missing")
    return dict(yaml.safe_load(STUDY.read_text())["objective"]["config"])


@dataclass
class AlgoView:
    """The study's algo section where pydantic (objective.config.AlgoCfg) is not installed.

    Only the fields ppo_update and warmup_lr read, with AlgoCfg's defaults for what the study
    does not set.
    """

    name: str = "grpo"
    lr: float = 2e-3
    prompts_per_step: int = 16
    samples_per_prompt: int = 8
    temperature: float = 1.0
    clip_low: float | None = None
    clip_high: float | None = None
    clip_ratio_c: float | None = 3.0
    old_logprobs: str = "policy"
    mini_batch_size: int | None = None
    ppo_epochs: int = 1
    lr_warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    micro_batch_size: int | None = None
    logprob_chunk_tokens: int = 1024
    gradient_checkpointing: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def eps_low(self) -> float:
        return 0.2 if self.clip_low is None else self.clip_low

    @property
    def eps_high(self) -> float:
        if self.clip_high is not None:
            return self.clip_high
        return 0.28 if self.name == "dapo" else 0.2


def algo_config(values: dict[str, Any]) -> Any:
    """AlgoCfg when pydantic is there (validated), else AlgoView with the same fields."""
    try:
        from objective.config import AlgoCfg
    except ImportError:
        known = set(AlgoView.__dataclass_fields__) - {"extra"}
        return AlgoView(**{k: v for k, v in values.items() if k in known},
                        extra={k: v for k, v in values.items() if k not in known})
    return AlgoCfg(**values)


@dataclass
class Policy:
    model: Any
    tokenizer: Any
    quant: Any
    injector: Any
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    device: torch.device


def build_policy(sections: dict[str, Any], smoke: bool, device: torch.device) -> Policy:
    """Random-init Qwen2 -> LoRA -> checkpointing -> W4A4 fake quant -> noise -> AdamW, as Trainer does."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2ForCausalLM

    from quant.model import DEFAULT_EXCLUDE, QuantScheme, quantize_model
    from quant.noise import NoiseInjector

    config = model_config(smoke)
    tok = stand_in_tokenizer(config)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[
        sections.get("model", {}).get("dtype", "float32") if not smoke else "float32"]
    torch.manual_seed(0)
    old_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialize in the study's dtype, on the device: no fp32 copy
    try:
        with torch.device(device):
            base = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(old_dtype)
    lora = sections.get("lora", {})
    model = get_peft_model(base, LoraConfig(r=int(lora.get("rank", 8)), lora_alpha=float(lora.get("alpha", 16)),
                                            target_modules=list(lora.get("target_modules", PROJECTIONS)),
                                            lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
    model.eval()
    algo = sections.get("algo", {})
    if algo.get("gradient_checkpointing"):
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    q = sections.get("quant", {})
    make = QuantScheme.w4a4 if q.get("mode", "w4a4") == "w4a4" else QuantScheme.w4a16
    exclude = tuple(q["exclude"]) if q.get("exclude") is not None else DEFAULT_EXCLUDE
    handle = quantize_model(model, make(q.get("format", "mxfp4"), ste=bool(q.get("ste", True)), exclude=exclude))
    injector = NoiseInjector(model, site="rmsnorm", multipliers=[1.0] * config.num_hidden_layers, seed=0,
                             apply_to=sections.get("noise", {}).get("apply_to", "rollout"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(algo.get("lr", 1e-5)), weight_decay=float(algo.get("weight_decay", 0.0)))
    return Policy(model, tok, handle, injector, optimizer, params, device)


# ---- one GRPO step -------------------------------------------------------------------------
def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def grpo_step(policy: Policy, algo: Any, prompts: list[str], *, step: int, response_len: int,
              reward_gen: torch.Generator, gen: torch.Generator, deadline: float) -> dict[str, Any]:
    """Trainer.train_step's sequence: noisy rollout, score, DAPO filter, advantages, ppo_update."""
    from objective import grpo
    from objective.logprobs import response_logprobs
    from objective.ppo import ppo_update, warmup_lr
    from objective.rollout import hf_generate, select_rows

    dev, k = policy.device, algo.samples_per_prompt
    inj = policy.injector
    _reset_peak(dev)
    _sync(dev)
    t0 = time.monotonic()
    inj.begin_step(step, SIGMA)
    with inj.rollout():
        ro = hf_generate(policy.model, policy.tokenizer, [p for p in prompts for _ in range(k)],
                         max_new_tokens=response_len, temperature=algo.temperature, generator=gen, deadline=deadline)
    _sync(dev)
    t1 = time.monotonic()
    rollout_peak = _peak_gb(dev)
    rewards = torch.randint(0, 2, (len(prompts), k), generator=reward_gen).float()  # stand-in scores
    if algo.name == "dapo":
        keep = grpo.informative_groups(rewards)
        ro, rewards = select_rows(ro, keep.repeat_interleave(k)), rewards[keep]
    adv = grpo.group_advantages(rewards).flatten()
    if not ro.texts:  # DAPO dropped every group: nothing to learn from (as in Trainer.train_step)
        return {"step": step, "rollout_s": t1 - t0, "train_s": 0.0, "step_s": t1 - t0, "sequences": 0,
                "response_tokens": 0, "prompt_width": int(ro.prompt_ids.shape[1]), "updates": 0, "clipfrac": 0.0,
                "rollout_peak_gb": rollout_peak, "train_peak_gb": None, "tokens_per_s": 0.0}
    for group in policy.optimizer.param_groups:
        group["lr"] = warmup_lr(step, algo.lr, algo.lr_warmup_steps)

    @contextlib.contextmanager
    def training() -> Iterator[None]:
        with inj.training():
            policy.model.train()
            try:
                yield
            finally:
                policy.model.eval()

    def logp_fn(part: Any) -> torch.Tensor:
        return response_logprobs(policy.model, part.prompt_ids, part.prompt_mask, part.response_ids, part.response_mask,
                                 temperature=algo.temperature, chunk_tokens=algo.logprob_chunk_tokens)

    _reset_peak(dev)
    stats = ppo_update(logp_fn, ro, adv, algo=algo, optimizer=policy.optimizer, params=policy.params, step=step,
                       training=training, scoring=inj.training)
    _sync(dev)
    t2 = time.monotonic()
    tokens = int(ro.response_mask.sum())
    return {
        "step": step, "rollout_s": t1 - t0, "train_s": t2 - t1, "step_s": t2 - t0,
        "sequences": len(ro.texts), "response_tokens": tokens, "prompt_width": int(ro.prompt_ids.shape[1]),
        "updates": len(stats.losses), "clipfrac": stats.clipfrac,
        "rollout_peak_gb": rollout_peak, "train_peak_gb": _peak_gb(dev),
        "tokens_per_s": tokens / max(t2 - t0, 1e-9),
    }


def run_steps(policy: Policy, sections: dict[str, Any], args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    """The steps at the requested shape; on out-of-memory, halve the prompts and retry once per halving."""
    from objective.device_memory import free_device_memory, is_out_of_memory
    from objective.rollout import TrialTimeout

    algo_values = dict(sections.get("algo", {}))
    study_shape = (algo_values.get("prompts_per_step", 16), algo_values.get("samples_per_prompt", 8),
                   sections.get("task", {}).get("max_response_len", 12))
    prompts_n = args.prompts or (4 if args.cpu_smoke else study_shape[0])
    samples = args.samples or (4 if args.cpu_smoke else study_shape[1])
    response_len = args.response_len or (16 if args.cpu_smoke else 256)
    updates = max(1, study_shape[0] // (algo_values.get("mini_batch_size") or study_shape[0]))  # the study's 4
    notes: list[str] = []
    while True:
        values = {**algo_values, "prompts_per_step": prompts_n, "samples_per_prompt": samples,
                  "mini_batch_size": max(1, prompts_n // updates)}
        if args.cpu_smoke:
            values["micro_batch_size"] = 4
        algo = algo_config(values)
        reward_gen = torch.Generator().manual_seed(1)
        gen = torch.Generator(device=policy.device).manual_seed(0)
        steps: list[dict[str, Any]] = []
        oom = None
        try:
            for s in range(1, args.steps + 1):
                if steps and time.monotonic() + steps[-1]["step_s"] > deadline:
                    notes.append(f"stopped after {len(steps)} steps: the next would pass the time budget")
                    break
                prompts = synthetic_prompts(prompts_n, args.cpu_smoke, seed=s)
                steps.append(grpo_step(policy, algo, prompts, step=s, response_len=response_len,
                                       reward_gen=reward_gen, gen=gen, deadline=deadline))
                print(_step_line(steps[-1]), flush=True)
        except TrialTimeout:
            notes.append(f"stopped during step {len(steps) + 1}'s rollout: the time budget ran out")
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
            if not is_out_of_memory(exc) or prompts_n == 1:
                raise
            oom = f"out of GPU memory at {prompts_n} x {samples} x {response_len}: {type(exc).__name__}"
        if oom is None:
            break
        free_device_memory()
        notes.append(oom + f"; retrying at {prompts_n // 2} prompts")
        print(notes[-1], flush=True)
        prompts_n //= 2
    return {"study_shape": list(study_shape), "ran_shape": [prompts_n, samples, response_len],
            "updates_per_step": updates, "micro_batch_size": values.get("micro_batch_size"),
            "steps": steps, "notes": notes}


def _step_line(s: dict[str, Any]) -> str:
    def gb(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1f} GB"

    return (f"step {s['step']}: {s['step_s']:.1f} s (rollout {s['rollout_s']:.1f} s, train {s['train_s']:.1f} s), "
            f"{s['sequences']} sequences, {s['response_tokens']} response tokens, {s['updates']} updates, "
            f"peak {gb(s['rollout_peak_gb'])} rollout / {gb(s['train_peak_gb'])} train")


# ---- report --------------------------------------------------------------------------------
def _table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}"
        return "n/a" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="the same path on CPU at a reduced shape (< 2 min)")
    ap.add_argument("--steps", type=int, default=None, help="GRPO steps (default 3; smoke 2)")
    ap.add_argument("--prompts", type=int, default=None, help="prompts per step (default: the study's)")
    ap.add_argument("--samples", type=int, default=None, help="samples per prompt (default: the study's)")
    ap.add_argument("--response-len", type=int, default=None, help="max response tokens (default 256; smoke 16)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    args.steps = args.steps or (2 if args.cpu_smoke else 3)
    if args.cpu_smoke:
        device = torch.device("cpu")
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        raise CheckError("no CUDA device: this check is for a GPU machine (run --cpu-smoke on CPU)")
    budget = SMOKE_BUDGET_S if args.cpu_smoke else BUDGET_S
    deadline = t_start + budget
    env = environment(device)
    print("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), flush=True)

    fq = fake_quant_check(device, numel=(1 << 20) if args.cpu_smoke else (1 << 26), reps=3 if args.cpu_smoke else 20)
    print("fake quant vs clone() (GB/s = bytes read + written per second):")
    print(_table(["dtype", "format", "clone GB/s", "compiled GB/s", "eager GB/s", "compiled / clone", "bit-exact vs eager"],
                 [[r["dtype"], r["format"], r["clone_gbs"], r["compiled_gbs"], r["eager_gbs"], r["compiled_vs_clone"],
                   ("yes" if r["bit_exact"] else f"NO ({r['mismatches']} values)")
                   + (f"; compile fell back: {r['compiled_fell_back']}" if r["compiled_fell_back"] else "")] for r in fq]),
          flush=True)

    sections = study_sections()
    t_model = time.monotonic()
    policy = build_policy(sections, args.cpu_smoke, device)
    print(f"model: random-init Qwen2.5-1.5B-Instruct config{' (smoke: 2 layers, hidden 64)' if args.cpu_smoke else ''}, "
          f"{sum(p.numel() for p in policy.model.parameters()) / 1e6:.1f} M parameters, {policy.quant.summary()}, "
          f"built in {time.monotonic() - t_model:.1f} s; tokenizer: stand-in (character-level); rewards: synthetic",
          flush=True)
    steps = run_steps(policy, sections, args, deadline)
    p, k, r = steps["ran_shape"]
    sp, sk, sr = steps["study_shape"]
    same = "the study's shape" if (p, k, r) == (sp, sk, sr) else f"the study: {sp} x {sk} x {sr}"
    print(f"shape: ran {p} prompts x {k} samples, responses up to {r} tokens ({same}); "
          f"{steps['updates_per_step']} updates per step, micro-batch {steps['micro_batch_size']}")
    for note in steps["notes"]:
        print("note: " + note)
    if steps["steps"]:
        rows = [[s["step"], s["rollout_s"], s["train_s"], s["step_s"], s["updates"], s["rollout_peak_gb"],
                 s["train_peak_gb"]] for s in steps["steps"]]
        print(_table(["step", "rollout s", "train s", "step s", "updates", "peak GB rollout", "peak GB train"], rows))
    wall = time.monotonic() - t_start
    print(f"gpu_check: {'cpu smoke' if args.cpu_smoke else 'GPU'} run finished in {wall:.0f} s "
          f"(budget {budget:.0f} s), {len(steps['steps'])} GRPO steps")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "fake_quant": fq, "grpo": steps, "wall_s": wall}, indent=1))
    ok = bool(steps["steps"]) and all(r["bit_exact"] for r in fq)
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        sys.exit(2)
