"""RAGPipeline with a fake LLM and a fake retriever."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from expertrag.errors import InputError
from expertrag.rag import (
    Answer,
    RAGPipeline,
    build_messages,
    parse_citations,
    tidy_citations,
)
from expertrag.types import Document


@dataclass
class FakeResult:
    text: str
    prompt_tokens: int = 100
    completion_tokens: int = 7
    finish_reason: str = "stop"
    expert: str | None = None


class FakeLLM:
    """Records every generate() call and answers from a script."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = list(replies)
        self.calls: list[tuple[object, dict]] = []
        self.experts: list[str] = []

    def generate(self, messages_or_batch, **kwargs):
        self.calls.append((messages_or_batch, kwargs))
        expert = kwargs.get("expert")
        if messages_or_batch and isinstance(messages_or_batch[0], list):
            return [FakeResult(self.replies.pop(0), expert=expert) for _ in messages_or_batch]
        return FakeResult(self.replies.pop(0), expert=expert)


class FakeStore:
    def __init__(self, n: int = 3) -> None:
        self.queries: list[tuple[str, int]] = []
        self.docs = [
            Document(
                f"Passage text {i}.",
                id=f"doc.md#{i}",
                metadata={"source": "doc.md", "chunk_index": i},
                score=1.0 - i / 10,
            )
            for i in range(n)
        ]

    def query(self, text: str, k: int = 4) -> list[Document]:
        self.queries.append((text, k))
        return self.docs[:k]


def test_answer_cites_only_the_cited_passages():
    llm = FakeLLM(["It was built in 1862 [2]."])
    store = FakeStore()
    answer = RAGPipeline(llm, store, k=3, expert="grounded-qa").answer("  When built? ")
    assert isinstance(answer, Answer)
    assert answer.text == "It was built in 1862 [2]."
    assert [d.id for d in answer.citations] == ["doc.md#1"]
    assert answer.citations[0].metadata["cited"] is True
    assert answer.citations[0].metadata["passage"] == 2
    assert answer.citations[0].score == pytest.approx(0.9)
    assert store.docs[1].metadata.get("cited") is None  # the retrieved docs are not mutated
    assert (answer.expert, answer.prompt_tokens, answer.completion_tokens) == (
        "grounded-qa",
        100,
        7,
    )
    assert answer.question == "When built?"
    assert len(answer.passages) == 3
    assert store.queries == [("When built?", 3)]
    messages, kwargs = llm.calls[0]
    assert kwargs["expert"] == "grounded-qa"
    assert kwargs["max_new_tokens"] == 192
    assert kwargs["temperature"] == 0.0
    assert messages[-1]["role"] == "user"


def test_prompt_numbers_passages_and_allows_i_dont_know():
    docs = [Document("Alpha.", metadata={"source": "a.md"}), Document("Beta.")]
    messages = build_messages("What?", docs)
    text = "\n".join(m["content"] for m in messages)
    assert "[1] Alpha.\n\n[2] Beta." in text
    assert "I don't know" in text
    assert "cite" in text and "Question: What?" in text


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("See [1].", [1]),
        ("Both [3, 1] say so.", [3, 1]),
        ("Per [2][3] and again [2].", [2, 3]),
        ("Numbers [0] and [9] do not exist.", []),
        ("No citations at all.", []),
        ("Odd spacing [ 2 ; 1 ].", [2, 1]),
    ],
)
def test_parse_citations(reply, expected):
    assert parse_citations(reply, 3) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("117 [1][1].", "117 [1]."),
        ("117 [1] [1][1] and [2].", "117 [1] and [2]."),
        ("1862 [1][2].", "1862 [1][2]."),
        ("[2][1][2] stays.", "[2][1][2] stays."),
        ("Values [1, 1] are left alone.", "Values [1, 1] are left alone."),
    ],
)
def test_tidy_citations_collapses_back_to_back_repeats(reply, expected):
    assert tidy_citations(reply) == expected


def test_answer_text_has_repeated_citations_collapsed():
    answer = RAGPipeline(FakeLLM(["117 [2][2]."]), FakeStore(), k=3).answer("How many?")
    assert answer.text == "117 [2]."
    assert [d.metadata["passage"] for d in answer.citations] == [2]


