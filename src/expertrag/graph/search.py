"""Searching a :class:`~expertrag.graph.view.GraphView` for the passages behind a question.

- ``ppr``: Personalized PageRank over entity + passage nodes (HippoRAG 2), seeded by the
  question's linked entities and by dense passage scores; passages ranked by PPR mass;
- ``local``: linked entities expanded ``hops`` hops; passages that mention them, ranked by
  how many linked entities they hold, with the verbalised paths that connect them;
- ``hybrid``: reciprocal rank fusion of PPR with BM25 + dense retrieval.

(``global``, over community summaries, is in :mod:`expertrag.graph.communities`.) Every
search is read-only over the view and its :class:`~expertrag.graph.config.GraphQueryConfig`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from expertrag.graph.config import GraphQueryConfig
from expertrag.graph.extract import CO_OCCURS, normalize
from expertrag.graph.view import GraphView, embed_array, unit
from expertrag.types import Document


def pagerank(adj: Any, personalization: Any, damping: float, iters: int = 100,
             tol: float = 1e-10) -> Any:
    """Personalized PageRank by power iteration on a column-normalised sparse matrix;
    dangling mass returns to the personalization vector."""
    import numpy as np

    out_weight = np.asarray(adj.sum(axis=1)).ravel()
    inv = np.divide(1.0, out_weight, out=np.zeros_like(out_weight), where=out_weight > 0)
    transition = adj.T.multiply(inv).tocsr()  # column j spreads node j's mass
    dangling = out_weight == 0
    scores = personalization.copy()
    for _ in range(iters):
        spread = transition @ scores
        spread += scores[dangling].sum() * personalization
        nxt = (1 - damping) * personalization + damping * spread
        if np.abs(nxt - scores).sum() < tol:
            scores = nxt
            break
        scores = nxt
    return scores


class GraphSearch:
    """The searches over one view with one set of query settings (see the module doc).

    ``embedder`` embeds questions and passages, ``name_embedder`` a question's mentions
    (as the graph's entity names were embedded); ``linker()`` gives what finds the
    question's entities (an extractor with ``entities_of``)."""

    def __init__(self, view: GraphView, embedder: Any, name_embedder: Any,
                 linker: Callable[[], Any], settings: GraphQueryConfig) -> None:
        self.view, self.embedder, self.name_embedder = view, embedder, name_embedder
        self.linker, self.settings = linker, settings

    def link(self, query: str) -> dict[str, float]:
        """The question's entities in the graph: exact normalised names (weight 1) and the
        nearest entity names by embedding above ``link_threshold`` (weight = similarity)."""
        import numpy as np

        g = self.view
        if not g.ent_ids:
            return {}
        try:
            found = self.linker().entities_of(query)
            mentions, surface = [e.key for e in found], [e.name for e in found]
        except Exception:  # no spaCy: the question's keywords
            from expertrag.chains.base import keywords

            surface = keywords(query).split()
            mentions = [normalize(s) for s in surface]
        linked: dict[str, float] = {}
        names = set(g.ent_ids)
        for key in mentions:
            if key in names:
                linked[key] = 1.0
        texts = surface or [query]
        vecs = unit(embed_array(self.name_embedder, texts))
        sims = vecs @ g.ent_unit.T
        for row in sims:
            for j in np.argsort(-row)[: self.settings.link_top]:
                if row[j] >= self.settings.link_threshold:
                    key = g.ent_ids[j]
                    linked[key] = max(linked.get(key, 0.0), float(row[j]))
        return linked

    def dense(self, query: str, top: int) -> list[tuple[str, float]]:
        """The ``top`` passages by embedding cosine with the question."""
        import numpy as np

        g = self.view
        if g.pas_unit is None:
            return []
        q = unit([self.embedder.embed_query(query)])[0]
        sims = g.pas_unit @ q
        order = np.argsort(-sims)[:top]
        return [(g.pas_ids[i], float(sims[i])) for i in order]

    def ppr(self, query: str, k: int = 5) -> list[Document]:
        """Personalized PageRank ranking of passages (HippoRAG 2 seeding)."""
        import numpy as np

        g, cfg = self.view, self.settings
        n = g.adj.shape[0]
        if n == 0:
            return []
        seeds = np.zeros(n)
        linked = self.link(query)
        if linked and cfg.entity_specificity:
            # HippoRAG's node specificity: an entity seed counts 1 / (passages mentioning
            # it), so "the city" weighs less than "Yeovil Town"; rescaled to the same total,
            # which keeps the balance with the dense passage seeds
            spec = {k: w / max(1, len(g.by_entity.get(k, ()))) for k, w in linked.items()}
            scale = sum(linked.values()) / max(sum(spec.values()), 1e-12)
            weights = {k: v * scale for k, v in spec.items()}
        else:
            weights = linked
        for key, w in weights.items():
            seeds[g.index[key]] += w
        dense = self.dense(query, cfg.dense_seed_top)
        if dense:
            top = max(s for _, s in dense)
            for pid, s in dense:
                seeds[g.index[pid]] += cfg.passage_seed_weight * max(0.0, s) / \
                    max(top, 1e-9) * (1 if linked else 20)
        if seeds.sum() <= 0:
            return []
        scores = pagerank(g.adj, seeds / seeds.sum(), cfg.damping)
        pas = scores[g.offset:]
        order = np.argsort(-pas)[:k]
        linked_names = sorted(linked, key=lambda e: -linked[e])[:10]
        return [g.document(g.pas_ids[i], float(pas[i]), "ppr", linked_entities=linked_names)
                for i in order if pas[i] > 0]

    def local(self, query: str, k: int = 5) -> list[Document]:
        """Passages around the question's entities (``hops`` hops), with the paths."""
        g = self.view
        linked = self.link(query)
        if not linked:
            return []
        adjacency: dict[str, list[tuple[str, str]]] = {}
        for a, rel, b, _, _, _ in g.relations:
            adjacency.setdefault(a, []).append((b, rel))
            adjacency.setdefault(b, []).append((a, rel))
        reached = dict(linked)
        paths: dict[str, list[str]] = {e: [] for e in linked}
        frontier = list(linked)
        for _ in range(self.settings.hops):
            nxt = []
            for e in frontier:
                for other, rel in adjacency.get(e, []):
                    if other not in reached:
                        reached[other] = reached[e] * 0.5
                        name = g.names
                        verb = "appears with" if rel == CO_OCCURS else rel
                        paths[other] = [*paths[e], f"{name.get(e, e)} —{verb}→ "
                                                   f"{name.get(other, other)}"]
                        nxt.append(other)
            frontier = nxt
        scores: dict[str, float] = {}
        why: dict[str, list[str]] = {}
        for e, w in reached.items():
            for pid in g.by_entity.get(e, []):
                scores[pid] = scores.get(pid, 0.0) + w
                why.setdefault(pid, []).extend(paths.get(e, []))
        order = sorted(scores, key=lambda p: (-scores[p], p))[:k]
        return [g.document(p, scores[p], "local", paths=sorted(set(why[p]))[:5],
                           linked_entities=sorted(linked)[:10]) for p in order]

    def hybrid(self, query: str, k: int = 5, pool: int = 50) -> list[Document]:
        """RRF of the PPR ranking with BM25 + dense retrieval over the same passages."""
        from expertrag.rerank.fusion import reciprocal_rank_fusion

        first = self.first_stage().retrieve(query, pool)
        graph = self.ppr(query, pool)
        # the question's linked entities, as PPR names them, on every fused result
        linked = graph[0].metadata.get("linked_entities", []) if graph else []
        fused = reciprocal_rank_fusion([graph, first], k=60)
        out = []
        for d in fused[:k]:
            base = self.view.document(d.id, d.score or 0.0, "hybrid", linked_entities=linked) \
                if d.id in self.view.passages else d
            out.append(replace(base, score=d.score))
        return out

    def first_stage(self) -> Any:
        """BM25 + dense retrieval over the view's passages, built once per view from the
        stored passage embeddings (not a second embedding of the whole corpus)."""
        g = self.view
        if g.first_stage is None:
            from expertrag.retrieval.hybrid import HybridRetriever

            docs = [Document(text=g.passages[pid]["text"], id=pid) for pid in g.pas_ids]
            g.first_stage = HybridRetriever(docs, embedder=self.embedder, vectors=g.pas_unit)
        return g.first_stage
