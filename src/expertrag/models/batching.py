"""Padding-aware batch planning for scoring forward passes (rerankers, label probabilities).

A batch costs what its *padded* shape costs: ``rows x longest row``, plus a fixed per-call
overhead. Fixed-size batches of mixed-length inputs spend most of their time on padding: one
400-word passage in a batch of 32 short ones pads all 32 to 512 tokens. Sorting by length
helps only when there are many batches; a reranker that scores one query's 32 candidates with
``batch_size=32`` still makes one batch, however mixed.

:func:`plan_batches` sorts the inputs by length and cuts the sorted list where it is cheapest,
by dynamic programming over a cost model (exact optimum for that model, ``O(n * max_rows)``)::

    cost(batch) = overhead + rows * width * (1 + width / attention_span)

``overhead`` is the per-forward cost in token equivalents (kernel launches, Python): on a
2-core CPU a 6-layer MiniLM and the 30-layer SmolLM2-135M both measure ~45-60 tokens; a GPU
wants far larger batches (default 2048). ``attention_span`` weighs the quadratic attention
term against the per-token matrix products, ``2 * hidden + intermediate`` for a transformer.
Nothing here changes results: padding is masked, so only the grouping differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from expertrag.errors import InputError

#: Per-forward overhead in token equivalents, measured on 2 CPU cores for MiniLM-L6 and
#: SmolLM2-135M (benchmarks/RESULTS.md, "Model speed and dtype").
CPU_OVERHEAD_TOKENS = 48
#: On a GPU small batches leave the device idle; this makes the planner fill batches.
CUDA_OVERHEAD_TOKENS = 2048


def default_overhead(device: Any) -> int:
    """The per-batch overhead (token equivalents) to plan with on ``device``."""
    return CUDA_OVERHEAD_TOKENS if str(device).startswith("cuda") else CPU_OVERHEAD_TOKENS


def attention_span(config: Any, default: int = 2048) -> int:
    """``2 * hidden + intermediate`` from a transformers config: the sequence length at which
    attention costs as much per token as the matrix products (see the module docstring)."""
    hidden = getattr(config, "hidden_size", None)
    inter = getattr(config, "intermediate_size", None) or (4 * hidden if hidden else None)
    if not hidden or not inter:
        return default
    return int(2 * hidden + inter)


def _row_cost(width: int, span: float) -> float:
    """The cost of one row padded to ``width`` (the per-row part of the module's model)."""
    return width * (1.0 + width / span)


def pad_rows(rows: Sequence[Sequence[int]], fill: int, *, left: bool = False) -> tuple[Any, Any]:
    """Pad token rows to the longest of them: ``(ids, attention_mask)`` as CPU tensors.
    Right padding for encoders; ``left=True`` for causal LMs, whose last position is read."""
    import torch

    width = max(len(r) for r in rows)
    ids, mask = [], []
    for r in rows:
        gap = width - len(r)
        ids.append([fill] * gap + list(r) if left else list(r) + [fill] * gap)
        mask.append([0] * gap + [1] * len(r) if left else [1] * len(r) + [0] * gap)
    return torch.tensor(ids), torch.tensor(mask)


def plan_batches(
    lengths: Sequence[int],
    *,
    max_rows: int,
    overhead: float = CPU_OVERHEAD_TOKENS,
    span: float = 2048,
    max_tokens: int | None = None,
) -> list[list[int]]:
    """Group input indices into batches that minimise the estimated padded cost.

    Returns lists of indices into ``lengths``, longest first; every index appears exactly once.
    ``max_rows`` caps the rows of a batch and ``max_tokens`` (optional) its padded tokens
    (``rows x width``); a single row longer than ``max_tokens`` still gets a batch of its own.
    """
    if not isinstance(max_rows, int) or max_rows < 1:
        raise InputError(f"max_rows must be a positive integer, got {max_rows!r}")
    if overhead < 0 or span <= 0:
        raise InputError(f"overhead must be >= 0 and span > 0, got {overhead!r}, {span!r}")
    if max_tokens is not None and max_tokens < 1:
        raise InputError(f"max_tokens must be positive, got {max_tokens!r}")
    bad = [i for i, n in enumerate(lengths) if not isinstance(n, int) or n < 0]
    if bad:
        raise InputError(f"lengths must be non-negative integers; index {bad[0]} is "
                         f"{lengths[bad[0]]!r}")
    n = len(lengths)
    if n == 0:
        return []
    # stable: equal lengths keep their input order
    order = sorted(range(n), key=lambda i: -lengths[i])
    widths = [max(lengths[i], 1) for i in order]
    per_row = [_row_cost(w, span) for w in widths]
    inf = float("inf")
    best = [0.0] + [inf] * n  # best[j]: cheapest plan for the first j sorted rows
    cut = [0] * (n + 1)  # cut[j]: where the last batch of that plan starts
    for j in range(1, n + 1):
        for i in range(j - 1, max(0, j - max_rows) - 1, -1):
            rows = j - i
            # the batch [i, j) is padded to widths[i], its longest row
            if max_tokens is not None and rows > 1 and rows * widths[i] > max_tokens:
                break  # growing the batch further back only makes it wider
            cost = best[i] + overhead + rows * per_row[i]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    batches: list[list[int]] = []
    j = n
    while j > 0:
        batches.append(order[cut[j]:j])
        j = cut[j]
    return batches[::-1]


def padded_cost(lengths: Sequence[int], batches: Sequence[Sequence[int]], *,
                overhead: float = CPU_OVERHEAD_TOKENS, span: float = 2048) -> float:
    """The cost model's estimate for a given grouping (for tests and benchmarks)."""
    total = 0.0
    for rows in batches:
        width = max(max(lengths[i] for i in rows), 1)
        total += overhead + len(rows) * _row_cost(width, span)
    return total
