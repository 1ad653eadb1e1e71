"""quant.noise: QeRL's schedule, SRDD multipliers, and the AQN/RIN injector."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM

from quant.noise import NoiseInjector, find_decoder_layers
from quant.noise_plan import layer_multipliers, sigma_at

# --- schedule -------------------------------------------------------------------------------

R8 = 0.01 ** (1 / 8)  # one stage of 0.05 -> 0.0005 over 10 stages (8 geometric steps)


@pytest.mark.parametrize(
    "step, total, s0, s1, stages, expected",
    [
        # 20 steps, 10 stages: interval 2; interval 0 is noise-free
        (0, 20, 0.05, 0.0005, 10, 0.0),
        (1, 20, 0.05, 0.0005, 10, 0.0),
        (2, 20, 0.05, 0.0005, 10, 0.05),
        (3, 20, 0.05, 0.0005, 10, 0.05),
        (4, 20, 0.05, 0.0005, 10, 0.05 * R8),  # 0.0281171
        (10, 20, 0.05, 0.0005, 10, 0.005),  # k=5: 0.05 * 0.01**(4/8)
        (17, 20, 0.05, 0.0005, 10, 0.05 * R8**7),
        (18, 20, 0.05, 0.0005, 10, 0.0005),
        (19, 20, 0.05, 0.0005, 10, 0.0005),  # the last step uses the last level
        (20, 20, 0.05, 0.0005, 10, 0.0005),  # step == total is capped at num_stages - 1
        (99, 20, 0.05, 0.0005, 10, 0.0005),
        # 29 steps (one GSM8K epoch), interval 2.9: edges computed exactly
        (2, 29, 0.01, 0.0001, 10, 0.0),
        (3, 29, 0.01, 0.0001, 10, 0.01),
        (26, 29, 0.01, 0.0001, 10, 0.01 * 0.01 ** (7 / 8)),
        (27, 29, 0.01, 0.0001, 10, 0.0001),
        # three stages: 0, start, end
        (0, 9, 0.08, 0.001, 3, 0.0),
        (3, 9, 0.08, 0.001, 3, 0.08),
        (6, 9, 0.08, 0.001, 3, 0.001),
        # constant sigma
        (0, 10, 0.02, 0.02, 5, 0.0),
        (2, 10, 0.02, 0.02, 5, 0.02),
        (9, 10, 0.02, 0.02, 5, 0.02),
        # decay to zero is allowed (0 ** positive = 0)
        (9, 10, 0.02, 0.0, 5, 0.0),
        (2, 10, 0.02, 0.0, 5, 0.02),
    ],
)
def test_sigma_table(step, total, s0, s1, stages, expected):
    assert sigma_at(step, total, s0, s1, stages) == pytest.approx(expected, rel=1e-12, abs=0.0)


def test_schedule_interval_comes_from_real_step_count():
    """The fork took total = epochs x dataloader length: a run cut short at 20 stayed mid-schedule."""
    real = [sigma_at(s, 20, 0.05, 0.0005, 10) for s in range(21)]
    wrong = [sigma_at(s, 58, 0.05, 0.0005, 10) for s in range(21)]
    assert real[-1] == pytest.approx(0.0005)
    assert wrong[-1] == pytest.approx(0.05 * R8**2)
    assert len({round(v, 12) for v in real}) == 10  # every stage visited
    assert all(a >= b for a, b in zip(real[2:], real[3:]))  # non-increasing after interval 0


@pytest.mark.parametrize(
    "args, words",
    [
        ((0, 20, 0.05, 0.0005, 2), "num_stages"),
        ((0, 0, 0.05, 0.0005, 10), "total_steps"),
        ((-1, 20, 0.05, 0.0005, 10), "step"),
        ((0, 20, -0.05, 0.0005, 10), "sigma_start"),
        ((0, 20, 0.05, -1.0, 10), "sigma_end"),
        ((0, 20, 0.0, 0.01, 10), "sigma_start is 0"),
        ((0, 20, float("nan"), 0.01, 10), "sigma_start"),
    ],
)
def test_sigma_rejects_bad_input(args, words):
    with pytest.raises(ValueError, match=words):
        sigma_at(*args)


# --- multipliers ----------------------------------------------------------------------------

QWEN_MULT = [0.83, 0.89, 0.93, 0.93, 0.93, 0.98, 0.99, 1.01, 1.00, 1.02, 1.06, 1.10, 1.12, 1.11,
             1.15, 1.17, 1.15, 1.12, 1.09, 1.07, 1.02, 0.99, 0.96, 0.94, 0.91, 0.90, 0.79, 0.88]


def qwen_errors() -> list[float]:
    """DOMAIN.md's per-layer errors: measured where listed, else multiplier x 36.4 %."""
    errs = [m * 36.4 for m in QWEN_MULT]
    measured = {15: 42.65, 14: 41.94, 16: 41.85, 17: 40.77, 12: 40.60, 13: 40.36, 11: 39.94, 18: 39.50,
                19: 38.96, 10: 38.57, 0: 30.08, 2: 33.74, 3: 33.67, 26: 28.61, 27: 32.03}
    for i, e in measured.items():
        errs[i] = e
    return errs


