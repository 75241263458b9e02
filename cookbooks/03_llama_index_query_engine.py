"""Cookbook 3: expertrag's LLM and embedding inside a LlamaIndex query engine.

``ExpertLlamaLLM`` is a LlamaIndex ``FunctionCallingLLM`` over the local LoRA-expert model,
``ExpertEmbedding`` a ``BaseEmbedding`` over the embedded all-MiniLM-L6-v2. They drop into
``VectorStoreIndex(...).as_query_engine()`` like any hosted model would - offline.

    python cookbooks/03_llama_index_query_engine.py

Steps:
1. read the packaged sample corpus into LlamaIndex ``Document``s;
2. build a ``VectorStoreIndex`` with ``ExpertEmbedding``;
3. query it through ``as_query_engine(llm=ExpertLlamaLLM(...))`` and show the sources;
4. ask for a structured answer through ``as_structured_llm`` (grammar-constrained JSON).
"""

from __future__ import annotations

import os
from importlib import resources

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.llms import ChatMessage
from llama_index.core.node_parser import SentenceSplitter
from pydantic import BaseModel

from llama_index.embeddings.expertrag import ExpertEmbedding
from llama_index.llms.expertrag import ExpertLlamaLLM

# 1. documents
folder = resources.files("expertrag") / "data" / "sample_corpus"
documents = [
    Document(text=f.read_text("utf-8"), metadata={"source": f.name})
    for f in sorted(folder.iterdir(), key=lambda p: p.name)
    if f.name.endswith(".md")
]

# 2. the index, embedded offline
index = VectorStoreIndex.from_documents(
    documents,
    embed_model=ExpertEmbedding(),
    transformations=[SentenceSplitter(chunk_size=256, chunk_overlap=20)],
)

# 3. the query engine with the local expert LLM
llm = ExpertLlamaLLM(max_new_tokens=64)  # expert="grounded-qa", experts={...} to use one
engine = index.as_query_engine(llm=llm, similarity_top_k=2)
response = engine.query("How many steps are there from the ground floor to the lantern room?")
print("A:", str(response).strip())
for node in response.source_nodes:
    print(f"  source: {node.metadata['source']} (score {node.score:.2f})")


# 4. structured output: always valid for the schema
class Fact(BaseModel):
    subject: str
    year: int


structured = llm.as_structured_llm(Fact)
reply = structured.chat([ChatMessage(role="user", content="The lighthouse was built in 1862.")])
print("structured:", reply.raw)
