"""vllm_sync: a plain HF model loaded with the synced weights reproduces the policy's logits."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM

from objective.rollout.vllm_sync import vllm_state_dict
from quant.model import QuantScheme, quantize_model
from quant.noise import NoiseInjector

CFG = dict(
    vocab_size=48, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=True,
)


def policy(scheme: QuantScheme | None, lora_b_zero: bool = False):
    torch.manual_seed(0)
    model = get_peft_model(Qwen2ForCausalLM(Qwen2Config(**CFG)), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name and not lora_b_zero:
                p.normal_(0, 0.05)  # a trained adapter, not peft's zero init
    handle = quantize_model(model, scheme) if scheme is not None else None
    injector = NoiseInjector(model, site="rmsnorm", multipliers=[1.0, 0.5], seed=1)
    injector.begin_step(1, 0.05)
    return model.eval(), handle, injector


def plain(sd: dict[str, torch.Tensor], activations_fmt: str | None = None) -> Qwen2ForCausalLM:
    m = Qwen2ForCausalLM(Qwen2Config(**CFG)).eval()
    missing, unexpected = m.load_state_dict(sd, strict=True)
    assert not missing and not unexpected
    if activations_fmt:  # the engine's activation quantization; weights arrive already quantized
        quantize_model(m, QuantScheme(fmt=activations_fmt, weights=False, activations=True))
    return m


IDS = torch.randint(0, 48, (3, 10), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("scheme", [None, QuantScheme.w4a16("mxfp4"), QuantScheme.w4a16("nvfp4")])
def test_merged_quantized_noisy_weights_reproduce_the_policy(scheme: QuantScheme | None) -> None:
    model, _, injector = policy(scheme)
    with torch.no_grad():
        with injector.rollout():
            ref = model(input_ids=IDS).logits
            sd = vllm_state_dict(model, injector)
        clean = model(input_ids=IDS).logits
        out = plain(sd)(input_ids=IDS).logits
    assert not any("lora" in k or "base_layer" in k for k in sd)
    assert (ref - clean).abs().max() > 1e-3  # the noise is in the synced norms
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)


def test_synced_weights_are_on_the_format_grid_plus_the_adapter_delta() -> None:
    model, _, injector = policy(QuantScheme.w4a16("mxfp4"))
    sd = vllm_state_dict(model)
    from quant.formats import fake_quantize

    k = model.base_model.model.model.layers[0].mlp.up_proj.weight  # no adapter: pure grid values
    assert torch.equal(sd["model.layers.0.mlp.up_proj.weight"], fake_quantize(k, "mxfp4"))
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    delta = q.get_delta_weight("default")
    assert delta.abs().max() > 0
    assert torch.allclose(sd["model.layers.0.self_attn.q_proj.weight"], q.base_layer.weight + delta)


def test_w4a4_matches_with_an_untrained_adapter() -> None:
    model, _, injector = policy(QuantScheme.w4a4("mxfp4"), lora_b_zero=True)
    with torch.no_grad(), injector.rollout():
        ref = model(input_ids=IDS).logits
        sd = vllm_state_dict(model, injector)
    out = plain(sd, activations_fmt="mxfp4")(input_ids=IDS).logits
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)


def test_linear_site_noise_is_refused() -> None:
    torch.manual_seed(0)
    model = get_peft_model(Qwen2ForCausalLM(Qwen2Config(**CFG)), LoraConfig(r=4, target_modules=["q_proj"]))
    inj = NoiseInjector(model, site="linear", multipliers=[1.0, 1.0], seed=0)
    inj.begin_step(1, 0.1)
    with inj.rollout(), pytest.raises(ValueError, match="site 'linear'"):
        vllm_state_dict(model, inj)
