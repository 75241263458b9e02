"""Training and evaluation rows for the ``critic`` expert: Self-RAG's four reflection
judgements (:mod:`expertrag.reflection`), with labels built from data we hold, not from a
bigger model.

- Retrieve: the project's own instructions (``data/instructions``, by template) vs knowledge
  questions of the QA sets (yes).
- IsRel: gold paragraphs (relevant) vs the item's distractors or a sibling paragraph of the
  same article (irrelevant: on topic, no answer).
- IsSup: the right answer with every supporting passage (fully); with only the passage
  that holds the answer, the other hop missing (partially); a hallucinated or another
  question's answer with the supporting passages, or the right answer with a distractor (no).
  Sentence-form answers on both sides (the answer-bearing sentence itself is "fully"), so
  the critic cannot grade by answer length.
- IsUse (independent of factuality, as in Self-RAG): the right short answer 5; an on-topic
  full-sentence answer 4; part of the answer 3; the refusal 2; another question's answer 1.

Every row is ``{"messages", "answer", "meta"}`` like the other builders; ``meta`` holds
``task``, ``label`` and ``group`` (one question's rows share a group, so splits keep them
together). Deterministic for a seed; broken input rows raise :class:`DataRowError`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from expertrag.experts.critic import ISREL, ISSUP, ISUSE, RETRIEVE, critic_messages
from expertrag.training.data import (
    REFUSAL,
    DataRowError,
    Row,
    _holds,
    _hotpot_item,
    _need_file,
    _rng,
    _siblings,
    _squad_questions,
    knowledge_passages,
)

#: The project's instruction set (CC0-1.0), see ``data/instructions/README.md``.
INSTRUCTIONS_FILE = "instructions.jsonl"


def load_instructions(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The labelled instruction set shipped as package data (or a file of the same shape)."""
    if path is None:
        path = Path(str(resources.files("expertrag"))) / "data" / "instructions" / \
            INSTRUCTIONS_FILE
    out = []
    for i, line in enumerate(_need_file(Path(path)).read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row.get("text"), str) or not isinstance(row.get("retrieve"), bool):
            raise DataRowError(i, "needs 'text' (string) and 'retrieve' (bool)", str(path))
        out.append(row)
    return out


def template_part(template: str) -> str:
    """"train" or "heldout" for an instruction template: every fifth template of a family
    (by its number) is held out, so evaluation sees wordings never trained on."""
    number = int(template.rsplit("-", 1)[1])
    return "heldout" if number % 5 == 4 else "train"


def _row(task: str, label: str, meta: dict[str, Any], question: str,
         passage: str | None = None, answer: str | None = None) -> Row:
    return {"messages": critic_messages(task, question, passage, answer), "answer": label,
            "meta": {**meta, "task": task, "label": label}}


def critic_retrieve_rows(instructions: Sequence[dict[str, Any]], questions: Sequence[str],
                         part: str | None = "train") -> list[Row]:
    """Retrieve rows: instructions (of templates in ``part``; None: all) labelled by their
    ``retrieve`` flag, and knowledge questions of the QA sets (yes)."""
    rows = []
    for i, item in enumerate(instructions):
        if part is not None and template_part(item["template"]) != part:
            continue
        label = "yes" if item["retrieve"] else "no"
        rows.append(_row(RETRIEVE, label, {"source": "instructions", "index": i,
                                           "group": f"instr:{item['template']}",
                                           "family": item.get("family")}, item["text"]))
    for i, question in enumerate(questions):
        rows.append(_row(RETRIEVE, "yes", {"source": "questions", "index": i,
                                           "group": f"q:{question[:40]}"}, question))
    return rows


def _partial(answer: str) -> str | None:
    """Part of a multi-word answer (its longest word), or None for a one-word answer."""
    words = answer.split()
    if len(words) < 2:
        return None
    return max(words, key=len).strip(",.")


def critic_hotpot_rows(hotpot_rows: Sequence[Row], seed: int = 42,
                       source: str = "hotpotqa") -> list[Row]:
    """IsRel, IsSup and IsUse rows from HotpotQA items (gold and distractor paragraphs)."""
    rows: list[Row] = []
    answers = []
    items = []
    for i, item in enumerate(hotpot_rows):
        question, answer, paragraphs, gold = _hotpot_item(item, i)
        items.append((question, answer, paragraphs, gold))
        answers.append(answer)
    for i, (question, answer, paragraphs, gold) in enumerate(items):
        rng = _rng(seed, "critic-hotpot", i)
        oracle = [t for title, t in paragraphs if title in gold]
        distractors = [t for title, t in paragraphs if title not in gold]
        rng.shuffle(distractors)
        meta = {"source": source, "index": i, "group": f"{source}:{hotpot_rows[i].get('id', i)}"}
        rows.append(_row(ISREL, "relevant", meta, question, rng.choice(oracle)))
        if distractors:
            rows.append(_row(ISREL, "irrelevant", meta, question, distractors[0]))
        both = "\n".join(oracle)
        rows.append(_row(ISSUP, "fully", meta, question, both, answer))
        holding = [t for t in oracle if _holds(t, answer)]
        if len(oracle) > 1 and len(holding) == 1 and answer.lower() not in ("yes", "no"):
            rows.append(_row(ISSUP, "partially", meta, question, holding[0], answer))
        wrong = [a for j, a in enumerate(answers) if j != i and not _holds(a, answer)
                 and not _holds(answer, a)]
        other = rng.choice(wrong) if wrong else None
        if distractors and not _holds(distractors[0], answer):
            rows.append(_row(ISSUP, "no", meta, question, distractors[0], answer))
        if other and not _holds(both, other):
            rows.append(_row(ISSUP, "no", {**meta, "kind": "other-answer"}, question, both,
                             other))
        rows.append(_row(ISUSE, "5", meta, question, answer=answer))
        part = _partial(answer)
        if part:
            rows.append(_row(ISUSE, "3", meta, question, answer=part))
        rows.append(_row(ISUSE, "2", meta, question, answer=REFUSAL))
        if other:
            rows.append(_row(ISUSE, "1", meta, question, answer=other))
    return rows


