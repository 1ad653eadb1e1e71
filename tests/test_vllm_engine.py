"""The vllm rollout backend below the engine, on CPU.

vLLM cannot run here (no GPU, not installed), so `FakeLLM` is a TEST DOUBLE for `vllm.LLM`: it
implements only the surface objective/rollout/vllm_backend.py calls (apply_model, generate) on a plain HF
Qwen2 whose attention and MLP are rebuilt with vLLM's fused modules (`qkv_proj`, `gate_up_proj`,
the members reading slices of the fused output) and whose `load_weights` stacks HF-named q/k/v and
gate/up tensors into them as vLLM's qwen2.py does. A fake `vllm` module supplies SamplingParams.
"""

from __future__ import annotations

import itertools
import sys
import types
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from modellib import save_random_qwen2, with_overrides
from objective import reward as reward_mod
from objective import run_trial
from objective.rollout import vllm_backend
from objective.config import load_config
from objective.trainer import Trainer
from objective.rollout.vllm_sync import activation_hook_targets, vllm_module_name, vllm_state_dict
from quant.model import QuantScheme, quantize_model
from quant.noise import NoiseInjector

CFG = dict(
    vocab_size=48, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
)
IDS = torch.randint(0, 48, (3, 10), generator=torch.Generator().manual_seed(2))


# ---- the test double ------------------------------------------------------------------------
class _Member(nn.Module):
    """q/k/v or gate/up as a slice of the fused module's output (the fused module is not a child)."""

    def __init__(self, fused: nn.Linear, lo: int, hi: int) -> None:
        super().__init__()
        self.__dict__["fused"] = fused
        self.lo, self.hi = lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused(x)[..., self.lo : self.hi]


class FakeVllmQwen2(nn.Module):
    """vLLM's module layout (fused projections) and load_weights contract, over HF's forward."""

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        hf = Qwen2ForCausalLM(config).eval()
        self.__dict__["hf"] = hf
        self.model, self.lm_head, self.tied = hf.model, hf.lm_head, bool(config.tie_word_embeddings)
        self.shards: dict[str, tuple[str, int, int]] = {}
        for i, layer in enumerate(hf.model.layers):
            att, mlp = layer.self_attn, layer.mlp
            sizes = [att.q_proj.out_features, att.k_proj.out_features, att.v_proj.out_features]
            att.qkv_proj = nn.Linear(config.hidden_size, sum(sizes), bias=True)
            lo = 0
            for name, size in zip(("q_proj", "k_proj", "v_proj"), sizes):
                setattr(att, name, _Member(att.qkv_proj, lo, lo + size))
                self.shards[f"model.layers.{i}.self_attn.{name}"] = (f"model.layers.{i}.self_attn.qkv_proj", lo, lo + size)
                lo += size
            inter = mlp.gate_proj.out_features
            mlp.gate_up_proj = nn.Linear(config.hidden_size, 2 * inter, bias=False)
            for j, name in enumerate(("gate_proj", "up_proj")):
                setattr(mlp, name, _Member(mlp.gate_up_proj, j * inter, (j + 1) * inter))
                self.shards[f"model.layers.{i}.mlp.{name}"] = (f"model.layers.{i}.mlp.gate_up_proj", j * inter, (j + 1) * inter)
        self.loads: list[dict[str, torch.Tensor]] = []

    @torch.no_grad()
    def load_weights(self, weights: Any) -> None:
        params = dict(self.named_parameters())
        got = {}
        for name, t in weights:
            got[name] = t.detach().clone()
            if name == "lm_head.weight" and self.tied:
                continue  # vLLM skips it too: the head is the embedding
            mod, _, leaf = name.rpartition(".")
            if mod in self.shards:
                fused, lo, hi = self.shards[mod]
                params[f"{fused}.{leaf}"][lo:hi].copy_(t)
            else:
                params[name].copy_(t)  # KeyError on a name vLLM would not know
        self.loads.append(got)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=ids).logits


