"""The answer benchmark's parts: paired statistics, the fixed answer sets and their manifest,
the per-set refusal cap, and the scoring of bench_answers.py (tiny data made here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from tiny_models import HashEmbedder

from expertrag.embeddings import MemoEmbedder
from expertrag.errors import InputError
from expertrag.evaluation import answer_sets as sets_mod
from expertrag.evaluation.answer_sets import (
    AnswerCase,
    ManifestError,
    PerQuestionRetriever,
    answer_present,
    build_manifest,
    check_manifest,
    load_answer_set,
    write_manifest,
)
from expertrag.evaluation.stats import compare, mcnemar, paired_bootstrap
from expertrag.training.gate import pick_threshold
from expertrag.types import Document

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


# ---------------------------------------------------------------------------- statistics
def test_mcnemar_counts_discordant_pairs_and_gives_the_exact_binomial_p():
    a = [True] * 10 + [False] * 2 + [True] * 5
    b = [False] * 10 + [True] * 2 + [True] * 5
    p, only_a, only_b = mcnemar(a, b)
    assert (only_a, only_b) == (10, 2)
    # two-sided exact binomial: 2 * P(X <= 2), X ~ Bin(12, 0.5) = 2 * 79 / 4096
    assert p == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar([True, False], [True, False]) == (1.0, 0, 0)


def test_paired_bootstrap_interval_excludes_zero_only_for_a_real_difference():
    better = [1.0] * 60 + [0.0] * 40
    worse = [1.0] * 30 + [0.0] * 70
    diff, low, high = paired_bootstrap(better, worse)
    assert diff == pytest.approx(0.30)
    assert 0 < low < diff < high
    c = compare(better, worse)
    assert c.verdict == "win" and c.only_a == 30 and c.only_b == 0 and c.p_mcnemar < 1e-6
    assert compare(worse, better).verdict == "loss"
    # one question apart out of 100: a tie
    near = [1.0] * 31 + [0.0] * 69
    assert compare(near, worse).verdict == "tie"


def test_compare_keeps_graded_scores_graded_and_refuses_bad_input():
    c = compare([0.5, 0.25, 1.0], [0.5, 0.0, 1.0])
    assert c.p_mcnemar is None and c.diff == pytest.approx(0.25 / 3)
    with pytest.raises(InputError, match="differ in length"):
        paired_bootstrap([1.0, 0.0], [1.0])
    with pytest.raises(InputError, match="NaN"):
        compare([float("nan")], [1.0])
    with pytest.raises(InputError, match="non-empty"):
        compare([], [])


# ---------------------------------------------------------------------------- refusal cap
def test_pick_threshold_holds_the_false_refusal_cap_in_every_group():
    # group a separates cleanly; in group b an answerable row (0.7) outscores both refusal
    # rows (0.6, 0.65)
    probs = [0.1, 0.2, 0.8, 0.9, 0.1, 0.7, 0.6, 0.65]
    refuse = [False, False, True, True, False, False, True, True]
    groups = ["a"] * 4 + ["b"] * 4
    pooled = pick_threshold(probs, refuse, max_false_refusals=0.34)
    per_group = pick_threshold(probs, refuse, max_false_refusals=0.34, groups=groups)
    # pooled, refusing the 0.7 row is 1 of 4 answerable rows (within 0.34) and buys both of
    # b's refusals; in group b alone it is 1 of 2, so the per-group cap keeps it answering
    assert pooled["threshold"] <= 0.7 < per_group["threshold"]
    assert per_group["groups"]["b"]["false_refusal_rate"] == 0.0
    assert per_group["groups"]["a"]["rows"] == 4


# ---------------------------------------------------------------------------- answer sets
def _tiny_data(folder: Path) -> Path:
    """The four source files in miniature: 2 SQuAD articles, 6 HotpotQA items, 5 MuSiQue
    questions with their corpus."""
    (folder / "squad2").mkdir(parents=True)
    (folder / "hotpotqa").mkdir()
    (folder / "musique").mkdir()
    articles = []
    for a, title in enumerate(["Normans", "Rhine"]):
        paragraphs = []
        for p in range(4):
            context = f"{title} paragraph {p}: the river town {title}{p} was founded in 10{a}{p}."
            qas = [{"id": f"q{a}{p}", "question": f"When was {title}{p} founded?",
                    "answers": [{"text": f"10{a}{p}", "answer_start": 0}],
                    "is_impossible": False},
                   {"id": f"u{a}{p}", "question": f"Who destroyed {title}{p}?", "answers": [],
                    "plausible_answers": [{"text": "x"}], "is_impossible": True}]
            paragraphs.append({"context": context, "qas": qas})
        articles.append({"title": title, "paragraphs": paragraphs})
    (folder / sets_mod.SQUAD_FILE).write_text(json.dumps({"data": articles}))
    rows = []
    for i in range(6):
        titles = [f"Gold{i}a", f"Gold{i}b"] + [f"Other{i}{d}" for d in range(3)]
        sentences = [[f"Gold{i}a names the bridge B{i}."], [f"B{i} is located in City{i}."]]
        sentences += [[f"Distractor {i}{d} talks about weather."] for d in range(3)]
        rows.append({"id": f"h{i}", "question": f"Where is the bridge of Gold{i}a?",
                     "answer": f"City{i}", "type": "bridge",
                     "supporting_facts": {"title": titles[:2], "sent_id": [0, 0]},
                     "context": {"title": titles, "sentences": sentences}})
    (folder / sets_mod.HOTPOT_FILE).write_text("\n".join(json.dumps(r) for r in rows))
    questions = []
    corpus = []
    for i in range(5):
        paragraphs = [{"idx": 0, "title": f"M{i}", "paragraph_text": f"M{i} was born in Town{i}.",
                       "is_supporting": True},
                      {"idx": 1, "title": f"N{i}", "paragraph_text": "Nothing here.",
                       "is_supporting": False}]
        questions.append({"id": f"m{i}", "question": f"Where was M{i} born?",
                          "answer": f"Town{i}", "answer_aliases": [], "paragraphs": paragraphs})
        corpus += [{"title": p["title"], "text": p["paragraph_text"]} for p in paragraphs]
    (folder / sets_mod.MUSIQUE_FILE).write_text(json.dumps(questions))
    (folder / sets_mod.MUSIQUE_CORPUS).write_text(json.dumps(corpus))
    return folder


@pytest.fixture
def data(tmp_path, monkeypatch):
    """The tiny data folder and a manifest of the test's own (never the shipped one)."""
    monkeypatch.setattr(sets_mod, "HOTPOT_CALIBRATION", range(4, 6))
    monkeypatch.setattr(sets_mod, "MANIFEST", tmp_path / "answer_sets.json")
    return _tiny_data(tmp_path / "data"), tmp_path / "answer_sets.json"


