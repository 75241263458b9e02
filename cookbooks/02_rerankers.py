"""Cookbook 02: add a reranker to a LangChain chain and to a LlamaIndex query engine.

Retrieval casts a wide net; a reranker reads each (question, passage) pair together and puts
the passages that really answer the question first, so the generator sees less noise.

Walk-through (runs offline in well under a minute on 2 CPU cores):

1. **Hybrid first stage.** ``HybridRetriever`` fuses BM25 (keywords: names, rare terms) with
   dense retrieval (all-MiniLM-L6-v2: paraphrases) by reciprocal rank fusion.
2. **Rerank.** ``LLMReranker.with_relevance_expert`` scores each candidate with the local
   SmolLM2 and its shipped ``relevance`` LoRA expert as P("yes") to "does this passage help
   answer the question?", from one forward pass per pair (no generation). The bare model,
   prompted, is a poor grader at 135M parameters (nDCG@10 0.36 against the expert's 0.77 on
   the MS MARCO sample in ``benchmarks/bench_rerank_quality.py``). Swap in
   ``CrossEncoderReranker("cross-encoder/ms-marco-MiniLM-L6-v2")`` when you have the weights,
   or ``EmbeddingReranker()`` as a free baseline: every reranker has the same interface.
3. **Order for the prompt.** ``lost_in_the_middle_reorder`` puts the strongest passages at
   both ends of the context, where small models attend best.
4. **LangChain.** ``ExpertReranker`` is a ``BaseDocumentCompressor``: wrap any retriever in a
   ``ContextualCompressionRetriever`` and use it in an LCEL chain.
5. **LlamaIndex.** ``ExpertRerank`` is a ``BaseNodePostprocessor``: pass it to
   ``VectorStoreIndex(...).as_query_engine(node_postprocessors=[...])``.

    python cookbooks/02_rerankers.py
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from expertrag.models import ExpertLLM
from expertrag.rerank import LLMReranker, lost_in_the_middle_reorder
from expertrag.retrieval.hybrid import HybridRetriever
from expertrag.types import Document

CORPUS = [
    "The lighthouse cooperative was founded in 1921 by fishermen from the harbour.",
    "Members pay a yearly fee of 40 euros and take at least two watch shifts a month.",
    "The lamp is a first-order Fresnel lens lit by a 1000-watt halogen bulb.",
    "Visitors may climb the tower on Saturdays between 10:00 and 16:00.",
    "During storms the watch keeper logs wind speed every hour in the red book.",
    "The cooperative's bakery sells rye bread to visitors on market days.",
    "Children under eight may not climb the tower for safety reasons.",
    "The foghorn sounds two blasts every thirty seconds in poor visibility.",
]
QUESTION = "When can visitors climb the lighthouse tower?"


def core_walkthrough(reranker: LLMReranker) -> None:
    """Steps 1-3 with the core API only."""
    first = HybridRetriever([Document(t) for t in CORPUS], k=5)
    candidates = first.retrieve(QUESTION)
    print("hybrid first stage:")
    for d in candidates:
        print(f"  rrf={d.score:.4f}  {d.text}")
    ranked = reranker.rerank(QUESTION, candidates, top_n=3)
    print("after the LLM reranker (P(yes), relevance expert):")
    for d in ranked:
        print(f"  p={d.score:.3f}  {d.text}")
    order = lost_in_the_middle_reorder(ranked)
    print("context order for the prompt:", [d.text[:30] for d in order])


def langchain_chain(llm: ExpertLLM, reranker: LLMReranker) -> str:
    """Step 4: ContextualCompressionRetriever + an LCEL chain."""
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough

    from langchain_expertrag import ChatExpertLLM, ExpertHybridRetriever, ExpertReranker

    retriever = ContextualCompressionRetriever(
        base_retriever=ExpertHybridRetriever(documents=CORPUS, k=5),
        base_compressor=ExpertReranker(reranker, top_n=2),
    )
    prompt = ChatPromptTemplate.from_messages([
        ("system", "Answer the question using only the context. Be brief."),
        ("human", "Context:\n{context}\n\nQuestion: {question}"),
    ])
    chain = (
        {"context": retriever | (lambda docs: "\n".join(d.page_content for d in docs)),
         "question": RunnablePassthrough()}
        | prompt
        | ChatExpertLLM.from_core(llm, max_tokens=40)
        | StrOutputParser()
    )
    answer = chain.invoke(QUESTION)
    print("LangChain answer:", answer)
    return answer


def llama_index_engine(llm: ExpertLLM, reranker: LLMReranker) -> str:
    """Step 5: a VectorStoreIndex query engine with the reranker as node postprocessor."""
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode

    from llama_index.embeddings.expertrag import ExpertEmbedding
    from llama_index.llms.expertrag import ExpertLlamaLLM
    from llama_index.postprocessor.expertrag_rerank import ExpertRerank

    index = VectorStoreIndex([TextNode(text=t) for t in CORPUS], embed_model=ExpertEmbedding())
    engine = index.as_query_engine(
        llm=ExpertLlamaLLM.from_core(llm, max_new_tokens=40),
        similarity_top_k=5,
        node_postprocessors=[ExpertRerank(reranker, top_n=2)],
    )
    response = engine.query(QUESTION)
    print("LlamaIndex answer:", str(response).strip())
    for n in response.source_nodes:
        print(f"  source p={n.score:.3f}  {n.node.get_content()}")
    return str(response)


def main() -> None:
    llm = ExpertLLM.shared()  # the embedded SmolLM2-135M-Instruct, loaded once
    reranker = LLMReranker.with_relevance_expert(llm, batch_size=8)  # attaches the expert
    core_walkthrough(reranker)
    langchain_chain(llm, reranker)
    llama_index_engine(llm, reranker)


if __name__ == "__main__":
    main()
