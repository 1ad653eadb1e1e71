"""Log-probs of sampled response tokens under the policy, in memory that does not grow with the vocabulary.

Why not `model(...).logits.log_softmax(-1)`: for Qwen2.5 (vocabulary 151,936) one 1k-token
response as fp32 logits is 0.6 GB, and log_softmax keeps a second copy for backward. Here the
decoder runs once and returns hidden states; only the response positions that are real tokens
(mask 1) go through the LM head, `chunk_tokens` at a time, each chunk under activation
checkpointing, so backward recomputes that chunk's logits instead of keeping them: at most one
chunk of (chunk_tokens x vocab) fp32 logits is alive at any moment, whatever the batch.

verl does the same job with `use_remove_padding` + `logprobs_from_logits` (flash-attn's
cross-entropy) or its fused linear-cross-entropy kernels (verl/workers/actor/dp_actor.py,
`_forward_micro_batch`); this is the portable, pure-torch version of it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK_TOKENS = 1024


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The causal LM's decoder (returns hidden states, final norm included) and its LM head.

    Works through a peft wrapper: LoRA layers, quantization hooks and noise live on the decoder's
    modules, so calling the decoder directly runs exactly what `model(...)` runs, minus the head.
    """
    get_base = getattr(model, "get_base_model", None)
    causal: Any = get_base() if callable(get_base) else model
    head = causal.get_output_embeddings()
    decoder = causal.base_model  # transformers: getattr(self, base_model_prefix), e.g. Qwen2Model
    if not isinstance(head, nn.Module) or not isinstance(decoder, nn.Module) or decoder is causal:
        raise ValueError(f"{type(causal).__name__} is not a causal LM with a separate decoder and LM head")
    return decoder, head


def _chunk_logp(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, temperature: float) -> torch.Tensor:
    logits = head(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def chunked_token_logprobs(
    hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, *, temperature: float, chunk_tokens: int
) -> torch.Tensor:
    """log softmax(head(hidden) / temperature)[target] for each row of hidden (N, H), chunk by chunk.

    With gradients on, each chunk is checkpointed: backward recomputes its logits.
    """
    out = []
    grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    for lo in range(0, hidden.shape[0], chunk_tokens):
        h, t = hidden[lo : lo + chunk_tokens], targets[lo : lo + chunk_tokens]
        if grad:
            out.append(checkpoint(_chunk_logp, h, t, head, temperature, use_reentrant=False))
        else:
            out.append(_chunk_logp(h, t, head, temperature))
    if not out:
        return hidden.new_zeros(0, dtype=torch.promote_types(hidden.dtype, torch.float32))
    return torch.cat(out)


def trim_padding(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop prompt columns that are padding in every row (left) and response columns likewise (right).

    A micro-batch padded to the whole batch's longest prompt and response wastes that compute;
    positions come from the mask, so trimming all-padding columns changes no real token's value.
    The first prompt column kept is the first that any row uses; at least one column stays.
    """
    used_p = prompt_mask.any(0).nonzero()
    start = int(used_p[0]) if used_p.numel() else prompt_mask.shape[1] - 1
    used_r = response_mask.any(0).nonzero()
    end = int(used_r[-1]) + 1 if used_r.numel() else 1
    return prompt_ids[:, start:], prompt_mask[:, start:], response_ids[:, :end], response_mask[:, :end]


def response_logprobs(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    temperature: float,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> torch.Tensor:
    """(B, R) log-probs of the response tokens at `temperature` (0 where response_mask is 0).

    Inputs may live anywhere; they are moved to the model's device, and so is the result.
    """
    device = next(model.parameters()).device
    width = response_ids.shape[1]
    p_ids, p_mask, r_ids, r_mask = (t.to(device) for t in trim_padding(prompt_ids, prompt_mask, response_ids, response_mask))
    decoder, head = decoder_and_head(model)
    ids = torch.cat([p_ids, r_ids], 1)
    mask = torch.cat([p_mask, r_mask], 1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
    p = p_ids.shape[1]
    # the hidden state at position t predicts token t + 1: positions p-1 .. end-1 predict the response
    resp_hidden = hidden[:, p - 1 : -1]
    real = r_mask.bool()
    lp = chunked_token_logprobs(resp_hidden[real], r_ids[real], head, temperature=temperature, chunk_tokens=chunk_tokens)
    out = torch.zeros(r_ids.shape[0], width, dtype=lp.dtype, device=device)
    return out.index_put((*real.nonzero(as_tuple=True),), lp)
