"""The policy update (objective/ppo.py, objective/logprobs.py) on a tiny LoRA model in float64.

Memory: chunked log-probs, micro-batching and checkpointing change no gradient. PPO like verl:
mini-batches, epochs, old log-probs from the policy before the step's first update.
A random 2-layer Qwen2 with LoRA in float64 (so the comparisons can be tight), a batch with
left-padded prompts and right-padded responses of different lengths, and a reference computed the
plain way: one forward over the whole batch, full-vocabulary log_softmax.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM

from objective.config import AlgoCfg
from objective.logprobs import chunked_token_logprobs, response_logprobs, trim_padding
from objective import grpo
from objective.ppo import ppo_update, warmup_lr
from objective.rollout import Rollout, hf_generate

VOCAB = 61
TEMP = 0.7


def lora_model(checkpointing: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    base = Qwen2ForCausalLM(cfg).double()
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # a trained adapter: gradients reach lora_A too
    if checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def batch(n: int = 7, p: int = 6, r: int = 9) -> tuple[Rollout, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    prompt_len = torch.randint(2, p + 1, (n,), generator=g)
    resp_len = torch.randint(1, r + 1, (n,), generator=g)
    # no row uses the last two response columns nor the first prompt column: trimming has work
    resp_len, prompt_len = resp_len.clamp(max=r - 2), prompt_len.clamp(max=p - 1)
    pid = torch.randint(0, VOCAB, (n, p), generator=g)
    rid = torch.randint(0, VOCAB, (n, r), generator=g)
    pmask = (torch.arange(p)[None] >= p - prompt_len[:, None]).long()
    rmask = (torch.arange(r)[None] < resp_len[:, None]).long()
    pid, rid = pid * pmask, rid * rmask  # pad id 0 where masked
    logp = -torch.rand(n, r, generator=g, dtype=torch.float64) * 3 * rmask  # a sampler's log-probs
    ro = Rollout(pid, pmask, rid, rmask, logp, [f"r{i}" for i in range(n)])
    return ro, torch.randn(n, generator=g, dtype=torch.float64)


def naive_logp(model: torch.nn.Module, ro: Rollout) -> torch.Tensor:
    """The plain way: whole batch, every position's full-vocabulary log_softmax."""
    ids = torch.cat([ro.prompt_ids, ro.response_ids], 1)
    mask = torch.cat([ro.prompt_mask, ro.response_mask], 1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    p = ro.prompt_ids.shape[1]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, p - 1 : -1]
    lp = torch.log_softmax(logits / TEMP, -1).gather(-1, ro.response_ids[..., None]).squeeze(-1)
    return lp * ro.response_mask


