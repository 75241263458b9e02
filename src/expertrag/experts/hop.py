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

The lookahead's parts (:func:`capitalized_names`, :func:`lookahead_candidates`,
:func:`choose_query`; the chain's ``name_finder``) let the chain check a generated query
against the names its evidence mentions, judged by the keep probability.

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


# ---------------------------------------------------------------- next-query lookahead
#: words that open a capitalised span without naming anything (sentence starts, pronouns,
#: months and days, which name no page to look up)
_NOT_NAMES = frozenset("""
a an the this that these those he she it its they them their his her we our you your i my
in on at of for from by with after before during since until when where while which who
what how why there here also however although though but and or as if then thus so
according born died despite following including january february march april may june july
august september october november december monday tuesday wednesday thursday friday
saturday sunday
""".split())
#: lower-case words a name may hold between two capitalised words ("University of Oxford")
_JOINERS = frozenset({"of", "the", "de", "da", "del", "di", "du", "la", "le", "von", "van",
                      "der", "den", "for", "y"})
_WORD = re.compile(r"\w[\w'’.\-&]*")


def _capital(word: str) -> bool:
    return word[0].isupper() or (word[0].isdigit() and any(c.isalpha() for c in word))


def _ends_sentence(word: str) -> bool:
    """``word`` (as matched, trailing period included) closes its sentence: "Poe." does,
    the initials "T.S." and "A." do not."""
    core = word.rstrip(".")
    return word.endswith(".") and len(core) > 1 and "." not in core


def capitalized_names(text: str) -> list[str]:
    """The names a passage mentions, in order of first mention, without a parser: runs of
    capitalised words (with joiners such as "of" between two of them) within one clause,
    leading and trailing sentence words, pronouns and months dropped, and runs with no
    capital letter (numbers, "19th") dropped. The next-query lookahead's default source of
    pages to look up (:func:`lookahead_candidates`; no parser needed)."""
    words = list(_WORD.finditer(text))
    names: list[str] = []
    run: list[re.Match[str]] = []

    def close() -> None:
        while run and (run[-1].group().rstrip(".").lower() in _JOINERS | _NOT_NAMES):
            run.pop()
        while run and run[0].group().rstrip(".").lower() in _NOT_NAMES:
            run.pop(0)
        if run:
            name = text[run[0].start():run[-1].end()]
            name = name.rstrip(".") if _ends_sentence(run[-1].group()) else name
            if any(c.isupper() for c in name) and name not in names:
                names.append(name)
        run.clear()

    for i, m in enumerate(words):
        word = m.group()
        if run and re.search(r"[,;:()\"\[\]!?]", text[words[i - 1].end():m.start()]):
            close()
        nxt = words[i + 1] if i + 1 < len(words) else None
        if _capital(word):
            run.append(m)
        elif run and word.lower() in _JOINERS and nxt is not None and _capital(nxt.group()) \
                and not re.search(r"[,;:()\"\[\]!?.]", text[m.end():nxt.start()]):
            run.append(m)
        elif run:
            close()
        if run and _ends_sentence(word):
            close()
    close()
    return names


def lookahead_candidates(greedy: str, question: str, names: Sequence[str], most: int,
                         asked: Sequence[str] = ()) -> list[str]:
    """The next queries the lookahead tries: the expert's greedy query first, then the
    evidence's ``names`` that the question does not contain and that were not asked
    before, without repeats, at most ``most`` in all."""
    out = [greedy] if greedy else []
    seen = {q.lower() for q in (*out, *asked)}
    for name in names:
        name = " ".join(name.split())
        if len(out) >= most:
            break
        if name and name.lower() not in question.lower() and name.lower() not in seen:
            out.append(name)
            seen.add(name.lower())
    return out


def choose_query(candidates: Sequence[str], keeps: Sequence[float], margin: float) -> str:
    """The candidate whose retrieval the expert rates highest (``keeps``: P(yes) of the
    keep judgement on the first new passage each retrieves) when it beats the first
    (greedy) candidate by at least ``margin``; the greedy one otherwise ("" when none)."""
    if not candidates:
        return ""
    best = max(range(len(candidates)), key=lambda i: keeps[i])
    return candidates[best] if keeps[best] >= keeps[0] + margin else candidates[0]
