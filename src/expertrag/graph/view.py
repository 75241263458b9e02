"""The graph in memory, as the searches read it: :class:`GraphView`.

A view is read from the :class:`~expertrag.graph.store.GraphStore` once and cached by
:class:`~expertrag.graph.GraphRAG` until the graph changes: entity and passage nodes in one
index, the symmetric weighted adjacency (scipy sparse: mentions, relations, synonym edges),
unit embeddings for linking and dense seeding, and lookups both ways between passages and
the entities they mention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from expertrag.types import Document


def embed_array(embedder: Any, texts: list[str]) -> Any:
    """``texts`` embedded as one float32 array (an expertrag ``Embedder``'s array path
    when there is one, so no per-float Python objects are made)."""
    import numpy as np

    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    fast = getattr(embedder, "embed_array", None)
    return np.asarray(fast(texts) if fast else embedder.embed_documents(texts),
                      dtype=np.float32)


def unit(vectors: Any) -> Any:
    """Rows scaled to length 1 (float32); an empty input gives a 0 x 0 array."""
    import numpy as np

    arr = np.asarray(vectors, dtype=np.float32)
    if arr.size == 0:
        return arr.reshape(0, 0)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norms, 1e-12)


@dataclass
class GraphView:
    """The stored graph, loaded for searching (see the module doc)."""

    entities: list[tuple[str, str, str, list[float]]]  # (id, name, label, embedding)
    ent_ids: list[str]
    names: dict[str, str]
    ent_unit: Any  # unit name embeddings, or None without entities
    passages: dict[str, dict[str, Any]]
    pas_ids: list[str]
    pas_unit: Any  # unit passage embeddings, or None without passages
    index: dict[str, int]  # node id -> row of ``adj`` (entities first, then passages)
    offset: int  # the first passage's row
    adj: Any
    by_entity: dict[str, list[str]]  # entity -> passages mentioning it
    by_passage: dict[str, list[str]]  # passage -> entities it mentions
    relations: list[tuple[str, str, str, str, str, str]]  # (a, relation, b, doc, pid, sentence)
    synonyms: list[tuple[str, str, float]]
    mentions: list[tuple[str, str]]  # (passage, entity)
    #: BM25 + dense retriever over the passages ("hybrid" search), built on first use
    first_stage: Any = field(default=None, repr=False)

    @classmethod
    def load(cls, store: Any) -> GraphView:
        """Read the whole graph from ``store``."""
        import numpy as np
        from scipy import sparse

        entities = store.entities()
        passages = store.passages()
        ent_ids = [e[0] for e in entities]
        pas_ids = [p["id"] for p in passages]
        index = {k: i for i, k in enumerate(ent_ids)}
        offset = len(ent_ids)
        index.update({k: offset + i for i, k in enumerate(pas_ids)})
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []

        def edge(a: str, b: str, w: float) -> None:
            if a in index and b in index and a != b:
                rows.extend((index[a], index[b]))
                cols.extend((index[b], index[a]))
                vals.extend((w, w))

        mentions = store.mentions()
        for p, e in mentions:
            edge(p, e, 1.0)
        relations = store.relations()
        for a, _, b, _, _, _ in relations:
            edge(a, b, 1.0)
        synonyms = store.synonyms()
        for a, b, s in synonyms:
            edge(a, b, s)
        n = len(index)
        adj = sparse.csr_matrix((vals, (rows, cols)), shape=(n, n), dtype=np.float64)
        adj.sum_duplicates()
        by_entity: dict[str, list[str]] = {}
        by_passage: dict[str, list[str]] = {}
        for p, e in mentions:
            by_entity.setdefault(e, []).append(p)
            by_passage.setdefault(p, []).append(e)
        return cls(
            entities=entities, ent_ids=ent_ids, names={e[0]: e[1] for e in entities},
            ent_unit=unit([e[3] for e in entities]) if entities else None,
            passages={p["id"]: p for p in passages}, pas_ids=pas_ids,
            pas_unit=unit([p["emb"] for p in passages]) if passages else None,
            index=index, offset=offset, adj=adj, by_entity=by_entity, by_passage=by_passage,
            relations=relations, synonyms=synonyms, mentions=mentions)

    def document(self, pid: str, score: float, mode: str, **meta: Any) -> Document:
        """Passage ``pid`` as a search result: its text, score, source document, the
        entities it mentions, the search mode and ``meta``."""
        p = self.passages[pid]
        ents = self.by_passage.get(pid, [])
        return Document(text=p["text"], id=pid, score=score,
                        metadata={**p["meta"], "source": p["doc"], "doc_id": p["doc"],
                                  "graph_mode": mode, "entities": ents[:20], **meta})
