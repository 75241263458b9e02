"""expertrag's own judges: the RAG triad from one forward pass per check, no generation.

- :class:`ContextRelevanceJudge`: the ``relevance`` expert's P(yes) for each (question,
  passage); an item's score is the mean over its passages (``reduce="max"``: the best one).
- :class:`FaithfulnessJudge`: the ``critic`` expert's IsSup (p(fully) + 0.5 p(partially)) for
  each sentence of the answer against the contexts; the item's score is the mean over
  sentences (``reduce="min"``: its least supported sentence). A refusal makes no claim and
  scores 1.0, with feedback saying so, where RAGAS returns NaN.
- :class:`AnswerRelevanceJudge`: the critic's IsUse, Self-RAG's utility mapped to [0, 1]
  ((sum_i w_i p_i + 1) / 2), or ``method="embedding"``: the cosine of question and answer.

Every judge returns :class:`JudgeResult` (score in [0, 1], passing at ``threshold``,
feedback) for a batch of items in one batched model call; a verdict is a probability, so it
can never fail to parse or come back NaN.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from expertrag.errors import InputError
from expertrag.experts import CRITIC, RELEVANCE
from expertrag.experts.grounded_qa import is_refusal, strip_citations

_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


@dataclass
class EvalItem:
    """One (question, answer, contexts) triple to judge; ``reference`` is optional."""

    question: str
    answer: str = ""
    contexts: list[str] = field(default_factory=list)
    reference: str | None = None


@dataclass
class JudgeResult:
    """A judge's verdict on one item."""

    score: float
    passing: bool
    feedback: str
    parts: list[float] = field(default_factory=list)


def _verdict(score: float, parts: list[float], threshold: float, what: str) -> JudgeResult:
    """A verdict from per-part scores: passing when ``score`` reaches ``threshold``; the
    feedback counts the parts that do (``"2 of 3 contexts relevant"``)."""
    good = sum(p >= threshold for p in parts)
    return JudgeResult(score, score >= threshold, f"{good} of {len(parts)} {what}", parts)


def _items(items: Sequence[EvalItem | dict[str, Any]]) -> list[EvalItem]:
    out = []
    for i, it in enumerate(items):
        if isinstance(it, dict):
            it = EvalItem(question=it.get("question", ""), answer=it.get("answer", "") or "",
                          contexts=list(it.get("contexts") or []),
                          reference=it.get("reference"))
        if not isinstance(it, EvalItem):
            raise InputError(f"items[{i}] must be an EvalItem or a dict, got "
                             f"{type(it).__name__}")
        if not isinstance(it.question, str) or not it.question.strip():
            raise InputError(f"items[{i}] has no question")
        out.append(it)
    return out


def answer_sentences(answer: str) -> list[str]:
    """The answer's sentences, citations removed (the claims a faithfulness judge checks)."""
    text = strip_citations(answer).strip()
    return [s.strip() for s in _SENTENCE_RE.split(text) if s.strip()] if text else []


class _Judge:
    name = "judge"

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"threshold must be within [0, 1], got {threshold!r}")
        self.threshold = threshold

    def judge(self, items: Sequence[EvalItem | dict[str, Any]]) -> list[JudgeResult]:
        raise NotImplementedError  # pragma: no cover

    def __call__(self, items: Sequence[EvalItem | dict[str, Any]]) -> list[JudgeResult]:
        return self.judge(items)


class ContextRelevanceJudge(_Judge):
    """How relevant the retrieved contexts are to the question (``relevance`` expert)."""

    name = "context_relevance"

    def __init__(self, llm: Any, expert: str = RELEVANCE, reduce: str = "mean",
                 threshold: float = 0.5, batch_size: int = 16) -> None:
        super().__init__(threshold)
        if reduce not in ("mean", "max"):
            raise InputError(f"reduce must be 'mean' or 'max', got {reduce!r}")
        from expertrag.rerank.llm import LLMReranker

        self.reranker = LLMReranker.with_relevance_expert(llm, expert=expert,
                                                          batch_size=batch_size)
        self.reduce = reduce

    def judge(self, items: Sequence[EvalItem | dict[str, Any]]) -> list[JudgeResult]:
        checked = _items(items)
        pairs = [(it.question, c) for it in checked for c in it.contexts if c.strip()]
        flat = iter(self.reranker.score_pairs(pairs))
        out = []
        for it in checked:
            scores = [next(flat) for c in it.contexts if c.strip()]
            if not scores:
                out.append(JudgeResult(0.0, False, "no contexts were retrieved"))
                continue
            score = max(scores) if self.reduce == "max" else sum(scores) / len(scores)
            out.append(_verdict(score, scores, self.threshold, "contexts relevant"))
        return out


