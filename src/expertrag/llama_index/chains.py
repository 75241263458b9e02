"""The corrective and self-reflective chains in LlamaIndex (conversion code only).

- :class:`CorrectedContextRetriever`: CRAG's corrected-context stage as a ``BaseRetriever``
  around any LlamaIndex retriever (or expertrag source).
- :class:`MultiHopRetriever`: the multi-hop context (``hop`` expert, up to ``max_hops``
  retrieval steps) as a ``BaseRetriever``; :class:`MultiHopQueryEngine`: with its answer.
- :class:`CorrectiveRAGQueryEngine` / :class:`SelfRAGQueryEngine`: the chains where a
  ``BaseQueryEngine`` goes; ``Response.source_nodes`` are the cited passages,
  ``Response.metadata`` holds the chain's evidence.
- :func:`llama_source`: a LlamaIndex retriever or tool as a document source for the core
  chains (e.g. a search tool as CRAG's external knowledge).

Every stage is emitted as a LlamaIndex instrumentation event (:class:`ChainStageEvent`,
:class:`CRAGActionEvent`, :class:`SelfRAGRetrieveEvent`) on this module's dispatcher.
"""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.response.schema import Response
from llama_index.core.callbacks import CallbackManager
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.tools.types import BaseTool

from expertrag.chains.corrective import CorrectiveRAG, CRAGConfig, CRAGResult
from expertrag.chains.multihop import MultiHopConfig, MultiHopRAG, MultiHopResult
from expertrag.chains.self_reflective import SelfRAG, SelfRAGConfig, SelfRAGResult
from expertrag.config import as_config
from expertrag.llama_index.retrievers import _to_document, _to_node
from expertrag.types import Document

__all__ = [
    "CRAGActionEvent",
    "ChainStageEvent",
    "CorrectedContextRetriever",
    "CorrectiveRAGQueryEngine",
    "MultiHopQueryEngine",
    "MultiHopRetriever",
    "SelfRAGQueryEngine",
    "SelfRAGRetrieveEvent",
    "llama_source",
]

dispatcher = get_dispatcher(__name__)


class ChainStageEvent(BaseEvent):
    """A chain stage started or ended (``phase``), with its seconds at the end."""

    chain: str
    stage: str
    phase: str
    seconds: float | None = None

    @classmethod
    def class_name(cls) -> str:
        return "ChainStageEvent"


class CRAGActionEvent(BaseEvent):
    """CRAG's evaluator scores and the action taken for each question."""

    questions: list[str]
    scores: list[list[float]]
    actions: list[str]

    @classmethod
    def class_name(cls) -> str:
        return "CRAGActionEvent"


class SelfRAGRetrieveEvent(BaseEvent):
    """Self-RAG's retrieve decision for each question."""

    questions: list[str]
    probabilities: list[float]
    retrieve: list[bool]

    @classmethod
    def class_name(cls) -> str:
        return "SelfRAGRetrieveEvent"


def _listener(chain: str) -> Any:
    def listen(event: str, data: dict[str, Any]) -> None:
        if event == "actions":
            dispatcher.event(CRAGActionEvent(questions=data["questions"],
                                             scores=data["scores"], actions=data["actions"]))
        elif event == "retrieve_decision":
            dispatcher.event(SelfRAGRetrieveEvent(questions=data["questions"],
                                                  probabilities=data["probabilities"],
                                                  retrieve=data["retrieve"]))
        else:
            stage, _, phase = event.rpartition("_")
            dispatcher.event(ChainStageEvent(chain=chain, stage=stage, phase=phase,
                                             seconds=data.get("seconds")))
    return listen


def llama_source(source: Any) -> Any:
    """A core document source (``fn(query, k)``) for a LlamaIndex retriever or tool;
    anything else is returned unchanged."""
    if isinstance(source, BaseRetriever):
        def retrieve(query: str, k: int) -> list[Document]:
            return [_to_document(n) for n in source.retrieve(query)][:k]
        return retrieve
    if isinstance(source, BaseTool):
        def search(query: str, k: int) -> list[Document]:
            output = source(query)
            raw = getattr(output, "raw_output", None)
            if isinstance(raw, list):
                docs = [_to_document(r) if not isinstance(r, str) else Document(text=r)
                        for r in raw]
                return [d for d in docs if isinstance(d, Document) and d.text.strip()][:k]
            text = str(getattr(output, "content", output))
            return [Document(text=text)] if text.strip() else []
        return search
    return source


