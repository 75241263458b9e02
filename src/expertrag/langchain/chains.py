"""The corrective and self-reflective chains in LangChain (conversion code only).

- :class:`CorrectiveRAGChain` and :class:`SelfRAGChain`: ``Runnable`` s (invoke, batch,
  stream of the final answer, async) that drop into LCEL. Input: a question string or a dict
  with ``question`` (or ``input`` / ``query``). Output: a dict with ``answer``, ``citations``
  (LangChain Documents) and the chain's evidence.
- :class:`MultiHopRAGChain`: iterative multi-hop retrieval with the ``hop`` expert, then a
  grounded answer, as a ``Runnable`` (stream: the gathered context, the answer's text, the
  citations).
- :class:`CorrectedContextRetriever`: CRAG's corrected-context stage as a ``BaseRetriever``
  around any LangChain retriever (or expertrag source); :class:`MultiHopRetriever`: the
  multi-hop context alone, the same way.
- :func:`lc_source`: a LangChain retriever or tool as a document source for the core chains
  (e.g. a web-search tool as CRAG's external knowledge).

Stages reach LangChain callbacks as custom events (``expertrag_<stage>``), visible in
``astream_events``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.callbacks.manager import adispatch_custom_event, dispatch_custom_event
from langchain_core.decisions import BaseDecisionModel
from langchain_core.documents import Document as LCDocument
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import ensure_config
from langchain_core.runnables.utils import AddableDict
from langchain_core.tools import BaseTool
from pydantic import ConfigDict, PrivateAttr

from expertrag.chains.corrective import CorrectedContext, CorrectiveRAG, CRAGConfig, CRAGResult
from expertrag.chains.multihop import (
    MultiHopConfig,
    MultiHopContext,
    MultiHopRAG,
    MultiHopResult,
)
from expertrag.chains.self_reflective import SelfRAG, SelfRAGConfig, SelfRAGResult
from expertrag.config import as_config
from expertrag.errors import InputError
from expertrag.langchain.decisions import DecisionCritic, DecisionEvaluator
from expertrag.langchain.rerankers import from_lc_document, to_lc_document
from expertrag.models.worker import iterate_in_thread
from expertrag.types import Document

__all__ = ["CorrectedContextRetriever", "CorrectiveRAGChain", "MultiHopRAGChain",
           "MultiHopRetriever", "SelfRAGChain", "lc_source"]


def lc_source(source: Any) -> Any:
    """A core document source (``fn(query, k)``) for a LangChain retriever or tool; anything
    else is returned unchanged (expertrag retrievers and callables are sources already)."""
    if isinstance(source, BaseRetriever):
        def retrieve(query: str, k: int) -> list[Document]:
            return [from_lc_document(d) for d in source.invoke(query)][:k]
        return retrieve
    if isinstance(source, BaseTool):
        def search(query: str, k: int) -> list[Document]:
            return _tool_documents(source.invoke(query))[:k]
        return search
    return source


def _evaluator(evaluator: Any) -> Any:
    """A ``BaseDecisionModel`` as CRAG's evaluator; an expertrag reranker as it is."""
    return DecisionEvaluator(evaluator) if isinstance(evaluator, BaseDecisionModel) \
        else evaluator


def _critic(critic: Any) -> Any:
    """A ``BaseDecisionModel`` as Self-RAG's critic; an expertrag critic as it is."""
    return DecisionCritic(critic) if isinstance(critic, BaseDecisionModel) else critic


def _tool_documents(output: Any) -> list[Document]:
    """A tool's output (text, documents, a list of result dicts) as documents."""
    if isinstance(output, LCDocument):
        return [from_lc_document(output)]
    if isinstance(output, str):
        return [Document(text=output)] if output.strip() else []
    if isinstance(output, dict) and isinstance(output.get("results"), list):
        output = output["results"]
    if isinstance(output, list):
        docs = []
        for item in output:
            if isinstance(item, LCDocument):
                docs.append(from_lc_document(item))
            elif isinstance(item, dict):
                text = next((str(item[k]) for k in ("content", "snippet", "page_content",
                                                     "text", "body") if item.get(k)), "")
                if text.strip():
                    meta = {k: v for k, v in item.items() if isinstance(v, str | int | float)
                            and k not in ("content", "snippet", "page_content", "text", "body")}
                    docs.append(Document(text=text, id=item.get("url"), metadata=meta))
            elif str(item).strip():
                docs.append(Document(text=str(item)))
        return docs
    text = str(getattr(output, "content", output))
    return [Document(text=text)] if text.strip() else []


