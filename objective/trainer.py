"""The built-in trainer: GRPO/DAPO with LoRA on a fake-quantized, optionally noisy model.

One step: pick prompts, sample `samples_per_prompt` responses each from the quantized model with
this step's noise (rollout), score them (plus DAPO's overlong penalty when configured), compute
group advantages, then the clipped policy-gradient updates of the LoRA weights like verl's actor
(objective/ppo.py: mini-batches of `algo.mini_batch_size` prompts, `ppo_epochs`, micro-batched
forward/backward; training forward: clean norms unless noise.apply_to == "both"), at the step's
warm-up learning rate.
Validation is greedy on the held-out set with the quantized model and NO noise (what the model
would score when deployed), at the steps in `steps.val_at` (0 = before any update): the final step
(the objective) on all `task.num_val` problems, earlier ones on the first `task.num_val_intermediate`.

Common random numbers: step s draws its prompts and its sampling randomness from generators seeded
by (seed, s) alone (`step_seed`), not from streams that earlier steps consumed a config-dependent
amount of, so trials with the same seed see the same prompts and, where the config leaves the
sampling distribution alone, the same samples; config differences are then not drowned in draw
noise. The noise injector has its own (seed, step) generator.

Generation goes through one seam, `objective.rollout.make_rollout` (a RolloutBackend): `hf`
samples from the policy module itself; `vllm` (objective/rollout/vllm_backend.py) receives the
policy's merged, quantized weights and this step's noisy norms at each `rollout.sync()` (once per
step inside the noise context, once per validation outside it).

Failures are results: StopTrial from `report` -> "pruned"; a non-finite loss/logits, a timeout,
running out of GPU memory ("out of GPU memory ..."), an exception in training or in `report` ->
"failed" with a one-line reason. Whatever the end, the trial's device memory is handed back
before run_trial returns (objective/device_memory.py): the sweep runs the next trial in the same
worker process.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from objective import grpo
from objective import reward as _reward
from objective.config import TrialConfig, load_config
from objective.device_memory import free_device_memory, is_out_of_memory
from objective.logprobs import response_logprobs
from objective.ppo import UpdateStats, ppo_update, warmup_lr
from objective.result import ReportFn, StopTrial, TrialResult
from objective.rollout import NonFiniteError, Rollout, TrialTimeout, check_backend, make_rollout, select_rows

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


@dataclass
class Sampled:
    """One step's kept rollouts: per rollout its rewards (groups, samples) and overlong penalties."""

    rollouts: list[Rollout]
    rewards: list[torch.Tensor]
    overlong: list[torch.Tensor]
    generated: int  # groups generated, dropped ones included
    refills: int


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
        check_backend(cfg)  # before any model loads: a missing gpu extra is a one-line error
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
        if cfg.algo.gradient_checkpointing:  # recompute each decoder layer in backward (non-reentrant: hooks re-run)
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
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
    def rollout_step(self, step: int) -> Sampled:
        """Sample groups; DAPO keeps only informative groups and refills up to max_refills times.

        Groups are judged on the task score; the rewards that make the advantages add DAPO's
        overlong penalty when algo.overlong_buffer_len > 0 (verl filters on `acc` the same way).
        """
        a = self.cfg.algo
        k = a.samples_per_prompt
        want = a.prompts_per_step
        out = Sampled([], [], [], 0, 0)
        n_kept = 0
        while True:
            need = want - n_kept
            examples = self.next_prompts(step, out.refills, need)
            prompts = [self.task.format_prompt(ex, self.tokenizer) for ex in examples for _ in range(k)]
            ro = self._generate(prompts, a.temperature)
            scores = self._score(ro.texts, [ex for ex in examples for _ in range(k)]).view(need, k)
            penalty = grpo.overlong_penalty(ro.response_mask.sum(1), max_len=self.cfg.response_len,
                                            buffer_len=a.overlong_buffer_len, factor=a.overlong_penalty_factor)
            rewards = scores + penalty.view(need, k).to(scores.dtype)
            out.generated += need
            if a.name == "dapo":
                keep = grpo.informative_groups(scores)
                rows = keep.repeat_interleave(k)
                ro = select_rows(ro, rows)
                rewards, penalty = rewards[keep], penalty[rows]
            out.rollouts.append(ro)
            out.rewards.append(rewards)
            out.overlong.append(penalty)
            n_kept += rewards.shape[0]
            if a.name != "dapo" or n_kept >= want or out.refills >= a.max_refills:
                break
            out.refills += 1
        return out

    def train_step(self, step: int, sigma: float) -> dict[str, float]:
        a = self.cfg.algo
        t0 = time.monotonic()
        self.noise.begin_step(step, sigma)
        with self.noise.rollout():
            self.rollout.sync()  # this step's noisy norms and current LoRA into the engine (hf: no-op)
            self.begin_sampling(step)
            sampled = self.rollout_step(step)
        ros, rewards_list, generated, refills = sampled.rollouts, sampled.rewards, sampled.generated, sampled.refills
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
            "train/lr": warmup_lr(step, a.lr, a.lr_warmup_steps),
            "noise/sigma": float(sigma),
        }
        if a.overlong_buffer_len:
            pen = torch.cat(sampled.overlong)
            metrics["train/overlong_penalty_mean"] = float(pen.mean()) if pen.numel() else 0.0
            metrics["train/overlong_frac"] = float((pen < 0).float().mean()) if pen.numel() else 0.0
        if n_seqs == 0:  # DAPO: every group uninformative even after refills; nothing to learn from
            metrics.update({"train/loss": 0.0, "train/clipfrac": 0.0})
        else:
            ro = _cat_rollouts(ros, self.tokenizer)
            adv = grpo.group_advantages(torch.cat(rewards_list, 0)).flatten()
            stats = self.update(ro, adv, step)
            m = ro.response_mask.float()
            # how far the (noisy) sampler's log-probs are from the training forward's (each
            # sequence's first forward of the step, i.e. before its own mini-batch's update)
            gap = float(((stats.first_logp - ro.logp).abs() * m).sum() / m.sum().clamp(min=1.0))
            metrics.update({"train/loss": sum(stats.losses) / len(stats.losses), "train/clipfrac": stats.clipfrac,
                            "train/rollout_logp_gap": gap, "train/grad_norm": sum(stats.grad_norms) / len(stats.grad_norms),
                            "train/updates": float(len(stats.losses))})
        t2 = time.monotonic()
        self.phase_s["train"] += t2 - t1
        metrics["time/step_s"] = t2 - t0
        metrics["time/rollout_s"] = t1 - t0
        metrics["time/train_s"] = t2 - t1
        metrics["perf/tokens_per_s"] = n_tokens / max(t2 - t0, 1e-9)
        return metrics

    def update(self, ro: Rollout, advantages: torch.Tensor, step: int) -> UpdateStats:
        """This step's optimizer updates on the scored rollout (objective/ppo.py), at its warm-up lr."""
        for group in self.optim.param_groups:
            group["lr"] = warmup_lr(step, self.cfg.algo.lr, self.cfg.algo.lr_warmup_steps)
        return ppo_update(
            self.response_logp, ro, advantages, algo=self.cfg.algo, optimizer=self.optim, params=self.params,
            step=step, training=self._training, scoring=self._scoring,
        )

    @contextlib.contextmanager
    def _training(self) -> Iterator[None]:
        """The training forward/backward: noise per apply_to, dropout on (if any)."""
        with self.noise.training():
            self.model.train()
            try:
                yield
            finally:
                self.model.eval()

    @contextlib.contextmanager
    def _scoring(self) -> Iterator[None]:
        """The old-policy forward before the updates: same weights as training, eval mode."""
        with self.noise.training():
            yield

    def response_logp(self, ro: Rollout) -> torch.Tensor:
        """Log-probs of the sampled response tokens under the current policy at the sampling temperature."""
        return response_logprobs(
            self.model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask,
            temperature=self.cfg.algo.temperature, chunk_tokens=self.cfg.algo.logprob_chunk_tokens,
        )

    def close(self) -> None:
        self.rollout.close()  # a vLLM engine frees its GPU memory for the next trial
        self.noise.remove()
        if self.quant is not None:
            self.quant.remove()


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

    Step convention (decided): training step s (1-based) uses quant.noise_plan.sigma_at(s - 1, total),
    the schedule at the number of updates completed before its rollout, i.e. at the version of
    the policy that samples. This is what the team's fork does (recipe/dapo/dapo_ray_trainer.py
    calls update_noise_injection_step(current_step=global_steps) after step s's actor update, for
    the next rollout; step 1 sees current_step 0), so a config exported to the fork gets the
    schedule this trainer tuned. QeRL's TRL trainer (replacement/trainer.py) increments
    update_step to s before step s's rollout, i.e. sigma_at(s): every stage edge one step
    earlier, one noise-free step instead of total/num_stages. Here interval 0 (noise-free) covers
    the first total/num_stages updates and the last interval is reached before the run ends.
    """
    n = cfg.noise
    if not n.enabled:
        return [0.0] * cfg.steps.total
    plan = n.plan()
    return [plan.sigma_at(s - 1, cfg.steps.total) for s in range(1, cfg.steps.total + 1)]


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
        trainer: Trainer | None = None
        oom = None
        try:
            trainer = Trainer(cfg, start=t_start)  # user-input errors propagate from here
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            oom = f"out of GPU memory while loading: {_one_line(exc)}"
        if trainer is None:  # the exception (and the frames holding what was loaded) is gone here
            free_device_memory()
            return TrialResult(status="failed", reason=oom, wall_time_s=time.monotonic() - t_start)
        try:
            return _run(trainer, cfg, report, t_start)
        finally:
            # a reused worker runs the next trial in this process: engine first, then every
            # reference to this trial's tensors, then the allocator's cache (device_memory.py)
            trainer.close()
            del trainer
            free_device_memory()


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
        if is_out_of_memory(exc):
            return result("failed", f"out of GPU memory at step {step}: {_one_line(exc)}")
        return result("failed", f"exception at step {step}: {_one_line(exc)}")
    if state["value"] is not None and not math.isfinite(state["value"]):
        return result("failed", f"non-finite validation value at step {state['step']}")
    return result("complete")