def _node(doc: Document) -> NodeWithScore:
    return _to_node(doc)


def crag_response(result: CRAGResult) -> Response:
    """A CRAG result as a ``Response``: the cited passages as ``source_nodes``, the
    action, scores and context in ``metadata``."""
    ctx = result.context
    return Response(response=result.answer,
                    source_nodes=[_node(d) for d in result.citations],
                    metadata={"action": result.action, "scores": list(ctx.scores),
                              "rewritten_query": ctx.rewritten_query,
                              "external_error": ctx.external_error,
                              "refused": result.refused, "seconds": result.seconds,
                              "calls": result.calls,
                              "context": [d.text for d in ctx.passages]})


def selfrag_response(result: SelfRAGResult) -> Response:
    """A Self-RAG result as a ``Response``: the cited passages as ``source_nodes``, the
    retrieve decision and the scored candidates in ``metadata``."""
    return Response(response=result.answer,
                    source_nodes=[_node(d) for d in result.citations],
                    metadata={"retrieved": result.retrieved,
                              "retrieve_probability": result.retrieve_probability,
                              "candidates": [{"text": c.text, "score": c.score,
                                              "isrel": c.isrel, "issup": c.issup,
                                              "isuse": c.isuse}
                                             for c in result.candidates],
                              "refused": result.refused, "seconds": result.seconds,
                              "calls": result.calls})


class CorrectedContextRetriever(BaseRetriever):
    """CRAG's corrected context as a LlamaIndex retriever: graded, refined and completed
    nodes (at most ``k``; documents judged irrelevant are dropped). ``config``: a
    :class:`CRAGConfig`, a dict of its settings or a saved one's path."""

    def __init__(self, retriever: Any, llm: Any, evaluator: Any = None, external: Any = None,
                 k: int = 4, config: CRAGConfig | dict[str, Any] | str | None = None,
                 callback_manager: CallbackManager | None = None, **kwargs: Any) -> None:
        self.core = CorrectiveRAG(llm, llama_source(retriever), evaluator=evaluator,
                                  external=None if external is None else llama_source(external),
                                  config=as_config(CRAGConfig, config))
        self.k = k
        super().__init__(callback_manager=callback_manager, **kwargs)

    def _nodes(self, query: str) -> list[NodeWithScore]:
        ctx = self.core.correct(query, _listener("crag"))
        best = sorted(ctx.passages, key=lambda d: -(d.score or 0.0))[: self.k]
        keep = {id(d) for d in best}
        nodes = []
        for doc in ctx.passages:
            if id(doc) in keep:
                node = _node(doc)
                node.node.metadata["crag_action"] = ctx.action
                nodes.append(node)
        return nodes

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self._nodes(query_bundle.query_str)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._nodes, query_bundle.query_str)


def multihop_response(result: MultiHopResult) -> Response:
    """A multi-hop result as a ``Response``: the cited passages as ``source_nodes``, every
    hop and the context in ``metadata``."""
    ctx = result.context
    return Response(response=result.answer,
                    source_nodes=[_node(d) for d in result.citations],
                    metadata={"hops": ctx.records(), "stopped": ctx.stopped,
                              "refused": result.refused, "seconds": result.seconds,
                              "calls": result.calls,
                              "context": [d.text for d in ctx.passages]})


