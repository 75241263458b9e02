"""What every chain shares: document sources behind one call, per-stage timing, call counts.

A *source* is anything that returns documents for a query: an expertrag retriever
(``VectorStore.query``, ``HybridRetriever.retrieve``, ``BM25Index.retrieve``), an object with
``search(query, k)``, or a plain callable ``fn(query, k)``. The framework skins turn LangChain
and LlamaIndex retrievers and tools into such callables, so the core never imports them.
Sources are called with a timeout on a daemon thread: a source that hangs costs at most the
timeout, never the chain.
"""

from __future__ import annotations

import inspect
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from expertrag.errors import ExpertRAGError, InputError
from expertrag.types import Document

Retrieve = Callable[[str, int], list[Document]]


class ChainError(ExpertRAGError, RuntimeError):
    """A stage of a chain failed (a retriever raised, a source returned junk); names it."""


class SourceTimeoutError(ChainError, TimeoutError):
    """A document source did not answer within its timeout."""


def check_question(question: Any, where: str = "question") -> str:
    if not isinstance(question, str):
        raise InputError(f"{where} must be a string, got {type(question).__name__}")
    if not question.strip():
        raise InputError(f"{where} is empty")
    return question.strip()


def check_questions(questions: Any) -> list[str]:
    """A batch of questions, each checked; one string is refused (``answer()`` takes one)."""
    if isinstance(questions, str):
        raise InputError("answer_many() takes a list of questions; use answer() for one")
    return [check_question(q, f"questions[{i}]") for i, q in enumerate(questions)]


def grounded_outcome(generated: Any, passages: list[Document]
                     ) -> tuple[str, list[Document], bool]:
    """(answer text, cited passages, refused) of a grounded answer; ``generated`` None means
    nothing was generated (no passages to ground on): the refusal, no citations."""
    from expertrag.experts.grounded_qa import (
        REFUSAL,
        is_refusal,
        select_citations,
        tidy_citations,
    )

    if generated is None:
        return REFUSAL, [], True
    text = tidy_citations(generated.text.strip())
    return text, select_citations(text, passages), is_refusal(text)


def generate_sorted(llm: Any, convs: list[Any], batch_size: int, **options: Any) -> list[Any]:
    """``llm.generate`` over ``convs`` in batches of at most ``batch_size`` rows, prompts of
    similar length together (less padding than batching in the callers' order); results in
    the order of ``convs``."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    order = sorted(range(len(convs)),
                   key=lambda i: sum(len(str(m.get("content") or "")) for m in convs[i]))
    out: list[Any] = [None] * len(convs)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        results = llm.generate([convs[i] for i in chunk], **options)
        for i, result in zip(chunk, results, strict=True):
            out[i] = result
    return out


def stream_answer(llm: Any, question: str, passages: list[Document], trace: Trace,
                  **options: Any) -> Iterator[str]:
    """The grounded answer's text pieces as ``llm`` streams them, timed and counted in
    ``trace``; the generator's return value is the final result (``yield from`` gives it)."""
    from expertrag.experts.grounded_qa import build_messages

    final = None
    with trace.stage("generate"):
        for chunk in llm.stream(build_messages(question, passages), **options):
            if chunk.text:
                yield chunk.text
            final = chunk.final or final
    trace.count("generator")
    if final is not None:
        trace.count("completion_tokens", final.completion_tokens)
    return final


def as_retrieve(source: Any, name: str = "retriever") -> Retrieve:
    """A ``fn(query, k) -> list[Document]`` for any supported source (see module doc)."""
    if source is None:
        raise InputError(f"{name} is None")
    for attr in ("retrieve", "query", "search"):
        method = getattr(source, attr, None)
        if callable(method) and not isinstance(source, type):
            return lambda q, k, _m=method: _m(q, k=k)
    if callable(source):
        try:
            takes_k = len(inspect.signature(source).parameters) >= 2
        except (TypeError, ValueError):  # builtins without a signature
            takes_k = True
        return (lambda q, k: source(q, k)) if takes_k else (lambda q, k: source(q)[:k])
    raise InputError(f"{name} must have retrieve/query/search(query, k) or be a callable "
                     f"fn(query, k); got {type(source).__name__}")


def _documents(value: Any, stage: str) -> list[Document]:
    if not isinstance(value, list | tuple):
        raise ChainError(f"{stage} returned {type(value).__name__}, not a list of documents")
    out = []
    for i, doc in enumerate(value):
        if isinstance(doc, str):
            doc = Document(text=doc)
        if not isinstance(doc, Document):
            raise ChainError(f"{stage} returned item {i} of type {type(doc).__name__}, not a "
                             "Document or string")
        if doc.text and doc.text.strip():
            out.append(doc)
    return out


