"""The held-out answer sets: four question sets, each split once into calibration and test.

Every system the answer benchmark compares (``benchmarks/bench_answers.py``) sees the same
questions and, where it does not retrieve for itself, the same top-``k`` passages from the
project's hybrid retriever (BM25 + all-MiniLM-L6-v2, RRF):

- ``squad2``: the 2-article SQuAD 2.0 sample (Normans, Rhine; no grounded-qa version trained on
  either article), answerable and unanswerable questions, retrieved from the pool of the two
  articles' 83 paragraphs. Split by paragraph, so a paragraph's questions stay together.
- ``hotpotqa-distractor``: HotpotQA test, each question over its own 10 paragraphs; in half of
  the items (by id) the gold paragraphs are removed, so the answer is not there.
- ``hotpotqa-open``: the same questions over one corpus pooling every test paragraph.
- ``musique-open``: MuSiQue (2-4 hops) over its open corpus of 1,890 passages.

Thresholds, prompts and gates are chosen on ``calibration``; figures are reported on
``test``. The splits are rules in this module (HotpotQA items 300-499, the slices earlier
tuning looked at, are calibration; SQuAD paragraphs and MuSiQue questions by a hash of their
id), and ``data/answer_sets.json`` records each source file's SHA-256 and each split's ids, so
:func:`check_manifest` refuses a run on changed data instead of measuring other questions.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expertrag.embeddings.memo import MemoEmbedder
from expertrag.errors import ExpertRAGError, InputError
from expertrag.evaluation.metrics import holds_answer, is_yes_no
from expertrag.types import Document

SETS = ("squad2", "hotpotqa-distractor", "hotpotqa-open", "musique-open")
SPLITS = ("calibration", "test")
MANIFEST = Path(__file__).resolve().parents[1] / "data" / "answer_sets.json"

SQUAD_FILE = "squad2/dev-v2.0-sample.json"
HOTPOT_FILE = "hotpotqa/test.jsonl"
MUSIQUE_FILE = "musique/questions.json"
MUSIQUE_CORPUS = "musique/corpus.json"
#: HotpotQA test items earlier work tuned on (CRAG thresholds, gates, refinement): calibration
HOTPOT_CALIBRATION = range(300, 500)
SQUAD_CALIBRATION_SHARE = 40  # percent of paragraphs
MUSIQUE_CALIBRATION_SHARE = 30  # percent of questions
HOTPOT_REMOVED_SHARE = 50  # percent of distractor-setting items without their gold paragraphs


class ManifestError(ExpertRAGError, ValueError):
    """The data on disk is not the data the manifest's splits were fixed on."""


@dataclass
class AnswerCase:
    """One question with what every system is scored against."""

    id: str
    question: str
    #: gold answer and aliases; empty when the source holds no answer (SQuAD unanswerable,
    #: HotpotQA items whose gold paragraphs were removed)
    answers: list[str]
    #: the question's supporting paragraphs (for the answer-presence test on yes/no answers)
    gold: list[Document] = field(default_factory=list)

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


@dataclass
class AnswerSet:
    """The cases of one set and split, and the retriever every system searches with."""

    name: str
    split: str
    cases: list[AnswerCase]
    retriever: Any  # retrieve(question, k) -> list[Document]
    k: int = 5
    _passages: list[list[Document]] | None = field(default=None, repr=False)

    def passages(self) -> list[list[Document]]:
        """The top-``k`` passages of each case, retrieved once."""
        if self._passages is None:
            self._passages = [self.retriever.retrieve(c.question, self.k) for c in self.cases]
        return self._passages

    def present(self) -> list[bool]:
        """Per case, whether its passages hold a gold answer (see :func:`answer_present`)."""
        return [answer_present(c, p) for c, p in zip(self.cases, self.passages(), strict=True)]


def answer_present(case: AnswerCase, passages: Sequence[Document]) -> bool:
    """Whether ``passages`` hold an answer to ``case``: a gold answer occurs as whole words in
    them; for yes/no answers, which no passage spells out, every gold paragraph is there."""
    if not case.answerable:
        return False
    if is_yes_no(case.answers):
        texts = {p.text.strip() for p in passages}
        return bool(case.gold) and all(g.text.strip() in texts for g in case.gold)
    return holds_answer(" ".join(p.text for p in passages), case.answers)


class PerQuestionRetriever:
    """One retriever per question (each distractor-setting item searches its own paragraphs)
    behind the single ``retrieve(query, k)`` a chain calls."""

    def __init__(self, retrievers: dict[str, Any]) -> None:
        self.retrievers = retrievers

    def retrieve(self, query: str, k: int = 5) -> list[Document]:
        key = query.strip()
        if key not in self.retrievers:
            raise InputError(f"no retriever for the query {key[:80]!r}: each question of this "
                             "set searches its own paragraphs, so only its text is a query")
        return self.retrievers[key].retrieve(key, k)

    def query(self, text: str, k: int = 5) -> list[Document]:  # a store's interface
        return self.retrieve(text, k)


