"""Cookbook 05: a knowledge-graph retriever in a LangChain chain and a LlamaIndex engine.

The graph is built without any LLM: spaCy finds the entities (names and noun phrases) of
each chunk, entities in one sentence are linked, and name variants meet by normalisation and
embedding similarity. It lives in an embedded graph database (Ladybug) in a folder, so it
survives restarts, and documents can be inserted and deleted one by one.

1. **Build** the graph from the sample corpus; look at its size.
2. **Search** it: Personalized PageRank from the question's entities (``mode="ppr"``), or the
   entities' neighbourhood with the paths that connect them (``mode="local"``).
3. **Look at it**: export GraphML and draw the subgraph behind an answer.
4. **LangChain**: ``ExpertGraphRetriever`` is a ``BaseRetriever`` in an LCEL chain.
5. **LlamaIndex**: ``ExpertGraphRetriever`` in a ``RetrieverQueryEngine``.

    python cookbooks/05_graph_rag.py
"""

from __future__ import annotations

import os
import tempfile
from importlib import resources
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from expertrag.graph import GraphRAG
from expertrag.ingest import load_folder
from expertrag.models import ExpertLLM

QUESTION = "When is Lantern Night held?"


def build(folder: Path) -> GraphRAG:
    graph = GraphRAG(folder / "graph")
    with resources.as_file(resources.files("expertrag") / "data" / "sample_corpus") as corpus:
        docs = load_folder(corpus)
    report = graph.insert(docs, progress=False)
    print(f"graph: {report.documents} documents, {report.passages} passages, "
          f"{report.new_entities} entities, {report.relations} relations, "
          f"{report.synonyms} synonym edges in {report.seconds:.1f} s")
    return graph


def search(graph: GraphRAG, folder: Path) -> None:
    for mode in ("ppr", "local"):
        top = graph.retrieve(QUESTION, k=2, mode=mode)
        print(f"{mode}: {[d.id for d in top]} linked {top[0].metadata.get('linked_entities')}")
        if mode == "local":
            print("  paths:", top[0].metadata.get("paths", [])[:2])
    graph.export_graphml(folder / "graph.graphml")
    graph.draw(graph.retrieve(QUESTION, k=2), folder / "answer.png")
    print(f"exported {folder / 'graph.graphml'} and {folder / 'answer.png'}")


def langchain(graph: GraphRAG, llm: ExpertLLM) -> None:
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough

    from expertrag.experts.grounded_qa import INSTRUCTIONS
    from langchain_expertrag import ChatExpertLLM, ExpertGraphRetriever

    retriever = ExpertGraphRetriever(graph=graph, k=3)
    prompt = ChatPromptTemplate.from_messages([(
        "human", "Read the passages and answer the question.\n\n{context}\n\n"
        "Question: {question}\n" + INSTRUCTIONS.replace("{", "{{").replace("}", "}}"))])
    chain = (
        {"context": retriever | (lambda docs: "\n\n".join(
            f"[{i}] {d.page_content}" for i, d in enumerate(docs, 1))),
         "question": RunnablePassthrough()}
        | prompt
        | ChatExpertLLM.from_core(llm, expert="grounded-qa", max_tokens=48)
        | StrOutputParser()
    )
    context = retriever.invoke(QUESTION)
    print("LangChain context holds the answer:",
          any("third Saturday" in " ".join(d.page_content.split()) for d in context))
    print("LangChain answer:", chain.invoke(QUESTION))


def llama_index(graph: GraphRAG, llm: ExpertLLM) -> None:
    from llama_index.core.query_engine import RetrieverQueryEngine

    from llama_index.llms.expertrag import ExpertLlamaLLM
    from llama_index.retrievers.expertrag import ExpertGraphRetriever

    engine = RetrieverQueryEngine.from_args(
        ExpertGraphRetriever(graph=graph, k=2),
        llm=ExpertLlamaLLM.from_core(llm, max_new_tokens=48))
    response = engine.query(QUESTION)
    print("LlamaIndex answer:", str(response).strip())
    print("  sources:", [n.node.node_id for n in response.source_nodes])


def main() -> None:
    from expertrag.experts import attach_shipped

    folder = Path(tempfile.mkdtemp(prefix="expertrag-graph-cookbook-"))
    graph = build(folder)
    search(graph, folder)
    llm = ExpertLLM.shared()
    attach_shipped(llm, ["grounded-qa"])
    langchain(graph, llm)
    llama_index(graph, llm)
    graph.close()


if __name__ == "__main__":
    main()
