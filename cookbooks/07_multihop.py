"""Cookbook 07: multi-hop questions with MultiHopRAG, in LangChain and LlamaIndex.

"In which town was the engineer who designed the Saltmere Head lighthouse born?" needs two
passages: one names the engineer, the other says where she was born, and nothing in the
question points at the second. One retrieval step finds the lighthouse passages and answers
from them, or not at all. ``MultiHopRAG`` retrieves in a bounded loop with the shipped
``hop`` expert (SmolLM2-135M + LoRA, offline):

1. retrieve for the question; the hop expert keeps the passages that hold a step toward the
   answer (P(yes), one forward pass per passage, batched);
2. asks whether the evidence is enough (P(yes), one forward pass); if not, it names what to
   look up next (a title or short query, one JSON string under a grammar, so it always
   parses and cannot run away) and retrieves again, at most ``max_hops`` times; before
   it does, a lookahead tries the names the evidence mentions beside that query and keeps
   the query unless a name's first new passage is rated clearly higher;
3. ``grounded-qa`` answers from the kept evidence in hop order and cites it.

Then the same chain as a LangChain ``Runnable`` (and its context as a ``BaseRetriever``) and
as a LlamaIndex query engine.

    python cookbooks/07_multihop.py
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from expertrag.experts import attach_shipped
from expertrag.models import ExpertLLM
from expertrag.retrieval.hybrid import HybridRetriever
from expertrag.types import Document

CORPUS = [
    "The Saltmere Head lighthouse was designed by the engineer Maren Tollef in 1859.",
    "The Saltmere Head lighthouse was built in 1862 from granite quarried at Corran.",
    "The Saltmere Head lighthouse tower is 31 metres tall and has 117 steps.",
    "Maren Tollef was born in the fishing town of Kessby and studied engineering in "
    "Edinburgh.",
    "The cooperative's bakery sells rye bread to visitors on market days.",
    "Kessby harbour freezes over in hard winters.",
]
QUESTION = "In which town was the engineer who designed the Saltmere Head lighthouse born?"


def core(llm: ExpertLLM, retriever: HybridRetriever) -> None:
    from expertrag.chains import MultiHopConfig, MultiHopRAG, RAGPipeline

    naive = RAGPipeline(llm, retriever, k=2, expert="grounded-qa").answer(QUESTION)
    print(f"naive RAG (one step, k=2): {naive.text}  passages "
          f"{[d.id for d in naive.passages]}")
    rag = MultiHopRAG(llm, retriever, MultiHopConfig(k=2))
    res = rag.answer(QUESTION)
    for hop in res.hops:
        print(f"hop {hop.number}: query {hop.query!r} -> kept {[d.id for d in hop.kept]} "
              f"(keep {[round(s, 2) for s in hop.keep_scores]}, stop "
              f"{'-' if hop.stop_probability is None else round(hop.stop_probability, 2)}, "
              f"next {hop.next_query!r})")
        if hop.lookahead:
            print("  lookahead: " + ", ".join(f"{q!r} {p:.2f}" for q, p in hop.lookahead))
    print(f"MultiHopRAG: {res.answer}  cited {[d.id for d in res.citations]}  "
          f"({res.context.stopped})")


def langchain(llm: ExpertLLM) -> None:
    from langchain_core.runnables import RunnableLambda

    from langchain_expertrag import ExpertHybridRetriever, MultiHopRAGChain, MultiHopRetriever

    retriever = ExpertHybridRetriever(documents=CORPUS, k=2)
    chain = MultiHopRAGChain(llm, retriever, config={"k": 2})
    out = (chain | RunnableLambda(lambda d: d)).invoke(QUESTION)
    print(f"LangChain MultiHopRAGChain: {out['answer']}  queries "
          f"{[h['query'] for h in out['hops']]}")
    streamed = "".join(c.get("answer", "") for c in chain.stream(QUESTION))
    print(f"LangChain stream: {streamed}")
    docs = MultiHopRetriever(retriever=retriever, llm=llm, k=3, config={"k": 2}).invoke(QUESTION)
    found = [(d.metadata["hop"], d.page_content[:40]) for d in docs]
    print(f"LangChain MultiHopRetriever: {found}")


def llama_index(llm: ExpertLLM) -> None:
    from llama_index.query_engine.expertrag import MultiHopQueryEngine
    from llama_index.retrievers.expertrag import ExpertHybridRetriever

    engine = MultiHopQueryEngine(llm, ExpertHybridRetriever(documents=CORPUS, k=2),
                                 config={"k": 2})
    response = engine.query(QUESTION)
    print(f"LlamaIndex MultiHopQueryEngine: {response.response}  hops "
          f"{len(response.metadata['hops'])}")


def main() -> None:
    llm = ExpertLLM()
    attach_shipped(llm)
    docs = [Document(text, id=f"doc{i}") for i, text in enumerate(CORPUS)]
    core(llm, HybridRetriever(docs, k=2))
    try:
        langchain(llm)
    except ImportError:
        print("(pip install 'expertrag[langchain]' for the LangChain part)")
    try:
        llama_index(llm)
    except ImportError:
        print("(pip install 'expertrag[llama-index]' for the LlamaIndex part)")


if __name__ == "__main__":
    main()