def _question(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in ("question", "input", "query"):
            if isinstance(value.get(key), str):
                return value[key]
        raise InputError("input dict needs a 'question' (or 'input' / 'query') string")
    raise InputError(f"input must be a question string or a dict, got {type(value).__name__}")


def _listener(config: RunnableConfig | None) -> Any:
    """Stage events as LangChain custom events of the current run (None outside a run)."""
    config = ensure_config(config)
    if not config.get("callbacks"):
        return None

    def listen(event: str, data: dict[str, Any]) -> None:
        dispatch_custom_event(f"expertrag_{event}", _plain(data), config=config)
    return listen


def _alistener(config: RunnableConfig | None, loop: asyncio.AbstractEventLoop) -> Any:
    """:func:`_listener` for a chain running on a worker thread under an async run."""
    config = ensure_config(config)
    if not config.get("callbacks"):
        return None

    def listen(event: str, data: dict[str, Any]) -> None:
        asyncio.run_coroutine_threadsafe(
            adispatch_custom_event(f"expertrag_{event}", _plain(data), config=config),
            loop).result()
    return listen


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if isinstance(v, str | int | float | bool | list)}


def _crag_output(res: CRAGResult) -> dict[str, Any]:
    ctx = res.context
    return {"question": res.question, "answer": res.answer,
            "citations": [to_lc_document(d) for d in res.citations],
            "action": res.action, "context": [to_lc_document(d) for d in ctx.passages],
            "scores": list(ctx.scores), "rewritten_query": ctx.rewritten_query,
            "external_error": ctx.external_error, "refused": res.refused,
            "seconds": res.seconds, "calls": res.calls}


def _selfrag_output(res: SelfRAGResult) -> dict[str, Any]:
    return {"question": res.question, "answer": res.answer,
            "citations": [to_lc_document(d) for d in res.citations],
            "retrieved": res.retrieved, "retrieve_probability": res.retrieve_probability,
            "candidates": [{"text": c.text, "score": c.score, "isrel": c.isrel,
                            "issup": c.issup, "isuse": c.isuse,
                            "passages": [to_lc_document(d) for d in c.passages]}
                           for c in res.candidates],
            "refused": res.refused, "seconds": res.seconds, "calls": res.calls}


def _multihop_output(res: MultiHopResult) -> dict[str, Any]:
    ctx = res.context
    return {"question": res.question, "answer": res.answer,
            "citations": [to_lc_document(d) for d in res.citations],
            "context": [to_lc_document(d) for d in ctx.passages], "hops": ctx.records(),
            "stopped": ctx.stopped, "refused": res.refused, "seconds": res.seconds,
            "calls": res.calls}


