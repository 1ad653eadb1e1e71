"""quant.model: which layers get quantized (plain and peft LoRA), exact removal, STE, cached weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM

import quant.model as qm
from quant.formats import fake_quantize
from quant.model import DEFAULT_EXCLUDE, QuantScheme, quantize_model

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LAYERS = 6


def tiny_qwen(dtype: torch.dtype = torch.float32, frozen: bool = True, seed: int = 0) -> Qwen2ForCausalLM:
    cfg = Qwen2Config(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg).to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(not frozen)
    return model


def lora(model: Qwen2ForCausalLM):
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=PROJ, lora_dropout=0.0, init_lora_weights=False)
    return get_peft_model(model, cfg)


def ids() -> torch.Tensor:
    return torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))


def logits(model, x=None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids() if x is None else x).logits


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def count_hooks(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


# --- scheme ---------------------------------------------------------------------------------

def test_scheme_defaults_and_constructors():
    s = QuantScheme()
    assert (s.fmt, s.weights, s.activations, s.ste, s.include) == ("mxfp4", True, True, True, ())
    assert s.exclude == DEFAULT_EXCLUDE == ("lm_head", "embed_tokens", "lora_A", "lora_B")
    a16 = QuantScheme.w4a16("nvfp4")
    assert (a16.fmt, a16.weights, a16.activations) == ("nvfp4", True, False)
    a4 = QuantScheme.w4a4("mxfp4", ste=False, exclude=["x"])
    assert a4.activations and not a4.ste and a4.exclude == ("x",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a4.fmt = "nvfp4"  # frozen
    assert QuantScheme(include="q_proj").include == ("q_proj",)  # a lone pattern is not split into chars
    assert hash(QuantScheme(exclude=["a"])) == hash(QuantScheme(exclude=("a",)))  # lists become tuples


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(fmt="int4"), ["int4", "mxfp4", "nvfp4"]),
        (dict(weights=False, activations=False), ["nothing"]),
        (dict(exclude=("(",)), ["exclude", "("]),
    ],
)
def test_scheme_rejects_bad_input(kwargs, words):
    with pytest.raises(ValueError) as err:
        QuantScheme(**kwargs)
    assert all(w in str(err.value) for w in words)


# --- selection ------------------------------------------------------------------------------

def test_plain_model_counts_names_and_summary():
    model = tiny_qwen()
    handle = quantize_model(model, QuantScheme.w4a4("mxfp4"))
    expected = [f"model.layers.{i}.{grp}.{p}" for i in range(LAYERS) for grp, p in
                [("self_attn", p) if p.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else ("mlp", p) for p in PROJ]]
    assert handle.module_names == expected
    assert len(handle) == LAYERS * 7
    assert handle.summary().startswith(f"MXFP4 W4A4 (STE): {LAYERS * 7} linear layers quantized, weights cached")
    assert "excluded: lm_head" in handle.summary()
    assert count_hooks(model) == LAYERS * 7
    handle.remove()
    assert count_hooks(model) == 0


def test_lora_model_hooks_base_layer_once_and_excludes_first_last_layer():
    """The fork's 364-instead-of-182 bug: wrapper and base_layer were both hooked."""
    model = lora(tiny_qwen())
    exclude = DEFAULT_EXCLUDE + (r"layers\.0\.", rf"layers\.{LAYERS - 1}\.")
    handle = quantize_model(model, QuantScheme.w4a4("mxfp4", exclude=exclude))
    assert len(handle) == (LAYERS - 2) * 7
    assert all(n.endswith(".base_layer") for n in handle.module_names)
    assert not any(".layers.0." in n or f".layers.{LAYERS - 1}." in n for n in handle.module_names)
    from peft.tuners.lora import LoraLayer

    hooked = [(n, m) for n, m in model.named_modules() if m._forward_pre_hooks]
    assert len(hooked) == (LAYERS - 2) * 7
    assert all(len(m._forward_pre_hooks) == 1 for _, m in hooked)
    assert not any(isinstance(m, LoraLayer) for _, m in hooked)
    assert not any("lora_" in n for n, _ in hooked)
    # adapters are untouched full precision even with an empty exclude list
    handle.remove()
    before = {n: p.clone() for n, p in model.named_parameters() if "lora_" in n}
    handle = quantize_model(model, QuantScheme.w4a4("mxfp4", exclude=()))
    assert len(handle) == LAYERS * 7 + 1  # + lm_head
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if "lora_" in n)
    assert "adapter layers in full precision" in handle.summary()


