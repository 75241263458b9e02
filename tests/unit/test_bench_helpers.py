"""Pure helpers of the benchmark scripts (the figures in the issue notes come from them)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:  # the scripts import their shared helpers from _common
        sys.path.insert(0, str(BENCH))
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


def test_gold_retrieved_matches_supporting_paragraphs_by_text():
    from expertrag.types import Document

    bench = _load("bench_chains")
    items = [_qa_item("Where is A?", "Paris", "A is in Paris."),
             _qa_item("Where is B?", "Rome", "B is in Rome.")]
    retrieved = [[Document(text="unrelated"), Document(text=" A is in Paris.\n")],
                 [Document(text="A is in Paris."), Document(text="B is in Rome, Italy.")]]
    # the first holds its gold (whitespace aside); the second only another item's gold and
    # a near-copy of its own, which does not count
    assert bench.gold_retrieved(retrieved, items) == [True, False]
    assert bench.gold_retrieved([[], []], items) == [False, False]


def test_graph_recall_counts_distinct_paragraphs():
    recall = _load("bench_graph").recall
    # two chunks of paragraph a are one paragraph: b is still within the first 2
    assert recall(["a#0", "a#1", "b#0"], {"a", "b"}, 2) == 1.0
    assert recall(["a#0", "c#0", "b#0"], {"a", "b"}, 2) == 0.5
    assert recall([], {"a"}, 5) == 0.0


def test_tune_crag_memoises_scores_and_answers():
    tune = _load("tune_crag")

    class Scorer:
        def __init__(self):
            self.seen = []

        def score_pairs(self, pairs):
            self.seen += pairs
            return [len(t) / 10 for _, t in pairs]

    inner = Scorer()
    memo = tune.MemoEvaluator(inner)
    assert memo.score_pairs([("q", "ab"), ("q", "abc"), ("q", "ab")]) == [0.2, 0.3, 0.2]
    assert memo.score_pairs([("q", "abc"), ("r", "a")]) == [0.3, 0.1]
    assert inner.seen == [("q", "ab"), ("q", "abc"), ("r", "a")]  # each pair scored once

    class Generator:
        calls = 0
        name = "gen"

        def generate(self, convs, **kwargs):
            self.calls += 1
            return [f"{c[0]['content']}:{kwargs.get('expert')}" for c in convs]

    gen = tune.MemoLLM(Generator())
    conv = [{"role": "user", "content": "hi"}]
    assert gen.generate([conv, conv], expert="e") == ["hi:e", "hi:e"]
    assert gen.generate([conv], expert="e") == ["hi:e"] and gen.inner.calls == 1
    assert gen.generate([conv], expert="f") == ["hi:f"] and gen.inner.calls == 2  # kwargs count
    assert gen.name == "gen"  # everything else is forwarded


def _qa_item(question: str, answer: str, gold: str):
    from expertrag.evaluation.datasets import QAItem
    from expertrag.types import Document

    return QAItem(id=question, question=question, answer=answer,
                  gold=[Document(text=gold)], distractors=[Document(text="unrelated")])


def test_oracle_context_answers_from_the_gold_paragraphs_and_bounds_recovery():
    bench = _load("bench_chains")
    items = [_qa_item("Where is A?", "Paris", "A is in Paris."),
             _qa_item("Where is B?", "Rome", "B is in Rome.")]

    class Reader:  # answers with the last word of the first passage it is shown
        def generate(self, convs, **kwargs):
            from types import SimpleNamespace

            assert kwargs["expert"] == "grounded-qa"
            outs = []
            for conv in convs:
                passage = conv[-1]["content"].split("[1]", 1)[1].split("\n")[0]
                outs.append(SimpleNamespace(text=passage.strip(" .").split()[-1] + " [1]."))
            return outs

    oracle = bench.OracleContext(Reader(), items)
    results = oracle.answer_many([it.question for it in items])
    assert [r.text for r in results] == ["Paris [1].", "Rome [1]."]
    has_answer = [True, False]  # B's gold was removed from its internal corpus: still shown
    assert bench.recovered(results, items, has_answer) == 1.0
    rows = bench.per_question(results, items, has_answer)
    assert rows[0]["correct"] and not rows[0]["refused"] and rows[0]["action"] is None
    assert rows[1]["correct"] is False  # "correct" counts answerable questions only


def test_selfrag_candidates_pick_follows_the_weights():
    pick = _load("selfrag_candidates").pick

    def cand(text, isrel, issup, isuse):
        return {"text": text, "isrel": isrel, "issup": issup, "isuse": isuse}

    row = {"candidates": [cand("one", 0.9, 0.2, 0.0), cand("two", 0.4, 0.9, 0.0)],
           "all_passages": cand("all", 0.3, 1.0, 1.0)}
    assert pick(row, (1, 1, 0.5), False)["text"] == "two"  # 1.3 against 1.1
    assert pick(row, (1, 0, 0), False)["text"] == "one"  # IsRel alone
    assert pick(row, (1, 1, 0.5), True)["text"] == "all"  # 0.3 + 1.0 + 0.5 = 1.8
    row["all_passages"]["isrel"] = None  # no IsRel counts as 0
    assert pick(row, (1, 0, 0), True)["text"] == "one"


def test_crag_context_rules_select_against_the_gold():
    cc = _load("crag_contexts")
    # passage 1 is the best; 3 is the bridge the question alone rates low, but high together
    row = {"scores": [0.5, 0.99, 0.8, 0.02, 0.001],
           "joint": [0.3, None, 0.4, 0.95, 0.01],
           "gold": [False, True, False, True, False]}
    assert cc.ranked(row["scores"]) == [1, 2, 0, 3, 4]
    assert cc.top(3)(row) == [0, 1, 2]  # retrieval order, whatever the scores
    assert cc.top(3, floor=0.6)(row) == [1, 2]  # 0.5 is below the floor
    assert cc.top(2, floor=0.9)(row) == [1]  # the best passage is always kept
    assert cc.gap(3, 2.0)(row) == [1]  # logit(0.8) is 3.2 below logit(0.99)
    assert cc.gap(3, 4.0)(row) == [1, 2]
    # pair-aware: passage 2 sums logit(0.8) + logit(0.4) = 0.98, passage 3
    # logit(0.02) + logit(0.95) = -0.95
    assert cc.pair(2)(row) == [1, 2]
    row["joint"][3] = 0.9999  # read with the best passage the bridge helps: 5.32
    assert cc.pair(2)(row) == [1, 3]
    assert cc.gold(row) == [1, 3]
    assert cc.gold({"scores": [0.2, 0.7], "gold": [False, False]}) == [1]  # none retrieved

    rows = [row, {"scores": [0.9, 0.1], "joint": [None, 0.5], "gold": [True, False]}]
    f = cc.selection(rows, cc.top(2))
    assert f == {"kept": 2.0, "distractors": 1.0, "all_gold": 1, "exact": 0}
    f = cc.selection(rows, cc.gold)
    assert f == {"kept": 1.5, "distractors": 0.0, "all_gold": 2, "exact": 2}


def test_probe_refusal_splits_refusals_by_whether_the_answer_is_absent():
    import numpy as np

    at_threshold = _load("probe_refusal").at_threshold
    data = {"group": np.array(["a", "a", "a", "b", "b"]),
            "refuse": np.array([True, False, True, False, True])}
    out = at_threshold(np.array([0.9, 0.7, 0.1, 0.4, 0.5]), data, 0.5)
    # per set: right refusals over the answer-absent rows, wrong ones over the present rows
    assert out == {"a": {"absent": [True, False], "present": [True]},
                   "b": {"absent": [True], "present": [False]}}


def test_probe_refusal_rows_compare_two_scores_on_the_same_questions():
    refusal_rows = _load("probe_refusal").refusal_rows
    new = {"a": {"absent": [True, True, False, True], "present": [False, False]},
           "b": {"absent": [], "present": [True]}}
    old = {"a": {"absent": [False, False, False, True], "present": [False, True]},
           "b": {"absent": [], "present": [False]}}
    rows = refusal_rows(new, old, ["a", "b"])
    # a group with no answer-absent question has no refusal-accuracy row
    assert [r[:3] for r in rows] == [["a", "refusal acc (absent)", "4"],
                                     ["a", "false refusals (present)", "2"],
                                     ["b", "false refusals (present)", "1"]]
    assert rows[0][3:5] == ["0.250", "0.750"] and rows[0][5].startswith("+0.500")
    assert rows[1][3:5] == ["0.500", "0.000"] and rows[1][5].startswith("-0.500")


def test_probe_refusal_cache_is_written_once_and_reused(tmp_path):
    import numpy as np

    cached = _load("probe_refusal").cached
    path = tmp_path / "part.npz"
    calls = []

    def make():
        calls.append(1)
        return {"p_token": np.array([0.25, 0.75], dtype="float32")}

    first = cached(path, make)
    again = cached(path, make)
    assert len(calls) == 1 and path.is_file()
    assert not list(tmp_path.glob("*.tmp*"))  # the temporary file was renamed into place
    np.testing.assert_array_equal(first["p_token"], again["p_token"])


def test_probe_contrast_scores_how_far_the_passages_raise_the_refusal():
    import numpy as np

    contrast = _load("probe_contrast").contrast
    # alpha 1: p_with / (p_with + p_alone), the sigmoid of the log-ratio
    out = contrast(np.array([0.3, 0.3, 0.2]), np.array([0.9, 0.05, 0.2]), 1.0)
    np.testing.assert_allclose(out, [0.25, 0.3 / 0.35, 0.5])
    # a larger alpha shrinks p_alone's weight (p_alone < 1): the score rises
    assert contrast([0.3], [0.5], 2.0)[0] > contrast([0.3], [0.5], 1.0)[0]
    # zero probabilities are clipped, never a division by zero
    assert np.isfinite(contrast([0.0], [0.0], 1.0)).all()


def test_probe_contrast_keeps_each_probability_with_its_row():
    from expertrag.types import Document

    class Tokenizer:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [7]}

        def decode(self, ids):
            return "I"

    class FakeLLM:  # P(refusal): the question's number, + 0.5 when the passage is there
        tokenizer = Tokenizer()

        def label_probabilities(self, batch, labels, expert, batch_size, normalize):
            assert expert == "grounded-qa" and labels == ("I",) and normalize is False
            out = []
            for messages in batch:
                text = messages[0]["content"]
                number = float(text.split("Question: q")[1].split()[0])
                out.append({"I": number / 100 + (0.5 if "MARK" in text else 0.0)})
            return out

    probabilities = _load("probe_contrast").probabilities
    # rows of different lengths, so that the scoring order differs from the row order
    rows = [("a", f"q{n} " + "x " * 3 * (20 - n), [Document(text="MARK " + "y " * n, id=str(n))],
             n % 2 == 0) for n in range(20)]
    out = probabilities(FakeLLM(), rows, batch=2)
    assert out["p_alone"].tolist() == [n / 100 for n in range(20)]
    assert out["p_with"].tolist() == [n / 100 + 0.5 for n in range(20)]
    assert out["refuse"].tolist() == [n % 2 == 0 for n in range(20)]


def test_gold_recall_is_the_share_of_supporting_paragraphs_found():
    from types import SimpleNamespace

    from expertrag.types import Document

    recall = _load("bench_multihop").gold_recall
    case = SimpleNamespace(gold=[Document(text="A is in Paris."), Document(text="B is in A.")])
    assert recall(case, [" A is in Paris.\n", "other"]) == 0.5
    assert recall(case, ["B is in A.", "A is in Paris."]) == 1.0
    assert recall(case, ["A is in Paris, France."]) == 0.0  # a near-copy does not count


def test_graph_paragraphs_merge_chunks_into_their_paragraphs_in_graph_order():
    from expertrag.graph.config import GraphConfig
    from expertrag.types import Document

    bench = _load("bench_multihop")
    docs = [Document(id="p1", text="one"), Document(id="p2", text="two"),
            Document(id="p3", text="three")]

    class FakeGraph:  # ranks chunks as a graph search would: two chunks of p2 first
        config = GraphConfig()

        def retrieve(self, query, k=5, mode="ppr", settings=None):
            self.seen = (mode, settings)
            return [Document(id="p2#0", text="tw", metadata={"doc_id": "p2"}),
                    Document(id="p2#1", text="o", metadata={"doc_id": "p2"}),
                    Document(id="x", text="not in the corpus", metadata={"doc_id": "gone"}),
                    Document(id="p1", text="one")][:k]

    graph = FakeGraph()
    source = bench.GraphParagraphs(graph, docs, "hybrid", {"passage_seed_weight": 0.6})
    assert [d.id for d in source.retrieve("q", 2)] == ["p2", "p1"]
    assert graph.seen[0] == "hybrid"
    assert graph.seen[1] is not None and graph.seen[1].passage_seed_weight == 0.6


def test_open_graph_index_builds_beside_the_folder_and_renames_only_when_complete(
        tmp_path, monkeypatch):
    import expertrag.graph as graph_pkg

    bench = _load("bench_multihop")
    opened = []

    class FakeGraphRAG:
        def __init__(self, path, embedder=None):
            self.path = Path(path)
            self.path.mkdir(parents=True, exist_ok=True)
            opened.append(self.path.name)

        def insert(self, documents):
            if documents == ["boom"]:
                raise RuntimeError("interrupted")
            (self.path / "db").write_text(str(len(documents)))

        def close(self):
            pass

    monkeypatch.setattr(graph_pkg, "GraphRAG", FakeGraphRAG)
    target = tmp_path / "g"
    try:
        bench.open_graph_index(target, ["boom"], None)
    except RuntimeError:
        pass
    assert not target.exists()  # an interrupted build never passes for an index
    bench.open_graph_index(target, ["a", "b"], None)
    assert (target / "db").read_text() == "2" and not (tmp_path / "g.partial").exists()
    bench.open_graph_index(target, ["a", "b", "c"], None)  # exists: opened, not rebuilt
    assert (target / "db").read_text() == "2" and opened[-1] == "g"


def test_lookahead_reads_the_evidence_of_a_next_query_prompt():
    from expertrag.experts.hop import next_messages

    evidence_text = _load("probe_lookahead").evidence_text
    prompt = next_messages("Who?", ["First passage.", "Second one."])[0]["content"]
    assert evidence_text(prompt) == "First passage.\nSecond one."


def test_multihop_cache_key_ignores_lookahead_settings_while_it_is_off():
    from expertrag.chains.multihop import MultiHopConfig

    key = _load("bench_multihop").multihop_key
    base = key(MultiHopConfig(lookahead=0))
    assert key(MultiHopConfig(lookahead=0, lookahead_margin=0.5, lookahead_names="spacy")) == base
    assert key(MultiHopConfig(lookahead=5)) != base
    assert key(MultiHopConfig(lookahead=5)) != key(MultiHopConfig(lookahead=5,
                                                                  lookahead_margin=0.3))


def test_answerability_labels_only_gold_passages_that_hold_the_answer():
    labels = _load("probe_answerability").passage_labels
    meta = {"has_oracle": True, "gold_answer": "Ann Lee", "oracle_passages": [1, 3],
            "passages": ["Written by Ann Lee.", "Ann Lee is also a painter.", "Bridge page.",
                         "Nothing here."]}
    # passage 2 holds the name but is not gold; passage 3 is gold (a bridge) without it
    assert labels(meta) == [1, 0, 0, 0]
    # a yes/no answer: every cited gold passage counts
    assert labels({**meta, "gold_answer": "yes"}) == [1, 0, 1, 0]
    # a refusal row: nothing holds the answer
    assert labels({**meta, "has_oracle": False}) == [0, 0, 0, 0]


def test_probe_refusal_pools_every_set_and_scores_auc_per_set():
    import numpy as np
    import pytest

    module = _load("probe_refusal")
    data = {"group": np.array(["a", "a", "a", "b", "b"]),
            "refuse": np.array([True, False, True, False, True])}
    score = np.array([0.9, 0.7, 0.1, 0.4, 0.5])
    out = module.at_threshold(score, data, 0.5, pooled=True)
    assert out["pooled"] == {"absent": [True, False, True], "present": [True, False]}
    # pooled first (3 of 6 absent/present pairs ranked right), then each set in sorted order
    assert module.set_aucs(score, data) == pytest.approx([3 / 6, 1 / 2, 1.0])