class MultiHopRetriever(BaseRetriever):
    """The multi-hop context as a LlamaIndex retriever: the passages the ``hop`` expert kept
    over up to ``max_hops`` retrieval steps, in hop order, at most ``k``; each node's score
    is its keep score and ``metadata["hop"]`` the step that found it. ``config``: a
    :class:`MultiHopConfig`, a dict of its settings or a saved one's path."""

    def __init__(self, retriever: Any, llm: Any, k: int = 5,
                 config: MultiHopConfig | dict[str, Any] | str | None = None,
                 callback_manager: CallbackManager | None = None, **kwargs: Any) -> None:
        self.core = MultiHopRAG(llm, llama_source(retriever),
                                config=as_config(MultiHopConfig, config))
        self.k = k
        super().__init__(callback_manager=callback_manager, **kwargs)

    def _nodes(self, query: str) -> list[NodeWithScore]:
        nodes = []
        for doc, hop, score in self.core.retrieve(query, _listener("multihop")).found(self.k):
            node = _node(doc)
            node.node.metadata["hop"] = hop
            node.score = score
            nodes.append(node)
        return nodes

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self._nodes(query_bundle.query_str)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._nodes, query_bundle.query_str)


class _ChainQueryEngine(BaseQueryEngine):
    chain_name = "chain"

    def __init__(self, core: Any, callback_manager: CallbackManager | None = None) -> None:
        self.core = core
        super().__init__(callback_manager=callback_manager)

    def _get_prompt_modules(self) -> dict[str, Any]:
        return {}

    def _response(self, result: Any) -> Response:  # pragma: no cover - overridden
        raise NotImplementedError

    @dispatcher.span
    def _query(self, query_bundle: QueryBundle) -> Response:
        return self._response(self.core.answer(query_bundle.query_str,
                                               _listener(self.chain_name)))

    async def _aquery(self, query_bundle: QueryBundle) -> Response:
        return await asyncio.to_thread(self._query, query_bundle)


class CorrectiveRAGQueryEngine(_ChainQueryEngine):
    """CRAG as a LlamaIndex query engine (``config``: a :class:`CRAGConfig`, a dict of its
    settings or a saved one's path).

    >>> engine = CorrectiveRAGQueryEngine(llm, index.as_retriever(similarity_top_k=4))
    >>> engine.query("When was the lighthouse built?").response
    """

    chain_name = "crag"

    def __init__(self, llm: Any, retriever: Any, evaluator: Any = None, external: Any = None,
                 config: CRAGConfig | dict[str, Any] | str | None = None,
                 callback_manager: CallbackManager | None = None) -> None:
        core = CorrectiveRAG(llm, llama_source(retriever), evaluator=evaluator,
                             external=None if external is None else llama_source(external),
                             config=as_config(CRAGConfig, config))
        super().__init__(core, callback_manager)

    def _response(self, result: CRAGResult) -> Response:
        return crag_response(result)


class MultiHopQueryEngine(_ChainQueryEngine):
    """Multi-hop RAG as a LlamaIndex query engine (``config``: a :class:`MultiHopConfig`, a
    dict of its settings or a saved one's path).

    >>> engine = MultiHopQueryEngine(llm, index.as_retriever(similarity_top_k=5))
    >>> engine.query("Where was the director of Blue Film born?").metadata["hops"]
    """

    chain_name = "multihop"

    def __init__(self, llm: Any, retriever: Any,
                 config: MultiHopConfig | dict[str, Any] | str | None = None,
                 callback_manager: CallbackManager | None = None) -> None:
        super().__init__(MultiHopRAG(llm, llama_source(retriever),
                                     config=as_config(MultiHopConfig, config)),
                         callback_manager)

    def _response(self, result: MultiHopResult) -> Response:
        return multihop_response(result)


class SelfRAGQueryEngine(_ChainQueryEngine):
    """Self-RAG as a LlamaIndex query engine (``config``: a :class:`SelfRAGConfig`, a dict
    of its settings or a saved one's path)."""

    chain_name = "self_rag"

    def __init__(self, llm: Any, retriever: Any, critic: Any = None,
                 config: SelfRAGConfig | dict[str, Any] | str | None = None,
                 callback_manager: CallbackManager | None = None) -> None:
        super().__init__(SelfRAG(llm, llama_source(retriever), critic=critic,
                                 config=as_config(SelfRAGConfig, config)), callback_manager)

    def _response(self, result: SelfRAGResult) -> Response:
        return selfrag_response(result)
