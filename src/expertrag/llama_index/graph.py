"""The GraphRAG retriever as a LlamaIndex ``BaseRetriever`` (conversion code only)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle

from expertrag.graph.config import DEFAULT_MODE
from expertrag.graph.pipeline import graph_search, open_graph
from expertrag.llama_index.retrievers import _to_document, _to_node

__all__ = ["ExpertGraphRetriever"]


class ExpertGraphRetriever(BaseRetriever):
    """Nodes ranked by expertrag's knowledge graph; use it in a ``RetrieverQueryEngine``.
    Pass a built ``graph`` (:class:`~expertrag.graph.GraphRAG`) or ``documents`` (nodes,
    core Documents or strings) and a ``path`` to build one. ``config``: a
    :class:`~expertrag.graph.GraphConfig`, a dict of its settings or a saved one's path; it
    builds the graph, or, over a given ``graph``, sets this retriever's search settings
    (:func:`expertrag.graph.pipeline.open_graph`)."""

    def __init__(self, graph: Any = None, documents: Sequence[Any] | None = None,
                 path: str | None = None, embedder: Any = None, k: int = 4,
                 mode: str = DEFAULT_MODE, callback_manager: CallbackManager | None = None,
                 config: Any = None, **kwargs: Any) -> None:
        docs = [_to_document(d) for d in documents or []] if graph is None else []
        self.graph, self.settings = open_graph(graph, docs, path, embedder, config)
        self.k, self.mode = k, mode
        super().__init__(callback_manager=callback_manager, **kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [_to_node(d) for d in graph_search(self.graph, query_bundle.query_str, self.k,
                                                  self.mode, self.settings)]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)
