"""Run pipelines over evaluation cases, judge their answers, cache every scored item.

A *pipeline* is built by a factory ``factory(llm, retriever) -> system`` where ``system``
has ``answer_many(questions)`` (:class:`~expertrag.chains.naive.RAGPipeline`, the CRAG and Self-RAG
chains, the GraphRAG answerer, or your own). :data:`PIPELINES` names the built-in ones.
Each case fixes the passages its question retrieves
(:class:`~expertrag.evaluation.robustness.Case`), so every pipeline sees the same evidence.

The per-item cache (:class:`ResultCache`) writes one JSON file per (pipeline, case) with a
temporary file and a rename, so a killed run loses nothing already scored and resumes where
it stopped. A pipeline that raises on one item has the error recorded for that item; the
run goes on.

Two more sources of answers: ``run_cases(..., retriever=store)`` lets every pipeline
retrieve from a real store (the user's own collection) instead of the case's fixed passages,
and :func:`score_answers` scores answers produced elsewhere (no pipeline runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from expertrag.errors import InputError
from expertrag.evaluation.datasets import answer_correct
from expertrag.evaluation.metrics import contains, exact_match, token_f1
from expertrag.evaluation.robustness import Case
from expertrag.experts import GROUNDED_QA
from expertrag.experts.grounded_qa import is_refusal, strip_citations
from expertrag.types import Document

Factory = Callable[[Any, Any], Any]


def _naive(llm: Any, retriever: Any, k: int = 5) -> Any:
    from expertrag.chains.naive import RAGPipeline

    return RAGPipeline(llm, retriever, k=k, expert=GROUNDED_QA, max_new_tokens=64)


def _crag(llm: Any, retriever: Any, k: int = 5) -> Any:
    from expertrag.chains.corrective import CorrectiveRAG, CRAGConfig

    return CorrectiveRAG(llm, retriever, config=CRAGConfig(k=k))


def _self_rag(llm: Any, retriever: Any, k: int = 5) -> Any:
    from expertrag.chains.self_reflective import SelfRAG, SelfRAGConfig

    return SelfRAG(llm, retriever, config=SelfRAGConfig(k=k))


def _graph(llm: Any, retriever: Any, k: int = 5) -> Any:
    from expertrag.graph.pipeline import evaluation_factory

    return evaluation_factory(llm, retriever, k=k)


#: Built-in pipelines by name (``expertrag eval --pipelines naive,crag,self-rag,graph``).
PIPELINES: dict[str, Factory] = {"naive": _naive, "crag": _crag, "self-rag": _self_rag,
                                 "graph": _graph}


def register_pipeline(name: str, factory: Factory) -> None:
    """Make ``factory(llm, retriever)`` available under ``name`` (e.g. a GraphRAG answerer)."""
    if not name or not callable(factory):
        raise InputError("register_pipeline needs a name and a factory(llm, retriever)")
    PIPELINES[name] = factory


@dataclass
class CaseResult:
    """One pipeline's answer to one case, with its scores."""

    pipeline: str
    key: str
    condition: str
    question: str
    answer: str = ""
    contexts: list[str] = field(default_factory=list)
    refused: bool = False
    correct: bool = False
    scores: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class ResultCache:
    """One JSON file per (pipeline, case key) under ``folder``, written atomically."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, pipeline: str, key: str) -> Path:
        digest = hashlib.sha256(f"{pipeline}\0{key}".encode()).hexdigest()[:24]
        return self.folder / f"{pipeline.replace('/', '_')}-{digest}.json"

    def get(self, pipeline: str, key: str) -> CaseResult | None:
        path = self._path(pipeline, key)
        if not path.is_file():
            return None
        try:
            return CaseResult(**json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError):
            return None  # an unreadable entry is scored again

    def put(self, result: CaseResult) -> None:
        path = self._path(result.pipeline, result.key)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=self.folder)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(asdict(result), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report folder is for reading
        os.replace(tmp, path)


class CaseRetriever:
    """Hands every question of one round exactly the passages its case fixes."""

    def __init__(self, cases: Sequence[Case]) -> None:
        self.by_question = {c.question.strip(): c for c in cases}

    def retrieve(self, query: str, k: int = 5) -> list[Document]:
        case = self.by_question.get(query.strip())
        if case is None:  # an external or rewritten query: nothing internal matches it
            return []
        return list(case.passages)[:k]

    def query(self, text: str, k: int = 5) -> list[Document]:
        return self.retrieve(text, k)


def _rounds(cases: Sequence[Case]) -> list[list[Case]]:
    """Cases split so that each round holds a question once (the retriever routes by it)."""
    rounds: list[list[Case]] = []
    seen: list[set[str]] = []
    for case in cases:
        q = case.question.strip()
        for r, qs in zip(rounds, seen, strict=True):
            if q not in qs:
                r.append(case)
                qs.add(q)
                break
        else:
            rounds.append([case])
            seen.append({q})
    return rounds


def _answer_text(result: Any) -> str:
    return str(getattr(result, "answer", None) or getattr(result, "text", "") or "")


def _used_contexts(result: Any, case: Case) -> list[str]:
    """The passages the answer was generated from (CRAG: its refined context)."""
    context = getattr(result, "context", None)
    if context is not None and hasattr(context, "passages"):
        return [d.text for d in context.passages]
    candidates = getattr(result, "candidates", None)
    if candidates:
        best = candidates[getattr(result, "best", 0)]
        return [d.text for d in best.passages]
    passages = getattr(result, "passages", None)
    if passages:
        return [d.text for d in passages]
    return [d.text for d in case.passages]


def _score(case: Case, pipeline: str, result: Any, seconds: float) -> CaseResult:
    text = _answer_text(result)
    refused = is_refusal(text)
    item = case.item
    plain = strip_citations(text)
    scores = {"exact_match": exact_match(plain, item.answers),
              "f1": token_f1(plain, item.answers), "contains": contains(plain, item.answers)}
    meta: dict[str, Any] = {"answerable": case.answerable}
    if case.counterfactual:
        meta["follows_counterfactual"] = bool(contains(text, case.counterfactual))
    for attr in ("action", "retrieved"):
        if hasattr(result, attr):
            meta[attr] = getattr(result, attr)
    return CaseResult(pipeline=pipeline, key=case.key, condition=case.condition,
                      question=case.question, answer=text,
                      contexts=_used_contexts(result, case), refused=refused,
                      correct=answer_correct(text, item) if case.answerable else refused,
                      scores=scores, seconds=seconds, meta=meta)


def run_cases(cases: Sequence[Case], pipelines: dict[str, Factory], llm: Any,
              cache: ResultCache | None = None, judges: Sequence[Any] = (), batch: int = 8,
              progress: bool = True, retriever: Any = None) -> list[CaseResult]:
    """Every pipeline on every case (batched ``batch`` questions at a time), judged by
    ``judges`` (expertrag judges: ``judge(items) -> [JudgeResult]``); cached items are not
    run again. ``retriever`` (a store with ``query(text, k)``): every pipeline retrieves
    from it instead of the case's fixed passages. Without one, a case with no passages is
    refused: a pipeline would answer from nothing."""
    from tqdm.auto import tqdm

    if not cases:
        raise InputError("no evaluation cases")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise InputError(f"batch must be a positive integer, got {batch!r}")
    if retriever is None:
        empty = [c.key for c in cases if not c.passages]
        if empty:
            raise InputError(
                f"{len(empty)} cases have no passages (first: {', '.join(empty[:3])}): give "
                "each item gold or distractor passages, or retrieve from a store "
                "(retriever=..., `expertrag eval --db`)")
    results: dict[tuple[str, str], CaseResult] = {}
    todo = []
    for name in pipelines:
        for case in cases:
            hit = cache.get(name, case.key) if cache else None
            if hit is not None:
                results[(name, case.key)] = hit
            else:
                todo.append((name, case))
    bar = tqdm(total=len(todo), disable=not progress, desc="evaluate", unit="item")
    for name, factory in pipelines.items():
        mine = [c for n, c in todo if n == name]
        for round_cases in _rounds(mine):
            system = factory(llm, retriever if retriever is not None
                             else CaseRetriever(round_cases))
            for s in range(0, len(round_cases), batch):
                chunk = round_cases[s:s + batch]
                scored = _run_chunk(system, name, chunk)
                _judge(scored, judges)
                for r in scored:
                    results[(name, r.key)] = r
                    if cache:
                        cache.put(r)
                bar.update(len(chunk))
    bar.close()
    return [results[(name, c.key)] for name in pipelines for c in cases]


def _run_chunk(system: Any, name: str, chunk: list[Case]) -> list[CaseResult]:
    started = time.perf_counter()
    try:
        answers = system.answer_many([c.question for c in chunk])
        each = (time.perf_counter() - started) / len(chunk)
        return [_score(c, name, a, each) for c, a in zip(chunk, answers, strict=True)]
    except Exception:  # find the failing item(s): one at a time, errors recorded
        out = []
        for case in chunk:
            started = time.perf_counter()
            try:
                (answer,) = system.answer_many([case.question])
                out.append(_score(case, name, answer, time.perf_counter() - started))
            except Exception as exc:
                out.append(CaseResult(pipeline=name, key=case.key, condition=case.condition,
                                      question=case.question,
                                      error=f"{type(exc).__name__}: {exc}",
                                      meta={"answerable": case.answerable}))
        return out


@dataclass
class GivenAnswer:
    """An answer produced elsewhere, with the passages it was given (may be none)."""

    answer: str
    passages: list[Document] = field(default_factory=list)


def score_answers(cases: Sequence[Case], answers: Sequence[GivenAnswer],
                  name: str = "answers", judges: Sequence[Any] = ()) -> list[CaseResult]:
    """Score answers produced outside expertrag, one per case (same order): correctness
    against the case's gold answer, and ``judges`` on the answer and its passages."""
    if len(cases) != len(answers):
        raise InputError(f"{len(answers)} answers for {len(cases)} cases: give one per case")
    if not cases:
        raise InputError("no answers to score")
    results = [_score(c, name, a, 0.0) for c, a in zip(cases, answers, strict=True)]
    _judge(results, judges)
    return results


def _judge(results: list[CaseResult], judges: Sequence[Any]) -> None:
    from expertrag.evaluation.judges import EvalItem

    live = [r for r in results if r.error is None]
    if not live:
        return
    items = [EvalItem(r.question, r.answer, list(r.contexts)) for r in live]
    for judge in judges:
        for r, verdict in zip(live, judge(items), strict=True):
            r.scores[judge.name] = float(verdict.score)
