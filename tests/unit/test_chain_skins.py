"""The chains' LangChain and LlamaIndex skins with fake models (conversion, batching,
streaming, events, sources)."""

from __future__ import annotations

import pytest
from test_chains import STRIPPED, FakeCritic, FakeLLM, KeywordEvaluator

from expertrag.chains.corrective import CRAGConfig
from expertrag.types import Document

pytest.importorskip("langchain_core")

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LCDocument
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool

from expertrag.langchain.chains import (
    CorrectedContextRetriever,
    CorrectiveRAGChain,
    SelfRAGChain,
    lc_source,
)

TEXTS = ["Paris is the capital of France.", "Dogs bark loudly.", "France is in Europe."]


class ListRetriever(BaseRetriever):
    texts: list[str]

    def _get_relevant_documents(self, query: str, *,
                                run_manager: CallbackManagerForRetrieverRun) -> list[LCDocument]:
        return [LCDocument(page_content=t, id=f"lc{i}", metadata={"n": i})
                for i, t in enumerate(self.texts)]


def lc_crag(**config) -> tuple[CorrectiveRAGChain, FakeLLM, KeywordEvaluator]:
    llm, ev = FakeLLM(), KeywordEvaluator()
    chain = CorrectiveRAGChain(llm, ListRetriever(texts=TEXTS), evaluator=ev,
                               config=CRAGConfig(**{"upper": 0.8, "lower": 0.3, **STRIPPED,
                                                    **config}))
    return chain, llm, ev


def test_crag_runnable_invoke_batch_and_lcel():
    chain, _, ev = lc_crag(strips="passage")
    out = chain.invoke("What is the capital of France?")
    assert out["answer"] == "Paris [1]." and out["action"] == "correct"
    assert isinstance(out["citations"][0], LCDocument) and out["citations"][0].id == "lc0"
    assert chain.invoke({"question": "Capital of France?"})["answer"] == "Paris [1]."
    ev.calls.clear()
    outs = chain.batch(["Capital of France?", "Where is Paris?"])
    assert [o["answer"] for o in outs] == ["Paris [1]."] * 2
    assert ev.calls == [6]  # both questions' documents scored in one pass
    pipeline = chain | RunnableLambda(lambda d: d["answer"].upper())
    assert pipeline.invoke("Capital of France?") == "PARIS [1]."
    with pytest.raises(ValueError, match="question"):
        chain.invoke({"text": "no question key"})


async def test_crag_runnable_async_and_streaming():
    chain, _, _ = lc_crag()
    assert (await chain.ainvoke("Capital of France?"))["answer"] == "Paris [1]."
    chunks = list(chain.stream("Capital of France?"))
    assert chunks[0]["action"] == "correct" and "answer" not in chunks[0]
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total["answer"] == "Paris [1]." and total["citations"][0].id == "lc0"
    pieces = [c async for c in chain.astream("Capital of France?")]
    assert "".join(c.get("answer", "") for c in pieces) == "Paris [1]."
    events = [e async for e in chain.astream_events("Capital of France?", version="v2")]
    custom = {e["name"] for e in events if e["event"] == "on_custom_event"}
    assert {"expertrag_actions", "expertrag_evaluate_end"} <= custom


def test_self_rag_runnable():
    llm = FakeLLM()
    chain = SelfRAGChain(llm, ListRetriever(texts=TEXTS), critic=FakeCritic())
    out = chain.invoke("What is the capital of France?")
    assert out["answer"] == "Paris [1]." and out["retrieved"]
    assert out["citations"][0].page_content == TEXTS[0]
    assert len(out["candidates"]) >= 2
    assert [o["answer"] for o in chain.batch(["Capital of France?"] * 2)] == ["Paris [1]."] * 2


