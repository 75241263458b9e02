"""The ``critic`` expert: Self-RAG's four reflection questions, each answered as label
probabilities from one forward pass, never parsed text:

- Retrieve: does this instruction need retrieved knowledge?      ``yes`` / ``no``
- IsRel: is this passage relevant to the question?               ``relevant`` / ``irrelevant``
- IsSup: is this answer supported by this passage?               ``fully`` / ``partially`` / ``no``
- IsUse: how useful is this answer to the question?              ``5`` ... ``1``

Its prompts (:func:`critic_messages`) are the ones it is trained on (``expertrag.training``
builds its rows with them) and the ones :class:`~expertrag.reflection.Critic` asks; its
output is a :class:`Judgement`, the probabilities renormalised over the judgement's labels.
"""

from __future__ import annotations

from dataclasses import dataclass

from expertrag.errors import InputError

NAME = "critic"

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
