"""Cookbook 04: Corrective RAG and Self-RAG inside a LangChain chain and a LlamaIndex engine.

Both chains run on the one local SmolLM2-135M with its shipped LoRA experts, offline, and
every decision is a probability read from one forward pass (nothing to parse, nothing that
can fail to parse):

1. **Corrective RAG.** The ``relevance`` expert grades each retrieved passage. Correct
   (some passage clearly relevant): knowledge refinement keeps the best-graded passages
   (``CRAGConfig(strips="sentences")`` cuts them into sentence strips instead) and the
   ``grounded-qa`` expert answers from them, citing the source documents.
   Incorrect (nothing relevant): with no external source the chain says "I don't know"
   instead of answering from passages it judged irrelevant; give it one (here a tiny
   "web" corpus, in real life a search tool) and it searches there with a keyword query.
2. **Self-RAG.** The ``critic`` expert decides whether to retrieve at all (a poem needs no
   documents), grades each passage (IsRel), each candidate answer's support (IsSup) and
   usefulness (IsUse); the best-scored candidate wins.
3. **LangChain.** ``CorrectiveRAGChain`` / ``SelfRAGChain`` are Runnables: compose them with
   ``|``, ``batch`` them (the model calls are batched), ``stream`` the CRAG answer.
   ``CorrectedContextRetriever`` is CRAG's corrected context as a ``BaseRetriever``.
4. **LlamaIndex.** ``CorrectiveRAGQueryEngine`` / ``SelfRAGQueryEngine`` go where a query
   engine goes and emit instrumentation events for each stage.

    python cookbooks/04_corrective_and_self_rag.py
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
    "The Saltmere Head lighthouse was built in 1862. The tower is 31 metres tall and is made "
    "of granite from the Corran quarry.",
    "Visitors may climb the tower on Saturdays between 10:00 and 16:00. There are 117 steps "
    "from the ground floor to the lantern room.",
    "The cooperative's bakery sells rye bread to visitors on market days.",
    "During storms the watch keeper logs the wind speed every hour in the red book.",
]
WEB = [  # stands in for a web-search tool: what the internal corpus does not hold
    "The Corran Bay ferry leaves the harbour at 9:15 every morning from May to September.",
    "Saltmere village has a population of about 1,200 people.",
]
ASK = "When was the Saltmere Head lighthouse built?"
NOT_THERE = "When does the Corran Bay ferry leave the harbour?"


def core(llm: ExpertLLM, retriever: HybridRetriever) -> None:
    from expertrag.chains import CorrectiveRAG, SelfRAG

    crag = CorrectiveRAG(llm, retriever)
    for question in (ASK, NOT_THERE):
        res = crag.answer(question)
        print(f"CRAG [{res.action}] {question} -> {res.answer}")
        print(f"  scores {[round(s, 2) for s in res.context.scores]}, "
              f"cited {[d.id for d in res.citations]}")
    web = HybridRetriever([Document(t, id=f"web{i}") for i, t in enumerate(WEB)], k=2)
    res = CorrectiveRAG(llm, retriever, external=web).answer(NOT_THERE)
    print(f"CRAG + web [{res.action}] query {res.context.rewritten_query!r} -> {res.answer}")
    self_rag = SelfRAG(llm, retriever)
    for question in (ASK, "Write a two-line poem about the sea."):
        res = self_rag.answer(question)
        print(f"Self-RAG retrieve p={res.retrieve_probability:.2f} ({res.retrieved}) -> "
              f"{res.answer[:80]}")


def langchain(llm: ExpertLLM) -> None:
    from langchain_core.runnables import RunnableLambda

    from langchain_expertrag import (
        CorrectedContextRetriever,
        CorrectiveRAGChain,
        ExpertHybridRetriever,
        SelfRAGChain,
    )

    retriever = ExpertHybridRetriever(documents=CORPUS, k=3)
    chain = CorrectiveRAGChain(llm, retriever) | RunnableLambda(
        lambda out: f"{out['answer']} ({out['action']})")
    print("LangChain CRAG:", chain.invoke(ASK))
    streamed = "".join(c.get("answer", "") for c in CorrectiveRAGChain(llm, retriever)
                       .stream(ASK))
    print("LangChain CRAG streamed:", streamed)
    docs = CorrectedContextRetriever(retriever=retriever, llm=llm, k=2).invoke(ASK)
    print("LangChain corrected context:", [d.page_content[:40] for d in docs])
    out = SelfRAGChain(llm, retriever).batch([ASK, "Say hello in a friendly way."])
    print("LangChain Self-RAG:", [o["answer"][:60] for o in out])


def llama_index(llm: ExpertLLM) -> None:
    from llama_index.query_engine.expertrag import CorrectiveRAGQueryEngine, SelfRAGQueryEngine
    from llama_index.retrievers.expertrag import ExpertHybridRetriever

    retriever = ExpertHybridRetriever(CORPUS, k=3)
    response = CorrectiveRAGQueryEngine(llm, retriever).query(ASK)
    print("LlamaIndex CRAG:", response.response, response.metadata["action"],
          [n.node.get_content()[:30] for n in response.source_nodes])
    response = SelfRAGQueryEngine(llm, retriever).query(ASK)
    print("LlamaIndex Self-RAG:", response.response, response.metadata["retrieved"])


def main() -> None:
    llm = ExpertLLM()
    attach_shipped(llm)  # grounded-qa, relevance, critic
    retriever = HybridRetriever([Document(t, id=f"doc{i}") for i, t in enumerate(CORPUS)], k=3)
    core(llm, retriever)
    langchain(llm)
    llama_index(llm)


if __name__ == "__main__":
    main()
