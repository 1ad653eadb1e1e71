"""The built-in trainer: GRPO/DAPO with LoRA on a fake-quantized, optionally noisy model.

One step: pick prompts, sample `samples_per_prompt` responses each from the quantized model with
this step's noise (rollout), score them, compute group advantages, one clipped policy-gradient
update of the LoRA weights (training forward: clean norms unless noise.apply_to == "both").
Validation is greedy on the held-out set with the quantized model and NO noise (what the model
would score when deployed), at the steps in `steps.val_at` (0 = before any update): the final step
(the objective) on all `task.num_val` problems, earlier ones on the first `task.num_val_intermediate`.

Common random numbers: step s draws its prompts and its sampling randomness from generators seeded
by (seed, s) alone (`step_seed`), not from streams that earlier steps consumed a config-dependent
amount of, so trials with the same seed see the same prompts and, where the config leaves the
sampling distribution alone, the same samples; config differences are then not drowned in draw
noise. The noise injector has its own (seed, step) generator.

Generation goes through one seam, `objective.rollout.make_rollout`: `hf` samples from the policy
module itself; `vllm` (objective/vllm_engine.py) receives the policy's merged, quantized weights
and this step's noisy norms at each `rollout.sync()` (once per step inside the noise context, once
per validation outside it).

Failures are results: StopTrial from `report` -> "pruned"; a non-finite loss/logits, a timeout,
an exception in training or in `report` -> "failed" with a one-line reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from objective import grpo
from objective import reward as _reward
from objective.config import TrialConfig, load_config
from objective.result import ReportFn, StopTrial, TrialResult
from objective.rollout import NonFiniteError, Rollout, TrialTimeout, make_rollout, require_vllm

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


PROMPT_STREAM = "prompts"
SAMPLING_STREAM = "sampling"


def step_seed(seed: int, step: int, stream: str, draw: int = 0) -> int:
    """A 63-bit seed for one (trial seed, step, stream, draw): stable across processes and versions."""
    digest = hashlib.sha256(f"noisesweep:{stream}:{seed}:{step}:{draw}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def draw_prompts(train: list[Any], seed: int, step: int, draw: int, n: int) -> list[Any]:
    """n distinct training examples for one draw of one step (draw 0; DAPO refills 1, 2, ...).

    A function of (seed, step, draw) only, and a prefix-stable one: a config with fewer prompts
    per step sees the first of the same prompts.
    """
    gen = torch.Generator().manual_seed(step_seed(seed, step, PROMPT_STREAM, draw))
    order = torch.randperm(len(train), generator=gen).tolist()
    return [train[order[i % len(order)]] for i in range(n)]


def val_metric_name(data_source: str) -> str:
    return f"val-core/{data_source}/acc/mean@1"


def load_model(cfg: TrialConfig) -> tuple[Any, Any]:
    """`tiny` -> the shipped checkpoint; anything else must be a local Hugging Face directory."""
    dtype = _DTYPES[cfg.model.dtype]
    if cfg.model.path == "tiny":
        from objective.tiny import load_tiny

        return load_tiny(dtype)
    path = Path(cfg.model.path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model.path: {path} is not a Hugging Face model directory (no config.json)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    return model, AutoTokenizer.from_pretrained(path, local_files_only=True)


class _Noise:
    """Drives quant.noise.NoiseInjector through a step: rollout with noise, training per apply_to.

    With noise disabled every context is a no-op and sigma is 0, so the loop has one shape.
    """

    def __init__(self, model: Any, cfg: TrialConfig, num_layers: int) -> None:
        self.cfg = cfg.noise
        self.injector = None
        if not self.cfg.enabled:
            return
        from quant.noise import NoiseInjector

        mult = self.cfg.layer_multipliers if self.cfg.layer_multipliers is not None else [1.0] * num_layers
        self.injector = NoiseInjector(
            model, site=self.cfg.site, multipliers=list(mult), seed=cfg.seed, apply_to=self.cfg.apply_to
        )

    def begin_step(self, step: int, sigma: float) -> None:
        if self.injector is not None:
            self.injector.begin_step(step, sigma)

    def rollout(self) -> contextlib.AbstractContextManager[Any]:
        return self.injector.rollout() if self.injector is not None else contextlib.nullcontext()

    def training(self) -> contextlib.AbstractContextManager[Any]:
        return self.injector.training() if self.injector is not None else contextlib.nullcontext()

    @property
    def records(self) -> list[dict[str, Any]]:
        return list(self.injector.records) if self.injector is not None else []

    def remove(self) -> None:
        if self.injector is not None:
            self.injector.remove()


class Trainer:
    """One trial's state: model (peft + quant + noise), task, optimizer, RNGs and timers."""

    def __init__(self, cfg: TrialConfig, start: float | None = None) -> None:
        from peft import LoraConfig, get_peft_model

        from objective.tasks import load_task

        self.cfg = cfg
        if cfg.rollout.backend == "vllm":
            require_vllm()  # before any model is loaded: a missing gpu extra is a one-line error
            from objective.vllm_engine import check_config

            check_config(cfg)
        torch.manual_seed(cfg.seed)
        base, self.tokenizer = load_model(cfg)
        self.num_layers = int(base.config.num_hidden_layers)
        mult = cfg.noise.layer_multipliers
        if mult is not None and len(mult) != self.num_layers:
            raise ValueError(
                f"noise.layer_multipliers: {len(mult)} values but the model has {self.num_layers} decoder layers"
            )
        self.task = load_task({**cfg.task.model_dump(), "seed": cfg.seed})
        lora = LoraConfig(
            r=cfg.lora.rank,
            lora_alpha=cfg.lora.alpha,
            target_modules=list(cfg.lora.target_modules),
            lora_dropout=cfg.lora.dropout,
            bias="none",
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(base, lora)
        self.model.eval()  # dropout (if any) only inside the training forward
        self.quant = None
        if cfg.quant.format != "none":
            from quant.model import DEFAULT_EXCLUDE, QuantScheme, quantize_model

            make = QuantScheme.w4a4 if cfg.quant.mode == "w4a4" else QuantScheme.w4a16
            exclude = tuple(cfg.quant.exclude) if cfg.quant.exclude is not None else DEFAULT_EXCLUDE
            self.quant = quantize_model(self.model, make(cfg.quant.format, ste=cfg.quant.ste, exclude=exclude))
        self.noise = _Noise(self.model, cfg, self.num_layers)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optim = torch.optim.AdamW(params, lr=cfg.algo.lr, weight_decay=cfg.algo.weight_decay)
        self.params = params
        if torch.cuda.is_available():  # the real path: train and sample on the GPU
            self.model.to("cuda")
        self.device = next(self.model.parameters()).device
        # sampling randomness, re-seeded per step by begin_sampling (common random numbers)
        self.gen = torch.Generator(device=self.device).manual_seed(step_seed(cfg.seed, 0, SAMPLING_STREAM))
        # the budget counts from the trial's start (model loading and compiling included)
        self.deadline = (start or time.monotonic()) + cfg.timeout_s if cfg.timeout_s else None
        self.phase_s: dict[str, float] = defaultdict(float)
        self.rollout = make_rollout(
            cfg, self.model, self.tokenizer, quant=self.quant, injector=self.noise.injector,
            generator=self.gen, deadline=self.deadline,
        )

    # ---- data -------------------------------------------------------------------------------
    def next_prompts(self, step: int, draw: int, n: int) -> list[Any]:
        """The training examples of one draw of one step (see `draw_prompts`)."""
        return draw_prompts(self.task.train, self.cfg.seed, step, draw, n)

    def begin_sampling(self, step: int) -> None:
        """Re-seed the sampling generator from (seed, step): the same seed samples alike at each step."""
        self.gen.manual_seed(step_seed(self.cfg.seed, step, SAMPLING_STREAM))

    def _generate(self, prompts: list[str], temperature: float) -> Rollout:
        return self.rollout.generate(prompts, temperature)

    def _score(self, texts: list[str], examples: list[Any]) -> torch.Tensor:
        score = _reward.gsm8k_strict_score  # looked up per call: verl's strict rule for every task
        return torch.tensor([score(t, ex.ground_truth) for t, ex in zip(texts, examples)])

    # ---- validation -------------------------------------------------------------------------
    def val_examples(self, final: bool) -> list[Any]:
        """All num_val problems for the final step; the first num_val_intermediate before it."""
        n = self.cfg.task.num_val_intermediate
        return self.task.val if final or n is None else self.task.val[:n]

    @torch.no_grad()
    def validate(self, final: bool = True) -> dict[str, float]:
        """Greedy accuracy per data source on the held-out set (quantized model, no noise)."""
        t0 = time.monotonic()
        scores: dict[str, list[float]] = defaultdict(list)
        val = self.val_examples(final)
        bs = self.cfg.rollout.val_batch_size
        self.rollout.sync()  # noise off here: the engine serves the quantized, un-noised policy
        for i in range(0, len(val), bs):
            chunk = val[i : i + bs]
            ro = self._generate([self.task.format_prompt(ex, self.tokenizer) for ex in chunk], 0.0)
            for ex, s in zip(chunk, self._score(ro.texts, chunk).tolist()):
                scores[ex.data_source].append(s)
        self.phase_s["validation"] += time.monotonic() - t0
        return {val_metric_name(src): sum(v) / len(v) for src, v in scores.items()}

    # ---- one RL step ------------------------------------------------------------------------
    def rollout_step(self, step: int) -> tuple[list[Rollout], list[torch.Tensor], int, int]:
        """Sample groups; DAPO keeps only informative groups and refills up to max_refills times.

        Returns (rollouts, rewards per rollout (groups, samples)), groups generated, refills used.
        """
        a = self.cfg.algo
        k = a.samples_per_prompt
        want = a.prompts_per_step
        kept_ro: list[Rollout] = []
        kept_r: list[torch.Tensor] = []
        n_kept = generated = refills = 0
        while True:
            need = want - n_kept
            examples = self.next_prompts(step, refills, need)
            prompts = [self.task.format_prompt(ex, self.tokenizer) for ex in examples for _ in range(k)]
            ro = self._generate(prompts, a.temperature)
            rewards = self._score(ro.texts, [ex for ex in examples for _ in range(k)]).view(need, k)
            generated += need
            if a.name == "dapo":
                keep = grpo.informative_groups(rewards)
                rows = keep.repeat_interleave(k)
                ro = _select_rows(ro, rows)
                rewards = rewards[keep]
            kept_ro.append(ro)
            kept_r.append(rewards)
            n_kept += rewards.shape[0]
            if a.name != "dapo" or n_kept >= want or refills >= a.max_refills:
                break
            refills += 1
        return kept_ro, kept_r, generated, refills

    def train_step(self, step: int, sigma: float) -> dict[str, float]:
        a = self.cfg.algo
        t0 = time.monotonic()
        self.noise.begin_step(step, sigma)
        with self.noise.rollout():
            self.rollout.sync()  # this step's noisy norms and current LoRA into the engine (hf: no-op)
            self.begin_sampling(step)
            ros, rewards_list, generated, refills = self.rollout_step(step)
        t1 = time.monotonic()
        self.phase_s["rollout"] += t1 - t0
        all_rewards = torch.cat([r.flatten() for r in rewards_list]) if rewards_list else torch.zeros(0)
        n_tokens = sum(int(r.response_mask.sum()) for r in ros)
        n_seqs = sum(r.response_ids.shape[0] for r in ros)
        metrics: dict[str, float] = {
            "train/reward_mean": float(all_rewards.mean()) if all_rewards.numel() else float("nan"),
            "train/response_length": n_tokens / max(n_seqs, 1),
            "train/entropy": -sum(float(r.logp.sum()) for r in ros) / max(n_tokens, 1),
            "train/groups_generated": float(generated),
            "train/groups_used": float(sum(r.shape[0] for r in rewards_list)),
            "train/refills": float(refills),
            "noise/sigma": float(sigma),
        }
        if n_seqs == 0:  # DAPO: every group uninformative even after refills; nothing to learn from
            metrics.update({"train/loss": 0.0, "train/clipfrac": 0.0})
        else:
            ro = _cat_rollouts(ros, self.tokenizer)
            adv = grpo.group_advantages(torch.cat(rewards_list, 0)).flatten()
            with self.noise.training():
                self.model.train()
                try:
                    logp = self.response_logp(ro)
                finally:
                    self.model.eval()
                old = ro.logp if a.old_logprobs == "rollout" else logp.detach()
                loss, info = grpo.policy_loss(
                    logp,
                    old,
                    adv,
                    ro.response_mask,
                    eps_low=a.eps_low,
                    eps_high=a.eps_high,
                    token_mean=a.name == "dapo",
                )
                if not torch.isfinite(loss):
                    raise NonFiniteError(f"loss is {float(loss.detach())} at step {step}")
                self.optim.zero_grad(set_to_none=True)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, a.grad_clip)
            self.optim.step()  # outside the noise contexts (the injector's protocol)
            m = ro.response_mask.float()
            # how far the (noisy) sampler's log-probs are from the training forward's
            gap = float(((logp.detach() - ro.logp).abs() * m).sum() / m.sum().clamp(min=1.0))
            metrics.update({"train/loss": float(loss.detach()), "train/clipfrac": info["clipfrac"],
                            "train/rollout_logp_gap": gap})
        t2 = time.monotonic()
        self.phase_s["train"] += t2 - t1
        metrics["time/step_s"] = t2 - t0
        metrics["time/rollout_s"] = t1 - t0
        metrics["time/train_s"] = t2 - t1
        metrics["perf/tokens_per_s"] = n_tokens / max(t2 - t0, 1e-9)
        return metrics

    def response_logp(self, ro: Rollout) -> torch.Tensor:
        """Log-probs of the sampled response tokens under the current policy at the sampling temperature."""
        ids = torch.cat([ro.prompt_ids, ro.response_ids], 1).to(self.device)
        mask = torch.cat([ro.prompt_mask, ro.response_mask], 1).to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        p = ro.prompt_ids.shape[1]
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, p - 1 : -1].float()
        logp = torch.log_softmax(logits / self.cfg.algo.temperature, -1)
        resp = ro.response_ids.to(self.device)
        return (logp.gather(-1, resp[..., None]).squeeze(-1) * ro.response_mask.to(self.device)).cpu()

    def close(self) -> None:
        self.rollout.close()  # a vLLM engine frees its GPU memory for the next trial
        self.noise.remove()
        if self.quant is not None:
            self.quant.remove()