def test_include_patterns_match_wrapper_name():
    model = lora(tiny_qwen())
    handle = quantize_model(model, QuantScheme.w4a16("nvfp4", include=(r"q_proj$",)))
    assert len(handle) == LAYERS
    assert count_hooks(model) == 0  # W4A16: no activation hooks


def test_double_quantization_is_refused():
    model = tiny_qwen()
    handle = quantize_model(model, QuantScheme())
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(model, QuantScheme())
    handle.remove()
    quantize_model(model, QuantScheme()).remove()


# --- behaviour ------------------------------------------------------------------------------

@pytest.mark.parametrize("wrap", [False, True])
def test_outputs_change_and_remove_restores_exactly(wrap):
    model = tiny_qwen()
    if wrap:
        model = lora(model)
    state, ref = snapshot(model), logits(model)
    handle = quantize_model(model, QuantScheme.w4a4("mxfp4"))
    q = logits(model)
    assert not torch.allclose(q, ref, atol=1e-3)
    handle.remove()
    after = snapshot(model)
    assert state.keys() == after.keys()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert torch.equal(logits(model), ref)
    assert count_hooks(model) == 0


def test_frozen_weights_quantized_once_not_per_forward(monkeypatch):
    model = tiny_qwen()
    original = model.model.layers[2].mlp.down_proj.weight.detach().clone()
    calls: list[tuple[int, ...]] = []
    real = qm.fake_quantize

    def counting(x, fmt, *, ste=False):
        calls.append(tuple(x.shape))
        return real(x, fmt, ste=ste)

    monkeypatch.setattr(qm, "fake_quantize", counting)
    handle = quantize_model(model, QuantScheme.w4a16("mxfp4"))
    assert len(calls) == LAYERS * 7  # one per weight at quantize time
    assert torch.equal(model.model.layers[2].mlp.down_proj.weight, fake_quantize(original, "mxfp4"))
    calls.clear()
    for _ in range(3):
        logits(model)
    assert calls == []  # W4A16 forward does not re-quantize anything
    handle.remove()


def test_w4a16_leaves_activations_untouched():
    model = tiny_qwen()
    lin = model.model.layers[1].self_attn.q_proj
    seen: list[torch.Tensor] = []
    x = torch.randn(3, 64)
    handle = quantize_model(model, QuantScheme.w4a16("mxfp4"))
    lin.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    y = lin(x)
    assert torch.equal(seen[0], x)
    assert torch.allclose(y, x @ fake_quantize(lin.weight, "mxfp4").T + lin.bias)
    handle.remove()


def test_w4a4_quantizes_linear_input():
    model = tiny_qwen()
    lin = model.model.layers[1].mlp.up_proj
    w = lin.weight.detach().clone()
    x = torch.randn(3, 64)
    handle = quantize_model(model, QuantScheme.w4a4("nvfp4"))
    expected = fake_quantize(x, "nvfp4") @ fake_quantize(w, "nvfp4").T
    assert torch.allclose(lin(x), expected, atol=1e-6)
    handle.remove()


def test_ste_gradient_reaches_lora_params_and_input():
    model = lora(tiny_qwen())
    handle = quantize_model(model, QuantScheme.w4a4("mxfp4", ste=True))
    emb = model.get_input_embeddings()(ids()).detach().requires_grad_(True)
    model(inputs_embeds=emb).logits.float().pow(2).mean().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n and ".layers.3." in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    handle.remove()


def test_without_ste_the_quantized_input_gets_no_gradient():
    lin = torch.nn.Linear(64, 8)
    lin.weight.requires_grad_(False)
    lin.bias.requires_grad_(False)
    container = torch.nn.Sequential(lin)
    handle = quantize_model(container, QuantScheme.w4a4("mxfp4", ste=False))
    x = torch.randn(4, 64, requires_grad=True)
    container(x).sum().backward()
    assert x.grad is not None and torch.count_nonzero(x.grad) == 0  # rounding has zero gradient
    handle.remove()


