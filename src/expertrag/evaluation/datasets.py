"""Held-out question sets for benchmarks and evaluation (never for training).

Each loader reads a file of the shared data folder and each builder returns rows in the shape
of :func:`expertrag.training.data.build_raft`: ``{"messages", "answer", "meta"}`` with the
grounded prompt of :func:`expertrag.experts.grounded_qa.build_messages`, the gold answer
(and aliases) in ``meta`` and ``meta["has_oracle"]`` telling whether the passages hold it.

- MuSiQue (Trivedi et al. 2022): 2-4 hop questions, each with 20 paragraphs of which 2-4 are
  supporting. :func:`musique_rows` shows the supporting paragraphs plus ``distractors_k`` of
  the question's own non-supporting ones, shuffled by the seed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expertrag.datasets import (  # noqa: F401 - loaders re-exported from their old home
    HOTPOT_TEST,
    MUSIQUE_QUESTIONS,
    DataError,
    DataNotFoundError,
    DataRowError,
    hotpot_item,
    item_rng,
    load_hotpot_test,
    load_musique,
    paragraph_documents,
    siblings,
    squad_questions,
)
from expertrag.experts.grounded_qa import build_messages, grounded_answer
from expertrag.types import Document


def musique_rows(questions: Sequence[dict[str, Any]], distractors_k: int = 2,
                 seed: int = 0) -> list[dict[str, Any]]:
    """Grounded-QA rows: every supporting paragraph plus ``distractors_k`` non-supporting
    paragraphs of the same question, shuffled; the gold answer and its aliases in ``meta``."""
    rows = []
    for i, item in enumerate(questions):
        paragraphs = item.get("paragraphs") or []
        question, answer = item.get("question"), item.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise DataRowError(i, "missing or empty 'question'", "musique")
        if not isinstance(answer, str) or not answer.strip():
            raise DataRowError(i, "missing or empty 'answer'", "musique")
        parts = [(f"{p.get('title', '')} #{p.get('idx', n)}", str(p.get("paragraph_text", "")))
                 for n, p in enumerate(paragraphs)]
        support = [pt for pt, p in zip(parts, paragraphs, strict=True) if p.get("is_supporting")]
        if not support:
            raise DataRowError(i, "no supporting paragraph", "musique")
        others = [pt for pt, p in zip(parts, paragraphs, strict=True)
                  if not p.get("is_supporting")]
        rng = item_rng(seed, "musique", i)
        rng.shuffle(others)
        chosen = support + others[:distractors_k]
        rng.shuffle(chosen)
        gold = {pt[0] for pt in support}
        cited = [n for n, pt in enumerate(chosen, start=1) if pt[0] in gold]
        docs = paragraph_documents(chosen)
        rows.append({
            "messages": build_messages(question, docs),
            "answer": grounded_answer(answer, cited),
            "meta": {"source": "musique", "index": i, "id": item.get("id", str(i)),
                     "has_oracle": True, "oracle_passages": cited,
                     "n_passages": len(chosen), "gold_answer": answer.strip(),
                     "question": question, "passages": [d.text for d in docs],
                     "gold_aliases": list(item.get("answer_aliases") or []),
                     "hops": len(support)},
        })
    return rows


# ------------------------------------------------------------------------------ QA items
@dataclass
class QAItem:
    """A held-out question with its gold (supporting) and distractor passages: the unit the
    chain benchmark and the robustness suite build their corpora from."""

    id: str
    question: str
    answer: str
    aliases: list[str] = field(default_factory=list)
    gold: list[Document] = field(default_factory=list)
    distractors: list[Document] = field(default_factory=list)
    source: str = ""

    @property
    def answers(self) -> list[str]:
        return [self.answer, *(a for a in self.aliases if a.strip())]


def hotpot_items(rows: Sequence[dict[str, Any]], source: str = "hotpotqa") -> list[QAItem]:
    """QA items from HotpotQA rows (distractor setting): gold = the supporting paragraphs."""
    out = []
    for i, row in enumerate(rows):
        question, answer, paragraphs, gold = hotpot_item(row, i)
        key = str(row.get("id", i))
        docs = [Document(text=text, id=f"{key}:{n}", metadata={"title": title})
                for n, (title, text) in enumerate(paragraphs)]
        out.append(QAItem(id=key, question=question, answer=answer, source=source,
                          gold=[d for d in docs if d.metadata["title"] in gold],
                          distractors=[d for d in docs if d.metadata["title"] not in gold]))
    return out


def musique_items(questions: Sequence[dict[str, Any]]) -> list[QAItem]:
    """QA items from MuSiQue questions: gold = the supporting paragraphs."""
    out = []
    for i, item in enumerate(questions):
        question, answer = item.get("question"), item.get("answer")
        if not isinstance(question, str) or not question.strip() or not isinstance(answer, str):
            raise DataRowError(i, "missing question or answer", "musique")
        key = str(item.get("id", i))
        gold, other = [], []
        for n, p in enumerate(item.get("paragraphs") or []):
            doc = Document(text=str(p.get("paragraph_text", "")), id=f"{key}:{n}",
                           metadata={"title": p.get("title", "")})
            (gold if p.get("is_supporting") else other).append(doc)
        out.append(QAItem(id=key, question=question.strip(), answer=answer.strip(),
                          aliases=list(item.get("answer_aliases") or []), gold=gold,
                          distractors=other, source="musique"))
    return out


def answer_correct(prediction: str, item: QAItem) -> bool:
    """The answer is right when it is not a refusal and holds a gold answer or alias
    (normalised: case, punctuation and articles ignored)."""
    from expertrag.evaluation.metrics import contains
    from expertrag.experts.grounded_qa import is_refusal

    return not is_refusal(prediction) and bool(contains(prediction, item.answers))


def squad_items(articles: Sequence[dict[str, Any]]) -> list[QAItem]:
    """QA items from SQuAD 2.0 answerable questions: gold = the question's paragraph,
    distractors = the other paragraphs of its article."""
    out = []
    for i, q in enumerate(squad_questions(articles)):
        qa = q["qa"]
        answers = [a.get("text", "").strip() for a in qa.get("answers") or []
                   if str(a.get("text", "")).strip()]
        if qa.get("is_impossible") or not answers:
            continue
        own = Document(text=q["context"], id=f"{q['article']}:{q['paragraph']}",
                       metadata={"title": q["title"]})
        others = [Document(text=t, id=f"{q['article']}:{n}", metadata={"title": q["title"]})
                  for n, t in siblings(articles, q)]
        out.append(QAItem(id=str(qa.get("id", i)), question=q["question"], answer=answers[0],
                          aliases=answers[1:], gold=[own], distractors=others,
                          source="squad2"))
    return out


def _passages(value: Any, line: int, key: str, item_id: str) -> list[Document]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise DataRowError(line, f"{key!r} must be a list of passages")
    out = []
    for n, p in enumerate(value):
        if isinstance(p, str):
            text, pid, meta = p, f"{item_id}:{key}{n}", {}
        elif isinstance(p, dict) and isinstance(p.get("text"), str):
            text, pid = p["text"], str(p.get("id", f"{item_id}:{key}{n}"))
            meta = {k: v for k, v in p.items() if k not in ("text", "id")}
        else:
            raise DataRowError(line, f"{key}[{n}] must be a string or an object with 'text'")
        if not text.strip():
            raise DataRowError(line, f"{key}[{n}] is empty")
        out.append(Document(text=text, id=pid, metadata=meta))
    return out


def load_eval_items(path: str | os.PathLike[str], fmt: str = "auto",
                    require_passages: bool = False) -> list[QAItem]:
    """Evaluation items from a file: expertrag's JSON lines (``{"question", "answer",
    "aliases"?, "gold": [passages], "distractors": [passages]}``, a passage being a string or
    ``{"text", "id"?}``; docs/evaluation.md), HotpotQA JSON lines, a MuSiQue question list or
    a SQuAD 2.0 file. ``fmt="auto"`` tells them apart from the content. Errors name the line.
    ``require_passages``: a JSON-lines row with neither gold nor distractor passages is an
    error (a pipeline given no passages would answer from nothing)."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "not found"
        raise DataNotFoundError(f"evaluation data file {path} {what}: pass a JSON-lines file "
                                "(see `expertrag eval --help` or docs/evaluation.md)")
    if fmt not in ("auto", "jsonl", "hotpotqa", "musique", "squad"):
        raise DataError(f"unknown format {fmt!r}: auto, jsonl, hotpotqa, musique or squad")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start}): an evaluation file "
                        "is JSON lines") from exc
    except OSError as exc:
        raise DataNotFoundError(f"cannot read {path}: {exc}") from exc
    stripped = text.lstrip()
    if fmt in ("auto", "musique", "squad") and stripped[:1] in ("[", "{") and \
            (fmt != "auto" or not _looks_like_jsonl(stripped)):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON: {exc}") from exc
        if isinstance(doc, dict) and isinstance(doc.get("data"), list):
            return squad_items(doc["data"])
        if isinstance(doc, list):
            return musique_items(doc)
        if fmt != "auto":
            raise DataError(f"{path}: a JSON document must be a SQuAD file or a MuSiQue list")
    rows = []  # JSON lines (one object alone is a one-line file)
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            rows.append((i + 1, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DataRowError(i + 1, f"not valid JSON: {exc}", str(path)) from exc
    if not rows:
        raise DataError(f"{path} holds no items")
    if fmt == "hotpotqa" or (fmt == "auto" and "supporting_facts" in rows[0][1]):
        return hotpot_items([r for _, r in rows])
    items = []
    for line, row in rows:
        if not isinstance(row, dict):
            raise DataRowError(line, "each line must be a JSON object", str(path))
        question, answer = row.get("question"), row.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise DataRowError(line, "missing or empty 'question'", str(path))
        if not isinstance(answer, str) or not answer.strip():
            raise DataRowError(line, "missing or empty 'answer'", str(path))
        key = str(row.get("id", line))
        aliases = row.get("aliases") or []
        if not isinstance(aliases, list):
            raise DataRowError(line, "'aliases' must be a list of strings", str(path))
        gold = _passages(row.get("gold", row.get("contexts")), line, "gold", key)
        distractors = _passages(row.get("distractors"), line, "distractors", key)
        if require_passages and not gold and not distractors:
            raise DataRowError(line, "no passages ('gold' or 'distractors'): add the "
                               "passages, or retrieve from your own collection (--db, "
                               "--collection), or score answers you have (--answers)",
                               str(path))
        items.append(QAItem(id=key, question=question.strip(), answer=answer.strip(),
                            aliases=[str(a) for a in aliases], gold=gold,
                            distractors=distractors, source=path.name))
    return items


def _looks_like_jsonl(text: str) -> bool:
    first = text.split("\n", 1)[0]
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return False
    return "\n" in text.strip()
