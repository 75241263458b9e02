"""GraphRAG that a 135M model can build: one object over the graph's build, searches,
communities and export.

:class:`GraphRAG` keeps a knowledge graph of passages and entities in a
:class:`~expertrag.graph.store.GraphStore` (embedded Ladybug by default, Neo4j optional).
Each job has its own module; this one ties them to one store and one cache:

- ``insert(documents)`` (:mod:`~expertrag.graph.build`): chunk, extract entities and
  relations (no LLM by default), resolve entities (normalised names meet; embedding
  similarity above ``synonym_threshold`` adds SYNONYM edges, as HippoRAG does), write each
  batch of documents in one transaction; unchanged documents are skipped.
- ``delete(doc_id)``: its passages, the relations only it supported and the entities nothing
  else mentions go; shared ones stay. Delete then re-insert gives the same graph.
- ``retrieve(query, k, mode)``: ``"hybrid"`` (the default: PPR fused with BM25 + dense
  retrieval), ``"ppr"``, ``"local"`` (:mod:`~expertrag.graph.search`) and ``"global"``
  (:mod:`~expertrag.graph.communities`), over the graph loaded in memory once
  (:class:`~expertrag.graph.view.GraphView`). Every result is a Document with its score and
  ``metadata`` naming entities and paths.
- ``export_graphml(path)`` and ``draw(documents, path)`` (:mod:`~expertrag.graph.export`).

Settings: ``config`` (:class:`~expertrag.graph.config.GraphConfig`: its ``index`` part is
fixed with the graph, its ``query`` part is the default of every search; a search may pass
its own, see :meth:`GraphRAG.retrieve`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from expertrag.config import as_config
from expertrag.errors import InputError
from expertrag.graph.build import (
    EntityMatrix,
    GraphBuilder,
    InsertReport,
    check_documents,
    embed_names,
    names_at_precision,
    window_synonyms,
)
from expertrag.graph.communities import Community, detect_communities, global_search
from expertrag.graph.config import (
    DEFAULT_MODE,
    MODES,
    GraphConfig,
    GraphIndexConfig,
    GraphQueryConfig,
    query_settings,
)
from expertrag.graph.export import draw, export_graphml, to_networkx
from expertrag.graph.extract import make_extractor
from expertrag.graph.search import GraphSearch
from expertrag.graph.store import GraphStore
from expertrag.graph.view import GraphView
from expertrag.types import Document

__all__ = ["MODES", "Community", "GraphConfig", "GraphIndexConfig", "GraphQueryConfig",
           "GraphRAG", "InsertReport"]

# the old private names of what moved to build.py, for callers that imported them here
_EntityMatrix = EntityMatrix
_embed_names = embed_names


class GraphRAG:
    """A knowledge-graph index and retriever (see the module doc).

    ``store``: a :class:`GraphStore` or a folder path for the embedded one. ``embedder``:
    default the embedded all-MiniLM-L6-v2. ``llm``: needed for ``extraction="llm"``.
    ``config``: a :class:`GraphConfig`, a dict of its settings (flat or nested) or the path
    of a saved one.
    """

    def __init__(self, store: GraphStore | str | os.PathLike[str], embedder: Any = None,
                 llm: Any = None, config: GraphConfig | dict[str, Any] | str | None = None
                 ) -> None:
        self.store = store if isinstance(store, GraphStore) else GraphStore(store)
        self.config = as_config(GraphConfig, config).validate()
        if embedder is None:
            from expertrag.embeddings import Embedder

            embedder = Embedder()
        self.embedder = embedder
        self.llm = llm
        self.extractor = make_extractor(self.config.index.extraction, llm=llm)
        self._linker: Any = None
        self._name_embedder: Any = None
        self._view: GraphView | None = None
        self._communities: dict[tuple[float, int], list[Community]] = {}

    def close(self) -> None:
        """Close the graph store; any later use raises a typed ``GraphStoreError``."""
        self.store.close()
        self._invalidate()

    @property
    def name_embedder(self) -> Any:
        """What embeds entity names (the graph's nodes and a question's mentions): the
        passage embedder, in bf16 when ``config.index.name_precision`` allows it and the
        hardware computes bf16 natively. Names are most of what a large graph embeds, and
        bf16 embeds them much faster within a small cosine of float32
        (benchmarks/RESULTS.md)."""
        if self._name_embedder is None:
            self._name_embedder = names_at_precision(self.embedder,
                                                     self.config.index.name_precision)
        return self._name_embedder

    def _linking(self) -> Any:
        """What finds a question's entities: the spaCy extractor (the graph's own when it
        was built with spaCy)."""
        if self._linker is None:
            from expertrag.graph.extract import SpacyExtractor

            self._linker = self.extractor if self.config.index.extraction == "spacy" \
                else SpacyExtractor()
        return self._linker

    # ------------------------------------------------------------------ indexing
    def insert(self, documents: Sequence[Document | str], progress: bool = True,
               batch: int = 32, window: int = 1024) -> InsertReport:
        """Add documents; unchanged ones are skipped and changed ones replaced
        (:meth:`~expertrag.graph.build.GraphBuilder.insert`: ``window`` documents are
        extracted and embedded together, ``batch`` documents written per transaction)."""
        builder = GraphBuilder(self.store, self.embedder, self.name_embedder, self.extractor,
                               self.config.index)
        try:
            report = builder.insert(documents, progress=progress, batch=batch, window=window)
        except BaseException:
            self._invalidate()  # part of it may be written
            raise
        if report.documents:
            self._invalidate()
        return report

    def _check(self, documents: Sequence[Document | str]) -> list[Document]:
        return check_documents(documents)

    def _window_synonyms(self, keys: list[str], owners: list[int], vectors: dict[str, Any],
                         known: EntityMatrix, n_docs: int) -> list[list[tuple[str, str, float]]]:
        """:func:`~expertrag.graph.build.window_synonyms` at this graph's threshold."""
        return window_synonyms(keys, owners, vectors, known, n_docs,
                               self.config.index.synonym_threshold)

    def delete(self, doc_id: str) -> bool:
        """Remove a document and what only it supported; False when it is not stored."""
        gone = self.store.delete_document(str(doc_id))
        if gone:
            self._invalidate()
        return gone

    def _invalidate(self) -> None:
        self._view = None
        self._communities = {}

    # ------------------------------------------------------------------ searches
    def view(self) -> GraphView:
        """The graph loaded in memory for searching, cached until the graph changes."""
        if self._view is None:
            self._view = GraphView.load(self.store)
        return self._view

    def search(self, settings: Any = None) -> GraphSearch:
        """The ``ppr`` / ``local`` / ``hybrid`` searches over the current graph, with
        ``settings`` (see :meth:`retrieve`) or the graph's own."""
        return GraphSearch(self.view(), self.embedder, self.name_embedder, self._linking,
                           query_settings(settings, self.config))

    def ppr(self, query: str, k: int = 5, settings: Any = None) -> list[Document]:
        """Personalized PageRank ranking of passages (HippoRAG 2 seeding)."""
        return self.search(settings).ppr(query, k)

    def local(self, query: str, k: int = 5, settings: Any = None) -> list[Document]:
        """Passages around the question's entities (``hops`` hops), with the paths."""
        return self.search(settings).local(query, k)

    def hybrid(self, query: str, k: int = 5, pool: int = 50,
               settings: Any = None) -> list[Document]:
        """RRF of the PPR ranking with BM25 + dense retrieval over the same passages."""
        return self.search(settings).hybrid(query, k, pool)

    def communities(self, settings: Any = None) -> list[Community]:
        """Louvain communities of the entity graph with extractive summaries (top entities
        by degree and the sentences that hold the most of them), cached."""
        cfg = query_settings(settings, self.config)
        key = (cfg.communities_resolution, cfg.community_sentences)
        if key not in self._communities:
            self._communities[key] = detect_communities(self.view(), cfg)
        return self._communities[key]

    def global_search(self, query: str, k: int = 5, settings: Any = None) -> list[Document]:
        """Community summaries ranked against the question (embedding cosine)."""
        return global_search(self.communities(settings), self.embedder, query, k)

    def retrieve(self, query: str, k: int = 5, mode: str = DEFAULT_MODE,
                 settings: Any = None) -> list[Document]:
        """The top ``k`` results of one search mode (see the module doc). ``settings``:
        search settings for this call instead of ``config.query``: a
        :class:`GraphQueryConfig`, a dict of query settings, or a :class:`GraphConfig` (or
        a saved one's path) whose index part is this graph's."""
        if not isinstance(query, str) or not query.strip():
            raise InputError("query must be a non-empty string")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        if not self.view().pas_ids:
            return []
        if mode == "global":
            return self.global_search(query, k, settings)
        search = self.search(settings)
        return {"ppr": search.ppr, "local": search.local, "hybrid": search.hybrid}[mode](
            query, k)

    # ------------------------------------------------------------------ export
    def to_networkx(self, passages: bool = True) -> Any:
        """The graph as a networkx ``MultiGraph`` (passages and mentions included)."""
        return to_networkx(self.view(), passages)

    def export_graphml(self, path: str | os.PathLike[str]) -> Path:
        """The whole graph as GraphML (entities, passages, their edges), written atomically."""
        return export_graphml(self.to_networkx(), path)

    def draw(self, documents: Sequence[Document], path: str | os.PathLike[str]) -> Path:
        """A picture of the subgraph behind ``documents`` (their passages, the entities they
        mention and the edges among those): ``.png`` (matplotlib) or ``.html`` (SVG)."""
        return draw(self.to_networkx(), documents, path)

    def stats(self) -> dict[str, Any]:
        """The store's counts and the settings (flat names)."""
        counts = self.store.counts()
        return {**counts, "config": self.config.flat()}
