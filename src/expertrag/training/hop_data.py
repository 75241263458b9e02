"""Training rows for the ``hop`` expert (:mod:`expertrag.experts.hop`) from HotpotQA.

A HotpotQA item names its two gold paragraphs. The first hop is the one whose title the
question names (of two, a comparison, the one named first); when the question names
neither, the gold paragraph that names the other's title (Wikipedia links the bridge
entity).
From each item, with its distractor paragraphs as negatives:

- keep: the first-hop paragraph for the question (yes), a distractor (no); the second-hop
  paragraph for the bridge title as the hop's query (yes), a distractor for it (no);
- stop: evidence holding both gold paragraphs, with or without a distractor among them
  (yes); the first hop alone, or with a distractor (no), the second alone (no);
- next: the first hop's paragraph (alone, or with a distractor kept beside it; with
  ``next_rows=3`` also with two distractors, as a chain that kept more than it needed
  holds it) -> the second paragraph's title without its "(film)"-style tag, as the JSON
  string the grammar allows.

Items whose hop order cannot be told (the question names neither title and neither or
both gold paragraphs name the other) still give keep and stop rows, not next rows: a wrong target
would teach the expert to guess. Deterministic for a seed; a broken item raises
:class:`~expertrag.training.data.DataRowError`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from expertrag.errors import InputError
from expertrag.experts.hop import (
    KEEP,
    NEXT,
    NO,
    STOP,
    YES,
    keep_messages,
    next_messages,
    render_query,
    stop_messages,
    title_query,
)
from expertrag.training.data import DataRowError, Row, _foreign, _hotpot_item, _rng

KINDS = (KEEP, STOP, NEXT)
_WORD = re.compile(r"\w+")


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if len(w) > 2}


def _names(text: str, title: str) -> bool:
    return title_query(title).lower() in text.lower()


def hop_order(question: str, gold: Sequence[tuple[str, str]]
              ) -> tuple[tuple[str, str], tuple[str, str]] | None:
    """(first hop, second hop) of two gold ``(title, text)`` paragraphs, or None when the
    order cannot be told. The question names where to start: the one title it names comes
    first, or of two named (a comparison) the one named first; when it names neither, the
    paragraph that names the other's title (a bridge) comes first."""
    if len(gold) != 2:
        return None
    a, b = gold
    q = question.lower()
    at = {p[0]: q.find(title_query(p[0]).lower()) for p in (a, b)}
    if at[a[0]] >= 0 and at[b[0]] >= 0:
        return (a, b) if at[a[0]] <= at[b[0]] else (b, a)
    if at[a[0]] >= 0 or at[b[0]] >= 0:
        return (a, b) if at[a[0]] >= 0 else (b, a)
    a_names_b, b_names_a = _names(a[1], b[0]), _names(b[1], a[0])
    if a_names_b != b_names_a:
        return (a, b) if a_names_b else (b, a)
    return None


def _row(messages: list[dict[str, str]], answer: str, kind: str, meta: dict[str, Any]) -> Row:
    return {"messages": messages, "answer": answer, "meta": {**meta, "kind": kind}}


def hop_item_rows(items: Sequence[Any], index: int, seed: int = 42, source: str = "hotpotqa",
                  next_rows: int = 2) -> list[Row]:
    """Every keep / stop / next row of item ``index`` of ``items`` (see the module doc); an
    item with fewer than two distractors borrows them from another item. ``next_rows`` (1-3)
    is how many evidence variants give a next row; the rows before the third do not depend
    on it (the same random draws)."""
    if next_rows not in (1, 2, 3):
        raise InputError(f"next_rows must be 1, 2 or 3, got {next_rows!r}")
    item = items[index]
    question, answer, paragraphs, gold_titles = _hotpot_item(item, index)
    gold = [p for p in paragraphs if p[0] in gold_titles]
    others = [p for p in paragraphs if p[0] not in gold_titles]
    if len(gold) != 2:
        raise DataRowError(index, f"needs two gold paragraphs, has {len(gold)}", source)
    rng = _rng(seed, "hop", index)
    rng.shuffle(others)
    if len(others) < 2:
        others += [p for p in _foreign(items, index, rng, 4) if p[0] not in gold_titles]
    if len(others) < 2:
        raise DataRowError(index, "needs two distractor paragraphs (none to borrow)", source)
    d1, d2 = others[0], others[1]
    order = hop_order(question, gold)
    first, second = order or (gold[0], gold[1])
    meta = {"source": source, "index": index, "group": f"{source}:{item.get('id', index)}",
            "question": question, "answer": answer, "type": item.get("type"),
            "ordered": order is not None, "first": first[0], "second": second[0],
            "second_text": second[1]}
    hop_query = title_query(second[0]) if order else question
    rows = [
        _row(keep_messages(question, question, first[1]), YES, KEEP, {**meta, "title": first[0]}),
        _row(keep_messages(question, question, d1[1]), NO, KEEP, {**meta, "title": d1[0]}),
        _row(keep_messages(question, hop_query, second[1]), YES, KEEP,
             {**meta, "title": second[0]}),
        _row(keep_messages(question, hop_query, d2[1]), NO, KEEP, {**meta, "title": d2[0]}),
    ]
    both = [first[1], second[1]]
    noisy = [first[1], d1[1], second[1]] if rng.random() < 0.5 else [d1[1], first[1], second[1]]
    rows += [
        _row(stop_messages(question, both), YES, STOP, {**meta, "evidence": "both"}),
        _row(stop_messages(question, noisy), YES, STOP, {**meta, "evidence": "both+distractor"}),
        _row(stop_messages(question, [first[1]]), NO, STOP, {**meta, "evidence": "first"}),
        _row(stop_messages(question, [second[1]] if rng.random() < 0.5 else [first[1], d2[1]]),
             NO, STOP, {**meta, "evidence": "partial"}),
    ]
    if order is not None:
        target = render_query(title_query(second[0]))
        with_one = [first[1], d1[1]] if rng.random() < 0.5 else [d1[1], first[1]]
        variants = [("first", [first[1]]), ("first+distractor", with_one)]
        if next_rows == 3:
            with_two = [first[1], d1[1], d2[1]]
            rng.shuffle(with_two)
            variants.append(("first+2 distractors", with_two))
        rows += [_row(next_messages(question, evidence), target, NEXT,
                      {**meta, "evidence": name, "target": second[0]})
                 for name, evidence in variants[:next_rows]]
    return rows


def build_hop(hotpot_rows: Sequence[Any], seed: int = 42,
              caps: dict[str, int] | None = None, next_rows: int = 2) -> list[Row]:
    """The hop expert's rows from HotpotQA items, shuffled by the seed; ``caps`` bounds the
    rows of each kind (``{"keep": n, "stop": n, "next": n}``, seeded, whole items kept
    balanced by taking rows in item order after a seeded shuffle of the items);
    ``next_rows`` as in :func:`hop_item_rows`."""
    caps = dict(caps or {})
    unknown = set(caps) - set(KINDS)
    if unknown:
        raise InputError(f"caps names unknown kinds {sorted(unknown)}; kinds: {KINDS}")
    order = list(range(len(hotpot_rows)))
    _rng(seed, "hop-items", 0).shuffle(order)
    counts = dict.fromkeys(KINDS, 0)
    rows: list[Row] = []
    for i in order:
        for row in hop_item_rows(hotpot_rows, i, seed, next_rows=next_rows):
            kind = row["meta"]["kind"]
            if kind in caps and counts[kind] >= caps[kind]:
                continue
            counts[kind] += 1
            rows.append(row)
    _rng(seed, "hop-rows", 0).shuffle(rows)
    return rows
