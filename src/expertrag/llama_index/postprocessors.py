"""expertrag rerankers as a LlamaIndex ``BaseNodePostprocessor`` (conversion only).

Emits ``ReRankStartEvent`` / ``ReRankEndEvent`` through the instrumentation dispatcher and a
``RERANKING`` callback event, as LlamaIndex's own rerankers do.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from expertrag.rerank.base import Reranker
from expertrag.types import Document

__all__ = ["ExpertRerank"]

dispatcher = get_dispatcher(__name__)


class ExpertRerank(BaseNodePostprocessor):
    """Reranks nodes with any :class:`expertrag.rerank.Reranker`; keeps the best ``top_n``
    (None: all) scoring >= ``threshold``; ``NodeWithScore.score`` becomes the rerank score.

    >>> index.as_query_engine(node_postprocessors=[ExpertRerank(EmbeddingReranker(), top_n=3)])
    """

    top_n: int | None = Field(default=3, description="Nodes to keep (None: all).")
    threshold: float | None = Field(default=None, description="Minimum rerank score.")
    keep_retrieval_score: bool = Field(
        default=False, description="Keep the first-stage score in metadata['retrieval_score']."
    )
    model_name: str = Field(default="expertrag", description="Reported in rerank events.")
    _reranker: Reranker = PrivateAttr()

    def __init__(self, reranker: Reranker, **kwargs: Any) -> None:
        kwargs.setdefault("model_name", getattr(reranker, "name", type(reranker).__name__))
        super().__init__(**kwargs)
        self._reranker = reranker

    @property
    def reranker(self) -> Reranker:
        return self._reranker

    @classmethod
    def class_name(cls) -> str:
        return "ExpertRerank"

    def _start(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None) -> None:
        dispatcher.event(ReRankStartEvent(query=query_bundle, nodes=nodes,
                                          top_n=self.top_n or len(nodes),
                                          model_name=self.model_name))

    def _payload(self, nodes: list[NodeWithScore], query_bundle: QueryBundle) -> dict[Any, Any]:
        return {EventPayload.NODES: nodes, EventPayload.MODEL_NAME: self.model_name,
                EventPayload.QUERY_STR: query_bundle.query_str,
                EventPayload.TOP_K: self.top_n or len(nodes)}

    @staticmethod
    def _docs(nodes: list[NodeWithScore]) -> list[Document]:
        return [Document(text=n.node.get_content(metadata_mode=MetadataMode.EMBED),
                         id=n.node.node_id, metadata={"_position": i}, score=n.score)
                for i, n in enumerate(nodes)]

    def _back(self, nodes: list[NodeWithScore], ranked: list[Document]) -> list[NodeWithScore]:
        out = []
        for doc in ranked:
            original = nodes[doc.metadata["_position"]]
            node = original.node
            if self.keep_retrieval_score:  # on a copy: the caller's node stays as it was
                meta = {**node.metadata, "retrieval_score": original.score}
                node = node.model_copy(update={"metadata": meta})
            out.append(NodeWithScore(node=node, score=doc.score))
        return out

    def _nothing_to_rank(self, nodes: list[NodeWithScore],
                         query_bundle: QueryBundle | None) -> bool:
        """Start the rerank events; True (with the end event sent) when there are no nodes.
        A missing query is a ValueError."""
        self._start(nodes, query_bundle)
        if query_bundle is None:
            raise ValueError("ExpertRerank needs a query (query_bundle or query_str)")
        if not nodes:
            dispatcher.event(ReRankEndEvent(nodes=[]))
            return True
        return False

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if self._nothing_to_rank(nodes, query_bundle):
            return []
        with self.callback_manager.event(
            CBEventType.RERANKING, payload=self._payload(nodes, query_bundle)
        ) as event:
            ranked = self._reranker.rerank(query_bundle.query_str, self._docs(nodes),
                                           top_n=self.top_n, threshold=self.threshold)
            result = self._back(nodes, ranked)
            event.on_end(payload={EventPayload.NODES: result})
        dispatcher.event(ReRankEndEvent(nodes=result))
        return result

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if self._nothing_to_rank(nodes, query_bundle):
            return []
        with self.callback_manager.event(
            CBEventType.RERANKING, payload=self._payload(nodes, query_bundle)
        ) as event:
            ranked = await self._reranker.arerank(query_bundle.query_str, self._docs(nodes),
                                                  top_n=self.top_n, threshold=self.threshold)
            result = self._back(nodes, ranked)
            event.on_end(payload={EventPayload.NODES: result})
        dispatcher.event(ReRankEndEvent(nodes=result))
        return result