def test_multipliers_alpha_one_match_domain_numbers():
    m = layer_multipliers(qwen_errors(), None, 1.0)
    assert len(m) == 28
    assert m[15] == pytest.approx(1.17, abs=0.01)
    assert m[0] == pytest.approx(0.83, abs=0.01)
    assert sum(m) / 28 == pytest.approx(1.0, rel=1e-12)
    assert all(a == pytest.approx(b, abs=0.015) for a, b in zip(m, QWEN_MULT))


def test_multipliers_zones_alpha_and_mean_over_all_layers():
    errs = [1.0, 2.0, 3.0, 6.0]  # mean 3
    assert layer_multipliers(errs, {1, 3}, 1.0) == pytest.approx([0.0, 2 / 3, 0.0, 2.0])
    assert layer_multipliers(errs, {1, 3}, 0.0) == [0.0, 1.0, 0.0, 1.0]
    assert layer_multipliers(errs, None, 0.0) == [1.0] * 4
    assert layer_multipliers(errs, None, 2.0) == pytest.approx([1 / 9, 4 / 9, 1.0, 4.0])
    assert layer_multipliers(errs, set(), 1.0) == [0.0] * 4


@pytest.mark.parametrize(
    "errors, zones, alpha, words",
    [
        ([], None, 1.0, "at least one"),
        ([1.0, 0.0], None, 1.0, r"bad layers: \[1\]"),
        ([1.0, -2.0], None, 1.0, "bad layers"),
        ([1.0, 2.0], {2}, 1.0, r"\[2\] out of range for 2"),
        ([1.0, 2.0], {-1}, 1.0, "out of range"),
        ([1.0, 2.0], None, -0.5, "alpha"),
    ],
)
def test_multipliers_reject_bad_input(errors, zones, alpha, words):
    with pytest.raises(ValueError, match=words):
        layer_multipliers(errors, zones, alpha)


# --- injector -------------------------------------------------------------------------------

LAYERS = 4


def wide_qwen(dtype: torch.dtype = torch.float32) -> Qwen2ForCausalLM:
    """Hidden 512: 1,024 norm weights per layer, enough for a per-layer std estimate."""
    cfg = Qwen2Config(vocab_size=32, hidden_size=512, intermediate_size=64, num_hidden_layers=LAYERS,
                      num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=32)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(dtype).eval()
    with torch.no_grad():  # norms start at exactly 1; make them distinct so restoration is checked
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def model() -> Qwen2ForCausalLM:
    return wide_qwen()


def norm_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "norm" in n}


def layer_deltas(model, clean) -> list[torch.Tensor]:
    now = norm_weights(model)
    return [torch.cat([(now[n] - clean[n]).flatten() for n in clean if f"layers.{i}." in n]) for i in range(LAYERS)]


MULTS = [1.0, 0.5, 0.0, 2.0]


def test_rmsnorm_noise_std_per_layer_and_zero_layers_untouched(model):
    clean = norm_weights(model)
    inj = NoiseInjector(model, site="rmsnorm", multipliers=MULTS, seed=3)
    sigma = 0.02
    rec = inj.begin_step(5, sigma)
    with inj.rollout():
        assert inj.active
        deltas = layer_deltas(model, clean)
        now = norm_weights(model)
    for i, m in enumerate(MULTS):
        if m == 0:
            assert torch.count_nonzero(deltas[i]) == 0
            assert rec["std"][i] == 0.0
        else:
            assert deltas[i].numel() == 1024
            assert deltas[i].std().item() == pytest.approx(sigma * m, rel=0.1)
            assert rec["std"][i] == pytest.approx(deltas[i].std(unbiased=False).item(), rel=1e-4)
            assert abs(deltas[i].mean().item()) < 4 * sigma * m / math.sqrt(1024)
    final = now["model.norm.weight"] - clean["model.norm.weight"]  # final norm: the last layer's multiplier
    assert final.std().item() == pytest.approx(sigma * MULTS[-1], rel=0.1) and rec["final_norm"]["multiplier"] == MULTS[-1]
    assert rec["step"] == 5 and rec["sigma"] == sigma and rec["multipliers"] == MULTS
    assert inj.records == [rec]
    after = norm_weights(model)
    assert all(torch.equal(after[n], clean[n]) for n in clean)  # restored bit-exactly
    assert not inj.active
    inj.remove()


