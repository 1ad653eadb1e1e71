"""GPU memory across trials that share one process (the sweep reuses its Ray trial workers).

A trial must leave the device as it found it, whatever way it ended, or the next trial in the
same worker starts with less memory and fails for a reason that is not its own. Two things are
needed, in this order: every reference to the trial's tensors gone (engine, model, optimizer,
and the traceback of an exception that still points at their frames), then the CUDA caching
allocator's blocks handed back (`torch.cuda.empty_cache`), which only releases blocks that
nothing references any more. Emptying the cache while the engine is still referenced frees
nothing; that was the old release order.
"""

from __future__ import annotations

import gc

import torch

# What running out of device memory looks like: torch's OutOfMemoryError, and vLLM's start-up
# refusals (vllm/v1/core/kv_cache_utils.py: "No available memory for the cache blocks";
# vllm/v1/worker/utils.py request_memory: free memory "less than desired GPU memory utilization").
OOM_MESSAGES = ("out of memory", "no available memory for the cache blocks",
                "less than desired gpu memory utilization")


def is_out_of_memory(exc: BaseException) -> bool:
    """True when `exc` (or what it was raised from) is the device running out of memory."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, torch.OutOfMemoryError):
            return True
        text = str(cur).lower()
        if any(m in text for m in OOM_MESSAGES):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def empty_device_cache() -> None:
    """Hand the caching allocator's unreferenced blocks back to the device (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def free_device_memory() -> None:
    """Collect unreachable objects (peft models and hooks form cycles), then empty the cache.

    Call it after the last reference to a trial's tensors is gone, never while one is held.
    """
    gc.collect()
    empty_device_cache()
