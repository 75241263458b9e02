"""Pure helpers of the benchmark scripts (the figures in the issue notes come from them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_best_threshold_accuracy_is_the_ceiling_over_every_lower():
    best = _load("bench_chains").best_threshold_accuracy
    # separable: some threshold gets every action right
    assert best([0.9, 0.2, 0.8, 0.95], [True, False, False, True]) == 1.0
    # overlapping: a gold-present item scores below a gold-absent one
    assert best([0.3, 0.6, 0.9, 0.5], [True, False, True, False]) == 0.75
    # "always Incorrect" (threshold above every score) counts too
    assert best([0.9, 0.8], [False, False]) == 1.0


def test_graph_recall_counts_distinct_paragraphs():
    recall = _load("bench_graph").recall
    # two chunks of paragraph a are one paragraph: b is still within the first 2
    assert recall(["a#0", "a#1", "b#0"], {"a", "b"}, 2) == 1.0
    assert recall(["a#0", "c#0", "b#0"], {"a", "b"}, 2) == 0.5
    assert recall([], {"a"}, 5) == 0.0