# ------------------------------------------------------------------------------ split rules
def bucket(key: str) -> int:
    """A stable 0..99 bucket for ``key`` (SHA-256, not Python's salted hash)."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % 100


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _need(folder: Path, rel: str) -> Path:
    path = folder / rel
    if not path.is_file():
        raise InputError(f"{path} not found: pass the shared data folder (--data-dir), which "
                         f"holds {rel}")
    return path


def _squad_questions(folder: Path) -> tuple[list[dict[str, Any]],
                                             list[tuple[str, dict[str, Any]]]]:
    """The SQuAD sample's articles and (split, question record) of each of its questions; a
    question's split follows its paragraph."""
    from expertrag.datasets import load_squad
    from expertrag.datasets import squad_questions as _squad_questions

    articles = load_squad(_need(folder, SQUAD_FILE))
    out = []
    for q in _squad_questions(articles):
        key = f"squad2:{q['title']}:{q['paragraph']}"
        out.append(("calibration" if bucket(key) < SQUAD_CALIBRATION_SHARE else "test", q))
    return articles, out


def _hotpot_rows(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    from expertrag.evaluation.datasets import load_hotpot_test

    rows = load_hotpot_test(_need(folder, HOTPOT_FILE))
    return [("calibration" if i in HOTPOT_CALIBRATION else "test", row)
            for i, row in enumerate(rows)]


def _musique_rows(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    from expertrag.evaluation.datasets import load_musique

    rows = load_musique(_need(folder, MUSIQUE_FILE))
    return [("calibration" if bucket(f"musique:{r.get('id', i)}") < MUSIQUE_CALIBRATION_SHARE
             else "test", r) for i, r in enumerate(rows)]


def split_ids(data_dir: str | os.PathLike[str]) -> dict[str, dict[str, list[str]]]:
    """Each set's ids per split, by the rules above (the manifest's content)."""
    folder = Path(data_dir)
    _, squad = _squad_questions(folder)
    hotpot = _hotpot_rows(folder)
    musique = _musique_rows(folder)
    ids: dict[str, dict[str, list[str]]] = {}
    ids["squad2"] = {s: [str(q["qa"].get("id")) for split, q in squad if split == s]
                     for s in SPLITS}
    for name in ("hotpotqa-distractor", "hotpotqa-open"):
        ids[name] = {s: [str(r.get("id")) for split, r in hotpot if split == s] for s in SPLITS}
    ids["musique-open"] = {s: [str(r.get("id", i)) for i, (split, r) in enumerate(musique)
                               if split == s] for s in SPLITS}
    return ids


def _sources(data_dir: Path) -> dict[str, str]:
    return {rel: file_sha256(_need(data_dir, rel))
            for rel in (SQUAD_FILE, HOTPOT_FILE, MUSIQUE_FILE, MUSIQUE_CORPUS)}


def build_manifest(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of the splits on ``data_dir``: source hashes and ids per set and split."""
    folder = Path(data_dir)
    return {"format": 1, "sources": _sources(folder), "sets": split_ids(folder)}


def write_manifest(data_dir: str | os.PathLike[str],
                   path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Fix the splits: write :func:`build_manifest` to ``path`` (default :data:`MANIFEST`)
    atomically."""
    manifest = build_manifest(data_dir)
    path = Path(path if path is not None else MANIFEST)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return manifest


def check_manifest(data_dir: str | os.PathLike[str],
                   path: str | os.PathLike[str] | None = None) -> None:
    """Raise :class:`ManifestError` unless ``data_dir`` holds the files the manifest (default
    :data:`MANIFEST`) was built on and the split rules give its ids."""
    path = Path(path if path is not None else MANIFEST)
    if not path.is_file():
        raise ManifestError(f"no answer-set manifest at {path}")
    expected = json.loads(path.read_text(encoding="utf-8"))
    folder = Path(data_dir)
    for rel, digest in expected["sources"].items():
        found = file_sha256(_need(folder, rel))
        if found != digest:
            raise ManifestError(f"{folder / rel} has SHA-256 {found[:12]}..., the manifest "
                                f"{digest[:12]}...: the answer sets would hold other questions")
    if split_ids(folder) != expected["sets"]:
        raise ManifestError("the split rules give other ids than the manifest: the rules in "
                            "expertrag.evaluation.answer_sets changed since it was written")


# ------------------------------------------------------------------------------ loaders
def _doc(text: str, doc_id: str, title: str) -> Document:
    return Document(text=text, id=doc_id, metadata={"title": title})


def _squad(folder: Path, split: str, embedder: Any, k: int) -> AnswerSet:
    from expertrag.retrieval.hybrid import HybridRetriever

    articles, questions = _squad_questions(folder)
    pool = [_doc(str(p.get("context", "")).strip(), f"{a}:{n}", art.get("title", ""))
            for a, art in enumerate(articles) for n, p in enumerate(art.get("paragraphs") or [])
            if str(p.get("context", "")).strip()]
    by_id = {d.id: d for d in pool}
    cases = []
    for s, q in questions:
        if s != split:
            continue
        qa = q["qa"]
        answers = [] if qa.get("is_impossible") else list(dict.fromkeys(
            str(a.get("text", "")).strip() for a in qa.get("answers") or []
            if str(a.get("text", "")).strip()))
        gold = [by_id[f"{q['article']}:{q['paragraph']}"]]
        cases.append(AnswerCase(id=str(qa.get("id")), question=q["question"], answers=answers,
                                gold=gold))
    return AnswerSet("squad2", split, cases, HybridRetriever(pool, embedder=embedder, k=k), k)


def _hotpot(folder: Path, split: str, embedder: Any, k: int, open_corpus: bool) -> AnswerSet:
    from expertrag.evaluation.datasets import hotpot_items
    from expertrag.retrieval.hybrid import HybridRetriever

    rows = _hotpot_rows(folder)
    items = hotpot_items([r for _, r in rows])
    chosen = [it for (s, _), it in zip(rows, items, strict=True) if s == split]
    if open_corpus:
        pool = list({(d.metadata["title"], d.text.strip()): d
                     for it in items for d in it.gold + it.distractors}.values())
        retriever: Any = HybridRetriever(pool, embedder=embedder, k=k)
        cases = [AnswerCase(it.id, it.question, it.answers, it.gold) for it in chosen]
        return AnswerSet("hotpotqa-open", split, cases, retriever, k)
    if isinstance(embedder, MemoEmbedder):  # one batched pass, not one per question
        embedder.embed_documents([d.text for it in chosen for d in it.gold + it.distractors])
    cases, retrievers = [], {}
    for it in chosen:
        removed = bucket(f"hotpotqa-removed:{it.id}") < HOTPOT_REMOVED_SHARE
        docs = it.distractors + ([] if removed else it.gold)
        if it.question in retrievers:
            raise InputError(f"HotpotQA question {it.question!r} appears twice")
        retrievers[it.question] = HybridRetriever(docs, embedder=embedder, k=k)
        cases.append(AnswerCase(it.id, it.question, [] if removed else it.answers, it.gold))
    return AnswerSet("hotpotqa-distractor", split, cases, PerQuestionRetriever(retrievers), k)


def _musique(folder: Path, split: str, embedder: Any, k: int) -> AnswerSet:
    from expertrag.evaluation.datasets import musique_items
    from expertrag.retrieval.hybrid import HybridRetriever

    rows = _musique_rows(folder)
    items = musique_items([r for _, r in rows])
    corpus = json.loads(_need(folder, MUSIQUE_CORPUS).read_text(encoding="utf-8"))
    pool = [_doc(str(c["text"]), f"m{i}", str(c.get("title", ""))) for i, c in enumerate(corpus)]
    cases = [AnswerCase(it.id, it.question, it.answers, it.gold)
             for (s, _), it in zip(rows, items, strict=True) if s == split]
    return AnswerSet("musique-open", split, cases, HybridRetriever(pool, embedder=embedder, k=k),
                     k)


_LOADERS: dict[str, Callable[[Path, str, Any, int], AnswerSet]] = {
    "squad2": _squad,
    "hotpotqa-distractor": lambda f, s, e, k: _hotpot(f, s, e, k, open_corpus=False),
    "hotpotqa-open": lambda f, s, e, k: _hotpot(f, s, e, k, open_corpus=True),
    "musique-open": _musique,
}


def load_answer_set(name: str, split: str, data_dir: str | os.PathLike[str], *,
                    embedder: Any = None, k: int = 5, check: bool = True) -> AnswerSet:
    """One set and split over ``data_dir`` (the shared data folder); ``check`` verifies the
    manifest first. Pass one :class:`MemoEmbedder` to several loads to embed each passage
    once."""
    if name not in _LOADERS:
        raise InputError(f"unknown answer set {name!r}; sets: {', '.join(SETS)}")
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    if check:
        check_manifest(data_dir)
    if embedder is None:
        from expertrag.embeddings import Embedder

        embedder = MemoEmbedder(Embedder())
    return _LOADERS[name](Path(data_dir), split, embedder, k)

