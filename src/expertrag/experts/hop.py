"""The ``hop`` expert: the three judgements of iterative multi-hop retrieval, each one call.

A bridge question ("Which magazine was started first, the one Arthur founded or ...?",
"Where was the director of X born?") needs a passage that only the first passage names.
Given the question and the evidence kept so far, the ``hop`` expert answers:

- **keep** (:func:`keep_messages`): does this retrieved passage hold a step toward the
  answer: part of it, or the name of what to look up next? ``yes`` / ``no`` as a label
  probability. It reads the hop's own query beside the question, so the second paragraph of
  a bridge question, which looks irrelevant to the question alone, is kept when it is what
  the hop looked for.
- **stop** (:func:`stop_messages`): does the evidence hold everything needed? ``yes`` /
  ``no`` as a label probability, one forward pass.
- **next** (:func:`next_messages`): what to look up next, generated under
  :data:`NEXT_QUERY_SCHEMA` (one JSON string of at most :data:`MAX_QUERY_CHARS` characters),
  so it always parses and can never run away; read with :func:`parse_query`.

The prompts are the ones the expert is trained on (``expertrag.training.hop_data``) and the
ones :class:`~expertrag.chains.multihop.MultiHopRAG` asks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from expertrag.errors import InputError

NAME = "hop"

KEEP, STOP, NEXT = "keep", "stop", "next"
#: labels of the two label judgements, positive first
YES, NO = "yes", "no"
LABELS: tuple[str, str] = (YES, NO)

#: the longest next query the grammar allows (a title or a short sub-question)
MAX_QUERY_CHARS = 80
#: the next query's output format: one JSON string, bounded
NEXT_QUERY_SCHEMA: dict[str, object] = {"type": "string", "minLength": 1,
                                        "maxLength": MAX_QUERY_CHARS}
#: evidence passages are cut to this many characters in the stop / next prompts (the kept
#: evidence of three hops stays well inside the base's window)
EVIDENCE_CHARS = 700

KEEP_PROMPT = (
    "Question: {question}\nLooking for: {query}\n\nPassage:\n{passage}\n\n"
    "Does the passage hold a step toward the answer: part of it, or the name of what to look "
    "up next? Answer yes or no."
)
STOP_PROMPT = (
    "Question: {question}\n\nEvidence so far:\n{evidence}\n\n"
    "Does the evidence hold everything needed to answer the question? Answer yes or no."
)
NEXT_PROMPT = (
    "Question: {question}\n\nEvidence so far:\n{evidence}\n\n"
    "What should be looked up next to answer the question? Give one title or a short "
    "search query."
)


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{name} must be a non-empty string, got {value!r}")
    return value.strip()


def format_evidence(passages: Sequence[str], max_chars: int = EVIDENCE_CHARS) -> str:
    """The kept evidence as the stop / next prompts show it: numbered, each cut to
    ``max_chars`` at a word boundary; ``(none)`` when nothing is kept yet."""
    if isinstance(passages, str):
        raise InputError("passages must be a list of strings, not one string")
    lines = []
    for n, text in enumerate(passages, 1):
        text = " ".join(_text(text, f"passages[{n - 1}]").split())
        if len(text) > max_chars:
            text = text[:max_chars].rsplit(" ", 1)[0] + " ..."
        lines.append(f"[{n}] {text}")
    return "\n".join(lines) if lines else "(none)"


def keep_messages(question: str, query: str, passage: str) -> list[dict[str, str]]:
    """Does ``passage``, retrieved for ``query``, hold a step toward ``question``'s answer?"""
    text = KEEP_PROMPT.format(question=_text(question, "question"),
                              query=_text(query, "query"), passage=_text(passage, "passage"))
    return [{"role": "user", "content": text}]


def stop_messages(question: str, evidence: Sequence[str]) -> list[dict[str, str]]:
    """Does the ``evidence`` kept so far hold everything ``question`` needs?"""
    text = STOP_PROMPT.format(question=_text(question, "question"),
                              evidence=format_evidence(evidence))
    return [{"role": "user", "content": text}]


def next_messages(question: str, evidence: Sequence[str]) -> list[dict[str, str]]:
    """What should be looked up next for ``question``, given the ``evidence`` so far?"""
    text = NEXT_PROMPT.format(question=_text(question, "question"),
                              evidence=format_evidence(evidence))
    return [{"role": "user", "content": text}]


def render_query(query: str) -> str:
    """A next-query target as the expert writes it (a JSON string)."""
    return json.dumps(" ".join(_text(query, "query").split())[:MAX_QUERY_CHARS],
                      ensure_ascii=False)


_PARENTHETICAL = re.compile(r"\s*\([^)]*\)\s*$")


def title_query(title: str) -> str:
    """A Wikipedia-style title as a search query: without a trailing "(film)"-style tag,
    which the first hop's passage never names."""
    return _PARENTHETICAL.sub("", _text(title, "title")) or title.strip()


def parse_query(text: str) -> str:
    """The next query from the expert's output: the JSON string (the grammar guarantees one
    when constrained); an unconstrained output is taken as plain text, quotes stripped. An
    empty query raises :class:`InputError`."""
    text = (text or "").strip()
    try:
        value = json.loads(text)
    except ValueError:
        value = text.strip("\"'")
    if not isinstance(value, str):
        value = str(value)
    return _text(" ".join(value.split())[:MAX_QUERY_CHARS], "next query")