def _select_rows(ro: Rollout, rows: torch.Tensor) -> Rollout:
    idx = rows.nonzero().flatten()
    return Rollout(
        ro.prompt_ids[idx],
        ro.prompt_mask[idx],
        ro.response_ids[idx],
        ro.response_mask[idx],
        ro.logp[idx],
        [ro.texts[i] for i in idx.tolist()],
    )


def _cat_rollouts(ros: list[Rollout], tokenizer: Any) -> Rollout:
    """Concatenate rollouts of different widths: prompts left-padded, responses right-padded."""
    ros = [r for r in ros if r.response_ids.shape[0]]
    if len(ros) == 1:
        return ros[0]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pw = max(r.prompt_ids.shape[1] for r in ros)
    rw = max(r.response_ids.shape[1] for r in ros)

    def lpad(t: torch.Tensor, w: int, v: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (w - t.shape[1], 0), value=v)

    def rpad(t: torch.Tensor, w: int, v: float) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, w - t.shape[1]), value=v)

    return Rollout(
        torch.cat([lpad(r.prompt_ids, pw, pad) for r in ros]),
        torch.cat([lpad(r.prompt_mask, pw, 0) for r in ros]),
        torch.cat([rpad(r.response_ids, rw, pad) for r in ros]),
        torch.cat([rpad(r.response_mask, rw, 0) for r in ros]),
        torch.cat([rpad(r.logp, rw, 0.0) for r in ros]),
        [t for r in ros for t in r.texts],
    )