class FaithfulnessJudge(_Judge):
    """Whether the answer's sentences are supported by the contexts (critic IsSup)."""

    name = "faithfulness"

    def __init__(self, llm: Any, expert: str = CRITIC, reduce: str = "mean",
                 threshold: float = 0.5, batch_size: int = 16, max_context_chars: int = 3000
                 ) -> None:
        super().__init__(threshold)
        if reduce not in ("mean", "min"):
            raise InputError(f"reduce must be 'mean' or 'min', got {reduce!r}")
        from expertrag.reflection import Critic

        self.critic = Critic.shipped(llm, expert=expert, batch_size=batch_size) \
            if expert == CRITIC else Critic(llm, expert=expert, batch_size=batch_size)
        self.reduce = reduce
        self.max_context_chars = max_context_chars

    def judge(self, items: Sequence[EvalItem | dict[str, Any]]) -> list[JudgeResult]:
        from expertrag.reflection import ISSUP

        checked = _items(items)
        asks, owners = [], []
        for n, it in enumerate(checked):
            if is_refusal(it.answer) or not it.contexts:
                continue
            passage = "\n".join(c.strip() for c in it.contexts if c.strip())
            passage = passage[: self.max_context_chars]
            for sentence in answer_sentences(it.answer):
                asks.append({"question": it.question, "passage": passage, "answer": sentence})
                owners.append(n)
        verdicts = self.critic.judge(ISSUP, asks)
        per: dict[int, list[float]] = {}
        for n, j in zip(owners, verdicts, strict=True):
            per.setdefault(n, []).append(j.score)
        out = []
        for n, it in enumerate(checked):
            if is_refusal(it.answer):
                out.append(JudgeResult(1.0, True, "the answer is a refusal: it claims nothing"))
            elif not it.contexts:
                out.append(JudgeResult(0.0, False, "no contexts to support the answer"))
            elif n not in per:
                out.append(JudgeResult(1.0, True, "the answer is empty: it claims nothing"))
            else:
                parts = per[n]
                score = min(parts) if self.reduce == "min" else sum(parts) / len(parts)
                out.append(_verdict(score, parts, self.threshold, "sentences supported"))
        return out


class AnswerRelevanceJudge(_Judge):
    """How well the answer addresses the question: an embedding cosine (the default), or
    the critic's IsUse grade.

    Validity on held-out HotpotQA test (each question's right answer against another
    question's; ``benchmarks/bench_eval.py --part validity``, figures in
    benchmarks/RESULTS.md): the embedding cosine tells them apart and the critic's IsUse does
    no better than chance, so IsUse is opt-in (``method="isuse"``). The embedding threshold is
    the accuracy-best cut on HotpotQA test items 400-499.
    """

    name = "answer_relevance"
    THRESHOLDS: ClassVar[dict[str, float]] = {"embedding": 0.19, "isuse": 0.5}

    def __init__(self, llm: Any = None, expert: str = CRITIC, method: str = "embedding",
                 embedder: Any = None, threshold: float | None = None,
                 batch_size: int = 16) -> None:
        if method not in self.THRESHOLDS:
            raise InputError(f"method must be 'embedding' or 'isuse', got {method!r}")
        super().__init__(self.THRESHOLDS[method] if threshold is None else threshold)
        self.method = method
        if method == "isuse":
            if llm is None:
                raise InputError("method 'isuse' needs the llm")
            from expertrag.reflection import Critic

            self.critic = Critic.shipped(llm, expert=expert, batch_size=batch_size) \
                if expert == CRITIC else Critic(llm, expert=expert, batch_size=batch_size)
        else:
            if embedder is None:
                from expertrag.embeddings import Embedder

                embedder = Embedder()
            self.embedder = embedder

    def judge(self, items: Sequence[EvalItem | dict[str, Any]]) -> list[JudgeResult]:
        checked = _items(items)
        answers = [strip_citations(it.answer).strip() or "(no answer)" for it in checked]
        if self.method == "isuse":
            from expertrag.reflection import ISUSE

            verdicts = self.critic.judge(ISUSE, [{"question": it.question, "answer": a}
                                                 for it, a in zip(checked, answers,
                                                                  strict=True)])
            scores = [(j.score + 1.0) / 2.0 for j in verdicts]
            notes = [f"utility grade {j.label} (p={j.probs[j.label]:.2f})" for j in verdicts]
        else:
            q = self.embedder.embed_documents([it.question for it in checked])
            a = self.embedder.embed_documents(answers)
            scores = [max(0.0, sum(x * y for x, y in zip(u, v, strict=True)))
                      for u, v in zip(q, a, strict=True)]
            notes = ["cosine of question and answer"] * len(scores)
        return [JudgeResult(s, s >= self.threshold, note) for s, note in zip(scores, notes,
                                                                              strict=True)]
