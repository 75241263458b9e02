"""The shared data sets: where their files are and how they read, for training, evaluation and
the benchmarks alike.

The files live in the shared data folder (:func:`data_dir`: ``--data-dir``, else
``$EXPERTRAG_DATA_DIR``, else ``../shared/data``): HotpotQA (``train.jsonl`` for training,
``test.jsonl`` held out), SQuAD 2.0 dev samples, MuSiQue questions and corpus, HaluEval QA
(rows 500-999 held out for judges) and a BEIR MS MARCO subset. Each loader checks what it
reads: a missing file is a :class:`DataNotFoundError`, a broken row a :class:`DataRowError`
naming its index; nothing is silently skipped. The row builders of
:mod:`expertrag.training.data` and the question sets of :mod:`expertrag.evaluation` read
through here.

This module is on the ground floor: it imports only ``errors`` and ``types``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expertrag.errors import ExpertRAGError
from expertrag.types import Document

#: The only HotpotQA file builders may read; ``test.jsonl`` is the held-out benchmark set.
HOTPOT_TRAIN = "hotpotqa/train.jsonl"
SQUAD_SAMPLE = "squad2/dev-v2.0-sample.json"
SQUAD_ARTICLES = "squad2/dev-v2.0-15-articles.json"
HALUEVAL_QA = "halueval/qa_data-first1000.jsonl"
HALUEVAL_ONE_TURN = "halueval/qa_generation_one-turn_500.jsonl"
HALUEVAL_MULTI_TURN = "halueval/qa_generation_multi-turn_500.jsonl"
#: Rows of ``qa_data-first1000.jsonl`` kept out of training: they evaluate judges.
HALUEVAL_HELDOUT = range(500, 1000)
MSMARCO_DIR = "beir/msmarco"
DATA_DIR_ENV = "EXPERTRAG_DATA_DIR"
DEFAULT_DATA_DIR = "../shared/data"
_HELD_OUT_NAMES = ("test.jsonl",)
HOTPOT_TEST = "hotpotqa/test.jsonl"
MUSIQUE_QUESTIONS = "musique/questions.json"
MUSIQUE_CORPUS = "musique/corpus.json"

Row = dict[str, Any]


class DataError(ExpertRAGError, ValueError):
    """Training data is missing, held out, or malformed."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The shared data folder or one of its files is missing."""


class DataRowError(DataError):
    """One input row is broken (missing answer, empty passages...); ``index`` names it."""

    def __init__(self, index: int, reason: str, source: str = "") -> None:
        self.index = index
        self.reason = reason
        self.source = source
        where = f"{source} row {index}" if source else f"row {index}"
        super().__init__(f"{where}: {reason}")


def data_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The shared data folder: ``path``, else $EXPERTRAG_DATA_DIR, else ``../shared/data``.
    Raises DataNotFoundError with a hint when it is missing."""
    folder = Path(path or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()
    if not folder.is_dir():
        raise DataNotFoundError(
            f"training data folder not found: {folder} (resolved from {Path.cwd()}). "
            f"Pass --data-dir (or set ${DATA_DIR_ENV}) to the folder that holds "
            "hotpotqa/train.jsonl, squad2/ and beir/msmarco/ (../shared/data from the project "
            "root)."
        )
    return folder


def need_file(path: Path) -> Path:
    """``path`` when it is a file, else a DataNotFoundError naming it."""
    if not path.is_file():
        raise DataNotFoundError(f"training data file not found: {path}")
    return path


def load_hotpot(path: str | os.PathLike[str]) -> list[Row]:
    """Rows of a HotpotQA JSON-lines file. Refuses the held-out ``test.jsonl``."""
    path = Path(path)
    if path.name in _HELD_OUT_NAMES:
        raise DataError(
            f"refusing to train on {path}: HotpotQA {path.name} is the held-out benchmark set; "
            f"use {HOTPOT_TRAIN}"
        )
    return read_jsonl(path)


def load_squad(path: str | os.PathLike[str]) -> list[Row]:
    """The ``data`` list (articles) of a SQuAD 2.0 JSON file."""
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"{path} is not SQuAD format (no 'data' list)")
    return doc["data"]


@dataclass
class MsMarco:
    """A BEIR-format MS MARCO subset: corpus {id: text}, queries {id: text}, graded qrels."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: list[tuple[str, str, int]] = field(default_factory=list)


