"""GraphRAG: a knowledge graph a 135M model can build, stored in a real graph database.

>>> from expertrag.graph import GraphRAG
>>> graph = GraphRAG(".expertrag/graph")           # embedded Ladybug database in that folder
>>> graph.insert(documents)                        # spaCy entities + co-occurrence, no LLM
>>> graph.retrieve("Who founded the cooperative?", k=5, mode="ppr")
"""

from expertrag.graph.extract import (
    Entity,
    Extraction,
    ExtractionError,
    LLMExtractor,
    Relation,
    SpacyExtractor,
    normalize,
)
from expertrag.graph.index import MODES, Community, GraphConfig, GraphRAG, InsertReport
from expertrag.graph.store import GraphStore, GraphStoreError

__all__ = [
    "MODES",
    "Community",
    "Entity",
    "Extraction",
    "ExtractionError",
    "GraphConfig",
    "GraphRAG",
    "GraphStore",
    "GraphStoreError",
    "InsertReport",
    "LLMExtractor",
    "Relation",
    "SpacyExtractor",
    "normalize",
]
