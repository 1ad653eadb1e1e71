"""The SRDD scan: run the unquantized model once and measure every decoder layer's three sites.

Sites: ``output`` (the decoder layer's output activations, what the user's team measured),
``linear_input`` (the inputs of the layer's linear layers, what W4A4 quantizes) and ``weight``
(the layer's linear weights, what W4A16 and W4A4 quantize). The scan runs the *unquantized*
model (clean activations): it measures what quantizing each site would cost, not the
compounding error of a quantized forward pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from quant.format_names import check_format
from quant.model import find_decoder_layers
from quant.srdd.metrics import LayerMetrics, MetricAccumulator, SiteMetrics
from quant.srdd.profile import SrddProfile
from quant.srdd.zones import DEFAULT_NUM_SEGMENTS, compute_zones, segment_layers

SrddBatch = torch.Tensor | Mapping[str, torch.Tensor]
"""A LongTensor (batch, seq) of token ids, or a dict with `input_ids` and an optional `attention_mask`."""

_LORA_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


def layer_linears(layer: nn.Module) -> dict[str, nn.Linear]:
    """The base nn.Linear modules of one decoder layer, named without peft's `.base_layer`.

    LoRA adapters (lora_A/lora_B) are skipped; peft's wrapper is not an nn.Linear, so only its
    base_layer is taken and no projection is counted twice.
    """
    out: dict[str, nn.Linear] = {}
    for name, mod in layer.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        parts = name.split(".")
        if any(p in _LORA_PARTS for p in parts):
            continue
        clean = ".".join(p for p in parts if p != "base_layer")
        out[clean] = mod
    return out


def _as_inputs(batch: object) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        ids = batch if batch.dim() == 2 else batch.unsqueeze(0)
        return {"input_ids": ids}, None
    if isinstance(batch, Mapping) and "input_ids" in batch:
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        inputs = {"input_ids": ids}
        if mask is not None:
            inputs["attention_mask"] = mask
        return inputs, mask
    raise ValueError("each SRDD batch must be a LongTensor of token ids or a dict with 'input_ids'")


def scan_model(model: nn.Module, batches: Iterable[SrddBatch], fmt: str, *, model_name: str) -> SrddProfile:
    """Run `model` (eval, no grad) on `batches` and measure every decoder layer's three sites.

    A batch is a LongTensor (batch, seq) of token ids or a dict with `input_ids` and an optional
    `attention_mask`; padded positions (mask 0) are left out of the metrics.
    """
    check_format(fmt)
    layers = find_decoder_layers(model)
    n = len(layers)
    out_acc = [MetricAccumulator(fmt) for _ in range(n)]
    lin_acc: list[dict[str, MetricAccumulator]] = []
    linears = [layer_linears(layer) for layer in layers]
    state: dict[str, torch.Tensor | None] = {"mask": None}

    def select(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        mask = state["mask"]
        if mask is not None and mask.numel() == flat.shape[0]:
            flat = flat[mask]
        return flat

    handles = []
    for li, layer in enumerate(layers):

        def out_hook(_m: nn.Module, _args: tuple[object, ...], output: object, li: int = li) -> None:
            hs = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(hs, torch.Tensor):  # HF decoder layers return the hidden states or a tuple led by them
                out_acc[li].update(select(hs))

        handles.append(layer.register_forward_hook(out_hook))
        accs = {}
        for pname, lin in linears[li].items():
            acc = MetricAccumulator(fmt)
            accs[pname] = acc

            def in_hook(_m: nn.Module, args: tuple[object, ...], acc: MetricAccumulator = acc) -> None:
                if args and isinstance(args[0], torch.Tensor):
                    acc.update(select(args[0]))

            handles.append(lin.register_forward_pre_hook(in_hook))
        lin_acc.append(accs)

    was_training = model.training
    model.eval()
    batches_seen = 0
    tokens = 0
    try:
        with torch.no_grad():
            for batch in batches:
                inputs, mask = _as_inputs(batch)
                device = next(model.parameters()).device
                inputs = {k: v.to(device) for k, v in inputs.items()}
                state["mask"] = mask.reshape(-1).bool().to(device) if mask is not None else None
                tokens += int(state["mask"].sum()) if state["mask"] is not None else inputs["input_ids"].numel()
                model(**inputs, use_cache=False)
                batches_seen += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if batches_seen == 0:
        raise ValueError("SRDD scan needs at least one batch of token ids")

    results: list[LayerMetrics] = []
    for li in range(n):
        agg_in = MetricAccumulator(fmt)
        agg_w = MetricAccumulator(fmt)
        per_in: dict[str, SiteMetrics] = {}
        per_w: dict[str, SiteMetrics] = {}
        for pname, lin in linears[li].items():
            agg_in.merge(lin_acc[li][pname])
            per_in[pname] = lin_acc[li][pname].result()
            wacc = MetricAccumulator(fmt)
            wacc.update(lin.weight.detach())
            agg_w.merge(wacc)
            per_w[pname] = wacc.result()
        has_lin = bool(linears[li])
        results.append(
            LayerMetrics(
                index=li,
                output=out_acc[li].result(),
                linear_input=agg_in.result() if has_lin else None,
                weight=agg_w.result() if has_lin else None,
                projections={"linear_input": per_in, "weight": per_w} if has_lin else {},
                provenance={"*": "measured"},
            )
        )
    errors = [lm.output.rel_error or 0.0 for lm in results]
    segments = segment_layers(errors, min(DEFAULT_NUM_SEGMENTS, n))
    zones = compute_zones(errors, segments=segments)
    source = {
        "kind": "scan",
        "tool": "noisesweep srdd (quant.srdd.scan_model)",
        "batches": batches_seen,
        "tokens": tokens,
        "measured": "all sites on the unquantized model; linear_input/weight aggregate every base "
        "nn.Linear of the layer (sums over projections), per-projection values under 'projections'",
        "segments": [list(s) for s in segments],
        "zones": f"DP segmentation of output rel_error into {min(DEFAULT_NUM_SEGMENTS, n)} runs, "
        "runs grouped into low/medium/high by mean error",
    }
    return SrddProfile(model=model_name, format=fmt, num_layers=n, layers=results, zones=zones, source=source)
