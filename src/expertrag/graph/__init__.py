"""GraphRAG: a knowledge graph a 135M model can build, stored in a real graph database.

>>> from expertrag.graph import GraphRAG
>>> graph = GraphRAG(".expertrag/graph")           # embedded Ladybug database in that folder
>>> graph.insert(documents)                        # spaCy entities + co-occurrence, no LLM
>>> graph.retrieve("Who founded the cooperative?", k=5, mode="ppr")

Modules by job: ``config`` (index and query settings), ``extract``, ``store``, ``build``
(insert), ``view`` (the graph in memory), ``search`` (ppr, local, hybrid), ``communities``
(and global search), ``export`` (GraphML, pictures), ``index`` (:class:`GraphRAG`, tying them
together), ``pipeline`` (graph search as a retriever).
"""

from expertrag.graph.build import InsertReport
from expertrag.graph.communities import Community
from expertrag.graph.config import MODES, GraphConfig, GraphIndexConfig, GraphQueryConfig
from expertrag.graph.extract import (
    Entity,
    Extraction,
    ExtractionError,
    LLMExtractor,
    Relation,
    SpacyExtractor,
    normalize,
)
from expertrag.graph.index import GraphRAG
from expertrag.graph.store import GraphStore, GraphStoreError

__all__ = [
    "MODES",
    "Community",
    "Entity",
    "Extraction",
    "ExtractionError",
    "GraphConfig",
    "GraphIndexConfig",
    "GraphQueryConfig",
    "GraphRAG",
    "GraphStore",
    "GraphStoreError",
    "InsertReport",
    "LLMExtractor",
    "Relation",
    "SpacyExtractor",
    "normalize",
]
