"""Grounded-QA rows over retrieved passages (training.retrieved), on tiny hand-made data."""

from __future__ import annotations

from tiny_models import HashEmbedder

from expertrag.rag import REFUSAL, build_messages, parse_citations
from expertrag.training.retrieved import (
    build_halueval_retrieved,
    build_hotpot_retrieved,
    build_squad_retrieved,
    retrieved_row,
)
from expertrag.types import Document


def _squad() -> list[dict]:
    articles = []
    for a, topic in enumerate(["granite lighthouse", "river ferry"]):
        paragraphs = []
        for p in range(4):
            context = (f"The {topic} number {p} of article {a} was finished in year "
                       f"Y{a}{p}, after long delays.")
            qas = [{"id": f"{a}{p}", "question": f"In which year was the {topic} number {p} "
                    "finished?", "answers": [{"text": f"Y{a}{p}"},
                                             {"text": f"year Y{a}{p}"}],
                    "is_impossible": False},
                   {"id": f"u{a}{p}", "question": f"Who painted the {topic} number {p}?",
                    "answers": [], "is_impossible": True}]
            paragraphs.append({"context": context, "qas": qas})
        articles.append({"title": topic, "paragraphs": paragraphs})
    return articles


def _hotpot(n: int = 6) -> list[dict]:
    rows = []
    for i in range(n):
        titles = [f"Bridge{i}", f"Town{i}"] + [f"Noise{i}{d}" for d in range(8)]
        sentences = [[f"Bridge{i} was built by engineer Smith{i}."],
                     [f"Engineer Smith{i} was born in Harbour{i}."]]
        sentences += [[f"Noise {i}{d} concerns unrelated weather."] for d in range(8)]
        rows.append({"id": f"h{i}", "question": f"Where was the engineer of Bridge{i} born?",
                     "answer": f"Harbour{i}", "type": "bridge",
                     "supporting_facts": {"title": titles[:2], "sent_id": [0, 0]},
                     "context": {"title": titles, "sentences": sentences}})
    return rows


def test_retrieved_row_cites_gold_holders_refuses_absent_and_skips_coincidences():
    gold = Document(text="Ada was born in Paris.")
    other = Document(text="Paris is large.")
    meta = {"source": "t"}
    row = retrieved_row("Where was Ada born?", ["Paris"], [other, gold], {gold.text}, meta)
    assert row["answer"] == "Paris [2]." and row["meta"]["has_oracle"]
    assert row["messages"] == build_messages("Where was Ada born?", [other, gold])
    refused = retrieved_row("Where was Ada born?", ["Paris"], [Document(text="Nothing.")],
                            {gold.text}, meta)
    assert refused["answer"] == REFUSAL and not refused["meta"]["has_oracle"]
    # the answer only in a passage that is not gold: no row rather than a wrong lesson
    assert retrieved_row("Where was Ada born?", ["Paris"], [other], {gold.text}, meta) is None
    # a bridge: the gold passage without the answer string is cited beside the one with it
    bridge = Document(text="Ada's teacher was Carl.")
    row = retrieved_row("Where was Carl's pupil born?", ["Paris"], [gold, other, bridge],
                        {gold.text, bridge.text}, meta)
    assert row["answer"] == "Paris [1][3]." and row["meta"]["oracle_passages"] == [1, 3]
    # the bridge alone does not hold the answer: refusal
    alone = retrieved_row("Where was Carl's pupil born?", ["Paris"], [bridge],
                          {gold.text, bridge.text}, meta)
    assert alone["answer"] == REFUSAL
    # yes/no: present only when every gold passage is retrieved
    g2 = Document(text="Bob was born in Rome.")
    both = retrieved_row("Same city?", ["no"], [g2, gold], {gold.text, g2.text}, meta)
    assert both["answer"] == "no [1][2]."
    half = retrieved_row("Same city?", ["no"], [gold], {gold.text, g2.text}, meta)
    assert half["answer"] == REFUSAL


def test_squad_retrieved_rows_answer_with_the_longest_phrase_and_refuse_unanswerables():
    rows = build_squad_retrieved(_squad(), HashEmbedder(), k=3, max_impossible=2)
    assert rows == build_squad_retrieved(_squad(), HashEmbedder(), k=3, max_impossible=2)
    answered = [r for r in rows if r["meta"]["has_oracle"]]
    assert answered and all(r["answer"].startswith("year Y") for r in answered)
    for r in answered:  # the cited passage is the question's own paragraph
        (n,) = parse_citations(r["answer"], 3)
        assert r["meta"]["gold_answer"].split()[-1] in r["meta"]["passages"][n - 1]
    impossible = [r for r in rows if r["meta"]["is_impossible"]]
    assert len(impossible) == 2 and all(r["answer"] == REFUSAL for r in impossible)
    assert all(r["meta"]["n_passages"] == 3 for r in rows)


def test_hotpot_retrieved_withholds_gold_for_a_share_and_opens_the_pool():
    rows = build_hotpot_retrieved(_hotpot(), HashEmbedder(), k=4, p_withheld=0.5)
    withheld = [r for r in rows if r["meta"]["variant"] == "withheld"]
    assert len(withheld) == 3 and all(r["answer"] == REFUSAL for r in withheld)
    for r in withheld:
        assert not any("Smith" in p for p in r["meta"]["passages"])
    kept = [r for r in rows if r["meta"]["variant"] == "retrieved"]
    assert all(r["answer"].startswith("Harbour") for r in kept if r["meta"]["has_oracle"])
    opened = build_hotpot_retrieved(_hotpot(), HashEmbedder(), k=4, open_pool=True)
    assert {r["meta"]["variant"] for r in opened} == {"open"}
    # an open pool mixes items: some passages come from other questions
    assert any(any(f"{r['meta']['index']}" not in p for p in r["meta"]["passages"])
               for r in opened)


def test_halueval_retrieved_withholds_the_answer_passages():
    halu = [{"knowledge": f"Falls{i} lie in Vale{i}.Vale{i} is in Land{i}.",
             "question": f"In which land are Falls{i}?", "right_answer": f"Land{i}",
             "hallucinated_answer": "Mars", "meta_index": i} for i in range(10)]
    rows = build_halueval_retrieved(halu, HashEmbedder(), k=3, p_withheld=0.3)
    withheld = [r for r in rows if r["meta"]["variant"] == "withheld"]
    assert len(withheld) == 3
    for r in withheld:
        assert r["answer"] == REFUSAL
        assert not any(f"Land{r['meta']['index']}" in p for p in r["meta"]["passages"])