def sigma_schedule(cfg: TrialConfig) -> list[float]:
    """sigma for each update 1..total, from the run's real step count (0 when noise is off).

    Update s uses quant.noise.sigma_at(s - 1, total): interval 0 (noise-free) covers the first
    total/num_stages updates and the last interval is reached before the run ends.
    """
    n = cfg.noise
    if not n.enabled:
        return [0.0] * cfg.steps.total
    from quant.noise import sigma_at

    return [
        float(sigma_at(s - 1, cfg.steps.total, n.sigma_start, n.sigma_end, n.num_stages))
        for s in range(1, cfg.steps.total + 1)
    ]


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}"[:500]


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_trial(config: TrialConfig | dict[str, Any] | None, report: ReportFn | None = None) -> TrialResult:
    """Run one trial; see the module docstring. Bad input (config, paths) raises ValueError/FileNotFoundError."""
    t_start = time.monotonic()
    cfg = load_config(config)
    with _threads(cfg.threads):
        trainer = Trainer(cfg, start=t_start)  # user-input errors propagate from here
        try:
            return _run(trainer, cfg, report, t_start)
        finally:
            trainer.close()


def _run(trainer: Trainer, cfg: TrialConfig, report: ReportFn | None, t_start: float) -> TrialResult:
    sigmas = sigma_schedule(cfg)
    primary = val_metric_name(trainer.task.data_source)
    history: list[dict[str, Any]] = []
    train_hist: list[dict[str, Any]] = []
    latest: dict[str, float] = {}
    state: dict[str, Any] = {"value": None, "step": None}

    def result(status: str, reason: str | None = None) -> TrialResult:
        recs = trainer.noise.records
        applied = {
            # from the injector's records when there is one: what was applied, not what was asked
            "sigma": [float(r["sigma"]) for r in recs] if cfg.noise.enabled else sigmas[: len(train_hist)],
            "noise_site": cfg.noise.site if cfg.noise.enabled else None,
            "noise_apply_to": cfg.noise.apply_to if cfg.noise.enabled else None,
            "multipliers": None,
            "noise_records": trainer.noise.records,
            "quant": trainer.quant.summary() if trainer.quant is not None else "none",
            "train": train_hist,
            "phase_s": dict(trainer.phase_s),
        }
        if recs:  # what the injector really applied, not what the config asked for
            applied["multipliers"] = list(recs[-1].get("multipliers", []))
        return TrialResult(
            status=status,  # type: ignore[arg-type]
            value=state["value"],
            step=state["step"],
            history=history,
            reason=reason,
            applied=applied,
            wall_time_s=time.monotonic() - t_start,
        )

    step = 0
    try:
        for step in range(cfg.steps.total + 1):
            if trainer.deadline is not None and time.monotonic() > trainer.deadline:
                raise TrialTimeout("timed out between steps")
            if step > 0:
                latest = trainer.train_step(step, sigmas[step - 1])
                train_hist.append({"step": step, "metrics": latest})
            if step in cfg.steps.val_at:
                metrics = {**latest, **trainer.validate(final=step == cfg.steps.total)}
                history.append({"step": step, "metrics": metrics})
                state["value"] = metrics.get(primary)
                state["step"] = step
                if report is not None:
                    try:
                        report(step, dict(metrics))
                    except StopTrial as exc:
                        return result("pruned", f"pruned at step {step}" + (f": {exc}" if str(exc) else ""))
                    except Exception as exc:
                        return result("failed", f"report callback raised at step {step}: {_one_line(exc)}")
    except TrialTimeout:
        return result("failed", f"timeout: {cfg.timeout_s:g} s exceeded at step {step}")
    except NonFiniteError as exc:
        return result("failed", f"non-finite values at step {step}: {exc}")
    except Exception as exc:  # a crash inside training is the trial's failure, not the sweep's
        return result("failed", f"exception at step {step}: {_one_line(exc)}")
    if state["value"] is not None and not math.isfinite(state["value"]):
        return result("failed", f"non-finite validation value at step {state['step']}")
    return result("complete")