def test_splits_are_fixed_rules_and_disjoint(data):
    folder, _ = data
    ids = build_manifest(folder)["sets"]
    assert ids == build_manifest(folder)["sets"]  # stable across runs
    assert ids["hotpotqa-distractor"] == {"calibration": ["h4", "h5"],
                                          "test": ["h0", "h1", "h2", "h3"]}
    for name, split in ids.items():
        assert not set(split["calibration"]) & set(split["test"]), name
    squad = ids["squad2"]
    assert len(squad["calibration"]) + len(squad["test"]) == 16
    # a paragraph's questions stay in one split
    for p in (f"{a}{n}" for a in range(2) for n in range(4)):
        assert (f"q{p}" in squad["test"]) == (f"u{p}" in squad["test"])


def test_manifest_refuses_changed_data(data):
    folder, manifest = data
    write_manifest(folder, manifest)
    check_manifest(folder, manifest)
    path = folder / sets_mod.MUSIQUE_CORPUS
    path.write_text(path.read_text().replace("Nothing", "Something"))
    with pytest.raises(ManifestError, match="SHA-256"):
        check_manifest(folder, manifest)
    with pytest.raises(ManifestError, match="no answer-set manifest"):
        check_manifest(folder, folder / "missing.json")


def test_load_answer_sets_retrieve_the_same_passages_for_every_system(data):
    folder, _ = data
    embedder = MemoEmbedder(HashEmbedder())
    distractor = load_answer_set("hotpotqa-distractor", "test", folder, embedder=embedder,
                                 k=3, check=False)
    assert [c.id for c in distractor.cases] == ["h0", "h1", "h2", "h3"]
    for case, passages in zip(distractor.cases, distractor.passages(), strict=True):
        titles = {p.metadata["title"] for p in passages}
        assert len(passages) == 3
        if case.answerable:  # gold kept: the answer-holding paragraph is retrievable
            assert case.answers == [f"City{case.id[1]}"]
        else:  # gold removed: neither gold paragraph can come back
            assert not titles & {f"Gold{case.id[1]}a", f"Gold{case.id[1]}b"}
    assert distractor.present() == [c.answerable and answer_present(c, p) for c, p in
                                    zip(distractor.cases, distractor.passages(), strict=True)]
    with pytest.raises(InputError, match="no retriever for the query"):
        distractor.retriever.retrieve("a question of another set", 3)
    opened = load_answer_set("hotpotqa-open", "calibration", folder, embedder=embedder, k=2,
                             check=False)
    assert all(c.answerable for c in opened.cases) and len(opened.retriever) == 30
    squad = load_answer_set("squad2", "test", folder, embedder=embedder, check=False)
    assert any(not c.answerable for c in squad.cases)
    assert all(len(p) == 5 for p in squad.passages())
    musique = load_answer_set("musique-open", "test", folder, embedder=embedder, check=False)
    assert len(musique.cases) + len(load_answer_set(
        "musique-open", "calibration", folder, embedder=embedder, check=False).cases) == 5
    with pytest.raises(InputError, match="unknown answer set"):
        load_answer_set("popqa", "test", folder, check=False)
    with pytest.raises(InputError, match="unknown split"):
        load_answer_set("squad2", "train", folder, check=False)