class _ChainRunnable(Runnable[Any, dict[str, Any]]):
    """invoke / batch / stream / async over a core chain with ``answer_many``, each a
    LangChain run (callbacks, tracing, ``astream_events``)."""

    core: Any

    def _convert(self, result: Any) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _chunks(self, question: str, listener: Any) -> Iterator[dict[str, Any]]:
        """Output chunks of one run; by default the whole answer at once."""
        yield self._convert(self.core.answer(question, listener))

    # -- invoke
    def _run(self, input: Any, run_manager: Any, config: RunnableConfig) -> dict[str, Any]:
        return self._convert(self.core.answer(_question(input), _listener(config)))

    def invoke(self, input: Any, config: RunnableConfig | None = None,
               **kwargs: Any) -> dict[str, Any]:
        return self._call_with_config(self._run, input, config, **kwargs)

    async def _arun(self, input: Any, run_manager: Any,
                    config: RunnableConfig) -> dict[str, Any]:
        listener = _alistener(config, asyncio.get_running_loop())
        result = await asyncio.to_thread(self.core.answer, _question(input), listener)
        return self._convert(result)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None,
                      **kwargs: Any) -> dict[str, Any]:
        return await self._acall_with_config(self._arun, input, config, **kwargs)

    # -- batch: one core call, so the model calls are batched across the inputs
    def _run_batch(self, inputs: list[Any], run_manager: list[Any],
                   config: list[RunnableConfig]) -> list[Any]:
        try:
            questions = [_question(i) for i in inputs]
            results = self.core.answer_many(questions, _listener(config[0]))
        except Exception as exc:  # every input of the batch shares the failure
            return [exc] * len(inputs)
        return [self._convert(r) for r in results]

    def batch(self, inputs: list[Any], config: RunnableConfig | list[RunnableConfig] | None
              = None, *, return_exceptions: bool = False, **kwargs: Any) -> list[Any]:
        if not inputs:
            return []
        return self._batch_with_config(self._run_batch, inputs, config,
                                       return_exceptions=return_exceptions, **kwargs)

    async def abatch(self, inputs: list[Any], config: RunnableConfig | list[RunnableConfig]
                     | None = None, *, return_exceptions: bool = False,
                     **kwargs: Any) -> list[Any]:
        return await asyncio.to_thread(self.batch, inputs, config,
                                       return_exceptions=return_exceptions, **kwargs)

    # -- stream
    def _transform(self, inputs: Iterator[Any], run_manager: Any,
                   config: RunnableConfig) -> Iterator[dict[str, Any]]:
        for input in inputs:
            yield from self._chunks(_question(input), _listener(config))

    def stream(self, input: Any, config: RunnableConfig | None = None,
               **kwargs: Any) -> Iterator[dict[str, Any]]:
        yield from self._transform_stream_with_config(iter([input]), self._transform, config,
                                                      **kwargs)

    async def _atransform(self, inputs: AsyncIterator[Any], run_manager: Any,
                          config: RunnableConfig) -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        async for input in inputs:
            listener = _alistener(config, loop)
            question = _question(input)
            chunks = iterate_in_thread(lambda q=question, lis=listener: self._chunks(q, lis))
            async for chunk in chunks:
                yield chunk

    async def astream(self, input: Any, config: RunnableConfig | None = None,
                      **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
        async def one() -> AsyncIterator[Any]:
            yield input

        async for chunk in self._atransform_stream_with_config(one(), self._atransform,
                                                               config, **kwargs):
            yield chunk


class CorrectiveRAGChain(_ChainRunnable):
    """CRAG as an LCEL ``Runnable``. ``stream`` yields the corrected context first, then the
    answer text as it is generated, then the citations (chunks add up to the ``invoke``
    output). ``config``: a :class:`CRAGConfig`, a dict of its settings or a saved one's path.
    ``evaluator``: an expertrag reranker or any LangChain ``BaseDecisionModel`` (its P(yes)
    for :func:`~expertrag.langchain.decisions.relevance_questions` meets the thresholds).

    >>> chain = CorrectiveRAGChain(llm, retriever, external=web_search_tool)
    >>> chain.invoke("When was the lighthouse built?")["answer"]
    """

    def __init__(self, llm: Any, retriever: Any, evaluator: Any = None, external: Any = None,
                 config: CRAGConfig | dict[str, Any] | str | None = None,
                 core: CorrectiveRAG | None = None) -> None:
        self.core = core or CorrectiveRAG(llm, lc_source(retriever),
                                          evaluator=_evaluator(evaluator),
                                          external=None if external is None
                                          else lc_source(external),
                                          config=as_config(CRAGConfig, config))

    def _convert(self, result: Any) -> dict[str, Any]:
        return _crag_output(result)

    def _chunks(self, question: str, listener: Any) -> Iterator[dict[str, Any]]:
        for part in self.core.stream(question, listener):
            if isinstance(part, CorrectedContext):
                yield AddableDict(question=part.question, action=part.action,
                                  context=[to_lc_document(d) for d in part.passages],
                                  scores=list(part.scores),
                                  rewritten_query=part.rewritten_query)
            elif isinstance(part, str):
                yield AddableDict(answer=part)
            else:
                out = _crag_output(part)
                yield AddableDict({k: out[k] for k in ("citations", "refused", "seconds",
                                                       "calls", "external_error")})


class SelfRAGChain(_ChainRunnable):
    """Self-RAG as an LCEL ``Runnable``; the answer is chosen among candidates after all are
    scored, so ``stream`` yields the final answer once. ``config``: a :class:`SelfRAGConfig`,
    a dict of its settings or a saved one's path. ``critic``: an expertrag critic or any
    LangChain ``BaseDecisionModel`` (asked
    :func:`~expertrag.langchain.decisions.critic_questions`)."""

    def __init__(self, llm: Any, retriever: Any, critic: Any = None,
                 config: SelfRAGConfig | dict[str, Any] | str | None = None,
                 core: SelfRAG | None = None) -> None:
        self.core = core or SelfRAG(llm, lc_source(retriever), critic=_critic(critic),
                                    config=as_config(SelfRAGConfig, config))

    def _convert(self, result: Any) -> dict[str, Any]:
        return _selfrag_output(result)


class MultiHopRAGChain(_ChainRunnable):
    """Multi-hop RAG as an LCEL ``Runnable`` (:class:`~expertrag.chains.MultiHopRAG`).
    ``stream`` yields the gathered context and its hops first, then the answer text as it
    is generated, then the citations (chunks add up to the ``invoke`` output). ``config``: a
    :class:`MultiHopConfig`, a dict of its settings or a saved one's path.

    >>> chain = MultiHopRAGChain(llm, retriever)
    >>> chain.invoke("Where was the director of Blue Film born?")["hops"]
    """

    def __init__(self, llm: Any, retriever: Any,
                 config: MultiHopConfig | dict[str, Any] | str | None = None,
                 core: MultiHopRAG | None = None) -> None:
        self.core = core or MultiHopRAG(llm, lc_source(retriever),
                                        config=as_config(MultiHopConfig, config))

    def _convert(self, result: Any) -> dict[str, Any]:
        return _multihop_output(result)

    def _chunks(self, question: str, listener: Any) -> Iterator[dict[str, Any]]:
        for part in self.core.stream(question, listener):
            if isinstance(part, MultiHopContext):
                yield AddableDict(question=part.question,
                                  context=[to_lc_document(d) for d in part.passages],
                                  hops=part.records(), stopped=part.stopped)
            elif isinstance(part, str):
                yield AddableDict(answer=part)
            else:
                out = _multihop_output(part)
                yield AddableDict({k: out[k] for k in ("citations", "refused", "seconds",
                                                       "calls")})


class MultiHopRetriever(BaseRetriever):
    """The multi-hop context as a ``BaseRetriever``: the passages MultiHopRAG's answerer
    would read after up to ``max_hops`` retrieval steps from the wrapped retriever, in hop
    order (``MultiHopConfig.assemble``), at most ``k``. ``metadata`` gains
    ``hop`` (the step that found it, 1-based) and ``keep_score``. ``config``: a
    :class:`MultiHopConfig`, a dict of its settings or a saved one's path."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: Any
    llm: Any
    k: int = 5
    config: Any = None
    _core: MultiHopRAG | None = PrivateAttr(default=None)

    @property
    def core(self) -> MultiHopRAG:
        if self._core is None:
            self._core = MultiHopRAG(self.llm, lc_source(self.retriever),
                                     config=as_config(MultiHopConfig, self.config))
        return self._core

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None) -> list[LCDocument]:
        return [_hop_document(d, h, s) for d, h, s in
                self.core.retrieve(query).found(k or self.k)]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
    ) -> list[LCDocument]:
        ctx = await asyncio.to_thread(self.core.retrieve, query)
        return [_hop_document(d, h, s) for d, h, s in ctx.found(k or self.k)]


def _hop_document(doc: Document, hop: int, score: float) -> LCDocument:
    lc = to_lc_document(doc)
    lc.metadata = {**lc.metadata, "hop": hop, "keep_score": score}
    return lc


class CorrectedContextRetriever(BaseRetriever):
    """CRAG's corrected context as a ``BaseRetriever``: the wrapped retriever's documents,
    graded, refined into their relevant strips, and completed from ``external`` when they
    fall short. Returns at most ``k`` passages (documents judged irrelevant are dropped);
    ``metadata`` holds ``crag_action``, ``crag_score`` and the source document's fields.
    ``config``: a :class:`CRAGConfig`, a dict of its settings or a saved one's path.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: Any
    llm: Any
    evaluator: Any = None
    external: Any = None
    k: int = 4
    config: Any = None
    _core: CorrectiveRAG | None = PrivateAttr(default=None)

    @property
    def core(self) -> CorrectiveRAG:
        if self._core is None:
            self._core = CorrectiveRAG(
                self.llm, lc_source(self.retriever), evaluator=_evaluator(self.evaluator),
                external=None if self.external is None else lc_source(self.external),
                config=as_config(CRAGConfig, self.config))
        return self._core

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None) -> list[LCDocument]:
        ctx = self.core.correct(query)
        return _passages(ctx, k or self.k)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
    ) -> list[LCDocument]:
        ctx = await asyncio.to_thread(self.core.correct, query)
        return _passages(ctx, k or self.k)


def _passages(ctx: CorrectedContext, k: int) -> list[LCDocument]:
    best = sorted(ctx.passages, key=lambda d: -(d.score or 0.0))[:k]
    order = {id(d): i for i, d in enumerate(ctx.passages)}
    best.sort(key=lambda d: order[id(d)])
    out = []
    for doc in best:
        lc = to_lc_document(doc)
        lc.metadata["crag_action"] = ctx.action
        out.append(lc)
    return out

