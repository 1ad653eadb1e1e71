"""quant.formats: MXFP4/NVFP4 fake quantization, bit-exact against torchao and hand-computed cases.

torchao 0.18 is the cross-check reference (``to_mx`` FLOOR + ``to_dtype``; ``NVFP4Tensor`` with a
per-tensor scale). microxcaling is not on PyPI; its round="even" semantics (the spec's) are
encoded as hand-computed cases, and its default round="nearest" (half away from zero) is shown
to differ. Most tests run eagerly (tensors below the compile threshold); one test compiles.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from quant import fp4_compiled
from quant.formats import KNOWN_FORMATS, fake_quantize
from quant.fp4_kernels import eager_fake_quantize, round_to_e4m3

torchao_mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
torchao_nv = pytest.importorskip("torchao.prototype.mx_formats.nvfp4_tensor")

E2M1_GRID = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


@pytest.fixture(autouse=True)
def _eager_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep these tests on the eager reference unless a test opts into compiling."""
    monkeypatch.setenv(fp4_compiled.ENV_VAR, "0")


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern for exact comparison (NaN == NaN, -0 != +0)."""
    return t.float().view(torch.int32)


def torchao_mxfp4(x: torch.Tensor) -> torch.Tensor:
    scale, data = torchao_mx.to_mx(x, torch.float4_e2m1fn_x2, 32, torchao_mx.ScaleCalculationMode.FLOOR)
    return torchao_mx.to_dtype(data, scale, torch.float4_e2m1fn_x2, 32, x.dtype)


def torchao_nvfp4(x: torch.Tensor) -> torch.Tensor:
    pts = torchao_nv.per_tensor_amax_to_scale(x.float().abs().amax())
    t = torchao_nv.NVFP4Tensor.to_nvfp4(x, per_tensor_scale=pts)
    return t.dequantize(x.dtype)


def wide_range(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Normal data whose row scales span 2^-40 .. 2^40 (exercises many E8M0 exponents)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g)
    return x * torch.exp2(torch.randint(-40, 41, (rows, 1), generator=g).float())


def mx_block(values: list[float], anchor: float = 4.0) -> torch.Tensor:
    """One 32-wide block: `values` then `anchor` (fixes amax, so the scale) then zeros."""
    x = torch.zeros(1, 32)
    x[0, : len(values)] = torch.tensor(values)
    x[0, 31] = anchor
    return x


# ----------------------------------------------------------------------------- MXFP4
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mxfp4_matches_torchao_bit_for_bit(dtype: torch.dtype) -> None:
    x = wide_range(64, 256).to(dtype)
    assert torch.equal(bits(fake_quantize(x, "mxfp4")), bits(torchao_mxfp4(x)))


def test_mxfp4_exponent_comes_from_the_bits_just_below_a_power_of_two() -> None:
    below = torch.nextafter(torch.tensor(256.0), torch.tensor(0.0))  # 255.99998 in float32
    assert torch.log2(below).item() == 8.0  # the trap: a float32 log2 rounds up to 8
    x = mx_block([], anchor=below.item())
    # floor(log2) = 7 -> scale 2^5; 255.99998 / 32 = 7.9999995 saturates to 6 -> 192 (not 256).
    assert fake_quantize(x, "mxfp4")[0, 31].item() == 192.0
    assert torch.equal(bits(fake_quantize(x, "mxfp4")), bits(torchao_mxfp4(x)))


def test_mxfp4_saturates_at_six_times_the_scale() -> None:
    # amax 7.5 -> scale 2^(2-2) = 1; 7.5 > 6 saturates, -7 as well.
    x = mx_block([-7.0, 6.9, 5.9], anchor=7.5)
    q = fake_quantize(x, "mxfp4")[0]
    assert q[:3].tolist() == [-6.0, 6.0, 6.0] and q[31].item() == 6.0


@pytest.mark.parametrize("scale_exp", [-20, 0, 13])
def test_mxfp4_ties_to_even_at_every_e2m1_step(scale_exp: int) -> None:
    s = 2.0**scale_exp
    ties = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
    even = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]  # round="even" (OCP spec, microxcaling "even")
    away = [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]  # microxcaling's default round="nearest"
    vals = ties + [-t for t in ties]
    x = mx_block([v * s for v in vals], anchor=4.0 * s)  # amax 4s -> scale s
    q = (fake_quantize(x, "mxfp4")[0, : len(vals)] / s).tolist()
    assert q == even + [-e for e in even]
    assert q[: len(ties)] != away
    assert torch.equal(bits(fake_quantize(x, "mxfp4")), bits(torchao_mxfp4(x)))


def test_mxfp4_grid_values_are_fixed_points() -> None:
    x = mx_block(E2M1_GRID + [-g for g in E2M1_GRID], anchor=6.0)
    assert torch.equal(fake_quantize(x, "mxfp4"), x)


def test_mxfp4_all_zero_block_stays_zero_and_blocks_are_independent() -> None:
    x = torch.zeros(2, 64)
    x[1, 32:] = torch.linspace(-3, 3, 32)
    q = fake_quantize(x, "mxfp4")
    assert torch.equal(q[:, :32], torch.zeros(2, 32)) and torch.equal(q[0], torch.zeros(64))
    assert q[1, 32:].abs().max().item() == 3.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_mxfp4_nan_or_inf_makes_its_whole_block_nan(bad: float) -> None:
    x = torch.ones(1, 96)
    x[0, 40] = bad
    q = fake_quantize(x, "mxfp4")
    assert torch.isnan(q[0, 32:64]).all()
    assert torch.equal(q[0, :32], torch.ones(32)) and torch.equal(q[0, 64:], torch.ones(32))


def test_mxfp4_inf_block_is_nan_where_torchao_keeps_it_finite() -> None:
    """Spec over torchao: torchao 0.18 only poisons NaN blocks; an Inf gets scale 2^126."""
    x = torch.ones(1, 32)
    x[0, 0] = float("inf")
    assert torch.isnan(fake_quantize(x, "mxfp4")).all()
    assert not torch.isnan(torchao_mxfp4(x)).all()


def test_mxfp4_tiny_blocks_use_the_e8m0_minimum_scale_unlike_torchao() -> None:
    """amax < 2^-124: the spec scale is 2^-127 both ways; torchao divides by 2^-126 instead."""
    x = torch.zeros(1, 32)
    x[0, 0] = 2.0**-125  # floor(log2) - 2 = -127 -> x / 2^-127 = 4, exact
    x[0, 1] = 2.0**-126  # -> 2, exact
    x[0, 2] = 1.5 * 2.0**-149  # a float32 subnormal: 1.5 * 2^-22 units -> rounds to 0
    q = fake_quantize(x, "mxfp4")[0]
    assert q[:3].tolist() == [2.0**-125, 2.0**-126, 0.0]
    assert torchao_mxfp4(x)[0, 0].item() == 2.0**-126  # torchao halves the block


def test_mxfp4_short_last_block_has_its_own_scale() -> None:
    x = wide_range(5, 70, seed=3)
    x[:, 64:] *= 1e-3  # the 6-wide tail block is much smaller than the rest of its row
    padded = torch.nn.functional.pad(x, (0, 26))
    expected = torchao_mxfp4(padded)[:, :70]
    q = fake_quantize(x, "mxfp4")
    assert q.shape == x.shape and torch.equal(bits(q), bits(expected))
    assert (q[:, 64:] != 0).any()  # with the row's scale the tail would vanish


# ----------------------------------------------------------------------------- NVFP4
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nvfp4_matches_torchao_with_per_tensor_scale(dtype: torch.dtype) -> None:
    # Moderate dynamic range: every scaled block scale is >= 2^-6, so the clamp choice is moot.
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(32, 256, generator=g) * torch.rand(32, 1, generator=g).add(0.05)).to(dtype)
    assert torch.equal(bits(fake_quantize(x, "nvfp4")), bits(torchao_nvfp4(x)))


def test_nvfp4_hand_computed_block_and_tensor_scales() -> None:
    x = torch.zeros(1, 32)
    x[0, 0] = 2688.0  # tensor amax -> s = 1
    x[0, 16:20] = torch.tensor([13.0, -2.5, 0.3, 1.0])  # block amax 13 -> 13/6 = 2.1667 -> e4m3 2.25
    q = fake_quantize(x, "nvfp4")[0]
    assert q[0].item() == 2688.0  # 448 * 6
    # elements / 2.25: 5.78 -> 6, -1.11 -> -1, 0.133 -> 0, 0.444 -> 0.5; times 2.25
    assert q[16:20].tolist() == [13.5, -2.25, 0.0, 1.125]


def test_nvfp4_block_scales_below_the_e4m3_normal_range_are_not_clamped() -> None:
    """Documented choice (TransformerEngine): E4M3 subnormal block scales, no 2^-6 clamp."""
    x = torch.zeros(1, 48)
    x[0, 0] = 2688.0  # s = 1
    x[0, 16] = 6 * 3 * 2.0**-9  # block scale 3 * 2^-9 (an E4M3 subnormal), element 6
    x[0, 17] = 3 * 2.0**-9  # -> 1 unit
    x[0, 32] = 6 * 2.0**-12  # block scale 2^-12 rounds to 0 in E4M3 -> the block is 0
    q = fake_quantize(x, "nvfp4")[0]
    assert q[16:18].tolist() == [6 * 3 * 2.0**-9, 3 * 2.0**-9]
    assert q[32].item() == 0.0
    # torchao clamps the block scale up to 2^-6: 2.25 -> 2 and 0.375 -> 0.5 units of 2^-6.
    assert torchao_nvfp4(x)[0, 16:18].tolist() == [2 * 2.0**-6, 0.5 * 2.0**-6]


def test_nvfp4_zero_tensor_and_nan_tensor() -> None:
    assert torch.equal(fake_quantize(torch.zeros(2, 32), "nvfp4"), torch.zeros(2, 32))
    x = torch.ones(2, 32)
    x[1, 3] = float("inf")
    assert torch.isnan(fake_quantize(x, "nvfp4")).all()


def test_nvfp4_tensor_too_small_for_the_tensor_scale_is_flushed_not_nan() -> None:
    """amax < 2688 * 2^-128: 1/s overflows float32; the result must be zeros, never NaN."""
    x = torch.zeros(2, 32)
    x[0, 0], x[1, 5] = 1e-36, -3e-37
    q = fake_quantize(x, "nvfp4")
    assert torch.equal(q, torch.zeros(2, 32))
    y = x.clone()
    y[0, 0] = 1e-34  # just above the limit: the normal recipe still applies, and stays finite
    assert torch.isfinite(fake_quantize(y, "nvfp4")).all() and fake_quantize(y, "nvfp4")[0, 0].item() > 0


@pytest.mark.parametrize("fmt", KNOWN_FORMATS)
@pytest.mark.parametrize("shape", [(0, 32), (3, 0), (0,)])
def test_empty_tensors_pass_through(fmt: str, shape: tuple[int, ...]) -> None:
    """A Linear called on an empty batch must not crash the W4A4 hook."""
    x = torch.empty(shape, requires_grad=True)
    q = fake_quantize(x, fmt, ste=True)
    assert q.shape == x.shape and q.dtype == x.dtype
    q.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_nvfp4_short_last_block_matches_padded_torchao() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 40, generator=g) + 0.5
    x[:, 32:] *= 0.01
    expected = torchao_nvfp4(torch.nn.functional.pad(x, (0, 8)))[:, :40]
    assert torch.equal(bits(fake_quantize(x, "nvfp4")), bits(expected))


def test_round_to_e4m3_equals_the_float8_cast() -> None:
    v = torch.cat([
        torch.rand(20000) * 500,
        torch.rand(5000) * 2.0**-5,
        torch.arange(0, 2**12, dtype=torch.float32) * 2.0**-12,  # ties in every binade
        torch.tensor([0.0, 448.0, 449.0, 463.9, 464.0, 1e6, 2.0**-10, 2.0**-10 * 1.0000001]),
    ])
    expected = v.clamp(max=448.0).to(torch.float8_e4m3fn).float()
    assert torch.equal(round_to_e4m3(v), expected)


# ----------------------------------------------------------------------------- API
@pytest.mark.parametrize("fmt", KNOWN_FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtype_and_shape_are_kept(fmt: str, dtype: torch.dtype) -> None:
    x = torch.randn(2, 3, 50).to(dtype)
    q = fake_quantize(x, fmt)
    assert q.dtype == dtype and q.shape == x.shape
    # fp16 goes through float32; the result equals quantizing the float32 copy, cast back.
    assert torch.equal(q, fake_quantize(x.float(), fmt).to(dtype))


def test_unknown_format_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="mxfp4.*nvfp4") as info:
        fake_quantize(torch.ones(4), "int4")
    assert "int4" in str(info.value)
    with pytest.raises(ValueError, match="torch.int64"):
        fake_quantize(torch.ones(4, dtype=torch.int64), "mxfp4")


@pytest.mark.parametrize("fmt", KNOWN_FORMATS)
def test_ste_gradient_is_identity_and_plain_gradient_is_zero(fmt: str) -> None:
    x = torch.randn(4, 64, requires_grad=True)
    w = torch.randn(4, 64)
    (fake_quantize(x, fmt, ste=True) * w).sum().backward()
    assert torch.equal(x.grad, w)
    x.grad = None
    (fake_quantize(x, fmt) * w).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(w))


def test_no_grad_input_gives_plain_tensor() -> None:
    q = fake_quantize(torch.randn(3, 32), "mxfp4", ste=True)
    assert not q.requires_grad and q.grad_fn is None


# ----------------------------------------------------------------------------- fused path
def edge_case_tensor(cols: int) -> torch.Tensor:
    """Random wide-range data with ties, saturation, zero blocks, denormals, just-below-2^k."""
    x = wide_range(400, cols, seed=7)
    x[0, :32] = 0.0
    x[1, :7] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]) * 2.0**-3
    x[1, 7] = 4.0 * 2.0**-3
    x[2, :32] = torch.nextafter(torch.tensor(256.0), torch.tensor(0.0))
    x[3, :32] = torch.linspace(-1, 1, 32) * 2.0**-140  # subnormals
    x[4, 5] = 1e30
    return x


@pytest.mark.slow
def test_compiled_path_is_bit_identical_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """One graph set per format and dtype (dynamic shapes: both column counts share it)."""
    monkeypatch.setenv(fp4_compiled.ENV_VAR, "1")
    for dtype, cols in ((torch.float32, 128), (torch.float32, 100), (torch.bfloat16, 128)):
        x = edge_case_tensor(cols).to(dtype)
        assert x.numel() >= fp4_compiled.MIN_NUMEL
        for fmt in KNOWN_FORMATS:
            fused = fp4_compiled.quantize(x, fmt)
            assert fused is not None, "compilation failed on this machine"
            assert fused.dtype == dtype
            assert torch.equal(bits(fused), bits(eager_fake_quantize(x, fmt)))
    x = edge_case_tensor(128)
    x[9, 70] = float("nan")
    assert torch.equal(bits(fp4_compiled.quantize(x, "mxfp4")), bits(eager_fake_quantize(x, "mxfp4")))
    assert torch.isnan(fp4_compiled.quantize(x, "nvfp4")).all()
    # STE keeps working with the fast forward.
    xg = edge_case_tensor(128).requires_grad_(True)
    out = fake_quantize(xg, "mxfp4", ste=True)
    out.sum().backward()
    assert torch.equal(bits(out.detach()), bits(eager_fake_quantize(xg.detach(), "mxfp4")))
    assert torch.equal(xg.grad, torch.ones_like(xg))


def test_env_var_and_small_tensors_stay_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fp4_compiled.ENV_VAR, "0")
    assert fp4_compiled.quantize(torch.randn(256, 128), "mxfp4") is None
    monkeypatch.setenv(fp4_compiled.ENV_VAR, "1")
    assert fp4_compiled.quantize(torch.randn(4, 70), "mxfp4") is None  # below MIN_NUMEL


def test_compile_failure_warns_once_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fp4_compiled.ENV_VAR, "1")
    monkeypatch.setattr(fp4_compiled, "_failed", False)

    def broken(fmt: str, flat: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no C compiler found")

    monkeypatch.setattr(fp4_compiled, "_run", broken)
    x = torch.randn(256, 128)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = fake_quantize(x, "mxfp4")
        second = fake_quantize(x, "nvfp4")
    assert len([w for w in caught if "eager" in str(w.message)]) == 1
    assert torch.equal(bits(first), bits(eager_fake_quantize(x, "mxfp4")))
    assert torch.equal(bits(second), bits(eager_fake_quantize(x, "nvfp4")))