def read_jsonl(path: Path) -> list[Row]:
    """The JSON objects of a JSON-lines file (blank lines skipped); a bad line is a
    DataRowError naming its number."""
    out = []
    with need_file(path).open(encoding="utf-8") as handle:
        for i, line in enumerate(handle):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataRowError(i, f"not valid JSON: {exc}", str(path)) from exc
    return out


def msmarco_part(query_id: str) -> str:
    """"train" or "heldout" for an MS MARCO query, fixed by a hash of its id: the relevance
    expert trains on one half and the reranking benchmark scores it on the other."""
    digest = hashlib.sha256(str(query_id).encode("utf-8")).digest()
    return "train" if digest[0] % 2 == 0 else "heldout"


def load_msmarco(folder: str | os.PathLike[str], split: str = "test",
                 part: str | None = None) -> MsMarco:
    """Load a BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv (no header).
    `part` ("train" / "heldout") keeps only that half of the judged queries
    (see :func:`msmarco_part`)."""
    if part not in (None, "train", "heldout"):
        raise DataError(f"part must be 'train', 'heldout' or None, got {part!r}")
    folder = Path(folder)
    corpus = {}
    for r in read_jsonl(folder / "corpus.jsonl"):
        title, text = (r.get("title") or "").strip(), (r.get("text") or "").strip()
        corpus[str(r["_id"])] = f"{title}\n{text}" if title else text
    queries = {str(r["_id"]): r["text"] for r in read_jsonl(folder / "queries.jsonl")}
    qrels = []
    path = need_file(folder / "qrels" / f"{split}.tsv")
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        parts = line.split("\t")
        if not line.strip() or parts[0] == "query-id":  # tolerate a header line
            continue
        if len(parts) != 3:
            raise DataRowError(i, f"expected 3 tab-separated fields, got {len(parts)}", str(path))
        if part is None or msmarco_part(parts[0]) == part:
            qrels.append((parts[0], parts[1], int(parts[2])))
    return MsMarco(corpus, queries, qrels)


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON value of a file; a missing file or bad JSON is a DataError naming it."""
    path = need_file(Path(path))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from exc


def load_hotpot_test(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """HotpotQA ``test.jsonl``: evaluation only (the training loaders refuse this file)."""
    return read_jsonl(Path(path))


def load_musique(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The question list of a MuSiQue JSON file (``musique/questions.json``)."""
    doc = read_json(path)
    if not isinstance(doc, list):
        raise DataError(f"{path} is not a MuSiQue question list")
    return doc


