"""Communities of the entity graph and the ``global`` search over their summaries.

Communities are found with Louvain (networkx, BSD) over relation and synonym edges; each
gets an extractive summary: its top entities by degree and the sentences that hold the most
of them. ``global`` search ranks those summaries against the question.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from expertrag.graph.config import GraphQueryConfig
from expertrag.graph.view import GraphView, unit
from expertrag.types import Document


@dataclass
class Community:
    """One community: its entities, extractive summary and the passages that mention it."""

    id: int
    entities: list[str]
    summary: str
    passages: list[str] = field(default_factory=list)


def detect_communities(view: GraphView, settings: GraphQueryConfig) -> list[Community]:
    """Louvain communities of ``view``'s entity graph (``communities_resolution``), each
    with a summary of ``community_sentences`` sentences; single entities are left out."""
    import networkx as nx

    graph = nx.Graph()
    for a, _, b, _, _, _ in view.relations:
        w = graph.get_edge_data(a, b, {}).get("weight", 0.0)
        graph.add_edge(a, b, weight=w + 1.0)
    for a, b, s in view.synonyms:
        graph.add_edge(a, b, weight=s)
    out: list[Community] = []
    if not graph.number_of_nodes():
        return out
    groups = nx.community.louvain_communities(
        graph, weight="weight", resolution=settings.communities_resolution, seed=0)
    for cid, members in enumerate(sorted(groups, key=lambda s: (-len(s), min(s)))):
        if len(members) < 2:
            continue
        top = sorted(members, key=lambda e: (-graph.degree(e, weight="weight"), e))
        sentences: dict[str, int] = {}
        for a, _, b, _, _, sentence in view.relations:
            if a in members and b in members and sentence:
                sentences[sentence] = sentences.get(sentence, 0) + 1
        best = sorted(sentences, key=lambda s: (-sentences[s], s))[
            : settings.community_sentences]
        names = ", ".join(view.names.get(e, e) for e in top[:8])
        passages = sorted({p for e in members for p in view.by_entity.get(e, [])})
        out.append(Community(cid, sorted(members), f"About: {names}. " + " ".join(best),
                             passages))
    return out


def global_search(communities: list[Community], embedder: Any, query: str,
                  k: int = 5) -> list[Document]:
    """Community summaries ranked against the question (embedding cosine)."""
    if not communities:
        return []
    q = unit([embedder.embed_query(query)])[0]
    vecs = unit(embedder.embed_documents([c.summary for c in communities]))
    sims = vecs @ q
    order = sorted(range(len(communities)), key=lambda i: -sims[i])[:k]
    return [Document(text=communities[i].summary, id=f"community-{communities[i].id}",
                     score=float(sims[i]),
                     metadata={"graph_mode": "global", "community": communities[i].id,
                               "entities": communities[i].entities[:20],
                               "passages": communities[i].passages[:20]}) for i in order]