def call_source(fn: Retrieve, query: str, k: int, stage: str,
                timeout: float | None = None) -> list[Document]:
    """``fn(query, k)`` as a list of Documents; a raise becomes :class:`ChainError` naming the
    stage, and with ``timeout`` the call runs on a daemon thread and raises
    :class:`SourceTimeoutError` when it takes longer (the thread is left to finish alone)."""
    if timeout is None:
        try:
            return _documents(fn(query, k), stage)
        except ChainError:
            raise
        except Exception as exc:
            raise ChainError(f"{stage} failed: {type(exc).__name__}: {exc}") from exc
    box: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()

    def run() -> None:
        try:
            box.put((True, fn(query, k)))
        except BaseException as exc:  # handed to the caller below
            box.put((False, exc))

    threading.Thread(target=run, name=f"expertrag-{stage}", daemon=True).start()
    try:
        ok, value = box.get(timeout=timeout)
    except queue.Empty:
        raise SourceTimeoutError(f"{stage} did not answer within {timeout:g} s") from None
    if not ok:
        raise ChainError(f"{stage} failed: {type(value).__name__}: {value}") from value
    return _documents(value, stage)


Listener = Callable[[str, dict[str, Any]], None]


@dataclass
class Trace:
    """Seconds per stage and model calls of one chain run (shared by a batch).

    ``listener(event, data)``, when set, hears ``"<stage>_start"`` / ``"<stage>_end"`` (with
    ``seconds``) for every stage and the chain's decisions (:meth:`emit`); the framework skins
    turn these into LangChain custom events and LlamaIndex instrumentation events."""

    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    listener: Listener | None = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.emit(f"{name}_start")
        started = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - started
            self.seconds[name] = self.seconds.get(name, 0.0) + took
            self.emit(f"{name}_end", seconds=took)

    def emit(self, event: str, **data: Any) -> None:
        if self.listener is not None:
            self.listener(event, data)

    def count(self, name: str, n: int = 1) -> None:
        self.calls[name] = self.calls.get(name, 0) + n

    @property
    def forward_calls(self) -> int:
        """Rows sent through the model: one per scored pair and one per generated answer."""
        return sum(v for k, v in self.calls.items() if not k.endswith("_tokens"))

    def share(self, n: int) -> Trace:
        """This trace split evenly over ``n`` questions of a batch."""
        n = max(1, n)
        return Trace({k: v / n for k, v in self.seconds.items()},
                     {k: round(v / n) for k, v in self.calls.items()})


_STOPWORDS = frozenset("""
a an the of in on at to for from by with about as into over after before under between
and or but nor so yet is are was were be been being am do does did has have had having
what which who whom whose when where why how that this these those there here it its
he she they them his her their we you i me my your our not no yes than then also only
same such both either neither each every any all some many much more most other another
can could may might must shall should will would name named called known first one
""".split())
_NAME_RE = re.compile(r"[\"“]([^\"”]{2,60})[\"”]|((?:[A-Z][\w'’.-]*|\d[\d,.]*)(?:\s+(?:of|the|de|"
                      r"von|van|and|&)?\s*(?:[A-Z][\w'’.-]*|\d[\d,.]*))*)")


_POSSESSIVE_RE = re.compile(r"['’]s?$")


def keywords(question: str, max_keywords: int = 3) -> str:
    """At most ``max_keywords`` search keywords for ``question``, without a model: quoted
    titles and capitalised names first (a sentence's first word only when it is not a
    question word), then the longest remaining content words. A keyword extractor for
    documents (YAKE and the like) ranks overlapping n-grams; a question needs its names."""
    question = check_question(question)
    found: list[str] = []
    covered: set[str] = set()
    for match in _NAME_RE.finditer(question):
        span = (match.group(1) or match.group(2) or "").strip(" .,'’")
        words = span.split()
        while words and words[0].lower() in _STOPWORDS:
            words = words[1:]
        span = _POSSESSIVE_RE.sub("", " ".join(words)).strip()
        if span and span.lower() not in _STOPWORDS and span not in found:
            found.append(span)
            covered.update(w.lower() for w in span.split())
    rest = [_POSSESSIVE_RE.sub("", w.strip("?.,!;:\"'()")) for w in question.split()]
    rest = [w for w in rest if w and w.lower() not in _STOPWORDS and w.lower() not in covered]
    rest = sorted(dict.fromkeys(rest), key=lambda w: -len(w))
    chosen = (found + rest)[:max_keywords]
    if not chosen:  # only stopwords: the question's own first words, still at most three
        chosen = [w.strip("?.,!;:") for w in question.split()][:max_keywords]
    return " ".join(chosen)