def grads_after_update(model: torch.nn.Module, ro: Rollout, adv: torch.Tensor, **algo: object) -> dict[str, torch.Tensor]:
    """The gradient ppo_update leaves in .grad (lr 0: the step itself changes nothing)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0)
    cfg = AlgoCfg(**{"grad_clip": 1e12, "temperature": TEMP, **algo})

    def logp_fn(part: Rollout) -> torch.Tensor:
        return response_logprobs(model, part.prompt_ids, part.prompt_mask, part.response_ids, part.response_mask,
                                 temperature=TEMP, chunk_tokens=cfg.logprob_chunk_tokens)

    ppo_update(logp_fn, ro, adv, algo=cfg, optimizer=opt, params=params, step=1)
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_chunked_log_probs_equal_the_full_vocabulary_log_softmax() -> None:
    model = lora_model()
    ro, _ = batch()
    ref = naive_logp(model, ro)
    for chunk in (1, 5, 4096):
        got = response_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask,
                                temperature=TEMP, chunk_tokens=chunk)
        assert got.shape == ref.shape and got.dtype == torch.float64
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)
        assert torch.all(got[ro.response_mask == 0] == 0)


@pytest.mark.parametrize("name", ["dapo", "grpo"])  # token mean and per-sequence mean
@pytest.mark.parametrize("micro", [1, 3])  # 3 does not divide the 7 sequences
def test_micro_batched_gradients_equal_the_full_batch_gradients(name: str, micro: int) -> None:
    ro, adv = batch()
    # the reference: a plain full-batch loss with ratios against the sampler's log-probs, so the
    # clip is active on part of the tokens
    model = lora_model()
    logp = naive_logp(model, ro)
    ro.logp = (logp.detach() + 0.4 * torch.randn(logp.shape, generator=torch.Generator().manual_seed(5),
                                                  dtype=torch.float64)) * ro.response_mask
    cfg = AlgoCfg(name=name)
    loss, info = grpo.policy_loss(logp, ro.logp, adv, ro.response_mask, eps_low=cfg.eps_low, eps_high=cfg.eps_high,
                                  token_mean=name == "dapo")
    assert 0.05 < info["clipfrac"] < 0.95  # the comparison covers clipped and unclipped tokens
    loss.backward()
    ref = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    full = grads_after_update(lora_model(), ro, adv, name=name, old_logprobs="rollout")
    split = grads_after_update(lora_model(), ro, adv, name=name, old_logprobs="rollout", micro_batch_size=micro,
                               logprob_chunk_tokens=4)
    assert set(ref) == set(full) == set(split) and len(ref) == 12
    for n in ref:
        assert ref[n].abs().max() > 0, n
        torch.testing.assert_close(full[n], ref[n], atol=1e-12, rtol=1e-9)
        torch.testing.assert_close(split[n], ref[n], atol=1e-12, rtol=1e-9)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    ro, adv = batch()
    plain = grads_after_update(lora_model(), ro, adv, name="dapo", micro_batch_size=2)
    ckpt = grads_after_update(lora_model(checkpointing=True), ro, adv, name="dapo", micro_batch_size=2)
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], atol=1e-12, rtol=1e-9)


def test_trim_padding_drops_only_columns_no_row_uses() -> None:
    ro, _ = batch()
    p_ids, p_mask, r_ids, r_mask = trim_padding(ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask)
    assert p_mask.shape[1] == int(ro.prompt_mask.sum(1).max()) < ro.prompt_mask.shape[1]
    assert r_mask.shape[1] == int(ro.response_mask.sum(1).max()) < ro.response_mask.shape[1]
    assert int(p_mask.sum()) == int(ro.prompt_mask.sum()) and int(r_mask.sum()) == int(ro.response_mask.sum())


def test_chunk_logits_are_the_only_full_vocabulary_tensors() -> None:
    """No tensor of (all tokens x vocabulary) is saved for backward: chunks are recomputed."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 1000, bias=False)
    hidden = torch.randn(64, 16, requires_grad=True)
    targets = torch.randint(0, 1000, (64,))
    saved: list[torch.Size] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: (saved.append(t.shape), t)[1], lambda t: t):
        lp = chunked_token_logprobs(hidden, targets, head, temperature=1.0, chunk_tokens=8)
    lp.sum().backward()
    assert max(s.numel() for s in saved) < 64 * 1000  # nothing the size of all logits kept
    ref = torch.log_softmax(head(hidden.detach()), -1).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(lp.detach(), ref)


def test_prefill_asks_for_the_last_position_logits_only() -> None:
    from objective.tiny.tokenizer import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64, eos_token_id=tok.eos_token_id)).eval()
    shapes: list[torch.Size] = []
    model.register_forward_hook(lambda mod, args, out: shapes.append(out.logits.shape))
    ro = hf_generate(model, tok, ["1+2=", "33*4="], max_new_tokens=3, temperature=0.0)
    assert shapes[0] == (2, 1, len(tok))  # the prefill: one position, not the prompt's width
    assert ro.response_ids.shape[0] == 2