class FakeEngineCore:
    """What LLM.llm_engine holds on the GPU (weights + KV cache): one block of a stand-in device."""

    def __init__(self, block: Any = None) -> None:
        self.block = block

    def shutdown(self) -> None:  # vLLM: LLMEngine.shutdown -> engine_core.shutdown frees the executor
        self.block = None


class FakeLLM:
    """Stands in for vllm.LLM: apply_model, generate, reset_prefix_cache, llm_engine.shutdown.

    Like vLLM: one SamplingParams is broadcast to every request; sampling draws from the engine's
    generator (LLM(seed=...)) unless a request brings its own seed (recorded in `seeds_seen`);
    raw log-probs as V1 returns them; a prefix cache keeps each prompt's prefill logits until
    reset_prefix_cache(), and a hit on an entry computed before the latest weight load is counted
    in `stale_hits` (it would serve KV of older weights).
    """

    def __init__(self, model: FakeVllmQwen2, seed: int = 0, core_block: Any = None) -> None:
        self.model = model
        self.gen = torch.Generator().manual_seed(seed)
        self.generated: list[list[list[int]]] = []
        self.cache: dict[tuple[int, ...], tuple[int, torch.Tensor]] = {}
        self.cache_hits = self.stale_hits = self.resets = 0
        self.seeds_seen: list[Any] = []
        self.llm_engine = FakeEngineCore(core_block)

    def apply_model(self, fn: Any) -> list[Any]:
        return [fn(self.model)]

    def reset_prefix_cache(self) -> bool:
        self.cache.clear()
        self.resets += 1
        return True

    def _prefill(self, ids: list[int]) -> torch.Tensor:
        version = len(self.model.loads)  # one per weight load
        hit = self.cache.get(tuple(ids))
        if hit is not None:
            self.cache_hits += 1
            self.stale_hits += int(hit[0] != version)
            return hit[1]
        logits = self.model.logits(torch.tensor([ids]))[0, -1].float()
        self.cache[tuple(ids)] = (version, logits)
        return logits

    @torch.no_grad()
    def generate(self, reqs: list[dict], params: Any, use_tqdm: bool = False) -> list[Any]:
        params = params if isinstance(params, list) else [params] * len(reqs)
        outs, batch = [], []
        for req, sp in zip(reqs, params):
            self.seeds_seen.append(getattr(sp, "seed", None))
            g = torch.Generator().manual_seed(sp.seed) if getattr(sp, "seed", None) is not None else self.gen
            ids, toks, lps = list(req["prompt_token_ids"]), [], []
            for i in range(sp.max_tokens):
                logits = self._prefill(ids) if i == 0 else self.model.logits(torch.tensor([ids]))[0, -1].float()
                raw = torch.log_softmax(logits, -1)
                if sp.temperature == 0:
                    tok = int(logits.argmax())
                else:
                    tok = int(torch.multinomial(torch.softmax(logits / sp.temperature, -1), 1, generator=g))
                toks.append(tok)
                lps.append({tok: SimpleNamespace(logprob=float(raw[tok]))})
                ids.append(tok)
                if tok in (sp.stop_token_ids or []):
                    break
            batch.append(toks)
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=toks, logprobs=lps if sp.logprobs is not None else None)]))
        self.generated.append(batch)
        return outs


def fake_engine_from(path: str, seed: int = 0, core_block: Any = None) -> FakeLLM:
    """Build the double like vLLM builds its engine: the architecture, then the checkpoint's weights."""
    src = Qwen2ForCausalLM.from_pretrained(path, local_files_only=True)
    fake = FakeVllmQwen2(src.config)
    fake.load_weights(src.state_dict().items())
    fake.loads.clear()
    return FakeLLM(fake, seed=seed, core_block=core_block)


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> list[FakeLLM]:
    """A `vllm` module with SamplingParams, and build_engine returning the double (collected)."""
    mod = types.ModuleType("vllm")
    mod.SamplingParams = lambda **kw: SimpleNamespace(**kw)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", mod)
    engines: list[FakeLLM] = []

    def build(cfg: Any, max_model_len: int) -> FakeLLM:
        engines.append(fake_engine_from(vllm_backend.model_dir(cfg), seed=cfg.seed))
        return engines[-1]

    monkeypatch.setattr(vllm_backend, "build_engine", build)
    return engines


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_qwen2(tmp_path_factory.mktemp("tiny_vllm"), **CFG)