def test_no_accumulation_across_steps(model):
    clean = norm_weights(model)
    inj = NoiseInjector(model, multipliers=MULTS, seed=1)
    inj.apply(0.05, 1)
    step1 = layer_deltas(model, clean)
    inj.apply(0.05, 2)  # no restore in between: must still be drawn around the clean weights
    step2 = layer_deltas(model, clean)
    inj.restore()
    fresh = NoiseInjector(model, multipliers=MULTS, seed=1)
    fresh.apply(0.05, 2)
    expected2 = layer_deltas(model, clean)
    fresh.remove()
    for i in (0, 1, 3):
        assert torch.equal(step2[i], expected2[i])
        assert not torch.equal(step1[i], step2[i])
        assert step2[i].std().item() == pytest.approx(0.05 * MULTS[i], rel=0.1)  # not sqrt(2) larger
    # many steps in a row: still one step's worth of noise
    for s in range(3, 13):
        inj.begin_step(s, 0.05)
        with inj.rollout():
            last = layer_deltas(model, clean)
    assert last[3].std().item() == pytest.approx(0.1, rel=0.1)
    assert all(torch.equal(v, clean[n]) for n, v in norm_weights(model).items())
    inj.remove()


def test_apply_to_rollout_keeps_training_clean_and_both_does_not(model):
    clean = norm_weights(model)
    ids = torch.randint(0, 32, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    rollout_only = NoiseInjector(model, multipliers=[1.0] * LAYERS, seed=0, apply_to="rollout")
    rollout_only.begin_step(4, 0.05)
    with rollout_only.training(), torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, ref)
    with rollout_only.rollout(), torch.no_grad():
        noisy = model(input_ids=ids).logits
        with rollout_only.training():  # nested: clean inside, noisy again after
            assert torch.equal(model(input_ids=ids).logits, ref)
        assert torch.equal(model(input_ids=ids).logits, noisy)
    assert not torch.equal(noisy, ref)
    rollout_only.remove()
    both = NoiseInjector(model, multipliers=[1.0] * LAYERS, seed=0, apply_to="both")
    both.begin_step(4, 0.05)
    with both.training(), torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, noisy)
    both.remove()
    assert all(torch.equal(v, clean[n]) for n, v in norm_weights(model).items())


def test_determinism_for_a_seed(model):
    clean = norm_weights(model)
    draws = []
    for seed in (7, 7, 8):
        inj = NoiseInjector(model, multipliers=MULTS, seed=seed)
        inj.begin_step(3, 0.01)
        with inj.rollout():
            draws.append(layer_deltas(model, clean))
        inj.remove()
    assert all(torch.equal(a, b) for a, b in zip(draws[0], draws[1]))
    assert not torch.equal(draws[0][0], draws[2][0])


def test_sigma_zero_and_rollout_before_begin_step(model):
    clean = norm_weights(model)
    inj = NoiseInjector(model, multipliers=MULTS)
    with pytest.raises(RuntimeError, match="begin_step"):
        with inj.rollout():
            pass
    rec = inj.begin_step(0, 0.0)  # interval 0 of the schedule
    with inj.rollout():
        assert all(torch.equal(v, clean[n]) for n, v in norm_weights(model).items())
    assert rec["std"] == [0.0] * LAYERS
    inj.remove()
    with pytest.raises(RuntimeError, match="removed"):
        inj.begin_step(1, 0.1)


def test_injector_logs_sigma_and_multipliers(model, caplog):
    inj = NoiseInjector(model, multipliers=MULTS, seed=0)
    with caplog.at_level(logging.INFO, logger="quant.noise"):
        inj.begin_step(7, 0.0123)
    lines = [r.getMessage() for r in caplog.records if r.name == "quant.noise"]
    assert len(lines) == 1
    assert "step=7" in lines[0] and "sigma=0.0123" in lines[0] and "multipliers=[1 0.5 0 2]" in lines[0]
    assert "layers_with_noise=3/4" in lines[0]
    inj.remove()


def test_bf16_norms_report_noise_lost_to_rounding(caplog):
    model = wide_qwen(torch.bfloat16)
    clean = norm_weights(model)
    inj = NoiseInjector(model, multipliers=[1.0] * LAYERS)
    with caplog.at_level(logging.WARNING, logger="quant.noise"):
        tiny = inj.begin_step(1, 0.0005)
    big = inj.begin_step(2, 0.05)
    assert all(a < 0.5 * d for a, d in zip(tiny["std_applied"], tiny["std"]))
    assert any("survives rounding" in r.getMessage() for r in caplog.records)
    assert all(a == pytest.approx(d, rel=0.1) for a, d in zip(big["std_applied"], big["std"]))
    with inj.rollout():
        assert any(not torch.equal(v, clean[n]) for n, v in norm_weights(model).items())
    assert all(torch.equal(v, clean[n]) for n, v in norm_weights(model).items())
    inj.remove()