def test_trainable_weights_quantized_every_forward_with_ste():
    model = tiny_qwen(frozen=False)
    lin = model.model.layers[0].self_attn.v_proj
    w0 = lin.weight.detach().clone()
    handle = quantize_model(model, QuantScheme.w4a16("mxfp4"))
    assert torch.equal(lin.weight, w0)  # the parameter itself stays full precision
    assert "every forward" in handle.summary()
    x = torch.randn(5, 64)
    assert torch.allclose(lin(x), x @ fake_quantize(w0, "mxfp4").T + lin.bias)
    lin(x).sum().backward()
    assert torch.allclose(lin.weight.grad, torch.ones(5, lin.out_features).T @ x)  # STE: dW as unquantized
    with torch.no_grad():
        lin.weight.add_(0.01)  # an optimizer step on the full-precision weight
    assert torch.allclose(lin(x), x @ fake_quantize(w0 + 0.01, "mxfp4").T + lin.bias)
    handle.remove()
    assert "forward" not in lin.__dict__
    assert torch.allclose(lin(x), x @ (w0 + 0.01).T + lin.bias)


def test_refresh_weights_after_lora_merge():
    model = lora(tiny_qwen())
    base = model.base_model.model.model.layers[2].self_attn.q_proj.base_layer
    w0 = base.weight.detach().clone()
    handle = quantize_model(model, QuantScheme.w4a16("mxfp4"))
    model.merge_adapter()  # adds B@A*scaling to the quantized weight in place
    delta = model.base_model.model.model.layers[2].self_attn.q_proj.get_delta_weight("default")
    handle.refresh_weights()
    assert torch.allclose(base.weight, fake_quantize(w0 + delta, "mxfp4"), atol=1e-6)
    handle.refresh_weights()  # idempotent without a change
    assert torch.allclose(base.weight, fake_quantize(w0 + delta, "mxfp4"), atol=1e-6)
    handle.remove()
    assert torch.allclose(base.weight, w0 + delta, atol=1e-6)
    with pytest.raises(RuntimeError):
        handle.refresh_weights()


def test_remove_and_refresh_follow_a_model_moved_after_quantization():
    """The trainer quantizes on the CPU, then calls model.to("cuda"); here float64 stands in for the move."""
    model = lora(tiny_qwen())
    base = model.base_model.model.model.layers[1].mlp.up_proj.base_layer
    w0 = base.weight.detach().clone()
    handle = quantize_model(model, QuantScheme.w4a4("mxfp4"))
    model.to(torch.float64)
    handle.refresh_weights()  # compared the float64 weight with a float32 stash before
    assert base.weight.dtype == torch.float64
    assert torch.equal(base.weight, fake_quantize(w0.double(), "mxfp4"))
    model.to(torch.float32)
    handle.remove()
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert torch.equal(base.weight, w0)
    handle = quantize_model(model, QuantScheme.w4a16("mxfp4"))
    model.to("meta")  # a device move: what remove() restores must live on the model's device
    handle.remove()
    assert {p.device.type for p in model.parameters()} == {"meta"}


def test_bf16_model_works():
    model = tiny_qwen(dtype=torch.bfloat16)
    state, ref = snapshot(model), logits(model)
    handle = quantize_model(model, QuantScheme.w4a4("nvfp4"))
    q = logits(model)
    assert q.dtype == torch.bfloat16 and torch.isfinite(q).all()
    assert model.model.layers[0].mlp.gate_proj.weight.dtype == torch.bfloat16
    assert not torch.equal(q, ref)
    handle.remove()
    assert all(torch.equal(v, snapshot(model)[k]) for k, v in state.items())


def test_qwen25_layout_gives_182_not_364():
    """28 layers x 7 projections minus layers 0 and 27, wrapped in LoRA: 182 hooks, as the user expects."""
    cfg = Qwen2Config(vocab_size=32, hidden_size=32, intermediate_size=32, num_hidden_layers=28,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    torch.manual_seed(0)
    model = lora(Qwen2ForCausalLM(cfg))
    handle = quantize_model(model, QuantScheme.w4a4("mxfp4", exclude=DEFAULT_EXCLUDE + (r"layers\.(0|27)\.",)))
    assert len(handle) == 182
    assert sum(len(m._forward_pre_hooks) for m in model.modules()) == 182
    assert handle.summary().startswith("MXFP4 W4A4 (STE): 182 linear layers quantized")
    handle.remove()
