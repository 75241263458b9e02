"""Answering from the knowledge graph: :class:`GraphRetrieverAdapter` makes a
:class:`~expertrag.graph.GraphRAG` search look like any other retriever, so the grounded
pipeline and the chains (CRAG, Self-RAG) answer from graph-ranked passages, with citations."""

from __future__ import annotations

import tempfile
from typing import Any

from expertrag.errors import InputError
from expertrag.types import Document


class GraphRetrieverAdapter:
    """``retrieve(query, k)`` / ``query(text, k)`` over one graph search ``mode``."""

    def __init__(self, graph: Any, mode: str = "ppr") -> None:
        from expertrag.graph.index import MODES

        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        self.graph, self.mode = graph, mode

    def retrieve(self, query: str, k: int = 5) -> list[Document]:
        return self.graph.retrieve(query, k=k, mode=self.mode)

    def query(self, text: str, k: int = 5) -> list[Document]:
        return self.retrieve(text, k)


def graph_pipeline(llm: Any, graph: Any, mode: str = "ppr", k: int = 5,
                   expert: str | None = "grounded-qa") -> Any:
    """A :class:`~expertrag.rag.RAGPipeline` answering from ``graph`` with ``expert``."""
    from expertrag.rag import RAGPipeline

    return RAGPipeline(llm, GraphRetrieverAdapter(graph, mode), k=k, expert=expert,
                       max_new_tokens=64)


class _CaseGraph:
    """For evaluation: one graph over every passage of a round of cases; each question is
    answered from its own case's passages, ranked by the graph (PPR)."""

    def __init__(self, retriever: Any, embedder: Any = None, mode: str = "ppr") -> None:
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
    from expertrag.rag import RAGPipeline

    return RAGPipeline(llm, _CaseGraph(retriever), k=k, expert="grounded-qa",
                       max_new_tokens=64)