def load_musique_corpus(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The paragraph list of ``musique/corpus.json`` (``title``, ``text`` and more)."""
    doc = read_json(path)
    if not isinstance(doc, list):
        raise DataError(f"{path} is not a MuSiQue corpus (a list of paragraphs)")
    return doc


def load_halueval(path: str | os.PathLike[str], part: str = "train") -> list[Row]:
    """Rows of a HaluEval QA JSON-lines file, each with ``meta_index`` (its row number).

    For ``qa_data-first1000.jsonl``, ``part="train"`` keeps rows 0-499 and refuses nothing
    else; rows 500-999 (:data:`HALUEVAL_HELDOUT`) evaluate judges and come only with
    ``part="heldout"``. The two 500-row generation files hold the same questions as rows
    0-499, so all their rows are training rows (``part="heldout"`` is refused for them)."""
    if part not in ("train", "heldout"):
        raise DataError(f"part must be 'train' or 'heldout', got {part!r}")
    path = Path(path)
    reserved = path.name == Path(HALUEVAL_QA).name
    if part == "heldout" and not reserved:
        raise DataError(f"{path.name} has no held-out rows (its questions are train rows "
                        f"0-499 of {Path(HALUEVAL_QA).name})")
    out = []
    for i, row in enumerate(read_jsonl(path)):
        for key in ("knowledge", "question", "right_answer", "hallucinated_answer"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise DataRowError(i, f"missing or empty {key!r}", str(path))
        held = reserved and i in HALUEVAL_HELDOUT
        if held == (part == "heldout"):
            out.append({**row, "meta_index": i})
    return out


def hotpot_item(row: Any, index: int) -> tuple[str, str, list[tuple[str, str]], set[str]]:
    """(question, answer, [(title, paragraph)], gold titles) of one HotpotQA row, validated."""
    src = "hotpotqa"
    if not isinstance(row, dict):
        raise DataRowError(index, f"expected an object, got {type(row).__name__}", src)
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DataRowError(index, "missing or empty 'question'", src)
    answer = row.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        raise DataRowError(index, "missing or empty 'answer'", src)
    context = row.get("context") or {}
    titles, sentences = context.get("title") or [], context.get("sentences") or []
    if not titles or len(titles) != len(sentences):
        raise DataRowError(index, "empty passages ('context' has no titles/sentences)", src)
    paragraphs = []
    for title, sents in zip(titles, sentences, strict=True):
        text = "".join(sents).strip() if isinstance(sents, list) else ""
        if not text:
            raise DataRowError(index, f"empty passage {title!r}", src)
        paragraphs.append((title, text))
    gold = set((row.get("supporting_facts") or {}).get("title") or [])
    if not gold:
        raise DataRowError(index, "no supporting_facts titles (no oracle passage)", src)
    missing = gold - set(titles)
    if missing:
        raise DataRowError(index, f"supporting titles not in context: {sorted(missing)}", src)
    return question.strip(), answer.strip(), paragraphs, gold


def squad_questions(articles: Sequence[Row]) -> list[dict[str, Any]]:
    """Flatten SQuAD articles to questions with their paragraph and its article siblings.
    A question or paragraph that is missing or empty raises :class:`DataRowError` with the
    question's index in file order."""
    out = []
    for a, article in enumerate(articles):
        paragraphs = article.get("paragraphs") or []
        for p, para in enumerate(paragraphs):
            for qa in para.get("qas") or []:
                i = len(out)
                question = qa.get("question") if isinstance(qa, dict) else None
                if not isinstance(question, str) or not question.strip():
                    raise DataRowError(i, "missing or empty 'question'", "squad2")
                context = para.get("context")
                if not isinstance(context, str) or not context.strip():
                    raise DataRowError(i, "empty passage (paragraph 'context')", "squad2")
                out.append({"article": a, "paragraph": p, "qa": qa, "question": question.strip(),
                            "context": context.strip(), "title": article.get("title", "")})
    return out


def siblings(articles: Sequence[Row], q: dict[str, Any]) -> list[tuple[int, str]]:
    """(number, text) of the other non-empty paragraphs of question ``q``'s article."""
    paragraphs = articles[q["article"]].get("paragraphs") or []
    return [(n, str(para.get("context", "")).strip()) for n, para in enumerate(paragraphs)
            if n != q["paragraph"] and str(para.get("context", "")).strip()]


def item_rng(seed: int, *keys: Any) -> random.Random:
    """A generator for one item: independent of the other items and of PYTHONHASHSEED."""
    return random.Random("-".join(str(k) for k in (seed, *keys)))


def paragraph_documents(paragraphs: Sequence[tuple[str, str]]) -> list[Document]:
    """``(title, text)`` paragraphs as Documents (id and ``metadata["title"]``: the title)."""
    return [Document(text=text, id=title, metadata={"title": title}) for title, text in paragraphs]