def test_memo_embedder_embeds_each_text_once():
    inner = HashEmbedder()
    memo = MemoEmbedder(inner)
    first = memo.embed_documents(["a b", "c d", "a b"])
    again = memo.embed_documents(["c d", "a b"])
    assert first[0] == first[2] == again[1] and inner.calls == 1


def test_answer_present_needs_whole_words_and_gold_paragraphs_for_yes_no():
    gold = [Document(text="A is a genus."), Document(text="B is a genus.")]
    yes = AnswerCase("1", "Are A and B both genera?", ["yes"], gold)
    assert answer_present(yes, [*gold, Document(text="no")])
    assert not answer_present(yes, gold[:1])
    city = AnswerCase("2", "Where?", ["Paris"])
    assert answer_present(city, [Document(text="It is in Paris, France.")])
    assert not answer_present(city, [Document(text="Parisian cafés")])
    assert not answer_present(AnswerCase("3", "Who?", []), [Document(text="anything")])


def test_per_question_retriever_routes_by_question_text():
    class Fixed:
        def __init__(self, text):
            self.text = text

        def retrieve(self, query, k):
            return [Document(text=self.text)] * k

    routed = PerQuestionRetriever({"q1?": Fixed("one"), "q2?": Fixed("two")})
    assert routed.retrieve(" q2? ", 2)[0].text == "two" and len(routed.query("q1?", 1)) == 1


# ---------------------------------------------------------------------------- scoring
def _bench():
    if str(BENCH) not in sys.path:  # the script imports its shared helpers from _common
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_answers", BENCH / "bench_answers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_answers"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class _Set:
    def __init__(self, cases, present):
        self.cases, self._present = cases, present

    def present(self):
        return self._present


def test_score_applies_the_gate_afterwards_and_counts_refusals_where_they_belong():
    bench = _bench()
    cases = [AnswerCase("a", "q", ["Paris"]), AnswerCase("b", "q", ["Rome"]),
             AnswerCase("c", "q", [])]
    records = [{"id": "a", "answer": "Paris [1].", "p_refusal": 0.1, "seconds": 1.0},
               {"id": "b", "answer": "the city of Rome", "p_refusal": 0.6, "seconds": 1.0},
               {"id": "c", "answer": "Oslo [2].", "p_refusal": 0.9, "seconds": 1.0}]
    aset = _Set(cases, [True, True, False])
    gated = bench.score(records, aset, 0.5)
    assert [p["refused"] for p in gated["per_question"]] == [False, True, True]
    f = gated["figures"]
    assert f["em"] == 0.5 and f["contained"] == 0.5  # the refused "b" scores 0
    assert f["refusal_accuracy"] == 1.0 and f["false_refusals"] == 0.5
    open_ = bench.score(records, aset, None)["figures"]  # no gate: the forced answers
    assert open_["contained"] == 1.0 and open_["em"] == 0.5 and open_["refusal_accuracy"] == 0.0
    assert 0.5 < open_["f1"] < 1.0