def trial_cfg(model_dir: Path, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "seed": 3, "threads": 1, "model": {"path": str(model_dir)},
        "task": {"num_val": 8, "max_response_len": 5}, "lora": {"rank": 4},
        "algo": {"prompts_per_step": 2, "samples_per_prompt": 4},
        "steps": {"total": 2, "val_at": [0, 2]}, "rollout": {"backend": "vllm"},
    }
    return with_overrides(cfg, over)


def policy(scheme: QuantScheme | None, lora_b_zero: bool = False):
    torch.manual_seed(0)
    model = get_peft_model(Qwen2ForCausalLM(Qwen2Config(**CFG)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name and not lora_b_zero:
                p.normal_(0, 0.05)  # a trained adapter
    handle = quantize_model(model, scheme) if scheme is not None else None
    inj = NoiseInjector(model, site="rmsnorm", multipliers=[1.0, 0.5], seed=1)
    inj.begin_step(1, 0.05)
    return model.eval(), handle, inj


# ---- names ----------------------------------------------------------------------------------
def test_state_dict_has_exactly_the_hf_names() -> None:
    model, _, inj = policy(QuantScheme.w4a16("mxfp4"))
    sd = vllm_state_dict(model, inj)
    assert set(sd) == set(Qwen2ForCausalLM(Qwen2Config(**CFG)).state_dict())
    assert not [k for k in sd if "base_model" in k or "base_layer" in k or "lora_" in k]
    small = vllm_state_dict(model, inj, changing_only=True)
    lora_targets = {f"model.layers.{i}.{m}.weight" for i in range(2) for m in
                    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj")}
    biases = {f"model.layers.{i}.self_attn.{p}.bias" for i in range(2) for p in ("q_proj", "k_proj", "v_proj")}
    norms = {f"model.layers.{i}.{n}.weight" for i in range(2) for n in ("input_layernorm", "post_attention_layernorm")}
    assert set(small) == lora_targets | biases | norms | {"model.norm.weight"}


def test_hf_names_map_to_vllm_fused_modules() -> None:
    assert vllm_module_name("base_model.model.model.layers.3.self_attn.k_proj.base_layer") == "model.layers.3.self_attn.qkv_proj"
    assert vllm_module_name("model.layers.0.mlp.up_proj") == "model.layers.0.mlp.gate_up_proj"
    assert vllm_module_name("model.layers.0.mlp.gate_proj") == "model.layers.0.mlp.gate_up_proj"
    assert vllm_module_name("base_model.model.model.layers.1.self_attn.o_proj.base_layer") == "model.layers.1.self_attn.o_proj"
    assert vllm_module_name("model.layers.1.mlp.down_proj") == "model.layers.1.mlp.down_proj"
    _, handle, _ = policy(QuantScheme.w4a4("mxfp4"))
    targets = activation_hook_targets(handle.module_names, handle.excluded_names)
    assert targets == sorted(f"model.layers.{i}.{m}" for i in range(2) for m in
                             ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"))
    with pytest.raises(ValueError, match="qkv_proj"):
        activation_hook_targets(["model.layers.0.self_attn.q_proj"], ["model.layers.0.self_attn.k_proj"])


# ---- values through the double's fused modules ------------------------------------------------
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_w4a16_engine_matches_the_noisy_policy_after_a_lora_update(fmt: str) -> None:
    model, _, inj = policy(QuantScheme.w4a16(fmt))
    fake = FakeVllmQwen2(Qwen2Config(**CFG))
    with torch.no_grad(), inj.rollout():
        ref = model(input_ids=IDS).logits
        fake.load_weights(vllm_state_dict(model, inj).items())
    with torch.no_grad():
        out = fake.logits(IDS)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)


def test_w4a4_hooks_on_fused_modules_match_with_an_untrained_adapter_and_drift_after() -> None:
    def engine_gap(lora_b_zero: bool) -> float:
        model, handle, inj = policy(QuantScheme.w4a4("mxfp4"), lora_b_zero=lora_b_zero)
        fake = FakeVllmQwen2(Qwen2Config(**CFG))
        targets = activation_hook_targets(handle.module_names, handle.excluded_names)
        assert vllm_backend.register_activation_hooks(fake, targets, "mxfp4") == 8
        with torch.no_grad(), inj.rollout():
            ref = model(input_ids=IDS).logits
            fake.load_weights(vllm_state_dict(model, inj).items())
            return float((fake.logits(IDS) - ref).abs().max())

    assert engine_gap(lora_b_zero=True) < 1e-4  # exact at step 0
    # the documented W4A4 limitation: the merged adapter sees the 4-bit input in the engine, the
    # full-precision one in training; nonzero once the adapter has learned something
    assert engine_gap(lora_b_zero=False) > 1e-4


def test_missing_hook_target_is_an_error() -> None:
    # a layout the mapping did not foresee must not silently serve A16
    with pytest.raises(RuntimeError, match="no module model.layers.2.self_attn.qkv_proj"):
        vllm_backend.register_activation_hooks(FakeVllmQwen2(Qwen2Config(**CFG)), ["model.layers.2.self_attn.qkv_proj"], "mxfp4")


# ---- the trainer's vllm path, end to end through the double ---------------------------------
def _norms(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if "layernorm" in k}


def test_trainer_pushes_noisy_norms_each_step_and_hooks_once(model_dir: Path, fake_vllm: list[FakeLLM],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # rewards 0, 1, 0, 1, ... in scoring order: every group is informative, so the gradient is not 0
    calls = itertools.count()
    monkeypatch.setattr(reward_mod, "gsm8k_strict_score", lambda response, truth: float(next(calls) % 2))
    cfg = load_config(trial_cfg(model_dir, quant={"format": "mxfp4", "mode": "w4a4"},
                                noise={"enabled": True}, steps={"total": 2, "val_at": [0, 2]}))
    trainer = Trainer(cfg)
    try:
        (engine,) = fake_vllm
        fake = engine.model
        assert trainer.rollout.hooked == 8
        seen: list[Any] = []
        real_logp = trainer.response_logp
        monkeypatch.setattr(trainer, "response_logp", lambda ro: (seen.append(ro), real_logp(ro))[1])
        inj = trainer.noise.injector
        clean = {k: v.detach().clone() for k, v in _norms(vllm_state_dict(trainer.model)).items()}
        noisy_seen = []
        for step, sigma in ((1, 0.05), (2, 0.05)):
            m = trainer.train_step(step, sigma)
            with inj.rollout():  # the injector's noisy weights for this step, recomputed
                noisy_seen.append(_norms(vllm_state_dict(trainer.model, inj)))
            pushed = _norms(fake.loads[-1])
            for k, v in pushed.items():
                assert torch.equal(v, noisy_seen[-1][k]) and not torch.equal(v, clean[k])
            # GRPO's loss at ratio 1 is the mean advantage, 0 up to rounding: the gradient is the signal
            assert m["train/grad_norm"] > 0
        assert len(fake.loads) == 2 and len(fake.loads[0]) > len(fake.loads[1])  # full, then changing only
        assert any(not torch.equal(noisy_seen[0][k], noisy_seen[1][k]) for k in clean)  # fresh noise per step
        # the rollout that reached the loss is what the engine generated
        assert len(seen) == 2
        for ro, batch in zip(seen, engine.generated):
            rows = [[int(t) for t, keep in zip(r, mk) if keep] for r, mk in zip(ro.response_ids, ro.response_mask)]
            assert rows == batch  # GRPO keeps every row, in the engine's order
        trainer.validate()
        assert len(fake.loads) == 3
        for k, v in _norms(fake.loads[-1]).items():  # validation: the un-noised norms
            assert torch.equal(v, clean[k])
        hooks = [len(mod._forward_pre_hooks) for name, mod in fake.named_modules() if name.endswith(("qkv_proj", "gate_up_proj"))]
        assert hooks == [1] * 4  # registered once, not once per push
    finally:
        trainer.close()


def test_vllm_and_hf_backends_decode_the_same_greedy_tokens(model_dir: Path, fake_vllm: list[FakeLLM]) -> None:
    cfg = trial_cfg(model_dir, quant={"format": "mxfp4", "mode": "w4a16"})
    outs = []
    for backend in ("hf", "vllm"):
        trainer = Trainer(load_config({**cfg, "rollout": {"backend": backend}}))
        try:
            prompts = [trainer.task.format_prompt(ex, trainer.tokenizer) for ex in trainer.task.val[:4]]
            trainer.rollout.sync()
            outs.append(trainer._generate(prompts, 0.0))
        finally:
            trainer.close()
    hf, vl = outs
    assert int(hf.response_mask.sum()) > 4 and torch.equal(hf.response_mask, vl.response_mask)
    assert torch.equal(hf.response_ids * hf.response_mask, vl.response_ids * vl.response_mask)
    assert hf.texts == vl.texts and torch.equal(hf.prompt_ids, vl.prompt_ids)


def test_run_trial_with_the_vllm_backend_completes(model_dir: Path, fake_vllm: list[FakeLLM]) -> None:
    res = run_trial(trial_cfg(model_dir))
    assert res.status == "complete", res.reason
    assert [h["step"] for h in res.history] == [0, 2]
    (engine,) = fake_vllm
    assert len(engine.model.loads) == 4  # validation 0, steps 1 and 2, validation 2
    assert len(engine.generated) >= 4


def test_engine_arguments(model_dir: Path) -> None:
    cfg = load_config(trial_cfg(model_dir, model={"dtype": "bfloat16"}))
    kw = vllm_backend.llm_kwargs(cfg, 2048, "0.11.0")
    assert kw["enforce_eager"] is True  # the activation hooks need eager mode
    assert kw["model"] == str(model_dir) and kw["dtype"] == "bfloat16" and kw["seed"] == 3
    assert kw["gpu_memory_utilization"] == vllm_backend.DEFAULT_GPU_MEMORY_UTILIZATION and kw["max_model_len"] == 2048
    assert kw["logprobs_mode"] == "processed_logprobs"
    assert "logprobs_mode" not in vllm_backend.llm_kwargs(cfg, 2048, "0.8.5")  # the argument did not exist yet
    assert "logprobs_mode" not in vllm_backend.llm_kwargs(cfg, 2048, "0.10.1.dev3+gabc")
    tiny = vllm_backend.llm_kwargs(load_config({"rollout": {"backend": "vllm"}}), 64, "0.11.0")
    assert (Path(tiny["model"]) / "config.json").is_file()


def test_closing_the_trainer_releases_the_engine(model_dir: Path, fake_vllm: list[FakeLLM]) -> None:
    trainer = Trainer(load_config(trial_cfg(model_dir)))
    assert trainer.rollout.engine is fake_vllm[0]
    trainer.close()
    assert trainer.rollout.engine is None


def test_linear_noise_on_vllm_is_refused_before_loading(model_dir: Path, fake_vllm: list[FakeLLM],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from objective import trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "load_model", lambda cfg: pytest.fail("model loaded before the check"))
    with pytest.raises(ValueError, match="^noise.site: 'linear' cannot run on rollout.backend=vllm"):
        run_trial(trial_cfg(model_dir, noise={"enabled": True, "site": "linear"}))
    assert fake_vllm == []


# ---- prefix cache, seeds ----------------------------------------------------------------------
def test_prefix_cache_is_reset_after_every_sync_so_no_stale_kv_is_served(
        model_dir: Path, fake_vllm: list[FakeLLM], monkeypatch: pytest.MonkeyPatch) -> None:
    res = run_trial(trial_cfg(model_dir))
    assert res.status == "complete", res.reason
    (engine,) = fake_vllm
    assert engine.resets == len(engine.model.loads) == 4  # validation 0, steps 1 and 2, validation 2
    assert engine.cache_hits > 0 and engine.stale_hits == 0  # a group's copies share the prefill, never across syncs
    # the control: without the reset, validation 2 is served the prefills of validation 0's weights
    monkeypatch.setattr(vllm_backend, "reset_prefix_cache", lambda engine: None)
    assert run_trial(trial_cfg(model_dir)).status == "complete"
    assert fake_vllm[1].stale_hits >= 8  # the 8 validation prompts


def test_requests_carry_no_seed_and_sampling_follows_the_engine_seed(model_dir: Path, fake_vllm: list[FakeLLM]) -> None:
    runs = [run_trial(trial_cfg(model_dir, seed=s, steps={"total": 1, "val_at": [1]})) for s in (3, 3, 4)]
    assert all(r.status == "complete" for r in runs)
    assert all(e.seeds_seen and set(e.seeds_seen) == {None} for e in fake_vllm)  # the engine's generator only
    first = [e.generated[0] for e in fake_vllm]  # step 1's samples: 2 prompts x 4
    assert first[0] == first[1] != first[2]  # reproducible from the engine seed, and seed-dependent
    assert len({tuple(t) for t in first[0][:4]}) > 1  # one prompt's 4 copies still differ


# ---- memory across trials in one process (a reused Ray worker) ------------------------------
class FakeDevice:
    """A GPU as trials see it: a caching allocator whose reserved bytes only shrink on
    empty_cache(), and only by blocks nothing references any more; an allocation beyond the
    capacity raises torch.OutOfMemoryError, an engine that finds less free memory than it asks
    for refuses to start, as vLLM does."""

    class Block:
        def __init__(self, nbytes: int) -> None:
            self.nbytes = nbytes

    def __init__(self, capacity: int) -> None:
        self.capacity, self.reserved = capacity, 0
        self.live: weakref.WeakSet[FakeDevice.Block] = weakref.WeakSet()

    @property
    def allocated(self) -> int:
        return sum(b.nbytes for b in self.live)

    def allocate(self, nbytes: int) -> FakeDevice.Block:
        grow = max(0, self.allocated + nbytes - self.reserved)  # reuse cached space first
        if self.reserved + grow > self.capacity:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {nbytes} bytes")
        self.reserved += grow
        block = FakeDevice.Block(nbytes)
        self.live.add(block)
        return block

    def empty_cache(self) -> None:
        self.reserved = self.allocated

    def start_engine(self, nbytes: int) -> FakeDevice.Block:
        free = self.capacity - self.reserved
        if free < nbytes:
            raise ValueError(f"Free memory on device ({free}) on startup is less than desired GPU memory utilization ({nbytes})")
        return self.allocate(nbytes)


ENGINE_BYTES, ACTIVATION_BYTES = 40, 30


@pytest.fixture
def device(monkeypatch: pytest.MonkeyPatch, fake_vllm: list[FakeLLM]) -> FakeDevice:
    """Engines and training forwards take their memory from a FakeDevice of 100 bytes; the
    backend's cache emptying goes to it. Engines are kept by weak reference only."""
    from objective import device_memory
    from objective import trainer as trainer_mod

    dev = FakeDevice(100)
    monkeypatch.setattr(device_memory, "empty_device_cache", dev.empty_cache)
    engines: list[weakref.ref[FakeLLM]] = []

    def build(cfg: Any, max_model_len: int) -> FakeLLM:
        engine = fake_engine_from(vllm_backend.model_dir(cfg), seed=cfg.seed, core_block=dev.start_engine(ENGINE_BYTES))
        engines.append(weakref.ref(engine))
        return engine

    monkeypatch.setattr(vllm_backend, "build_engine", build)
    real = trainer_mod.Trainer.response_logp

    def forward_on_device(self: Any, ro: Any) -> torch.Tensor:
        activations = dev.allocate(ACTIVATION_BYTES)  # alive for the forward, like its activations
        if getattr(self.cfg, "_oom", False):
            dev.allocate(ACTIVATION_BYTES * 2)  # the next layer does not fit
        out = real(self, ro)
        del activations
        return out

    monkeypatch.setattr(trainer_mod.Trainer, "response_logp", forward_on_device)
    dev.engines = engines  # type: ignore[attr-defined]
    return dev


def test_two_trials_in_one_process_do_not_grow_device_memory(model_dir: Path, device: FakeDevice) -> None:
    for _ in range(2):  # the second engine starts only if the first one's 40 bytes came back
        res = run_trial(trial_cfg(model_dir, steps={"total": 1, "val_at": [1]}))
        assert res.status == "complete", res.reason
        assert device.allocated == 0 and device.reserved == 0  # everything handed back
    assert [ref() for ref in device.engines] == [None, None]  # both engines collected


def test_out_of_memory_fails_the_trial_and_the_next_trial_gets_the_memory_back(
        model_dir: Path, device: FakeDevice, monkeypatch: pytest.MonkeyPatch) -> None:
    from objective.config import TrialConfig

    monkeypatch.setattr(TrialConfig, "_oom", True, raising=False)
    res = run_trial(trial_cfg(model_dir, steps={"total": 1, "val_at": [1]}))
    assert res.status == "failed" and res.reason.startswith("out of GPU memory at step 1: OutOfMemoryError")
    assert device.allocated == 0 and device.reserved == 0  # the frames of the failed forward are gone too
    monkeypatch.setattr(TrialConfig, "_oom", False, raising=False)
    ok = run_trial(trial_cfg(model_dir, steps={"total": 1, "val_at": [1]}))
    assert ok.status == "complete", ok.reason  # its engine found the whole device free again


def test_an_engine_that_cannot_start_for_memory_is_an_out_of_memory_failure(
        model_dir: Path, device: FakeDevice) -> None:
    hog = device.allocate(70)  # another tenant: the engine's 40 do not fit
    res = run_trial(trial_cfg(model_dir))
    assert res.status == "failed" and res.reason.startswith("out of GPU memory while loading: ValueError: Free memory")
    del hog
    device.empty_cache()
    assert run_trial(trial_cfg(model_dir, steps={"total": 1, "val_at": [1]})).status == "complete"


def test_the_old_release_order_is_what_the_device_test_catches(model_dir: Path, device: FakeDevice,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: emptying the cache while the engine is still referenced leaves it reserved."""
    from objective.rollout.vllm_backend import VllmRollout

    def old_close(self: VllmRollout) -> None:
        engine, self.engine = self.engine, None
        device.empty_cache()  # the old order: empty_cache while `engine` is still held
        kept.append(engine)

    kept: list[Any] = []
    monkeypatch.setattr(VllmRollout, "close", old_close)
    assert run_trial(trial_cfg(model_dir, steps={"total": 1, "val_at": [1]})).status == "complete"
    assert device.reserved >= ENGINE_BYTES  # the first engine's memory stayed
    second = run_trial(trial_cfg(model_dir, steps={"total": 1, "val_at": [1]}))
    assert second.status == "failed" and second.reason.startswith("out of GPU memory")  # 40 + 40 + 30 > 100
