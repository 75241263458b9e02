"""The reranker skins: LangChain document compressor and hybrid retriever (standard suite with
a word-count embedder), LlamaIndex node postprocessor (rerank events, a real
VectorStoreIndex query engine) and hybrid retriever. Fast: no real models."""

from __future__ import annotations

from typing import Any

import pytest
from tiny_rerankers import FixedReranker, WordEmbedder

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from langchain_core.documents import Document as LCDocument
from langchain_tests.integration_tests import RetrieversIntegrationTests

from expertrag.langchain.rerankers import ExpertReranker
from expertrag.langchain.retrievers import ExpertHybridRetriever

TEXTS = [
    "Paris is the capital and largest city of France.",
    "The cat sat on the mat all afternoon.",
    "Dogs are loyal animals that love running.",
    "Bread is made from flour, water and yeast.",
    "The Seine river flows through Paris.",
]
SCORES = {TEXTS[0]: 0.9, TEXTS[1]: 0.1, TEXTS[2]: 0.3, TEXTS[3]: 0.2, TEXTS[4]: 0.8}


# ------------------------------------------------------------------ LangChain
def lc_docs() -> list[LCDocument]:
    return [LCDocument(page_content=t, id=f"d{i}", metadata={"i": i})
            for i, t in enumerate(TEXTS)]


def test_compressor_sync_and_async() -> None:
    comp = ExpertReranker(FixedReranker(SCORES), top_n=2)
    out = comp.compress_documents(lc_docs(), "capital of France")
    assert [d.id for d in out] == ["d0", "d4"]
    assert out[0].metadata == {"i": 0, "rerank_score": 0.9}
    import asyncio

    out_a = asyncio.run(comp.acompress_documents(lc_docs(), "capital of France"))
    assert [d.id for d in out_a] == ["d0", "d4"]
    assert comp.compress_documents([], "q") == []
    thresholded = ExpertReranker(reranker=FixedReranker(SCORES), top_n=None, threshold=0.25)
    assert [d.id for d in thresholded.compress_documents(lc_docs(), "q")] == ["d0", "d4", "d2"]


def test_contextual_compression_retriever_and_lcel() -> None:
    ccr_mod = pytest.importorskip("langchain_classic.retrievers.contextual_compression")
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough

    base = ExpertHybridRetriever(documents=TEXTS, embedder=WordEmbedder(), k=5)
    retriever = ccr_mod.ContextualCompressionRetriever(
        base_compressor=ExpertReranker(FixedReranker(SCORES), top_n=2), base_retriever=base)
    got = retriever.invoke("Paris")
    assert [d.page_content for d in got] == [TEXTS[0], TEXTS[4]]
    seen: list[str] = []

    def fmt(docs: list[LCDocument]) -> str:
        seen.append("\n".join(d.page_content for d in docs))
        return seen[-1]

    prompt = ChatPromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")
    chain = ({"context": retriever | fmt, "question": RunnablePassthrough()} | prompt
             | FakeListChatModel(responses=["Paris."]) | StrOutputParser())
    assert chain.invoke("What is the capital of France?") == "Paris."
    assert seen[-1].startswith(TEXTS[0])
    import asyncio

    assert asyncio.run(chain.ainvoke("Paris?")) == "Paris."


def test_hybrid_retriever_k_override() -> None:
    r = ExpertHybridRetriever(documents=lc_docs(), embedder=WordEmbedder(), k=2)
    out = r.invoke("capital of France")
    assert len(out) == 2 and out[0].id == "d0"
    assert out[0].metadata["rrf_score"] > 0 and out[0].metadata["i"] == 0
    assert len(r.invoke("capital of France", k=4)) == 4


class TestHybridRetrieverStandard(RetrieversIntegrationTests):
    """langchain-tests standard retriever suite (fast, word-count embedder)."""

    @property
    def retriever_constructor(self) -> type[ExpertHybridRetriever]:
        return ExpertHybridRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"documents": TEXTS, "embedder": WordEmbedder()}

    @property
    def retriever_query_example(self) -> str:
        return "Which city is the capital of France?"


# ------------------------------------------------------------------ LlamaIndex
@pytest.fixture
def rerank_events() -> Any:
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler

    class Collect(BaseEventHandler):
        events: list[Any]

        def handle(self, event: Any, **kwargs: Any) -> None:
            if event.class_name().startswith("ReRank"):
                self.events.append(event)

    handler = Collect(events=[])
    root = get_dispatcher()
    root.add_event_handler(handler)
    yield handler.events
    root.event_handlers.remove(handler)


def test_postprocessor_ranks_and_emits_events(rerank_events: list[Any]) -> None:
    from llama_index.core.schema import NodeWithScore, TextNode

    from expertrag.llama_index.postprocessors import ExpertRerank

    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=0.5)
             for i, t in enumerate(TEXTS)]
    post = ExpertRerank(FixedReranker(SCORES), top_n=3, keep_retrieval_score=True)
    out = post.postprocess_nodes(nodes, query_str="capital of France")
    assert [n.node.node_id for n in out] == ["n0", "n4", "n2"]
    assert [n.score for n in out] == [0.9, 0.8, 0.3]
    assert out[0].node.metadata["retrieval_score"] == 0.5
    assert "retrieval_score" not in nodes[0].node.metadata
    names = [e.class_name() for e in rerank_events]
    assert names == ["ReRankStartEvent", "ReRankEndEvent"]
    assert rerank_events[0].top_n == 3 and rerank_events[0].model_name == "reranker"
    assert [n.node.node_id for n in rerank_events[1].nodes] == ["n0", "n4", "n2"]
    assert post.postprocess_nodes([], query_str="q") == []
    import asyncio

    out_a = asyncio.run(post.apostprocess_nodes(nodes, query_str="capital of France"))
    assert [n.node.node_id for n in out_a] == ["n0", "n4", "n2"]
    with pytest.raises(ValueError):
        post.postprocess_nodes(nodes)


def test_postprocessor_in_vector_store_index_query_engine(rerank_events: list[Any]) -> None:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.llms import MockLLM
    from llama_index.core.schema import TextNode

    from expertrag.llama_index.postprocessors import ExpertRerank

    nodes = [TextNode(text=t, id_=f"n{i}") for i, t in enumerate(TEXTS)]
    index = VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(
        llm=MockLLM(max_tokens=5), similarity_top_k=5,
        node_postprocessors=[ExpertRerank(FixedReranker(SCORES), top_n=2)])
    response = engine.query("What is the capital of France?")
    assert [n.node.node_id for n in response.source_nodes] == ["n0", "n4"]
    assert [n.score for n in response.source_nodes] == [0.9, 0.8]
    assert [e.class_name() for e in rerank_events] == ["ReRankStartEvent", "ReRankEndEvent"]


def test_llama_index_hybrid_retriever() -> None:
    from llama_index.core.schema import TextNode

    from expertrag.llama_index.retrievers import ExpertHybridRetriever as LIHybrid

    nodes = [TextNode(text=t, id_=f"n{i}", metadata={"i": i}) for i, t in enumerate(TEXTS)]
    retriever = LIHybrid(nodes, embedder=WordEmbedder(), k=2)
    out = retriever.retrieve("capital of France")
    assert out[0].node.node_id == "n0" and len(out) == 2
    assert out[0].score == out[0].node.metadata["rrf_score"]
    import asyncio

    out_a = asyncio.run(retriever.aretrieve("capital of France"))
    assert [n.node.node_id for n in out_a] == [n.node.node_id for n in out]