def test_fallback_marks_all_passages_uncited():
    answer = RAGPipeline(FakeLLM(["I don't know."]), FakeStore(), k=3).answer("Who?")
    assert [d.id for d in answer.citations] == ["doc.md#0", "doc.md#1", "doc.md#2"]
    assert all(d.metadata["cited"] is False for d in answer.citations)
    assert [d.metadata["passage"] for d in answer.citations] == [1, 2, 3]
    assert answer.expert is None


def test_answer_many_uses_one_batched_call():
    llm = FakeLLM(["A [1].", "B [2]."])
    store = FakeStore()
    answers = RAGPipeline(llm, store, k=2, max_new_tokens=50).answer_many(["q1", "q2"])
    assert len(llm.calls) == 1
    batch, kwargs = llm.calls[0]
    assert len(batch) == 2 and all(isinstance(conv, list) for conv in batch)
    assert "Question: q2" in batch[1][-1]["content"]
    assert kwargs["max_new_tokens"] == 50
    assert [a.citations[0].id for a in answers] == ["doc.md#0", "doc.md#1"]
    assert [a.question for a in answers] == ["q1", "q2"]
    assert RAGPipeline(llm, store).answer_many([]) == []


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_empty_question_is_input_error(bad):
    llm = FakeLLM([])
    pipeline = RAGPipeline(llm, FakeStore())
    with pytest.raises(InputError):
        pipeline.answer(bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"questions\[1\]"):
        pipeline.answer_many(["fine", bad])  # type: ignore[list-item]
    assert llm.calls == []


def test_bad_settings():
    with pytest.raises(InputError):
        RAGPipeline(FakeLLM([]), FakeStore(), k=0)
    with pytest.raises(InputError):
        RAGPipeline(FakeLLM([]), FakeStore(), max_new_tokens=0)
    with pytest.raises(InputError):
        RAGPipeline(FakeLLM([]), FakeStore()).answer_many("one string")


def test_a_retriever_with_retrieve_serves_as_the_store():
    class HybridLike:  # BM25 / hybrid / graph retrievers have retrieve(), not query()
        def __init__(self) -> None:
            self.inner = FakeStore()

        def retrieve(self, text: str, k: int = 4) -> list[Document]:
            return self.inner.query(text, k)

    store = HybridLike()
    answer = RAGPipeline(FakeLLM(["Passage [1]."]), store, k=2).answer("What?")
    assert store.inner.queries == [("What?", 2)] and len(answer.citations) == 1
    with pytest.raises(InputError, match="query\\(text, k\\) or retrieve"):
        RAGPipeline(FakeLLM([]), object())


# ------------------------------------------------------------------ the evidence gate
class FakeScorer:
    """P(relevant) by passage text; records the pairs it was asked for."""

    def __init__(self, by_text: dict[str, float]) -> None:
        self.by_text = by_text
        self.calls: list[list[tuple[str, str]]] = []

    def score_pairs(self, pairs):
        self.calls.append(list(pairs))
        return [self.by_text[t] for _, t in pairs]


def test_evidence_gate_refuses_without_generating_when_no_passage_is_relevant():
    from expertrag.rag import REFUSAL, EvidenceGate

    store = FakeStore(2)
    scorer = FakeScorer({"Passage text 0.": 0.2, "Passage text 1.": 0.4})
    llm = FakeLLM([])
    pipe = RAGPipeline(llm, store, k=2, expert="grounded-qa",
                       evidence_gate=EvidenceGate(scorer, threshold=0.5))
    answer = pipe.answer("When built?")
    assert answer.text == REFUSAL and llm.calls == []  # no generation at all
    assert answer.evidence == [0.2, 0.4]
    assert all(d.metadata["cited"] is False for d in answer.citations)
    assert scorer.calls == [[("When built?", "Passage text 0."), ("When built?",
                                                                  "Passage text 1.")]]


def test_evidence_gate_lets_a_relevant_question_through_with_its_refusal_barred():
    from expertrag.rag import EvidenceGate

    store = FakeStore(2)
    scorer = FakeScorer({"Passage text 0.": 0.2, "Passage text 1.": 0.9})
    llm = FakeLLM(["1862 [2]."])
    gate = EvidenceGate(scorer, threshold=0.5)
    answer = RAGPipeline(llm, store, k=2, expert="grounded-qa", evidence_gate=gate).answer("Q?")
    assert answer.text == "1862 [2]." and answer.evidence == [0.2, 0.9]
    assert llm.calls[0][1]["refusal_threshold"] == 1.0
    gate = EvidenceGate(scorer, threshold=0.5, refusal_threshold=None)  # expert's own gate
    llm = FakeLLM(["1862 [2]."])
    RAGPipeline(llm, store, k=2, expert="grounded-qa", evidence_gate=gate).answer("Q?")
    assert "refusal_threshold" not in llm.calls[0][1]