def test_lc_sources_retrievers_and_tools():
    docs = lc_source(ListRetriever(texts=TEXTS))("q", 2)
    assert [d.text for d in docs] == TEXTS[:2] and docs[0].id == "lc0"

    @tool
    def web_search(query: str) -> list[dict]:
        """Search the web."""
        return [{"url": "https://a", "content": f"Result for {query}"}, {"content": ""}]

    found = lc_source(web_search)("capital France", 3)
    assert [d.text for d in found] == ["Result for capital France"]
    assert found[0].id == "https://a"
    chain = CorrectiveRAGChain(FakeLLM(), lambda q, k: [Document(text="Dogs bark.")],
                               evaluator=KeywordEvaluator(), external=web_search,
                               config=CRAGConfig(upper=0.8, lower=0.3, **STRIPPED))
    out = chain.invoke("What is the capital of France?")
    assert out["action"] == "incorrect" and out["rewritten_query"] == "France capital"
    assert out["context"][0].page_content == "Result for France capital"


def test_corrected_context_retriever_for_langchain():
    retriever = CorrectedContextRetriever(retriever=ListRetriever(texts=TEXTS), llm=FakeLLM(),
                                          evaluator=KeywordEvaluator(), k=3,
                                          config=CRAGConfig(upper=0.8, lower=0.3, **STRIPPED))
    docs = retriever.invoke("Capital of France?")
    assert [d.page_content for d in docs] == [TEXTS[0], TEXTS[2]]  # "Dogs" judged irrelevant
    assert all(d.metadata["crag_action"] == "correct" for d in docs)
    assert len(retriever.invoke("Capital of France?", k=1)) == 1


# ------------------------------------------------------------------------------ LlamaIndex
def test_llama_index_retriever_engines_and_events():
    pytest.importorskip("llama_index.core")
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.retrievers import BaseRetriever as LIRetriever
    from llama_index.core.schema import NodeWithScore, TextNode

    from expertrag.llama_index.chains import (
        CorrectedContextRetriever as LICorrected,
    )
    from expertrag.llama_index.chains import (
        CorrectiveRAGQueryEngine,
        SelfRAGQueryEngine,
    )

    class Nodes(LIRetriever):
        def _retrieve(self, query_bundle):
            return [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=1.0)
                    for i, t in enumerate(TEXTS)]

    seen: list[str] = []

    class Collect(BaseEventHandler):
        def handle(self, event, **kwargs):
            seen.append(event.class_name())

    get_dispatcher("expertrag.llama_index.chains").add_event_handler(Collect())
    cfg = CRAGConfig(upper=0.8, lower=0.3, **STRIPPED)
    nodes = LICorrected(Nodes(), FakeLLM(), evaluator=KeywordEvaluator(), k=4,
                        config=cfg).retrieve("Capital of France?")
    assert [n.node.node_id for n in nodes] == ["n0", "n2"]
    assert nodes[0].node.metadata["crag_action"] == "correct"
    engine = CorrectiveRAGQueryEngine(FakeLLM(), Nodes(), evaluator=KeywordEvaluator(),
                                      config=cfg)
    response = engine.query("What is the capital of France?")
    assert response.response == "Paris [1]." and response.metadata["action"] == "correct"
    assert response.source_nodes[0].node.node_id == "n0"
    assert {"CRAGActionEvent", "ChainStageEvent"} <= set(seen)
    self_rag = SelfRAGQueryEngine(FakeLLM(), Nodes(), critic=FakeCritic())
    response = self_rag.query("What is the capital of France?")
    assert response.response == "Paris [1]." and response.metadata["retrieved"]
    assert "SelfRAGRetrieveEvent" in seen


# ------------------------------------------------------------------------------ multi-hop
from langchain_tests.integration_tests import RetrieversIntegrationTests  # noqa: E402
from test_multihop import DOCS, QUESTION, FakeHopLLM, overlap_retriever  # noqa: E402

from expertrag.chains.multihop import MultiHopConfig  # noqa: E402
from expertrag.langchain.chains import MultiHopRAGChain, MultiHopRetriever  # noqa: E402