def test_linear_site_multiplies_outputs_per_feature(model):
    inj = NoiseInjector(model, site="linear", multipliers=MULTS, seed=2)
    q1 = model.model.layers[3].self_attn.q_proj  # m = 2, 512 output features
    q2 = model.model.layers[2].self_attn.q_proj  # m = 0
    x = torch.randn(8, 512, generator=torch.Generator().manual_seed(0))
    clean1, clean2 = q1(x), q2(x)
    sigma = 0.01
    inj.begin_step(6, sigma)
    with inj.rollout():
        noisy1, noisy2 = q1(x), q2(x)
    rel = noisy1 / clean1 - 1
    assert torch.allclose(rel, rel[0].expand_as(rel), atol=1e-4)  # one factor per output feature
    assert rel[0].std().item() == pytest.approx(sigma * 2.0, rel=0.12)
    assert torch.equal(noisy2, clean2)
    assert torch.equal(q1(x), clean1)  # hook idle outside rollout()
    with inj.rollout():  # same step: the same noise again
        assert torch.equal(q1(x), noisy1)
    inj.begin_step(7, sigma)  # a new step: fresh noise, in every output dtype
    with inj.rollout():
        assert not torch.equal(q1(x), noisy1)
        rel7 = q1(x) / clean1 - 1
        xb = x.bfloat16()
        saved = {k: v.clone() for k, v in q1.state_dict().items()}  # the model fixture is shared
        q1.bfloat16()
        try:
            yb = q1(xb)
            clean_b = torch.nn.functional.linear(xb, q1.weight, q1.bias)
        finally:
            q1.float()
            q1.load_state_dict(saved)
        assert yb.dtype == torch.bfloat16  # the noise is cast to the output dtype, no promotion
        ratio = yb.float() / clean_b.float() - 1  # the step's per-feature factors, to bf16 precision
        assert not torch.equal(yb, clean_b)
        assert torch.allclose(ratio, rel7.expand_as(ratio), atol=0.01)
    assert inj.records[-1]["std"][3] == pytest.approx(sigma * 2.0, rel=0.12)
    inj.remove()
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_through_peft_wrapper_and_layer_count_check():
    base = wide_qwen()
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert len(find_decoder_layers(peft_model)) == LAYERS
    inj = NoiseInjector(peft_model, site="linear", multipliers=[1.0] * LAYERS)
    hooked = [n for n, m in peft_model.named_modules() if m._forward_hooks]
    assert len(hooked) == LAYERS * 7  # one per projection, the LoRA wrapper not its base_layer
    assert not any(n.endswith("base_layer") or "lora_" in n for n in hooked)
    inj.remove()
    norm = NoiseInjector(peft_model, multipliers=[0.0, 0.0, 0.0, 1.0])
    rec = norm.begin_step(1, 0.03)
    assert rec["std"][:3] == [0.0] * 3 and rec["std"][3] == pytest.approx(0.03, rel=0.1)
    norm.remove()
    with pytest.raises(ValueError, match="3 noise multipliers for 4 decoder layers"):
        NoiseInjector(peft_model, multipliers=[1.0] * 3)
    with pytest.raises(ValueError, match="noise site"):
        NoiseInjector(peft_model, site="weights", multipliers=[1.0] * 4)
    with pytest.raises(ValueError, match="apply_to"):
        NoiseInjector(peft_model, multipliers=[1.0] * 4, apply_to="training")
    with pytest.raises(ValueError, match="decoder layers"):
        NoiseInjector(torch.nn.Linear(3, 3), multipliers=[1.0])


def test_decoder_layers_found_by_one_rule_shared_with_srdd(model):
    """A shallower, longer 'blocks' list (a vision tower) must not be taken for the decoder layers."""
    from quant import srdd

    class Multimodal(torch.nn.Module):
        def __init__(self, lm: Qwen2ForCausalLM) -> None:
            super().__init__()
            self.config = lm.config
            self.lm = lm
            self.vision = torch.nn.Module()
            self.vision.blocks = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(LAYERS + 3))

    mm = Multimodal(model)
    assert find_decoder_layers(mm) is model.model.layers
    assert srdd.find_decoder_layers(mm) is find_decoder_layers(mm)
    inj = NoiseInjector(mm, multipliers=[1.0] * LAYERS)  # 4 multipliers fit the 4 decoder layers
    inj.remove()
