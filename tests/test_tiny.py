"""The shipped tiny checkpoint: offline loading, tokenizer, and that it actually learned."""

from __future__ import annotations

import json

import pytest
import torch

from objective.tasks import load_task
from objective.tiny import TINY_CHECKPOINT_DIR, load_tiny
from objective.tiny.pretrain import build_model, greedy_accuracy, greedy_responses, train
from objective.tiny.tokenizer import build_tokenizer


@pytest.fixture(scope="module", autouse=True)
def one_thread():  # noqa: ANN201
    """Tiny matmuls gain nothing from threads, and 2 threads on a busy 2-core box stall badly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():  # noqa: ANN201
    return load_tiny()


def test_tokenizer_round_trip_and_specials() -> None:
    tok = build_tokenizer()
    text = "37+58=#### 95\nWhat is 3*4? $1,000."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)  # one token per character
    assert tok.decode(ids) == text
    assert tok.unk_token_id in tok("é", add_special_tokens=False)["input_ids"]
    assert len({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id}) == 4
    assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == text


def test_load_tiny_offline_matches_tokenizer_and_architecture(tiny) -> None:  # noqa: ANN001
    model, tok = tiny
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.num_hidden_layers >= 8
    assert model.config.tie_word_embeddings
    assert type(model.model.norm).__name__ == "Qwen2RMSNorm"
    assert isinstance(model.model.layers[0].mlp.down_proj, torch.nn.Linear)
    assert 1_000_000 <= sum(p.numel() for p in model.parameters()) <= 2_500_000
    ids = tok(["12+3=", "4*5="], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape == (2, ids["input_ids"].shape[1], len(tok))
    assert model.config.vocab_size == len(tok) == len(build_tokenizer())
    assert tok.decode(tok("37+58=")["input_ids"]) == "37+58="


def test_loaded_tokenizer_encodes_like_pretraining(tiny) -> None:  # noqa: ANN001
    """transformers' AutoTokenizer swaps in Qwen2's byte-level pre-tokenizer, dropping spaces."""
    _, tok = tiny
    text = "37+58=#### 95"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == build_tokenizer()(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_load_tiny_dtype(tiny) -> None:  # noqa: ANN001
    model, _ = load_tiny(dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_shipped_checkpoint_has_learned(tiny) -> None:  # noqa: ANN001
    """A random model scores ~0; the shipped one must solve a real share of held-out problems."""
    model, tok = tiny
    val = load_task({"name": "tiny-arith", "num_val": 50}).val
    acc = greedy_accuracy(model, tok, val)
    assert acc > 0.2
    responses = greedy_responses(model, tok, [e.prompt for e in val[:10]])
    assert all(r.startswith("#### ") for r in responses)  # it learned the GSM8K answer format
    fresh = build_model(build_tokenizer(), seed=0)
    assert greedy_accuracy(fresh, tok, val) < 0.05


def test_pretrain_meta_records_calibration() -> None:
    meta = json.loads((TINY_CHECKPOINT_DIR / "pretrain_meta.json").read_text())
    for key in ("steps", "seed", "train_problems", "val_acc_fp32", "train_wall_time_s"):
        assert key in meta
    assert 0.2 < meta["val_acc_fp32"] < 0.9  # leaves RL room by design


def test_pretrain_is_deterministic() -> None:
    """Two short runs with the same seed give identical weights (the shipped one is reproducible)."""
    m1, _, meta1 = train(steps=3, seed=5)
    m2, _, _ = train(steps=3, seed=5)
    for (n, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), n
    m3, _, _ = train(steps=3, seed=6)
    assert not torch.equal(m1.lm_head.weight, m3.lm_head.weight)
    assert meta1["steps"] == 3 and meta1["train_examples_seen"] == 3 * 64


def test_shipped_checkpoint_carries_massive_activations_in_its_inner_layers(tiny) -> None:  # noqa: ANN001
    """objective/tiny/outliers.py: a few residual channels hold a large near-constant value after
    the writing layers and lose it after the erasing ones, like a real LLM's massive activations."""
    from objective.tiny import outliers

    model, tok = tiny
    val = load_task({"name": "tiny-arith", "num_val": 64}).val
    enc = tok([f"{e.prompt}#### {e.ground_truth}" for e in val], return_tensors="pt", padding=True,
              add_special_tokens=False)
    outs: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _a, o: outs.append(o[0] if isinstance(o, tuple) else o))
             for layer in model.model.layers]
    try:
        with torch.no_grad():
            model(**enc)
    finally:
        for h in hooks:
            h.remove()
    mask = enc["attention_mask"].reshape(-1).bool()
    chans = list(outliers.CHANNELS)
    rest = [c for c in range(model.config.hidden_size) if c not in chans]
    ratios = []
    for h in outs:
        x = h.reshape(-1, h.shape[-1])[mask]
        ratios.append(float(x[:, chans].abs().mean() / x[:, rest].pow(2).mean().sqrt()))
    for level, r in zip(outliers.levels(len(outs)), ratios):
        if level == 1.0:
            assert r > 4.0, ratios  # the massive channels dwarf the rest of the stream
        elif level == 0.0:
            assert r < 2.0, ratios  # before the writers and after the erasers: an ordinary stream
    meta = json.loads((TINY_CHECKPOINT_DIR / "pretrain_meta.json").read_text())
    assert meta["massive_activations"]["channels"] == chans


def test_pretraining_keeps_the_construction_in_place() -> None:
    """Re-imposed after every optimizer step: neither gradients nor weight decay move it."""
    from objective.tiny import outliers

    model, _, meta = train(steps=3, seed=5)
    value = meta["massive_activations"]["value"]
    assert value > 0
    for li, share in outliers.WRITES.items():
        attn = model.model.layers[li].self_attn
        d = outliers.VALUE_DIM
        assert torch.all(attn.v_proj.weight[d] == 0) and float(attn.v_proj.bias[d]) == outliers.STORED_BIAS
        col = attn.o_proj.weight[:, d]
        want = torch.tensor([share * value * g / outliers.STORED_BIAS for g in outliers.CHANNEL_GAINS])
        assert torch.allclose(col[list(outliers.CHANNELS)], want)
        assert int((col != 0).sum()) == len(outliers.CHANNELS)


def test_stored_form_of_the_construction_computes_the_same_function(tiny) -> None:  # noqa: ANN001
    """The checkpoint holds the constant at 16 (4-bit exact); pretraining held it at 1: same outputs."""
    from objective.tiny import outliers

    model, tok = tiny
    meta = json.loads((TINY_CHECKPOINT_DIR / "pretrain_meta.json").read_text())
    value = meta["massive_activations"]["value"]
    enc = tok(["12+3=#### 15", "147-8=#### 139"], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        stored = model(**enc).logits
        outliers.impose(model, value)  # the training form
        try:
            trained = model(**enc).logits
        finally:
            outliers.impose(model, value, bias=outliers.STORED_BIAS)
        again = model(**enc).logits
    assert torch.equal(stored, again)
    assert torch.allclose(stored, trained, rtol=1e-4, atol=1e-3)