def test_gate_calibrated_on_the_answer_sets_caps_false_refusals_per_set(data, tmp_path):
    from tiny_models import save_tiny_lora, tiny_llm

    from expertrag.models.llm import EXPERT_METADATA
    from expertrag.training.gate import calibrate_on_answer_sets

    folder, _ = data
    write_manifest(folder)  # the default path: the fixture's own manifest
    llm = tiny_llm()
    expert = tmp_path / "qa"
    save_tiny_lora(llm, str(expert))
    (expert / EXPERT_METADATA).write_text("{}")
    llm.add_expert("qa", expert)
    result = calibrate_on_answer_sets(llm, "qa", folder, max_false_refusals=0.0, k=2,
                                      embedder=MemoEmbedder(HashEmbedder()), folder=expert)
    assert set(result["groups"]) == set(sets_mod.SETS)
    assert all(g["false_refusal_rate"] == 0.0 for g in result["groups"].values())
    assert result["rows"] == sum(g["rows"] for g in result["groups"].values())
    meta = json.loads((expert / EXPERT_METADATA).read_text())
    assert meta["refusal_gate"]["threshold"] == result["threshold"]
    # a manifest that does not match the data stops the calibration
    (folder / sets_mod.MUSIQUE_CORPUS).write_text("[]")
    with pytest.raises(ManifestError):
        calibrate_on_answer_sets(llm, "qa", folder, embedder=MemoEmbedder(HashEmbedder()))


def test_evidence_gate_refuses_below_its_floor_and_then_bars_or_keeps_the_own_gate():
    bench = _bench()
    cases = [AnswerCase("a", "q", ["Paris"]), AnswerCase("b", "q", ["Rome"]),
             AnswerCase("c", "q", [])]
    records = [{"id": "a", "answer": "Paris [1].", "p_refusal": 0.9, "seconds": 1.0,
                "evidence": [0.2, 0.8]},
               {"id": "b", "answer": "Rome [1].", "p_refusal": 0.1, "seconds": 1.0,
                "evidence": [0.1, 0.3]},
               {"id": "c", "answer": "Oslo [2].", "p_refusal": 0.1, "seconds": 1.0,
                "evidence": []}]
    aset = _Set(cases, [True, True, False])
    barred = bench.Evidence(0.5, refusal_threshold=1.0)
    per = bench.score(records, aset, 0.5, barred)["per_question"]
    assert [p["refused"] for p in per] == [False, True, True]  # "a": own refusal barred
    kept = bench.Evidence(0.5, refusal_threshold=None)  # past the floor the own gate (0.5)
    per = bench.score(records, aset, 0.5, kept)["per_question"]
    assert [p["refused"] for p in per] == [True, True, True]
    with pytest.raises(ValueError, match="no evidence scores"):
        bench.final_answer({"id": "x", "answer": "y"}, None, barred)


def test_evidence_floor_calibrated_per_set_with_the_better_way_past_the_gate():
    bench = _bench()
    # set "s": absent rows score low and the own gate sees nothing; set "t" likewise
    def rows(prefix, n):
        out, present = [], []
        for i in range(n):
            here = i % 2 == 0
            out.append({"id": f"{prefix}{i}", "answer": "x", "p_refusal": 0.1,
                        "evidence": [0.9 if here else 0.2 + 0.01 * i]})
            present.append(here)
        return out, present
    (rs, ps), (rt, pt) = rows("s", 20), rows("t", 20)
    sets = {"s": _Set([None] * 20, ps), "t": _Set([None] * 20, pt)}
    gate = bench.calibrate_evidence({"s": rs, "t": rt}, sets, cap=0.0, own_gate=0.5)
    assert gate["at_threshold"]["refusal_accuracy"] == 1.0
    assert gate["at_threshold"]["false_refusal_rate"] == 0.0
    assert 0.39 < gate["threshold"] <= 0.9 and gate["auc"] == 1.0
    assert set(gate["options"]) == {"barred", "own gate"} and set(gate["groups"]) == {"s", "t"}
    # the own gate refusing an answerable row would break the cap: "barred" is chosen
    rs[0]["p_refusal"] = 0.9
    gate = bench.calibrate_evidence({"s": rs, "t": rt}, sets, cap=0.0, own_gate=0.5)
    assert gate["past_the_gate"] == "barred" and gate["refusal_threshold"] == 1.0