def critic_halueval_rows(halu_rows: Sequence[Row],
                         alternatives: Sequence[Sequence[Row]] = (),
                         seed: int = 42) -> list[Row]:
    """IsSup and IsUse rows from HaluEval QA rows. ``alternatives``: other files with the same
    questions in the same order (the generation files) whose hallucinated answers add
    further "no" rows."""
    rows: list[Row] = []
    answers = [r["right_answer"].strip() for r in halu_rows]
    for i, item in enumerate(halu_rows):
        passages = knowledge_passages(item["knowledge"])
        if not passages:
            raise DataRowError(i, "empty 'knowledge'", "halueval")
        question, answer = item["question"].strip(), answers[i]
        rng = _rng(seed, "critic-halueval", i)
        meta = {"source": "halueval", "index": i,
                "group": f"halueval:{item.get('meta_index', i)}"}
        both = "\n".join(passages)
        rows.append(_row(ISSUP, "fully", meta, question, both, answer))
        holding = [p for p in passages if _holds(p, answer)]
        if len(holding) == 1 and answer.lower() not in ("yes", "no"):
            # the sentence that holds the answer is itself a fully supported long answer
            rows.append(_row(ISSUP, "fully", {**meta, "kind": "sentence"}, question, both,
                             holding[0]))
            rows.append(_row(ISUSE, "4", {**meta, "kind": "sentence"}, question,
                             answer=holding[0]))
            if len(passages) > 1:
                rows.append(_row(ISSUP, "partially", meta, question, holding[0], answer))
        hallucinated = [item["hallucinated_answer"]]
        for alt in alternatives:
            if i < len(alt) and alt[i]["question"].strip() == question:
                hallucinated.append(alt[i]["hallucinated_answer"])
        seen: set[str] = set()
        for h in hallucinated:
            h = h.strip()
            if h and h not in seen and not _holds(h, answer):
                seen.add(h)
                rows.append(_row(ISSUP, "no", {**meta, "kind": "hallucinated"}, question, both,
                                 h))
        rows.append(_row(ISUSE, "4", {**meta, "kind": "hallucinated"}, question,
                         answer=rng.choice(sorted(seen)) if seen else hallucinated[0]))
        rows.append(_row(ISUSE, "5", meta, question, answer=answer))
        others = [a for j, a in enumerate(answers) if j != i and not _holds(a, answer)]
        if others:
            rows.append(_row(ISUSE, "1", meta, question, answer=rng.choice(others)))
        rows.append(_row(ISUSE, "2", meta, question, answer=REFUSAL))
    return rows


def critic_squad_rows(articles: Sequence[Row], seed: int = 42,
                      max_questions: int | None = None) -> list[Row]:
    """IsRel and IsSup rows from SQuAD 2.0 answerable questions: own paragraph vs a sibling
    paragraph of the same article (relevant / irrelevant; fully / no support)."""
    questions = [q for q in _squad_questions(articles) if not q["qa"].get("is_impossible")]
    order = list(range(len(questions)))
    _rng(seed, "critic-squad").shuffle(order)
    if max_questions is not None:
        order = order[:max_questions]
    rows: list[Row] = []
    for i in sorted(order):
        q = questions[i]
        answers = [a.get("text", "").strip() for a in q["qa"].get("answers") or []
                   if str(a.get("text", "")).strip()]
        siblings = [t for _, t in _siblings(articles, q) if answers and not _holds(t,
                                                                                answers[0])]
        if not answers or not siblings:
            continue
        rng = _rng(seed, "critic-squad", i)
        other = rng.choice(siblings)
        meta = {"source": "squad2", "index": i,
                "group": f"squad2:{q['article']}:{q['paragraph']}"}
        rows.append(_row(ISREL, "relevant", meta, q["question"], q["context"]))
        rows.append(_row(ISREL, "irrelevant", meta, q["question"], other))
        rows.append(_row(ISSUP, "fully", meta, q["question"], q["context"], answers[0]))
        rows.append(_row(ISSUP, "no", meta, q["question"], other, answers[0]))
    return rows


def cap_rows(rows: Sequence[Row], caps: dict[str, int], seed: int = 42) -> list[Row]:
    """At most ``caps[task]`` rows of each task, balanced over its labels as far as the rows
    allow (seeded picks; tasks without a cap keep every row), then shuffled."""
    by_task: dict[str, dict[str, list[Row]]] = {}
    for row in rows:
        by_task.setdefault(row["meta"]["task"], {}).setdefault(row["meta"]["label"],
                                                               []).append(row)
    out: list[Row] = []
    for task in sorted(by_task):
        labels = by_task[task]
        cap = caps.get(task)
        if cap is None:
            out.extend(r for lab in sorted(labels) for r in labels[lab])
            continue
        pools = {lab: list(v) for lab, v in labels.items()}
        for lab in sorted(pools):
            _rng(seed, "cap", task, lab).shuffle(pools[lab])
        picked: list[Row] = []
        while len(picked) < cap and any(pools.values()):  # round robin over the labels
            for lab in sorted(pools):
                if pools[lab] and len(picked) < cap:
                    picked.append(pools[lab].pop())
        out.extend(picked)
    _rng(seed, "critic-order").shuffle(out)
    return out
