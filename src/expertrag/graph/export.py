"""The graph out of expertrag: a networkx graph, GraphML, and a picture of the subgraph
behind an answer (PNG with matplotlib, or a self-contained HTML page with SVG)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from expertrag.graph.view import GraphView
from expertrag.types import Document


def to_networkx(view: GraphView, passages: bool = True) -> Any:
    """Entities, relations and synonym edges (and passages with their mentions) as a
    networkx ``MultiGraph``."""
    import networkx as nx

    graph = nx.MultiGraph()
    for eid, name, label, _ in view.entities:
        graph.add_node(eid, kind="entity", name=name, label=label or "")
    for a, rel, b, doc, pid, _ in view.relations:
        graph.add_edge(a, b, kind="related", relation=rel, doc=doc, passage=pid)
    for a, b, s in view.synonyms:
        graph.add_edge(a, b, kind="synonym", sim=s)
    if passages:
        for pid, p in view.passages.items():
            graph.add_node(pid, kind="passage", doc=p["doc"], text=p["text"][:200])
        for p, e in view.mentions:
            graph.add_edge(p, e, kind="mentions")
    return graph


def export_graphml(graph: Any, path: str | os.PathLike[str]) -> Path:
    """``graph`` (networkx) as GraphML at ``path``, written atomically."""
    import tempfile

    import networkx as nx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".graphml", dir=path.parent)
    os.close(fd)
    nx.write_graphml(graph, tmp)
    os.replace(tmp, path)
    return path


def draw(full: Any, documents: Sequence[Document], path: str | os.PathLike[str]) -> Path:
    """A picture of the subgraph of ``full`` (networkx) behind ``documents``: their
    passages, the entities they mention and the edges among those; ``.png`` (matplotlib)
    or ``.html`` (SVG)."""
    import networkx as nx

    path = Path(path)
    keep = set()
    for d in documents:
        if d.id in full:
            keep.add(d.id)
            keep.update(full.neighbors(d.id))
    sub = nx.Graph(full.subgraph(keep))
    pos = nx.spring_layout(sub, seed=0) if sub.number_of_nodes() else {}
    labels = {n: (a.get("name") or n)[:24] for n, a in sub.nodes(data=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".html":
        path.write_text(svg_page(sub, pos, labels), encoding="utf-8")
        return path
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 7))
    colors = ["#f4a261" if a.get("kind") == "passage" else "#2a9d8f"
              for _, a in sub.nodes(data=True)]
    nx.draw_networkx(sub, pos, ax=ax, labels=labels, node_color=colors, node_size=260,
                     font_size=7, edge_color="#999999")
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def svg_page(sub: Any, pos: dict[Any, Any], labels: dict[Any, str]) -> str:
    """A standalone HTML page drawing ``sub`` at ``pos`` as SVG."""
    import html

    def xy(n: Any) -> tuple[float, float]:
        x, y = pos[n]
        return 40 + (x + 1) * 380, 40 + (1 - y) * 300

    parts = []
    for a, b in sub.edges():
        (x1, y1), (x2, y2) = xy(a), xy(b)
        parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                     'stroke="#999"/>')
    for n, attrs in sub.nodes(data=True):
        x, y = xy(n)
        color = "#f4a261" if attrs.get("kind") == "passage" else "#2a9d8f"
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="7" fill="{color}"/>'
                     f'<text x="{x + 9:.1f}" y="{y + 4:.1f}" font-size="11">'
                     f'{html.escape(labels[n])}</text>')
    return ("<!doctype html><html><head><meta charset='utf-8'><title>expertrag graph</title>"
            "</head><body><svg xmlns='http://www.w3.org/2000/svg' width='860' height='700'>"
            + "".join(parts) + "</svg></body></html>")
