"""Answering from the knowledge graph: :class:`GraphRetrieverAdapter` makes a
:class:`~expertrag.graph.GraphRAG` search look like any other retriever, so the grounded
pipeline and the chains (CRAG, Self-RAG) answer from graph-ranked passages, with citations.
:func:`open_graph` is what both framework skins' graph retrievers build on."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import Any

from expertrag.errors import InputError
from expertrag.experts import GROUNDED_QA
from expertrag.graph.config import DEFAULT_MODE, MODES
from expertrag.types import Document


def open_graph(graph: Any = None, documents: Sequence[Document | str] | None = None,
               path: str | None = None, embedder: Any = None, config: Any = None
               ) -> tuple[Any, Any]:
    """The graph a retriever searches, and the search settings it passes to each search.

    A given ``graph`` is used as it is; ``config`` then gives its retriever's own search
    settings (a :class:`~expertrag.graph.config.GraphQueryConfig`, a dict of settings, or a
    :class:`~expertrag.graph.config.GraphConfig` or saved config's path whose index part is
    the graph's). Without one, a :class:`~expertrag.graph.GraphRAG` is built at ``path`` (a
    new temporary folder when None) with ``config`` (object, dict or path) and the
    ``documents`` are inserted; its own settings apply (the second value is None)."""
    from expertrag.graph.config import query_settings

    if graph is not None:
        return graph, None if config is None else query_settings(config, graph.config)
    from expertrag.graph.index import GraphRAG

    graph = GraphRAG(path or tempfile.mkdtemp(prefix="expertrag-graph-"), embedder=embedder,
                     config=config)
    docs = list(documents or [])
    if docs:
        graph.insert(docs, progress=False)
    return graph, None


def graph_search(graph: Any, query: str, k: int, mode: str, settings: Any = None
                 ) -> list[Document]:
    """``graph.retrieve`` with the retriever's own search settings when it has some (a
    graph-like object without settings is called as before)."""
    if settings is None:
        return graph.retrieve(query, k=k, mode=mode)
    return graph.retrieve(query, k=k, mode=mode, settings=settings)


class GraphRetrieverAdapter:
    """``retrieve(query, k)`` / ``query(text, k)`` over one graph search ``mode``, with the
    graph's search settings or ``config``'s (see :func:`open_graph`)."""

    def __init__(self, graph: Any, mode: str = DEFAULT_MODE, config: Any = None) -> None:
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        self.graph, self.settings = open_graph(graph, config=config)
        self.mode = mode

    def retrieve(self, query: str, k: int = 5) -> list[Document]:
        return graph_search(self.graph, query, k, self.mode, self.settings)

    def query(self, text: str, k: int = 5) -> list[Document]:
        return self.retrieve(text, k)


def graph_pipeline(llm: Any, graph: Any, mode: str = DEFAULT_MODE, k: int = 5,
                   expert: str | None = GROUNDED_QA) -> Any:
    """A :class:`~expertrag.chains.naive.RAGPipeline` answering from ``graph`` with ``expert``."""
    from expertrag.chains.naive import RAGPipeline

    return RAGPipeline(llm, GraphRetrieverAdapter(graph, mode), k=k, expert=expert,
                       max_new_tokens=64)


class _CaseGraph:
    """For evaluation: one graph over every passage of a round of cases; each question is
    answered from its own case's passages, ranked by the graph's ``mode`` search."""

    def __init__(self, retriever: Any, embedder: Any = None, mode: str = DEFAULT_MODE
                 ) -> None:
        from expertrag.graph.index import GraphRAG

        self.retriever, self.mode = retriever, mode
        cases = list(getattr(retriever, "by_question", {}).values())
        docs, seen = [], set()
        for case in cases:
            for p in case.passages:
                key = p.id or p.text[:80]
                if key not in seen:
                    seen.add(key)
                    docs.append(Document(text=p.text, id=str(key), metadata=dict(p.metadata)))
        self._tmp = tempfile.TemporaryDirectory(prefix="expertrag-eval-graph-")
        self.graph = GraphRAG(self._tmp.name, embedder=embedder)
        if docs:
            self.graph.insert(docs, progress=False)

    def retrieve(self, query: str, k: int = 5) -> list[Document]:
        case = self.retriever.by_question.get(query.strip())
        if case is None:
            return []
        allowed = {str(p.id or p.text[:80]) for p in case.passages}
        ranked = self.graph.retrieve(query, k=max(50, k), mode=self.mode)
        out = [d for d in ranked if d.metadata.get("doc_id") in allowed]
        ranked_docs = {d.metadata.get("doc_id") for d in out}
        out += [p for p in case.passages if str(p.id or p.text[:80]) not in ranked_docs]
        return out[:k]

    def query(self, text: str, k: int = 5) -> list[Document]:
        return self.retrieve(text, k)


def evaluation_factory(llm: Any, retriever: Any, k: int = 5) -> Any:
    """The ``graph`` pipeline of ``expertrag eval``: grounded answers from graph-ranked
    case passages."""
    from expertrag.chains.naive import RAGPipeline

    return RAGPipeline(llm, _CaseGraph(retriever), k=k, expert=GROUNDED_QA,
                       max_new_tokens=64)