def test_answer_many_scores_every_pair_in_one_call_and_generates_only_what_passes():
    from expertrag.rag import REFUSAL, EvidenceGate

    class ByQuestion(FakeScorer):
        def score_pairs(self, pairs):
            self.calls.append(list(pairs))
            return [0.9 if q == "good?" else 0.1 for q, _ in pairs]

    scorer = ByQuestion({})
    llm = FakeLLM(["yes [1]."])
    pipe = RAGPipeline(llm, FakeStore(3), k=3, expert="grounded-qa",
                       evidence_gate=EvidenceGate(scorer, 0.5))
    answers = pipe.answer_many(["bad?", "good?", "worse?"])
    assert [a.text for a in answers] == [REFUSAL, "yes [1].", REFUSAL]
    assert len(scorer.calls) == 1 and len(scorer.calls[0]) == 9
    assert len(llm.calls) == 1 and llm.calls[0][0][-1]["role"] == "user"  # "good?" alone
    assert [a.completion_tokens for a in answers] == [0, 7, 0]


def test_evidence_gate_auto_reads_the_experts_metadata():
    from expertrag.rag import EvidenceGate

    class WithMeta(FakeLLM):
        def __init__(self, meta):
            super().__init__(["x [1]."])
            self.experts = ["grounded-qa", "relevance"]
            self.meta = meta

        def expert_info(self, name):
            return {"metadata": self.meta if name == "grounded-qa" else {}}

    llm = WithMeta({"evidence_gate": {"expert": "relevance", "threshold": 0.42,
                                      "refusal_threshold": 1.0}})
    assert RAGPipeline(llm, FakeStore(), expert="grounded-qa").evidence_gate is None  # opt-in
    gate = RAGPipeline(llm, FakeStore(), expert="grounded-qa", evidence_gate="auto").evidence_gate
    assert isinstance(gate, EvidenceGate) and gate.threshold == 0.42
    assert gate.scorer.expert == "relevance"
    auto = {"evidence_gate": "auto"}
    assert RAGPipeline(WithMeta({}), FakeStore(), expert="grounded-qa", **auto).evidence_gate \
        is None
    assert RAGPipeline(llm, FakeStore(), expert=None, **auto).evidence_gate is None
    assert RAGPipeline(FakeLLM([]), FakeStore(), expert="grounded-qa", **auto).evidence_gate \
        is None


@pytest.mark.parametrize("kwargs", [{"threshold": 1.5}, {"threshold": -0.1},
                                    {"threshold": 0.5, "refusal_threshold": 2.0},
                                    {"threshold": True}])
def test_evidence_gate_bad_settings(kwargs):
    from expertrag.rag import EvidenceGate

    with pytest.raises(InputError, match="EvidenceGate"):
        EvidenceGate(FakeScorer({}), **kwargs)
    with pytest.raises(InputError, match="score_pairs"):
        EvidenceGate(object(), 0.5)
    with pytest.raises(InputError, match="evidence_gate"):
        RAGPipeline(FakeLLM([]), FakeStore(), evidence_gate="always")


def test_no_passages_is_not_supported():
    from expertrag.rag import EvidenceGate

    gate = EvidenceGate(FakeScorer({}), 0.0)
    assert gate.supported([]) is False and gate.supported([0.0]) is True
    assert gate.scores(["q"], [[]]) == [[]]


def test_no_passages_refuses_without_generating():
    class EmptyStore:
        def query(self, text, k=4):
            return []

    llm = FakeLLM(["B [1]."])
    empty = RAGPipeline(llm, EmptyStore()).answer("q")
    assert empty.text == "I don't know." and empty.completion_tokens == 0 and not llm.calls

    class Some(FakeStore):
        def query(self, text, k=4):  # the second question finds nothing
            return [] if text == "q2" else super().query(text, k)

    answers = RAGPipeline(llm, Some()).answer_many(["q1", "q2"])
    assert [a.text for a in answers] == ["B [1].", "I don't know."]
    # only q1 was generated, as a single conversation
    assert len(llm.calls) == 1 and "Question: q1" in llm.calls[0][0][-1]["content"]
