"""Self-RAG's four reflection questions, asked of the ``critic`` expert as label probabilities.

Each judgement is one prompt and one forward pass (``ExpertLLM.label_probabilities``); the
answer is the probability of each label's first token, never parsed text:

- Retrieve: does this instruction need retrieved knowledge?      ``yes`` / ``no``
- IsRel: is this passage relevant to the question?               ``relevant`` / ``irrelevant``
- IsSup: is this answer supported by this passage?               ``fully`` / ``partially`` / ``no``
- IsUse: how useful is this answer to the question?              ``5`` ... ``1``

The prompts here are the ones the critic is trained on (``expertrag.training.data``
builds its rows with :func:`critic_messages`), so scoring matches training. Probabilities are
renormalised over each judgement's labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from expertrag.errors import InputError

RETRIEVE, ISREL, ISSUP, ISUSE = "retrieve", "isrel", "issup", "isuse"
JUDGEMENTS: tuple[str, ...] = (RETRIEVE, ISREL, ISSUP, ISUSE)

#: Labels of each judgement, the positive or best one first.
LABELS: dict[str, tuple[str, ...]] = {
    RETRIEVE: ("yes", "no"),
    ISREL: ("relevant", "irrelevant"),
    ISSUP: ("fully", "partially", "no"),
    ISUSE: ("5", "4", "3", "2", "1"),
}

PROMPTS: dict[str, str] = {
    RETRIEVE: (
        "Instruction:\n{question}\n\n"
        "Does answering this need facts looked up in documents (people, places, dates, "
        "events, figures)? Answer yes or no."
    ),
    ISREL: (
        "Passage:\n{passage}\n\nQuestion: {question}\n"
        "Is the passage relevant to the question? Answer relevant or irrelevant."
    ),
    ISSUP: (
        "Passage:\n{passage}\n\nQuestion: {question}\nAnswer: {answer}\n"
        "Is the answer supported by the passage? Answer fully, partially or no."
    ),
    ISUSE: (
        "Question: {question}\nAnswer: {answer}\n"
        "How useful is the answer to the question, from 1 (useless) to 5 (a complete answer)? "
        "Answer with one number."
    ),
}

#: Self-RAG's utility weights for the grades 5..1 (Asai et al. 2024): -1, -0.5, 0, 0.5, 1.
UTILITY_WEIGHTS: dict[str, float] = {"5": 1.0, "4": 0.5, "3": 0.0, "2": -0.5, "1": -1.0}


def critic_messages(kind: str, question: str, passage: str | None = None,
                    answer: str | None = None) -> list[dict[str, str]]:
    """The one-turn conversation that asks the critic judgement ``kind``."""
    if kind not in PROMPTS:
        raise InputError(f"unknown judgement {kind!r}; one of {', '.join(JUDGEMENTS)}")
    if not isinstance(question, str) or not question.strip():
        raise InputError("question must be a non-empty string")
    needs = {ISREL: ("passage",), ISSUP: ("passage", "answer"), ISUSE: ("answer",)}
    given = {"passage": passage, "answer": answer}
    for field in needs.get(kind, ()):
        value = given[field]
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"judgement {kind!r} needs a non-empty {field}")
    text = PROMPTS[kind].format(question=question.strip(), passage=(passage or "").strip(),
                                answer=(answer or "").strip())
    return [{"role": "user", "content": text}]


@dataclass
class Judgement:
    """One judgement's label probabilities (renormalised over its labels)."""

    kind: str
    probs: dict[str, float]

    @property
    def label(self) -> str:
        """The most probable label."""
        return max(self.probs, key=lambda k: self.probs[k])

    @property
    def score(self) -> float:
        """A number in [0, 1] (IsUse: [-1, 1]) to rank or threshold by:
        Retrieve / IsRel: p(positive); IsSup: p(fully) + 0.5 p(partially);
        IsUse: sum of Self-RAG's utility weights times the grade probabilities."""
        p = self.probs
        if self.kind == ISSUP:
            return p["fully"] + 0.5 * p["partially"]
        if self.kind == ISUSE:
            return sum(UTILITY_WEIGHTS[g] * p[g] for g in UTILITY_WEIGHTS)
        return p[LABELS[self.kind][0]]


class Critic:
    """The four reflection judgements from an ``ExpertLLM`` and its ``critic`` expert, each
    batched into padding-aware forward passes; nothing is generated or parsed."""

    def __init__(self, llm: Any, expert: str | None = "critic", batch_size: int = 16) -> None:
        self.llm = llm
        self.expert = expert
        self.batch_size = batch_size

    @classmethod
    def shipped(cls, llm: Any, expert: str = "critic", **kwargs: Any) -> Critic:
        """A critic on the shipped ``critic`` expert (attached when ``llm`` lacks it)."""
        if expert not in (getattr(llm, "experts", None) or []):
            from expertrag.experts import attach_shipped

            attach_shipped(llm, [expert])
        return cls(llm, expert=expert, **kwargs)

    def judge(self, kind: str, items: Sequence[dict[str, str]]) -> list[Judgement]:
        """``items``: dicts with ``question`` and, as the judgement needs, ``passage`` and
        ``answer``. One forward pass per item, all in one batched call."""
        convs = [critic_messages(kind, it.get("question", ""), it.get("passage"),
                                 it.get("answer")) for it in items]
        if not convs:
            return []
        labels = LABELS[kind]
        rows = self.llm.label_probabilities(convs, labels=labels, expert=self.expert,
                                            batch_size=self.batch_size)
        out = []
        for row in rows:
            total = sum(row[lab] for lab in labels) or 1.0
            out.append(Judgement(kind, {lab: row[lab] / total for lab in labels}))
        return out

    def retrieve(self, questions: Sequence[str]) -> list[Judgement]:
        return self.judge(RETRIEVE, [{"question": q} for q in questions])

    def relevance(self, question: str, passages: Sequence[str]) -> list[Judgement]:
        return self.judge(ISREL, [{"question": question, "passage": p} for p in passages])

    def support(self, question: str, pairs: Sequence[tuple[str, str]]) -> list[Judgement]:
        """IsSup of (passage, answer) pairs."""
        return self.judge(ISSUP, [{"question": question, "passage": p, "answer": a}
                                  for p, a in pairs])

    def utility(self, question: str, answers: Sequence[str]) -> list[Judgement]:
        return self.judge(ISUSE, [{"question": question, "answer": a} for a in answers])
