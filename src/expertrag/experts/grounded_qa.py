"""The ``grounded-qa`` expert: answers a question briefly from numbered passages, cites them,
and refuses with :data:`REFUSAL` when they do not hold the answer.

Its prompt (:func:`build_messages`) numbers the passages ``[1]..[k]``; its output is a short
sentence with ``[n]`` citations (``Paris [2].``, :func:`grounded_answer`) or the refusal.
Training builds its rows with these functions and the pipelines answer with them, so the
expert sees at answer time exactly the prompt it was trained on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import replace

from expertrag.types import Document

NAME = "grounded-qa"

INSTRUCTIONS = (
    "Answer in one short sentence using only the passages, and cite the passage number like "
    '[1]. If the passages do not say, answer "I don\'t know".'
)
#: The fixed refusal the grounded-qa expert is trained to give when the passages do not hold
#: the answer: the wording INSTRUCTIONS asks for.
REFUSAL = "I don't know."
_CITATION_RE = re.compile(r"\[\s*(\d+(?:\s*[,;]\s*\d+)*)\s*\]")
_CITATION_STRIP_RE = re.compile(r"\s*\[\s*\d+(?:\s*[,;]\s*\d+)*\s*\]")
_REPEATED_CITATION_RE = re.compile(r"(\[\s*\d+\s*\])(?:\s*\1)+")

if INSTRUCTIONS.find(REFUSAL.rstrip(".")) < 0:  # pragma: no cover - guards a future edit
    raise ImportError("INSTRUCTIONS no longer asks for the REFUSAL wording")


def format_passages(passages: Sequence[Document]) -> str:
    """Number passages ``[1]..[k]``; sources are left out (small models copy them back)."""
    return "\n\n".join(f"[{n}] {doc.text.strip()}" for n, doc in enumerate(passages, start=1))


def build_messages(question: str, passages: Sequence[Document]) -> list[dict[str, str]]:
    """The chat messages for one grounded question: a single user turn holding the passages,
    the question and the instructions (in a quick probe SmolLM2-135M answered more questions
    right this way than with a separate system turn and source headers)."""
    user = (
        "Read the passages and answer the question.\n\n"
        f"{format_passages(passages)}\n\n"
        f"Question: {question.strip()}\n"
        f"{INSTRUCTIONS}"
    )
    return [{"role": "user", "content": user}]


def grounded_answer(answer: str, cited: Iterable[int]) -> str:
    """The target text: a brief answer followed by its citations, ``Paris [2].``"""
    text = " ".join(answer.split()).rstrip(".")
    cites = "".join(f"[{n}]" for n in sorted(set(cited)))
    return f"{text} {cites}." if cites else f"{text}."


def parse_citations(text: str, n_passages: int) -> list[int]:
    """Passage numbers cited in ``text`` (``[1]``, ``[1, 3]``, ``[2][3]``), in first-use order;
    numbers outside ``1..n_passages`` are ignored."""
    seen: list[int] = []
    for match in _CITATION_RE.finditer(text):
        for part in re.split(r"[,;]", match.group(1)):
            number = int(part)
            if 1 <= number <= n_passages and number not in seen:
                seen.append(number)
    return seen


def strip_citations(text: str) -> str:
    """An answer without its ``[n]`` citations."""
    return _CITATION_STRIP_RE.sub("", text).strip()


def is_refusal(text: str) -> bool:
    """Whether a generated answer is the refusal (lenient on case and punctuation)."""
    flat = " ".join(strip_citations(text).lower().replace("’", "'").split())
    return REFUSAL.lower().rstrip(".") in flat or "do not know" in flat


def tidy_citations(text: str) -> str:
    """Collapse a citation repeated back to back (``117 [1][1].`` -> ``117 [1].``), which small
    models sometimes emit; other text and the order of distinct citations are kept."""
    return _REPEATED_CITATION_RE.sub(r"\1", text)


def select_citations(text: str, passages: Sequence[Document]) -> list[Document]:
    """Copies of the passages cited by ``text`` (``metadata["cited"]=True``); when it cites
    none, every passage, marked ``cited=False``. ``metadata["passage"]`` keeps its number."""
    numbers = parse_citations(text, len(passages))
    if numbers:
        return [
            replace(
                passages[n - 1], metadata={**passages[n - 1].metadata, "passage": n, "cited": True}
            )
            for n in numbers
        ]
    return [
        replace(doc, metadata={**doc.metadata, "passage": n, "cited": False})
        for n, doc in enumerate(passages, start=1)
    ]
