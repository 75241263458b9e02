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

from expertrag.graph.config import DEFAULT_MODE
from expertrag.graph.pipeline import graph_search, open_graph
from expertrag.langchain.rerankers import from_lc_document, to_lc_document

__all__ = ["ExpertGraphRetriever"]


class ExpertGraphRetriever(BaseRetriever):
    """Passages ranked by expertrag's knowledge graph (``mode``: hybrid, the default, ppr,
    local, global); ``k`` results (overridable per call). Pass a built ``graph``
    (:class:`~expertrag.graph.GraphRAG`), or ``documents`` (strings or LangChain Documents)
    and a ``path`` for the embedded graph database to build one. ``config``: a
    :class:`~expertrag.graph.GraphConfig`, a dict of its settings or a saved one's path; it
    builds the graph, or, over a given ``graph``, sets this retriever's search settings
    (:func:`expertrag.graph.pipeline.open_graph`). ``metadata`` names the entities and paths
    behind each passage.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    graph: Any = None
    documents: list[Any] | None = None
    path: str | None = None
    embedder: Any = None
    k: int = 4
    mode: str = DEFAULT_MODE
    config: Any = None
    _graph: Any = PrivateAttr(default=None)
    _settings: Any = PrivateAttr(default=None)

    @property
    def core(self) -> Any:
        if self._graph is None:
            docs = [from_lc_document(d) if isinstance(d, LCDocument) else d
                    for d in self.documents or []]
            self._graph, self._settings = open_graph(self.graph, docs, self.path,
                                                     self.embedder, self.config)
        return self._graph

    def _search(self, query: str, k: int | None) -> list[LCDocument]:
        graph = self.core
        return [to_lc_document(d) for d in graph_search(graph, query, k or self.k, self.mode,
                                                        self._settings)]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None) -> list[LCDocument]:
        return self._search(query, k)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
    ) -> list[LCDocument]:
        return await asyncio.to_thread(self._search, query, k)
