"""The naive grounded pipeline: retrieve passages, prompt the LLM with them, parse citations.

The prompt numbers the passages ``[1]..[k]`` and asks for a brief answer that cites them
(:mod:`expertrag.experts.grounded_qa`, re-exported here); the passages an answer cites
become its citations. :class:`EvidenceGate` can refuse before generating when no passage is
relevant. ``expertrag.rag`` re-exports this module for one release.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from expertrag.chains.base import check_question
from expertrag.errors import InputError
from expertrag.experts import RELEVANCE
from expertrag.experts.card import EVIDENCE_GATE_KEY
from expertrag.experts.grounded_qa import (
    INSTRUCTIONS,
    REFUSAL,
    build_messages,
    format_passages,
    is_refusal,
    parse_citations,
    select_citations,
    strip_citations,
    tidy_citations,
)
from expertrag.types import Document

__all__ = ["EVIDENCE_GATE_KEY", "INSTRUCTIONS", "REFUSAL", "Answer",
           "EvidenceGate", "RAGPipeline", "Retriever", "build_messages", "format_passages",
           "generate_grounded", "is_refusal", "parse_citations", "select_citations",
           "strip_citations", "tidy_citations"]


class Retriever(Protocol):
    """What the pipeline needs from a store: ``query(text, k)`` returning documents (a
    retriever's ``retrieve(text, k)`` is taken too)."""

    def query(self, text: str, k: int = 4) -> list[Document]: ...


@dataclass
class Answer:
    """A generated answer with the passages it cites and token accounting."""

    text: str
    citations: list[Document]
    expert: str | None
    prompt_tokens: int
    completion_tokens: int
    question: str = ""
    passages: list[Document] = field(default_factory=list)
    finish_reason: str | None = None
    #: per passage, P(relevant) from the evidence gate, where one was applied
    evidence: list[float] | None = None


@dataclass
class EvidenceGate:
    """Refuse before generating when no passage is relevant to the question.

    The ``relevance`` expert's P(yes) for the best passage can tell answerable prompts from
    unanswerable ones better than a small answerer's own P(refusal) (figures in
    benchmarks/RESULTS.md). So the pipeline scores every (question, passage) pair in one
    batched pass and answers :data:`REFUSAL` when the best score is below ``threshold``;
    otherwise the answerer runs with ``refusal_threshold`` (1.0 bars its refusal: a passage
    was judged relevant, so it answers and cites).
    """

    scorer: Any  # an expertrag Reranker: score_pairs([(question, text)]) -> [0, 1]
    threshold: float
    refusal_threshold: float | None = 1.0

    def __post_init__(self) -> None:
        if not callable(getattr(self.scorer, "score_pairs", None)):
            raise InputError(f"EvidenceGate scorer must have score_pairs(pairs); got "
                             f"{type(self.scorer).__name__}")
        for name in ("threshold", "refusal_threshold"):
            value = getattr(self, name)
            if value is None and name == "refusal_threshold":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not 0.0 <= value <= 1.0:
                raise InputError(f"EvidenceGate {name} must be within [0, 1], got {value!r}")

    @classmethod
    def for_expert(cls, llm: Any, expert: str | None) -> EvidenceGate | None:
        """The gate calibrated for ``expert`` (its metadata's ``evidence_gate``), scoring with
        the expert it names; None when the expert ships no gate or ``llm`` cannot say."""
        if expert is None or not callable(getattr(llm, "expert_info", None)) \
                or expert not in (getattr(llm, "experts", None) or []):
            return None
        spec = (llm.expert_info(expert).get("metadata") or {}).get(EVIDENCE_GATE_KEY)
        if not isinstance(spec, dict):
            return None
        from expertrag.rerank.llm import LLMReranker

        scorer = LLMReranker.with_relevance_expert(llm, expert=str(spec.get("expert",
                                                                            RELEVANCE)))
        return cls(scorer, float(spec["threshold"]), spec.get("refusal_threshold", 1.0))

    def scores(self, questions: Sequence[str], passages: Sequence[Sequence[Document]]
               ) -> list[list[float]]:
        """P(relevant) of each passage for its question, all pairs in one batched call."""
        pairs = [(q, d.text) for q, docs in zip(questions, passages, strict=True) for d in docs]
        flat = iter(self.scorer.score_pairs(pairs) if pairs else [])
        return [[float(next(flat)) for _ in docs] for docs in passages]

    def supported(self, scores: Sequence[float]) -> bool:
        """Whether some passage clears the threshold (no passage: not supported)."""
        return bool(scores) and max(scores) >= self.threshold


class RAGPipeline:
    """Retrieve ``k`` passages from ``store``, answer from them with ``llm``, cite them.

    ``llm`` is an :class:`~expertrag.models.llm.ExpertLLM` (or anything with the same
    ``generate``); ``expert`` names the LoRA expert to answer with (None: the base model).
    ``evidence_gate``: an :class:`EvidenceGate`, ``"auto"`` for the expert's calibrated one,
    or None (the default) to let the expert decide alone when to refuse.
    """

    def __init__(
        self,
        llm: Any,
        store: Retriever,
        k: int = 4,
        expert: str | None = None,
        max_new_tokens: int = 192,
        evidence_gate: EvidenceGate | str | None = None,
    ) -> None:
        if not (evidence_gate is None or evidence_gate == "auto"
                or isinstance(evidence_gate, EvidenceGate)):
            raise InputError(f"evidence_gate must be 'auto', None or an EvidenceGate, got "
                             f"{evidence_gate!r}")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        # a vector store's ``query`` or a retriever's ``retrieve`` (BM25, hybrid, graph)
        search = getattr(store, "query", None) or getattr(store, "retrieve", None)
        if not callable(search):
            raise InputError(f"store must have query(text, k) or retrieve(text, k); got "
                             f"{type(store).__name__}")
        self.llm = llm
        self.store = store
        self._search = search
        self.k = k
        self.expert = expert
        self.max_new_tokens = max_new_tokens
        self._evidence_gate = evidence_gate

    _check_question = staticmethod(check_question)

    def retrieve(self, question: str) -> list[Document]:
        """The ``k`` passages the answer will be grounded on."""
        return self._search(self._check_question(question), k=self.k)

    @property
    def evidence_gate(self) -> EvidenceGate | None:
        """The gate in use (opt-in): ``"auto"`` resolves, once at first use, to the one the
        answering expert ships calibrated (``grounded-qa`` does), else none. Off by default:
        its relevance floor, fitted on HotpotQA, refuses too many answerable questions out of
        that domain (benchmarks/RESULTS.md)."""
        if self._evidence_gate == "auto":
            self._evidence_gate = EvidenceGate.for_expert(self.llm, self.expert)
        return self._evidence_gate  # type: ignore[return-value]

    def _answer(self, question: str, passages: list[Document], result: Any,
                evidence: list[float] | None = None) -> Answer:
        text = tidy_citations(str(getattr(result, "text", result)).strip())
        return Answer(
            text=text,
            citations=select_citations(text, passages),
            expert=getattr(result, "expert", self.expert),
            prompt_tokens=int(getattr(result, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(result, "completion_tokens", 0) or 0),
            question=question,
            passages=passages,
            finish_reason=getattr(result, "finish_reason", None),
            evidence=evidence,
        )

    def answer(self, question: str) -> Answer:
        """Answer one question from retrieved passages, with citations."""
        return self.answer_many([self._check_question(question)])[0]

    def answer_many(self, questions: Sequence[str]) -> list[Answer]:
        """Answer several questions: one batched evidence pass (where a gate applies), then
        one batched ``generate`` call for the questions it lets through."""
        if isinstance(questions, str):
            raise InputError("answer_many() takes a list of questions; use answer() for one")
        checked = [self._check_question(q, f"questions[{i}]") for i, q in enumerate(questions)]
        if not checked:
            return []
        all_passages = [self.retrieve(q) for q in checked]
        outputs = generate_grounded(self.llm, checked, all_passages, expert=self.expert,
                                    gate=self.evidence_gate,
                                    max_new_tokens=self.max_new_tokens)
        return [self._answer(q, p, result, evidence)
                for q, p, (result, evidence) in zip(checked, all_passages, outputs,
                                                     strict=True)]


def generate_grounded(llm: Any, questions: Sequence[str],
                      passages: Sequence[Sequence[Document]], expert: str | None = None,
                      gate: EvidenceGate | None = None, max_new_tokens: int = 192
                      ) -> list[tuple[Any, list[float] | None]]:
    """Grounded answers for questions with their passages, greedy: with a gate, one batched
    evidence pass first, and the questions it stops get the refusal without generating; the
    rest go through one batched ``generate``. A question with no passages at all (a filter
    that matched nothing, an empty store) gets the refusal without generating: there is
    nothing to ground an answer on. Each item is (generation result, the passages'
    P(relevant) or None without a gate)."""
    evidence: list[list[float] | None] = (
        list(gate.scores(questions, passages)) if gate is not None else [None] * len(questions))
    todo = [i for i, ev in enumerate(evidence)
            if passages[i] and (gate is None or gate.supported(ev or []))]
    kwargs: dict[str, Any] = {}
    if gate is not None and gate.refusal_threshold is not None:
        kwargs["refusal_threshold"] = gate.refusal_threshold
    convs = [build_messages(questions[i], passages[i]) for i in todo]
    results: list[Any] = []
    if len(convs) == 1:  # one conversation, not a batch: any single-prompt generate() serves
        results = [llm.generate(convs[0], expert=expert, max_new_tokens=max_new_tokens,
                                temperature=0.0, **kwargs)]
    elif convs:
        results = list(llm.generate(convs, expert=expert, max_new_tokens=max_new_tokens,
                                    temperature=0.0, **kwargs))
    by_index = dict(zip(todo, results, strict=True))
    return [(by_index.get(i, _Refused()), evidence[i]) for i in range(len(questions))]


@dataclass
class _Refused:
    """What the pipeline answers without generating (the evidence gate stopped the question,
    or there were no passages): the refusal, no tokens."""

    text: str = REFUSAL
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
