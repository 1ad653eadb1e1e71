"""TrialConfig: everything one trial of the built-in trainer needs, validated up front.

The defaults are the embedded tiny CPU setup (what `make sweep` runs): the shipped tiny Qwen2,
the synthetic arithmetic task, MXFP4 W4A4 with STE, LoRA r=8 on all projections, GRPO with
16 prompts x 8 samples, lr 2e-3, 20 steps validated at 0/5/10/15/20. Bad input fails here, in one line
naming the key path, instead of minutes into a trial.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from quant.noise_plan import NoisePlan

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelCfg(_Section):
    path: str = "tiny"  # "tiny" = the shipped checkpoint; else a local Hugging Face directory
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class TaskCfg(_Section):
    name: Literal["tiny-arith", "gsm8k"] = "tiny-arith"
    train_path: str | None = None  # gsm8k: local parquet/jsonl in verl's schema
    val_path: str | None = None
    # The final step (the objective) is scored on the first num_val held-out problems; earlier
    # validations (pruning rungs, step 0) on the first num_val_intermediate of the same ones
    # (capped at num_val; None = all num_val). 1,000 keeps one binomial standard error of the
    # score near 1.4 points; the subset keeps four intermediate validations cheap.
    num_val: int = Field(1000, ge=1)
    num_val_intermediate: int | None = Field(300, ge=1)
    max_prompt_len: int = Field(512, ge=1)
    max_response_len: int = Field(12, ge=1)  # tiny answers: "#### -99" + EOS = 9 tokens


class QuantCfg(_Section):
    format: Literal["mxfp4", "nvfp4", "none"] = "mxfp4"
    mode: Literal["w4a4", "w4a16"] = "w4a4"
    ste: bool = True
    exclude: list[str] | None = None  # regexes; None = quant.model's DEFAULT_EXCLUDE


class LoraCfg(_Section):
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_PROJECTIONS))
    dropout: float = Field(0.0, ge=0, lt=1)


class AlgoCfg(_Section):
    name: Literal["grpo", "dapo"] = "grpo"
    # On the shipped tiny checkpoint (seed 0, 20 steps): fp32 46 -> 57 % at 5e-4, 46 -> 63 % at
    # 2e-3; MXFP4 W4A4 44 -> 54 % at 5e-4, 44 -> 60 % at 2e-3 (no instability within 20 steps).
    lr: float = Field(2e-3, gt=0)
    prompts_per_step: int = Field(16, ge=1)
    samples_per_prompt: int = Field(8, ge=2)
    temperature: float = Field(1.0, gt=0)
    clip_low: float | None = Field(None, ge=0)  # None: 0.2 for both algorithms
    clip_high: float | None = Field(None, ge=0)  # None: 0.2 for GRPO, 0.28 for DAPO
    max_refills: int = Field(2, ge=0)  # DAPO: extra generation rounds to replace dropped groups
    max_response_len: int | None = Field(None, ge=1)  # None: task.max_response_len
    # Old-policy log-probs for the clipped ratio. "policy" (verl's): the policy's own before this
    # step's updates (with one update per step: the training forward's, detached, ratio 1; with
    # several: one no-grad forward before the first, see objective/ppo.py). "rollout": the
    # sampler's log-probs, so tokens whose probability the noise moved beyond the clip range stop
    # contributing (an importance-corrected variant).
    old_logprobs: Literal["policy", "rollout"] = "policy"
    # PPO updates like verl's actor (actor_rollout_ref.actor.*): `mini_batch_size` prompts (their
    # samples_per_prompt responses each) per optimizer step, verl's ppo_mini_batch_size (None = all
    # of the step's prompts: one update); `ppo_epochs` passes over the mini-batches; dual-clip bound
    # `clip_ratio_c` on negative-advantage tokens (verl's default 3.0; None = off).
    mini_batch_size: int | None = Field(None, ge=1)
    ppo_epochs: int = Field(1, ge=1)
    clip_ratio_c: float | None = Field(3.0, gt=1)
    # Learning rate: linear warm-up over the first `lr_warmup_steps` training steps, then constant
    # (verl's get_constant_schedule_with_warmup stepped once per training step: step s uses
    # lr * (s - 1) / lr_warmup_steps while s <= lr_warmup_steps, so step 1 has lr 0).
    lr_warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)  # AdamW's decoupled weight decay (verl's default is 0.01)
    grad_clip: float = Field(1.0, gt=0)
    # DAPO's overlong reward shaping (verl's DAPORewardManager, reward_model.overlong_buffer.*): a
    # response longer than max_response_len - overlong_buffer_len tokens loses
    # (excess / overlong_buffer_len) * overlong_penalty_factor, at most the factor. 0 = off.
    # Groups are still filtered on the unshaped score (filter_groups.metric=acc).
    overlong_buffer_len: int = Field(0, ge=0)
    overlong_penalty_factor: float = Field(1.0, ge=0)
    # Memory (objective/logprobs.py, objective/ppo.py): sequences per forward/backward pass, their
    # gradients accumulated (None = the whole mini-batch in one pass; verl's
    # ppo_micro_batch_size_per_gpu); response tokens per LM-head chunk (at most this many rows of
    # full-vocabulary fp32 logits exist at once); activation checkpointing of the decoder layers.
    micro_batch_size: int | None = Field(None, ge=1)
    logprob_chunk_tokens: int = Field(1024, ge=1)
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _check(self) -> AlgoCfg:
        if self.mini_batch_size is not None and self.mini_batch_size > self.prompts_per_step:
            raise ValueError(
                f"algo.mini_batch_size ({self.mini_batch_size}) > algo.prompts_per_step ({self.prompts_per_step}); "
                "a mini-batch counts prompts, like verl's ppo_mini_batch_size"
            )
        return self

    @property
    def updates_per_epoch(self) -> int:
        """Optimizer steps per pass over a full step's batch (E13h: 128 prompts / 32 = 4)."""
        return -(-self.prompts_per_step // (self.mini_batch_size or self.prompts_per_step))

    @property
    def eps_low(self) -> float:
        return 0.2 if self.clip_low is None else self.clip_low

    @property
    def eps_high(self) -> float:
        if self.clip_high is not None:
            return self.clip_high
        return 0.28 if self.name == "dapo" else 0.2


class StepsCfg(_Section):
    total: int = Field(20, ge=1)
    val_at: list[int] = Field(default_factory=lambda: [0, 5, 10, 15, 20])

    @model_validator(mode="after")
    def _check(self) -> StepsCfg:
        bad = [s for s in self.val_at if s < 0 or s > self.total]
        if bad:
            raise ValueError(f"steps.val_at: {bad} outside 0..steps.total={self.total}")
        if self.total not in self.val_at:
            # The objective is the final step's accuracy; a run validated earlier would report an
            # older model as its result. Rejected rather than silently appended, so the pruning
            # rungs (the validation steps before the final one) are exactly what the file says.
            raise ValueError(
                f"steps.val_at must include steps.total={self.total} (the objective is the final step's accuracy)"
            )
        self.val_at = sorted(set(self.val_at))
        return self


class NoiseCfg(_Section):
    """The trainer's view of a quant.noise_plan.NoisePlan plus when to apply it.

    The fields mirror the plan's so a study file or `--set noise.sigma_start=...` can write
    them; validation is the plan's own (`plan()` builds it), never a second copy of its rules.
    """

    enabled: bool = False
    sigma_start: float = Field(0.05, ge=0)
    sigma_end: float = Field(0.0005, ge=0)
    num_stages: int = 10
    site: Literal["rmsnorm", "linear"] = "rmsnorm"
    apply_to: Literal["rollout", "both"] = "rollout"
    layer_multipliers: list[float] | None = None  # None = 1.0 on every decoder layer

    @model_validator(mode="after")
    def _check(self) -> NoiseCfg:
        try:
            self.plan()
        except ValueError as exc:  # the plan's messages start with the field they name
            text = str(exc)
            raise ValueError("noise." + ("layer_" if text.startswith("multipliers") else "") + text) from None
        return self

    def plan(self) -> NoisePlan:
        """The NoisePlan these fields describe (whether or not noise is enabled)."""
        return NoisePlan(
            sigma_start=self.sigma_start,
            sigma_end=self.sigma_end,
            num_stages=self.num_stages,
            site=self.site,
            multipliers=None if self.layer_multipliers is None else tuple(self.layer_multipliers),
        )

    @classmethod
    def from_plan(cls, plan: NoisePlan, *, apply_to: Literal["rollout", "both"] = "rollout") -> NoiseCfg:
        """Noise switched on with `plan`'s values."""
        return cls(
            enabled=True,
            sigma_start=plan.sigma_start,
            sigma_end=plan.sigma_end,
            num_stages=plan.num_stages,
            site=plan.site,
            apply_to=apply_to,
            layer_multipliers=None if plan.multipliers is None else list(plan.multipliers),
        )


class RolloutCfg(_Section):
    backend: Literal["hf", "vllm"] = "hf"
    val_batch_size: int = Field(512, ge=1)
    # vllm: the share of GPU memory the colocated engine takes (weights + KV cache); the rest is
    # the training step's (objective/rollout/vllm_backend.py)
    gpu_memory_utilization: float = Field(0.4, gt=0, lt=1)


class TrialConfig(_Section):
    """One trial of the built-in trainer; see the module docstring for the defaults."""

    seed: int = 0
    model: ModelCfg = Field(default_factory=ModelCfg)
    task: TaskCfg = Field(default_factory=TaskCfg)
    quant: QuantCfg = Field(default_factory=QuantCfg)
    lora: LoraCfg = Field(default_factory=LoraCfg)
    algo: AlgoCfg = Field(default_factory=AlgoCfg)
    steps: StepsCfg = Field(default_factory=StepsCfg)
    noise: NoiseCfg = Field(default_factory=NoiseCfg)
    rollout: RolloutCfg = Field(default_factory=RolloutCfg)
    timeout_s: float | None = Field(None, gt=0)
    # torch intra-op threads for this trial. 1, not 2: on the shared 2-core machine with other
    # work running, 2 threads made the tiny model's generation 14x slower (0.94 s -> 13 s, OpenMP
    # threads spinning against each other); the tiny model's ops are too small to gain from 2.
    threads: int = Field(1, ge=1)

    @property
    def response_len(self) -> int:
        return self.algo.max_response_len or self.task.max_response_len

    @model_validator(mode="after")
    def _check_overlong(self) -> TrialConfig:
        if self.algo.overlong_buffer_len >= self.response_len:
            raise ValueError(
                f"algo.overlong_buffer_len ({self.algo.overlong_buffer_len}) must be < the response length "
                f"({self.response_len})"
            )
        return self


def _one_line(err: ValidationError) -> str:
    """The first pydantic error as `key.path: message` (one line, names the key)."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    msg = str(e["msg"]).removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    text = f"{loc}: {msg}" if loc else msg
    n = len(err.errors())
    return text + (f" (and {n - 1} more error(s))" if n > 1 else "")


def load_config(config: TrialConfig | dict[str, Any] | None) -> TrialConfig:
    """Validate a config dict (or pass a TrialConfig through); ValueError with a one-line message."""
    if isinstance(config, TrialConfig):
        return config
    try:
        return TrialConfig.model_validate(config or {})
    except ValidationError as err:
        raise ValueError(f"trial config: {_one_line(err)}") from None