# ---- PPO updates like verl -------------------------------------------------------------------
class CountingSGD(torch.optim.SGD):
    def __init__(self, params: list[torch.nn.Parameter], lr: float) -> None:
        super().__init__(params, lr=lr)
        self.steps = 0

    def step(self, closure: object = None) -> None:  # type: ignore[override]
        self.steps += 1
        super().step()


def spy_update(monkeypatch: pytest.MonkeyPatch, **algo: object) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int, int, torch.Tensor]:
    """Run ppo_update on 4 prompts x 2 samples; (old, new) log-probs per loss call, optimizer
    steps, logp_fn calls, and the policy's log-probs before any update."""
    model = lora_model()
    ro, adv = batch(n=8)
    with torch.no_grad():
        before = naive_logp(model, ro)
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = grpo.policy_loss

    def spy(logp: torch.Tensor, old: torch.Tensor, *a: object, **kw: object) -> object:
        calls.append((old.detach().clone(), logp.detach().clone()))
        return real(logp, old, *a, **kw)

    monkeypatch.setattr(grpo, "policy_loss", spy)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = CountingSGD(params, lr=0.5)
    cfg = AlgoCfg(**{"name": "dapo", "prompts_per_step": 4, "samples_per_prompt": 2, "temperature": TEMP, **algo})
    n_fn = 0

    def logp_fn(part: Rollout) -> torch.Tensor:
        nonlocal n_fn
        n_fn += 1
        return response_logprobs(model, part.prompt_ids, part.prompt_mask, part.response_ids, part.response_mask,
                                 temperature=TEMP)

    ppo_update(logp_fn, ro, adv, algo=cfg, optimizer=opt, params=params, step=1)
    return calls, opt.steps, n_fn, before


def test_e13h_shape_four_updates_per_step_against_the_pre_update_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    # E13h: 128 prompts, ppo_mini_batch_size 32 -> 4 optimizer steps; here 4 prompts, mini-batch 1
    calls, steps, n_fn, before = spy_update(monkeypatch, mini_batch_size=1)
    assert AlgoCfg(prompts_per_step=128, mini_batch_size=32).updates_per_epoch == 4
    assert steps == 4 and len(calls) == 4
    assert n_fn == 1 + 4  # one no-grad pass for the old log-probs (whole batch), then one per mini-batch
    for i, (old, new) in enumerate(calls):
        rows = slice(2 * i, 2 * i + 2)  # mini-batch i = prompt i's two samples, in order
        torch.testing.assert_close(old, before[rows], atol=1e-12, rtol=0)  # the pre-update policy
        moved = float((new - old).abs().max())
        if i == 0:
            assert moved < 1e-12  # nothing updated yet: ratio exactly 1
        else:
            assert moved > 1e-6  # earlier mini-batches moved the policy: the ratio and the clip act


def test_epochs_repeat_the_mini_batches_with_the_same_old_log_probs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls, steps, n_fn, before = spy_update(monkeypatch, mini_batch_size=2, ppo_epochs=2)
    assert steps == 4 and n_fn == 1 + 4
    for i, (old, _) in enumerate(calls):
        rows = slice(4 * (i % 2), 4 * (i % 2) + 4)
        torch.testing.assert_close(old, before[rows], atol=1e-12, rtol=0)


def test_one_update_per_step_is_on_policy_without_an_extra_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    calls, steps, n_fn, _ = spy_update(monkeypatch, micro_batch_size=3)
    assert steps == 1 and n_fn == 3 and len(calls) == 3  # 8 sequences in micro-batches of 3: no old-log-prob pass
    assert all(torch.equal(old, new) for old, new in calls)  # verl's on_policy: old = log_prob.detach()


def test_warmup_matches_verls_constant_schedule_with_warmup() -> None:
    # verl: lr_lambda(k) = k / warmup while k < warmup, k = scheduler steps taken = training step - 1
    assert [warmup_lr(s, 1.0, 10) for s in range(1, 13)] == pytest.approx(
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0])
    assert warmup_lr(1, 2e-3, 0) == 2e-3
