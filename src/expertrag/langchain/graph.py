"""The GraphRAG retriever as a LangChain ``BaseRetriever`` (conversion code only)."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document as LCDocument
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, PrivateAttr

from expertrag.langchain.rerankers import from_lc_document, to_lc_document

__all__ = ["ExpertGraphRetriever"]


class ExpertGraphRetriever(BaseRetriever):
    """Passages ranked by expertrag's knowledge graph (``mode``: ppr, local, global,
    hybrid); ``k`` results (overridable per call). Pass a built ``graph``
    (:class:`~expertrag.graph.GraphRAG`), or ``documents`` (strings or LangChain Documents)
    and a ``path`` for the embedded graph database to build one. ``metadata`` names the
    entities and paths behind each passage.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    graph: Any = None
    documents: list[Any] | None = None
    path: str | None = None
    embedder: Any = None
    k: int = 4
    mode: str = "ppr"
    _graph: Any = PrivateAttr(default=None)

    @property
    def core(self) -> Any:
        if self._graph is None:
            graph = self.graph
            if graph is None:
                import tempfile

                from expertrag.graph import GraphRAG

                path = self.path or tempfile.mkdtemp(prefix="expertrag-graph-")
                graph = GraphRAG(path, embedder=self.embedder)
                docs = [from_lc_document(d) if isinstance(d, LCDocument) else d
                        for d in self.documents or []]
                if docs:
                    graph.insert(docs, progress=False)
            self._graph = graph
        return self._graph

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None) -> list[LCDocument]:
        return [to_lc_document(d) for d in self.core.retrieve(query, k=k or self.k,
                                                              mode=self.mode)]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
    ) -> list[LCDocument]:
        docs = await asyncio.to_thread(self.core.retrieve, query, k or self.k, self.mode)
        return [to_lc_document(d) for d in docs]
