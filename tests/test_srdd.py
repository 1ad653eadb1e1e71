"""SRDD profiles: metric math, the model scan, zones, the file format and the shipped Qwen prior."""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from quant.errors import ProfileError
from quant.formats import fake_quantize
from quant.srdd import (
    MetricAccumulator,
    SrddProfile,
    block_max,
    compute_zones,
    find_decoder_layers,
    format_table,
    layer_runs,
    load_profile,
    scan_model,
    segment_layers,
    site_metrics,
    tier_segments,
    validate_for_model,
)
from quant.srdd_priors import MULTIPLIERS, qwen25_mxfp4_prior

REPO = Path(__file__).resolve().parent.parent
QWEN_PRIOR = REPO / "studies" / "priors" / "qwen2.5-1.5b-mxfp4.json"
SEEDS_TIERS = {"low": [0, 1, 2, 3, 26, 27], "medium": [4, 5, 6, 7, 8, 9, 20, 21, 22, 23, 24, 25], "high": list(range(10, 20))}
PROJECTIONS = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}


@pytest.fixture(autouse=True)
def _eager_quant(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eager fake-quant: these tensors are tiny, a compile would dominate the runtime."""
    monkeypatch.setenv("NOISESWEEP_COMPILE", "0")


def tiny_qwen(layers: int = 4, seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=50, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return Qwen2ForCausalLM(cfg).eval()


# --------------------------------------------------------------------------- metric math
def test_mxfp4_metrics_on_a_hand_made_block() -> None:
    # amax 7 -> scale 2^(2-2) = 1, block max 6: 7 and 6.5 clip; 0.2 and the tie 0.25 go to 0.
    vals = [7.0, 6.5, 0.2, 0.25, 0.3, 0.0] + [1.0] * 26
    q_hand = [6.0, 6.0, 0.0, 0.0, 0.5, 0.0] + [1.0] * 26
    x = torch.tensor([vals])
    assert torch.equal(fake_quantize(x, "mxfp4"), torch.tensor([q_hand]))
    m = site_metrics(x, "mxfp4")
    noise = sum((a - b) ** 2 for a, b in zip(vals, q_hand))
    signal = sum(a * a for a in vals)
    assert m.deadzone == pytest.approx(2 / 31)  # zeros are not counted as non-zero values
    assert m.saturation == pytest.approx(2 / 32)
    assert m.rel_error == pytest.approx(math.sqrt(noise / signal))
    assert m.sqnr_db == pytest.approx(10 * math.log10(signal / noise))


def test_nvfp4_saturation_comes_from_e4m3_rounding_of_the_block_scale() -> None:
    # Tensor amax 2688 = 448*6 -> tensor scale 1. Block 2: amax 6.3 -> 6.3/6 = 1.05 rounds to
    # E4M3 1.0, so its block max is 6 and 6.3, 6.2 clip; 0.2 (< 0.25) falls into the deadzone.
    b1 = [2688.0] + [1000.0] * 15  # 1000/448 = 2.2 -> 2, not 0
    b2 = [6.3, 6.2, 0.2] + [1.0] * 13
    x = torch.tensor([b1 + b2])
    bm = block_max(x, "nvfp4")
    assert bm[0, 0] == 2688.0 and bm[0, 16] == 6.0
    m = site_metrics(x, "nvfp4")
    assert m.saturation == pytest.approx(2 / 32)
    dead = int(((x != 0) & (fake_quantize(x, "nvfp4") == 0)).sum())
    assert dead == 1 and m.deadzone == pytest.approx(1 / 32)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_block_max_agrees_with_fake_quantize(fmt: str) -> None:
    torch.manual_seed(1)
    x = torch.randn(8, 77) * torch.logspace(-3, 2, 77)  # ragged last block, mixed magnitudes
    q = fake_quantize(x, fmt)
    bm = block_max(x, fmt)
    assert (q.abs() <= bm).all()
    clipped = x.abs() > bm
    assert clipped.any()
    assert torch.equal(q.abs()[clipped], bm[clipped])  # clipped values land exactly on the max


def test_block_max_zero_and_non_finite_blocks() -> None:
    x = torch.ones(2, 64)
    x[0, :32] = 0.0  # an all-zero MX block
    x[1, 40] = float("inf")
    mx = block_max(x, "mxfp4")
    assert torch.equal(mx[0, :32], torch.zeros(32)) and torch.equal(mx[0, 32:], torch.full((32,), 6.0 / 4))
    assert torch.isnan(mx[1, 32:]).all() and torch.equal(mx[1, :32], torch.full((32,), 6.0 / 4))
    assert torch.isnan(block_max(x, "nvfp4")).all()  # NVFP4: the tensor scale is poisoned
    assert torch.equal(block_max(torch.zeros(3, 20), "nvfp4"), torch.zeros(3, 20))


def test_accumulator_is_token_weighted_over_batches() -> None:
    torch.manual_seed(2)
    a, b = torch.randn(3, 64), torch.randn(5, 64) * 10
    acc = MetricAccumulator("mxfp4")
    acc.update(a)
    acc.update(b)
    whole = site_metrics(torch.cat([a, b]), "mxfp4")
    got = acc.result()
    for key in ("rel_error", "deadzone", "saturation", "sqnr_db"):
        assert getattr(got, key) == pytest.approx(getattr(whole, key))
    # not the mean of per-batch errors (b dominates the energy)
    mean_of_means = (site_metrics(a, "mxfp4").rel_error + site_metrics(b, "mxfp4").rel_error) / 2
    assert got.rel_error != pytest.approx(mean_of_means, rel=1e-6)


def test_all_zero_signal_has_no_error_and_no_sqnr() -> None:
    m = site_metrics(torch.zeros(2, 32), "mxfp4")
    assert (m.rel_error, m.deadzone, m.saturation, m.sqnr_db) == (0.0, 0.0, 0.0, None)


# --------------------------------------------------------------------------- scanning
def _batches(n: int = 2, seed: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50, (2, 12), generator=g) for _ in range(n)]


def test_scan_random_qwen2_gives_finite_metrics_per_layer() -> None:
    model = tiny_qwen(layers=4)
    prof = scan_model(model, _batches(), "mxfp4", model_name="rand-qwen2")
    assert prof.num_layers == 4 and len(prof.layers) == 4 and prof.format == "mxfp4"
    assert prof.source["tokens"] == 2 * 2 * 12 and prof.source["batches"] == 2
    for lm in prof.layers:
        for site in (lm.output, lm.linear_input, lm.weight):
            assert site is not None
            assert 0 < site.rel_error < 1 and math.isfinite(site.sqnr_db)
            assert 0 <= site.deadzone <= 1 and 0 <= site.saturation <= 1
        assert set(lm.projections["linear_input"]) == PROJECTIONS
        per = [m.rel_error for m in lm.projections["linear_input"].values()]
        assert min(per) <= lm.linear_input.rel_error <= max(per)
    # the weight site is the aggregate over the layer's 7 weight matrices
    layer0 = find_decoder_layers(model)[0]
    acc = MetricAccumulator("mxfp4")
    for name in sorted(PROJECTIONS):
        acc.update(layer0.get_submodule(name).weight)
    assert prof.layers[0].weight.rel_error == pytest.approx(acc.result().rel_error)
    assert sorted(i for z in prof.zones for i in z.layers) == [0, 1, 2, 3]
    # hooks are gone and the mode restored
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not model.training


def test_scan_leaves_padding_out_of_the_metrics() -> None:
    model = tiny_qwen(layers=2)
    seq = torch.randint(0, 50, (1, 10), generator=torch.Generator().manual_seed(4))
    plain = scan_model(model, [seq], "mxfp4", model_name="m")
    padded_ids = torch.cat([seq, torch.zeros(1, 6, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 6)], dim=1).long()
    padded = scan_model(model, [{"input_ids": padded_ids, "attention_mask": mask}], "mxfp4", model_name="m")
    assert padded.source["tokens"] == 10
    for a, b in zip(plain.layers, padded.layers):
        assert b.output.rel_error == pytest.approx(a.output.rel_error, rel=1e-4)
        assert b.linear_input.deadzone == pytest.approx(a.linear_input.deadzone, rel=1e-3)


def test_scan_under_peft_hooks_each_projection_once() -> None:
    from peft import LoraConfig, get_peft_model

    base = tiny_qwen(layers=2)
    plain = scan_model(base, _batches(1), "nvfp4", model_name="m")
    lora = get_peft_model(
        tiny_qwen(layers=2), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    wrapped = scan_model(lora, _batches(1), "nvfp4", model_name="m")
    assert wrapped.num_layers == 2
    for a, b in zip(plain.layers, wrapped.layers):
        assert set(b.projections["weight"]) == PROJECTIONS  # no base_layer, no lora_A/lora_B
        assert b.output.rel_error == pytest.approx(a.output.rel_error, rel=1e-5)  # B = 0 at init
        assert b.weight.rel_error == pytest.approx(a.weight.rel_error, rel=1e-6)


def test_scan_rejects_unknown_format_and_no_batches() -> None:
    with pytest.raises(ValueError, match="known formats"):
        scan_model(tiny_qwen(1), _batches(1), "int4", model_name="m")
    with pytest.raises(ValueError, match="at least one batch"):
        scan_model(tiny_qwen(1), [], "mxfp4", model_name="m")


# --------------------------------------------------------------------------- zones
def test_segmentation_finds_plateaus_and_is_optimal() -> None:
    assert segment_layers([1, 1, 1, 5, 5, 5, 9, 9], 3) == [(0, 2), (3, 5), (6, 7)]
    g = torch.Generator().manual_seed(5)
    errs = torch.rand(9, generator=g).tolist()

    def sse(segs: list[tuple[int, int]]) -> float:
        total = 0.0
        for a, b in segs:
            part = errs[a : b + 1]
            mu = sum(part) / len(part)
            total += sum((e - mu) ** 2 for e in part)
        return total

    best = min(
        sse([(a, b - 1) for a, b in zip((0, *cuts), (*cuts, 9))]) for cuts in itertools.combinations(range(1, 9), 3)
    )
    got = segment_layers(errs, 4)
    assert sse(got) == pytest.approx(best)
    assert got[0][0] == 0 and got[-1][1] == 8 and all(got[i][1] + 1 == got[i + 1][0] for i in range(3))
    assert segment_layers(errs, 4) == got  # deterministic


def test_zones_group_runs_into_tiers_that_may_span_both_ends() -> None:
    errs = [0.30, 0.31, 0.36, 0.36, 0.42, 0.43, 0.35, 0.36, 0.29, 0.30]
    zones = compute_zones(errs, num_segments=5)
    assert [z.name for z in zones] == ["low", "medium", "high"]
    by = {z.name: z.layers for z in zones}
    assert by == {"low": [0, 1, 8, 9], "medium": [2, 3, 6, 7], "high": [4, 5]}
    assert layer_runs(by["low"]) == "0-1,8-9"
    assert compute_zones(errs, num_segments=5) == zones


def test_tiers_of_the_teams_reported_zones_are_the_seeds_split() -> None:
    segs = [(0, 3), (4, 9), (10, 19), (20, 25), (26, 27)]
    zones = tier_segments(segs, [32.5, 35.6, 40.4, 35.6, 30.3])
    assert {z.name: z.layers for z in zones} == SEEDS_TIERS


def test_few_layers_give_fewer_tiers() -> None:
    assert [z.name for z in compute_zones([0.2])] == ["medium"]
    assert {z.name: z.layers for z in compute_zones([0.2, 0.4])} == {"low": [0], "high": [1]}


# --------------------------------------------------------------------------- the Qwen prior
def test_qwen_prior_reproduces_the_seeds_zones_and_multipliers() -> None:
    prof = load_profile(QWEN_PRIOR)
    assert (prof.model, prof.format, prof.num_layers) == ("Qwen/Qwen2.5-1.5B-Instruct", "mxfp4", 28)
    assert {z.name: z.layers for z in prof.zones} == SEEDS_TIERS
    errs = prof.errors()
    mean = sum(errs) / len(errs)
    assert mean == pytest.approx(0.364, abs=0.001)
    mult = [e / mean for e in errs]
    assert mult[15] == pytest.approx(1.17, abs=0.005) and mult[0] == pytest.approx(0.83, abs=0.005)
    assert all(abs(m - ref) <= 0.01 for m, ref in zip(mult, MULTIPLIERS))
    assert errs[15] == pytest.approx(0.4265) and prof.layers[15].output.deadzone == pytest.approx(0.2871)
    assert prof.layers[15].provenance["output.rel_error"] == "measured"
    assert prof.layers[1].provenance["output.rel_error"].startswith("derived: multiplier 0.89")
    measured = [lm.index for lm in prof.layers if lm.provenance["output.rel_error"] == "measured"]
    assert measured == [0, 2, 3, *range(10, 20), 26, 27]
    with pytest.raises(ProfileError, match="no weight relative error"):
        prof.errors("weight")


def test_qwen_prior_deadzones_keep_the_reported_zone_means() -> None:
    prof = load_profile(QWEN_PRIOR)
    dz = [lm.output.deadzone for lm in prof.layers]
    for (a, b), mean in {(0, 3): 0.189, (4, 9): 0.224, (20, 25): 0.219, (26, 27): 0.171}.items():
        assert sum(dz[a : b + 1]) / (b - a + 1) == pytest.approx(mean, abs=1e-5)


def test_shipped_qwen_prior_is_what_the_generator_writes() -> None:
    assert json.loads(QWEN_PRIOR.read_text()) == json.loads(qwen25_mxfp4_prior().to_json())


# --------------------------------------------------------------------------- file format
def _scanned() -> SrddProfile:
    return scan_model(tiny_qwen(layers=3), _batches(1), "mxfp4", model_name="rand")


def test_save_load_round_trip_is_exact_and_atomic(tmp_path: Path) -> None:
    prof = _scanned()
    path = tmp_path / "p.json"
    path.write_text("old")
    prof.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]  # no temp file left behind
    old_mask = os.umask(0o022)
    try:
        prof.save(path)
        assert path.stat().st_mode & 0o777 == 0o644  # like open(): not mkstemp's private 0600
    finally:
        os.umask(old_mask)
    back = load_profile(path)
    assert back.to_dict() == prof.to_dict()
    assert back.errors("linear_input") == prof.errors("linear_input")
    assert SrddProfile.from_json(prof.to_json()).zones == prof.zones
    table = format_table(back)
    assert "linear_input" in table and len(table.splitlines()) == 3 + 3 + 2 + len(back.zones)


def _valid() -> dict:
    return json.loads(_scanned().to_json())


def _mutate(fn):  # noqa: ANN001, ANN202
    def make() -> str:
        d = _valid()
        fn(d)
        return json.dumps(d)

    return make


def _set_layer_err(d: dict, value: object) -> None:
    d["layers"][1]["output"]["rel_error"] = value


BAD_FILES = {
    "invalid JSON": lambda: "{not json",
    "invalid JSON ": lambda: json.dumps(_valid())[:-40],  # truncated
    "not an SRDD profile": lambda: json.dumps({"study": "x", "trials": []}),
    "not an SRDD profile ": lambda: "[1, 2, 3]",
    "unsupported version 2": _mutate(lambda d: d.update(version=2)),
    "missing key 'zones'": _mutate(lambda d: d.pop("zones")),
    "missing key 'num_layers'": _mutate(lambda d: d.pop("num_layers")),
    "missing key 'output'": _mutate(lambda d: d["layers"][0].pop("output")),
    "2 layer entries but num_layers is 3": _mutate(lambda d: d["layers"].pop()),
    "non-finite number NaN": lambda: json.dumps(_valid()).replace('"rel_error": 0.', '"rel_error": NaN, "x": 0.', 1),
    "must be a finite number ": _mutate(lambda d: _set_layer_err(d, "high")),
    "must be >= 0": _mutate(lambda d: _set_layer_err(d, -0.1)),
    "must be <= 1": _mutate(lambda d: d["layers"][0]["output"].update(deadzone=3.0)),
    "outside 0..2": _mutate(lambda d: d["zones"][0]["layers"].append(7)),
    "is in zones": _mutate(lambda d: d["zones"][0]["layers"].append(d["zones"][1]["layers"][0])),
    "unknown format 'int4'": _mutate(lambda d: d.update(format="int4")),
}


@pytest.mark.parametrize("problem", list(BAD_FILES))
def test_broken_profiles_raise_one_line_profile_errors(tmp_path: Path, problem: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(BAD_FILES[problem]())
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and problem.strip() in msg


def test_missing_profile_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="file not found") as info:
        load_profile(tmp_path / "nope.json")
    assert "nope.json" in str(info.value)


def test_profile_for_another_depth_is_refused() -> None:
    prof = load_profile(QWEN_PRIOR)
    validate_for_model(prof, 28, fmt="mxfp4")  # the matching model passes
    with pytest.raises(ProfileError, match="28 layers, but the model has 8"):
        validate_for_model(prof, 8)
    with pytest.raises(ProfileError, match="not nvfp4"):
        validate_for_model(prof, 28, fmt="nvfp4")


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_shipped_tiny_priors_match_the_shipped_tiny_checkpoint(fmt: str) -> None:
    from objective.tiny import TINY_CHECKPOINT_DIR
    from sweep.commands.srdd import tiny_checkpoint_sha256

    prof = load_profile(REPO / "studies" / "priors" / f"tiny-{fmt}.json")
    layers = json.loads((TINY_CHECKPOINT_DIR / "config.json").read_text())["num_hidden_layers"]
    validate_for_model(prof, layers, fmt=fmt)
    assert sorted(i for z in prof.zones for i in z.layers) == list(range(layers))
    assert prof.source["checkpoint_sha256"] == tiny_checkpoint_sha256(), (
        f"studies/priors/tiny-{fmt}.json is stale: regenerate it with `noisesweep srdd --model tiny "
        f"--format {fmt} --out studies/priors/tiny-{fmt}.json`"
    )


def test_shipped_tiny_mxfp4_prior_spreads_like_the_real_one() -> None:
    """Like Qwen2.5-1.5B (max/min 1.49, worst zone 10-19 of 28): a spread >= 1.3 and a contiguous
    worst zone of inner layers, so the zones and alpha knobs have something to act on."""
    prof = load_profile(REPO / "studies" / "priors" / "tiny-mxfp4.json")
    errs = prof.errors()
    assert max(errs) / min(errs) >= 1.3
    zone_mean = {z.name: sum(errs[i] for i in z.layers) / len(z.layers) for z in prof.zones}
    worst = sorted(next(z.layers for z in prof.zones if z.name == max(zone_mean, key=zone_mean.get)))
    assert worst == list(range(worst[0], worst[-1] + 1))  # contiguous
    assert 0 < worst[0] and worst[-1] < prof.num_layers - 1  # inner layers only
    assert errs.index(max(errs)) in worst and errs.index(min(errs)) not in worst


def _site_values(prof: SrddProfile) -> dict[str, float]:
    """Every metric of every site and projection, flattened to 'layer.site[.proj].metric'."""
    out: dict[str, float] = {}
    for lm in prof.layers:
        for site in ("output", "linear_input", "weight"):
            sm = lm.site(site)
            for k, v in (sm.to_dict() if sm else {}).items():
                if v is not None:
                    out[f"{lm.index}.{site}.{k}"] = v
        for site, per in lm.projections.items():
            for name, sm in per.items():
                for k, v in sm.to_dict().items():
                    if v is not None:
                        out[f"{lm.index}.{site}.{name}.{k}"] = v
    return out


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_rerunning_the_srdd_command_reproduces_the_shipped_tiny_prior(fmt: str, tmp_path: Path) -> None:
    """`noisesweep srdd --model tiny --format F --out ...` must write the shipped file again (1e-3)."""
    from sweep.cli import main

    out = tmp_path / f"tiny-{fmt}.json"
    assert main(["srdd", "--model", "tiny", "--format", fmt, "--out", str(out)]) == 0
    shipped, fresh = load_profile(REPO / "studies" / "priors" / f"tiny-{fmt}.json"), load_profile(out)
    want, got = _site_values(shipped), _site_values(fresh)
    assert set(got) == set(want)
    worst = max(want, key=lambda k: abs(got[k] - want[k]))
    # SQNR is in dB (10 log10 of a ratio), the others are fractions; 1e-3 holds for both here
    assert abs(got[worst] - want[worst]) <= 1e-3, (worst, got[worst], want[worst])
    assert [(z.name, z.layers) for z in fresh.zones] == [(z.name, z.layers) for z in shipped.zones]
    assert fresh.source["checkpoint_sha256"] == shipped.source["checkpoint_sha256"]