class OverlapLC(BaseRetriever):
    """The multi-hop fixture corpus as a LangChain retriever (top 2 by shared words)."""

    def _get_relevant_documents(self, query: str, *,
                                run_manager: CallbackManagerForRetrieverRun) -> list[LCDocument]:
        return [LCDocument(page_content=d.text, id=d.id, metadata={"src": d.id})
                for d in overlap_retriever()(query, 2)]


async def test_multihop_runnable_invoke_batch_stream_and_events():
    chain = MultiHopRAGChain(FakeHopLLM(), OverlapLC(), config={"k": 2, "assemble": "evidence"})
    out = chain.invoke(QUESTION)
    assert out["answer"] == "Lyon [3]." and out["citations"][0].id == "roe"
    assert [h["query"] for h in out["hops"]] == [QUESTION, "Jane Roe"]
    assert out["hops"][1]["kept"] == ["roe"] and out["stopped"] == "enough"
    assert [o["answer"] for o in chain.batch([QUESTION, {"question": QUESTION}])] == \
        ["Lyon [3]."] * 2
    chunks = list(chain.stream(QUESTION))
    assert "hops" in chunks[0] and "answer" not in chunks[0]
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total["answer"] == "Lyon [3]." and total["citations"][0].id == "roe"
    events = [e async for e in chain.astream_events(QUESTION, version="v2")]
    custom = {e["name"] for e in events if e["event"] == "on_custom_event"}
    assert {"expertrag_keep_end", "expertrag_next_end", "expertrag_generate_end"} <= custom


def test_multihop_retriever_returns_the_context_in_hop_order():
    retriever = MultiHopRetriever(retriever=OverlapLC(), llm=FakeHopLLM(), k=5,
                                  config=MultiHopConfig(k=2, assemble="evidence"))
    docs = retriever.invoke(QUESTION)
    assert [d.id for d in docs] == ["film", "prize", "roe"]
    assert [d.metadata["hop"] for d in docs] == [1, 1, 2]
    assert docs[2].metadata["keep_score"] == 0.9 and docs[2].metadata["src"] == "roe"
    assert len(retriever.invoke(QUESTION, k=1)) == 1


class TestMultiHopRetrieverStandard(RetrieversIntegrationTests):
    """langchain-tests standard retriever suite (fake hop model, 4-passage corpus)."""

    @property
    def retriever_constructor(self) -> type[MultiHopRetriever]:
        return MultiHopRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"retriever": lambda q, k: overlap_retriever()(q, k), "llm": FakeHopLLM(),
                "config": {"k": 4, "assemble": "fill", "context_size": 4}}

    @property
    def retriever_query_example(self) -> str:
        return QUESTION


def test_llama_index_multihop_retriever_and_engine():
    pytest.importorskip("llama_index.core")
    from llama_index.core.retrievers import BaseRetriever as LIRetriever
    from llama_index.core.schema import NodeWithScore, TextNode

    from expertrag.llama_index.chains import MultiHopQueryEngine
    from expertrag.llama_index.chains import MultiHopRetriever as LIMultiHop

    class Nodes(LIRetriever):
        def _retrieve(self, query_bundle):
            return [NodeWithScore(node=TextNode(text=d.text, id_=d.id), score=1.0)
                    for d in overlap_retriever()(query_bundle.query_str, 2)]

    cfg = {"k": 2, "assemble": "evidence"}
    nodes = LIMultiHop(Nodes(), FakeHopLLM(), k=5, config=cfg).retrieve(QUESTION)
    assert [n.node.node_id for n in nodes] == ["film", "prize", "roe"]
    assert nodes[2].node.metadata["hop"] == 2 and nodes[2].score == 0.9
    response = MultiHopQueryEngine(FakeHopLLM(), Nodes(), config=cfg).query(QUESTION)
    assert response.response == "Lyon [3]." and response.source_nodes[0].node.node_id == "roe"
    assert [h["query"] for h in response.metadata["hops"]] == [QUESTION, "Jane Roe"]
    assert len(DOCS) == 4
