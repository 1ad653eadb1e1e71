"""Two decisions about the noise, one test each (see quant/noise.py and objective.trainer.sigma_schedule).

1. The final model.norm is noised, with the last decoder layer's multiplier.
2. Training step s (1-based) uses the schedule at s - 1 (updates completed before its rollout), as
   the team's fork does; QeRL's TRL trainer uses update_step = s.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from objective.config import load_config
from objective.rollout.vllm_sync import vllm_state_dict
from objective.trainer import sigma_schedule
from quant.noise import NoiseInjector


def qwen(final_norm: bool = True) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=32, hidden_size=256, intermediate_size=32, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=16)
    model = Qwen2ForCausalLM(cfg).eval()
    if not final_norm:
        model.model.norm = torch.nn.Identity()
    return model


def deltas(model: torch.nn.Module, clean: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: p.detach() - clean[n] for n, p in model.named_parameters() if n in clean}


@pytest.mark.parametrize("last", [1.5, 0.0])
def test_final_norm_gets_the_last_layers_multiplier_and_changes_no_layers_noise(last: float) -> None:
    mults, sigma = [1.0, 0.5, last], 0.05
    model = qwen()
    clean = {n: p.detach().clone() for n, p in model.named_parameters() if "norm" in n}
    inj = NoiseInjector(model, multipliers=mults, seed=7)
    rec = inj.begin_step(3, sigma)
    with inj.rollout():
        d = deltas(model, clean)
        synced = vllm_state_dict(model, inj)  # what a vLLM engine receives
    final = d["model.norm.weight"]
    if last == 0:
        assert torch.count_nonzero(final) == 0 and rec["final_norm"]["std"] == 0.0
    else:
        assert final.std().item() == pytest.approx(sigma * last, rel=0.15)
        assert rec["final_norm"] == {"multiplier": last, "std": pytest.approx(final.std(unbiased=False).item(), rel=1e-5),
                                     "std_applied": pytest.approx(final.std(unbiased=False).item(), rel=1e-5)}
        assert torch.equal(synced["model.norm.weight"], clean["model.norm.weight"] + final)
    assert torch.equal(model.model.norm.weight, clean["model.norm.weight"])  # clean again outside
    # drawn after every layer: the layers' noise equals that of the same model without a final norm
    plain = qwen(final_norm=False)
    plain_clean = {n: p.detach().clone() for n, p in plain.named_parameters() if "norm" in n}
    other = NoiseInjector(plain, multipliers=mults, seed=7)
    other.begin_step(3, sigma)
    with other.rollout():
        d_plain = deltas(plain, plain_clean)
    assert set(d_plain) == set(d) - {"model.norm.weight"}
    assert all(torch.equal(d_plain[n], d[n]) for n in d_plain)
    assert "final_norm" not in other.records[-1]


def fork_sigma(step: int, total: int, start: float, end: float, stages: int) -> float:
    """The team's fork (verl/utils/noise_injection.py get_sigma_by_step), written from its code."""
    trend = [start * (end / start) ** (i / (stages - 2)) for i in range(stages - 1)]
    step = min(step, total)
    interval = int(step // (total / (len(trend) + 1)))
    return 0.0 if interval == 0 else trend[min(interval - 1, len(trend) - 1)]


def test_step_s_uses_the_schedule_at_s_minus_1_like_the_fork_not_qerls_s() -> None:
    total, start, end, stages = 20, 0.05, 0.0005, 10
    cfg = load_config({"steps": {"total": total, "val_at": [total]},
                       "noise": {"enabled": True, "sigma_start": start, "sigma_end": end, "num_stages": stages}})
    got = sigma_schedule(cfg)  # got[s - 1] is training step s's sigma
    # the fork: the rollout of step s sees current_step = s - 1 (update_noise_injection_step runs
    # after step s - 1's actor update); QeRL's trainer increments update_step to s before it
    fork = [fork_sigma(s - 1, total, start, end, stages) for s in range(1, total + 1)]
    qerl = [fork_sigma(s, total, start, end, stages) for s in range(1, total + 1)]
    assert got == pytest.approx(fork, rel=1e-12)
    assert got[:2] == [0.0, 0.0] and qerl[:2] == [0.0, pytest.approx(start)]  # QeRL: 1 noise-free step, here 2
    assert got[-2:] == pytest.approx([end, end]) and qerl[-3:] == pytest.approx([end] * 3)
    assert sum(1 for a, b in zip(got, qerl) if not math.isclose(a, b)) == stages - 1  # one step later at each edge
