"""Issue 45, part 3, on the real models: the shipped grounded-qa expert, chosen by name in
either chat skin, gets the frameworks' own RAG prompts in its format and cites."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.integration

CORPUS = [
    "The Saltmere Head lighthouse was built in 1862 on the northern cliffs.",
    "Bread is baked from flour, water, salt and yeast.",
]
QUESTION = "When was the Saltmere Head lighthouse built?"
CITE = re.compile(r"\[\d+\]")


def test_llama_index_query_engine_with_grounded_qa_cites() -> None:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode

    from llama_index.embeddings.expertrag import ExpertEmbedding
    from llama_index.llms.expertrag import ExpertLlamaLLM

    index = VectorStoreIndex([TextNode(text=t) for t in CORPUS], embed_model=ExpertEmbedding())
    llm = ExpertLlamaLLM(expert="grounded-qa", max_new_tokens=32)
    answer = str(index.as_query_engine(llm=llm, similarity_top_k=2).query(QUESTION))
    assert "1862" in answer and CITE.search(answer), answer
    plain = ExpertLlamaLLM(expert="grounded-qa", expert_prompt=False, max_new_tokens=32)
    assert plain.model == "smollm2-135m-instruct"


def test_langchain_rag_prompt_with_grounded_qa_cites() -> None:
    from langchain_core.prompts import ChatPromptTemplate

    from langchain_expertrag import ChatExpertLLM

    prompt = ChatPromptTemplate.from_messages([
        ("system", "Answer briefly using only the context."),
        ("human", "Context: {context}\n\nQuestion: {question}"),
    ])
    chain = prompt | ChatExpertLLM(expert="grounded-qa", max_tokens=32)
    answer = chain.invoke({"context": "\n\n".join(CORPUS), "question": QUESTION}).content
    assert "1862" in answer and CITE.search(answer), answer
