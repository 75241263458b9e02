"""Padding-aware batch planning: optimal for its cost model, complete, and bounded."""

from __future__ import annotations

import itertools
import random

import pytest

from expertrag.errors import InputError
from expertrag.models.batching import attention_span, padded_cost, plan_batches


def _flat(batches: list[list[int]]) -> list[int]:
    return [i for b in batches for i in b]


def _brute_force(lengths: list[int], max_rows: int, overhead: float, span: float) -> float:
    """Cheapest contiguous split of the length-sorted rows, by trying every cut set."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best = float("inf")
    for mask in itertools.product([0, 1], repeat=len(order) - 1):
        batches, cur = [], [order[0]]
        for cut, i in zip(mask, order[1:], strict=True):
            if cut:
                batches.append(cur)
                cur = []
            cur.append(i)
        batches.append(cur)
        if all(len(b) <= max_rows for b in batches):
            best = min(best, padded_cost(lengths, batches, overhead=overhead, span=span))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_plan_is_optimal_and_complete(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.choice([3, 8, 20, 120, 500]) + rng.randint(0, 5) for _ in range(9)]
    batches = plan_batches(lengths, max_rows=4, overhead=48, span=2304)
    assert sorted(_flat(batches)) == list(range(len(lengths)))
    assert all(1 <= len(b) <= 4 for b in batches)
    cost = padded_cost(lengths, batches, overhead=48, span=2304)
    assert cost == pytest.approx(_brute_force(lengths, 4, 48, 2304))


def test_mixed_lengths_beat_fixed_batches() -> None:
    lengths = [500] + [20] * 31
    planned = plan_batches(lengths, max_rows=32)
    assert planned[0] == [0]  # the long one alone, the short ones together
    assert padded_cost(lengths, planned) < padded_cost(lengths, [list(range(32))]) / 5


def test_uniform_lengths_make_full_batches_in_input_order() -> None:
    assert plan_batches([50] * 10, max_rows=4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert plan_batches([], max_rows=4) == []


def test_zero_overhead_and_token_cap() -> None:
    # without a per-batch cost there is no reason to pad anything
    assert plan_batches([9, 5, 7], max_rows=8, overhead=0) == [[0], [2], [1]]
    capped = plan_batches([100] * 6 + [900], max_rows=8, overhead=1e9, max_tokens=300)
    assert capped[0] == [6]  # over the cap alone: still scored, in its own batch
    assert all(len(b) * 100 <= 300 for b in capped[1:])


def test_bad_arguments_are_typed_errors() -> None:
    for kwargs in ({"max_rows": 0}, {"max_rows": 2, "overhead": -1},
                   {"max_rows": 2, "max_tokens": 0}, {"max_rows": 2, "span": 0}):
        with pytest.raises(InputError):
            plan_batches([1, 2], **kwargs)
    with pytest.raises(InputError, match="index 1"):
        plan_batches([1, -2], max_rows=2)


def test_attention_span_from_config() -> None:
    from transformers import BertConfig

    assert attention_span(BertConfig(hidden_size=384, intermediate_size=1536)) == 2304
    assert attention_span(None) == 2048


def test_pad_rows_right_and_left() -> None:
    from expertrag.models.batching import pad_rows

    ids, mask = pad_rows([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_rows([[5, 6, 7], [8]], 9, left=True)
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
