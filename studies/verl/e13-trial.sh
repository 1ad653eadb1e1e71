#!/usr/bin/env bash
# One noisesweep trial on the team's verl fork (zhshgmail/verl, branch feature/npu-aqn-test):
# the seeds' E13h run (scripts/test_mxfp4_w4a4_ste_fix_e13h.sh) with what a sweep needs changed:
#   - runs recipe.dapo.main_dapo in the FOREGROUND (no nohup, no &, no log file): the command
#     objective reads its console output and owns its process group;
#   - forwards "$@" LAST, so the trial's Hydra overrides (noise, seed, checkpoint folder) reach
#     verl and win over the defaults below (Hydra: the last value of a key wins);
#   - validates every 5 steps and stops at step 20 of the 29-step epoch (the objective is the
#     step-20 accuracy; the fork's noise schedule still spans 29 steps, see docs/verl-fork.md);
#   - console logger only.
# Unchanged from E13h: DAPO (dynamic sampling on acc, overlong buffer 256), train batch 128,
# gen batch 256, ppo mini-batch 32, n=8, LoRA r32/alpha16, lr 1e-5 with 10 warm-up steps, weight
# decay 0.1, clip 0.2/0.25, token-mean loss, no KL; MXFP4 W4A4 + STE on every linear layer except
# lm_head, embed_tokens, the LoRA adapters, layers 0 and 27 and peft's base_layer (182 hooks).
# No noise flags here: the trial's overrides set trainer.noise_injection.*.
#
# Run from the root of the fork's checkout (the study's objective.command.cwd). Paths come from
# the environment (set them in the study's objective.command.env); the defaults are the seeds'.
set -euo pipefail

MODEL_PATH="${MODEL_PATH:-/data/z00637938/hub/models--Qwen--Qwen2.5-1.5B-Instruct/snapshots/989aa7980e4cf806f80c7fef2b1adb7bc71aa306}"
TRAIN_FILE="${TRAIN_FILE:-/data/z00637938/gsm8k/train.parquet}"
VAL_FILE="${VAL_FILE:-/data/z00637938/gsm8k/test.parquet}"
N_GPUS="${N_GPUS:-8}"
OUTPUT_DIR="${OUTPUT_DIR:-/tmp/noisesweep-e13-trial}"
export WANDB_MODE="${WANDB_MODE:-disabled}"

exec python3 -m recipe.dapo.main_dapo \
    data.train_files="${TRAIN_FILE}" \
    data.val_files="${VAL_FILE}" \
    data.train_batch_size=128 \
    data.gen_batch_size=256 \
    data.max_prompt_length=1024 \
    data.max_response_length=1024 \
    data.filter_overlong_prompts=True \
    data.truncation=error \
    actor_rollout_ref.model.path="${MODEL_PATH}" \
    actor_rollout_ref.model.lora_rank=32 \
    actor_rollout_ref.model.lora_alpha=16 \
    actor_rollout_ref.actor.optim.lr=1e-5 \
    actor_rollout_ref.actor.optim.lr_warmup_steps=10 \
    actor_rollout_ref.actor.optim.weight_decay=0.1 \
    actor_rollout_ref.model.use_remove_padding=True \
    actor_rollout_ref.actor.ppo_mini_batch_size=32 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4 \
    actor_rollout_ref.actor.use_kl_loss=False \
    actor_rollout_ref.actor.kl_loss_coef=0.0 \
    actor_rollout_ref.actor.clip_ratio_low=0.2 \
    actor_rollout_ref.actor.clip_ratio_high=0.25 \
    actor_rollout_ref.actor.entropy_coeff=0 \
    actor_rollout_ref.actor.grad_clip=1.0 \
    actor_rollout_ref.actor.loss_agg_mode=token-mean \
    actor_rollout_ref.model.enable_gradient_checkpointing=True \
    actor_rollout_ref.actor.fsdp_config.param_offload=False \
    actor_rollout_ref.actor.fsdp_config.optimizer_offload=False \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.8 \
    actor_rollout_ref.rollout.n=8 \
    actor_rollout_ref.rollout.enable_chunked_prefill=False \
    actor_rollout_ref.rollout.temperature=1.0 \
    actor_rollout_ref.rollout.top_p=1.0 \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4 \
    actor_rollout_ref.ref.fsdp_config.param_offload=True \
    algorithm.adv_estimator=grpo \
    algorithm.use_kl_in_reward=False \
    algorithm.filter_groups.enable=True \
    algorithm.filter_groups.metric=acc \
    algorithm.filter_groups.max_num_gen_batches=5 \
    reward_model.reward_manager=dapo \
    reward_model.overlong_buffer.enable=True \
    reward_model.overlong_buffer.len=256 \
    reward_model.overlong_buffer.penalty_factor=0.5 \
    reward_model.overlong_buffer.log=True \
    trainer.critic_warmup=0 \
    trainer.total_epochs=1 \
    trainer.total_training_steps=20 \
    trainer.test_freq=5 \
    trainer.n_gpus_per_node="${N_GPUS}" \
    trainer.val_before_train=True \
    trainer.save_freq=50 \
    trainer.hw_error_injection.enabled=True \
    trainer.hw_error_injection.error_type=mxfp4 \
    trainer.hw_error_injection.injection_point=both \
    trainer.hw_error_injection.apply_during=both \
    trainer.hw_error_injection.target_modules='["linear"]' \
    ++trainer.hw_error_injection.exclude_modules='["lm_head", "embed_tokens", "lora_A", "lora_B", "layers.0", "layers.27", "base_layer"]' \
    ++trainer.hw_error_injection.use_ste=True \
    trainer.default_local_dir="${OUTPUT_DIR}/checkpoints" \
    trainer.project_name=noisesweep_e13 \
    trainer.experiment_name=mxfp4_w4a4_ste_trial \
    trainer.logger='["console"]' \
    "$@"
