"""GraphRAG that a 135M model can build: the index, its upkeep and its searches.

:class:`GraphRAG` keeps a knowledge graph of passages and entities in a
:class:`~expertrag.graph.store.GraphStore` (embedded Ladybug by default, Neo4j optional):

- ``insert(documents)``: chunk (as ingest does), extract entities and relations
  (:mod:`expertrag.graph.extract`, no LLM by default), resolve entities (normalised names
  meet; embedding similarity above ``synonym_threshold`` adds SYNONYM edges, as HippoRAG
  does), and write each batch of documents in one transaction. Only what the new documents
  bring is computed; a document already stored with the same content is skipped.
- ``delete(doc_id)``: its passages, the relations only it supported and the entities nothing
  else mentions go; shared ones stay. Delete then re-insert gives the same graph.
- ``retrieve(query, k, mode)``:
  - ``"ppr"``: Personalized PageRank over entity + passage nodes (HippoRAG 2), seeded by the
    question's linked entities and by dense passage scores; passages ranked by PPR mass;
  - ``"local"``: linked entities expanded ``hops`` hops; passages that mention them, ranked
    by how many linked entities they hold, with the verbalised paths that connect them;
  - ``"global"``: community summaries (Louvain, networkx, BSD) ranked against the question;
  - ``"hybrid"``: reciprocal rank fusion of PPR with BM25 + dense retrieval.
  Every result is a Document with its score and ``metadata`` naming entities and paths.
- ``export_graphml(path)`` and ``draw(documents, path)`` (PNG or HTML of the subgraph behind
  an answer).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from expertrag.errors import InputError
from expertrag.graph.extract import CO_OCCURS, make_extractor, normalize
from expertrag.graph.store import DocumentWrite, GraphStore
from expertrag.ingest import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE, chunk_documents
from expertrag.types import Document

MODES = ("ppr", "local", "global", "hybrid")


@dataclass
class GraphConfig:
    """Settings of a :class:`GraphRAG` index and its searches."""

    extraction: str = "spacy"  # "spacy" (no LLM) or "llm"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP
    synonym_threshold: float = 0.9
    link_threshold: float = 0.8
    link_top: int = 5
    damping: float = 0.5
    # dense passage seeds against linked entities: HippoRAG 2's 0.05 suits its filtered
    # facts; beside spaCy's many noun phrases 0.3 ranks better (MuSiQue paragraph
    # Recall@5 0.515 -> 0.632 on questions 50-99, 0.568 -> 0.612 on 0-49)
    passage_seed_weight: float = 0.3
    # HippoRAG's node specificity (entity seed / passages mentioning it): MuSiQue paragraph
    # Recall@5 0.612 -> 0.627 on questions 0-49, 0.632 -> 0.635 on 50-99
    entity_specificity: bool = True
    dense_seed_top: int = 20
    # co-occurrences (the spaCy mode's relations) as RELATED edges in the database, for
    # Cypher queries that walk them; by default each passage keeps its own (read back as
    # the same relations, same searches): MuSiQue's 104,000 edges took 2.6 s of writing
    co_occurrence_edges: bool = False
    hops: int = 1
    # entity names embedded in bf16 where the hardware computes it natively ("auto"), always
    # ("bfloat16", an expertrag Embedder only) or never ("float32")
    name_precision: str = "auto"
    communities_resolution: float = 1.0
    community_sentences: int = 3

    def validate(self) -> GraphConfig:
        if self.extraction not in ("spacy", "llm"):
            raise InputError(f"extraction must be 'spacy' or 'llm', got {self.extraction!r}")
        for name in ("synonym_threshold", "link_threshold"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise InputError(f"{name} must be within (0, 1]")
        if not 0.0 < self.damping < 1.0:
            raise InputError(f"damping must be within (0, 1), got {self.damping!r}")
        if self.name_precision not in ("auto", "float32", "bfloat16"):
            raise InputError("name_precision must be 'auto', 'float32' or 'bfloat16', got "
                             f"{self.name_precision!r}")
        if self.hops < 0:
            raise InputError(f"hops must be >= 0, got {self.hops!r}")
        return self


@dataclass
class InsertReport:
    """What one ``insert`` did."""

    documents: int = 0
    skipped: int = 0
    replaced: int = 0
    passages: int = 0
    new_entities: int = 0
    relations: int = 0
    synonyms: int = 0
    empty_passages: int = 0
    llm_calls: int = 0
    seconds: float = 0.0
    seconds_extract: float = 0.0
    seconds_embed: float = 0.0  # passages and entity names
    seconds_embed_names: float = 0.0  # of which entity names
    seconds_synonyms: float = 0.0  # matching new names against the known ones
    seconds_write: float = 0.0  # graph database writes, the closing checkpoint included


@dataclass
class Community:
    id: int
    entities: list[str]
    summary: str
    passages: list[str] = field(default_factory=list)


def _doc_hash(doc: Document) -> str:
    return hashlib.sha256(doc.text.encode("utf-8")).hexdigest()[:32]


def _embed_array(embedder: Any, texts: list[str]) -> Any:
    """``texts`` embedded as one float32 array (an expertrag ``Embedder``'s array path
    when there is one, so no per-float Python objects are made)."""
    import numpy as np

    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    fast = getattr(embedder, "embed_array", None)
    return np.asarray(fast(texts) if fast else embedder.embed_documents(texts),
                      dtype=np.float32)


def _embed_names(embedder: Any, texts: list[str]) -> Any:
    """Entity names embedded as :func:`_embed_array` does, one pass per token count for an
    expertrag ``Embedder``: sentence-transformers sorts a pass by characters, so its batches
    of names mixed token counts and were padded to their longest (MuSiQue's 23,000 names:
    210,000 tokens run for 118,000 real ones); a pass of equal counts pads nothing
    (6.8-7.6 s against 10.5-11.1 s in batches of 64, vectors within cosine 0.99996)."""
    import numpy as np

    from expertrag.embeddings import Embedder

    if not isinstance(embedder, Embedder) or len(texts) < 2:
        return _embed_array(embedder, texts)
    model = embedder.model
    ids = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
    groups: dict[int, list[int]] = {}
    for i, tokens in enumerate(ids):
        groups.setdefault(len(tokens), []).append(i)
    out: Any = None
    for count in sorted(groups):
        rows = groups[count]
        vecs = _embed_array(embedder, [texts[i] for i in rows])
        if out is None:
            out = np.zeros((len(texts), vecs.shape[1]), dtype=np.float32)
        out[rows] = vecs
    return out


def _names_at_precision(embedder: Any, precision: str) -> Any:
    from expertrag.embeddings import Embedder

    if precision == "float32":
        return embedder
    if not isinstance(embedder, Embedder):
        if precision == "bfloat16":
            raise InputError("name_precision='bfloat16' needs an expertrag Embedder, got "
                             f"{type(embedder).__name__}")
        return embedder
    if precision == "auto" and not _native_bf16(embedder):
        return embedder
    # names are ~5 tokens: eager attention suits them better than SDPA (MuSiQue's 23,000
    # names: 8.4 s against 11.2-12.1 s, both bf16); batches of 256 names of one token count
    # (see _embed_names) 5.9 s against 6.8-7.6 s for 64 (512: 5.8-6.3 s, 1024: 7.0 s)
    return embedder.variant(precision="bfloat16", batch_size=256, attention="eager")


def _native_bf16(embedder: Any) -> bool:
    """Whether the embedder's device computes bf16 in hardware."""
    import torch

    from expertrag.models.loading import cpu_has_native_bf16

    device = str(embedder.model.device)
    if device.startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported())
    return device == "cpu" and cpu_has_native_bf16()


def _unit(vectors: Any) -> Any:
    import numpy as np

    arr = np.asarray(vectors, dtype=np.float32)
    if arr.size == 0:
        return arr.reshape(0, 0)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norms, 1e-12)


class GraphRAG:
    """A knowledge-graph index and retriever (see the module doc).

    ``store``: a :class:`GraphStore` or a folder path for the embedded one. ``embedder``:
    default the embedded all-MiniLM-L6-v2. ``llm``: needed for ``extraction="llm"``.
    """

    def __init__(self, store: GraphStore | str | os.PathLike[str], embedder: Any = None,
                 llm: Any = None, config: GraphConfig | None = None) -> None:
        self.store = store if isinstance(store, GraphStore) else GraphStore(store)
        self.config = (config or GraphConfig()).validate()
        if embedder is None:
            from expertrag.embeddings import Embedder

            embedder = Embedder()
        self.embedder = embedder
        self.llm = llm
        self.extractor = make_extractor(self.config.extraction, llm=llm)
        self._linker: Any = None
        self._name_embedder: Any = None
        self._cache: dict[str, Any] | None = None
        self._communities: list[Community] | None = None

    def close(self) -> None:
        """Close the graph store; any later use raises a typed ``GraphStoreError``."""
        self.store.close()
        self._cache = None
        self._communities = None

    @property
    def name_embedder(self) -> Any:
        """What embeds entity names (the graph's nodes and a question's mentions): the
        passage embedder, in bf16 when ``config.name_precision`` allows it and the hardware
        computes bf16 natively. Names are 23,000 of MuSiQue's 25,000 texts to embed; bf16
        (with eager attention, batches of 64) took them from 27.5 s to 8.4 s on 2 Zen 5
        cores, within cosine 0.996 of float32; passes of one token count in batches of 256
        (:func:`_embed_names`) to ~6 s."""
        if self._name_embedder is None:
            self._name_embedder = _names_at_precision(self.embedder,
                                                      self.config.name_precision)
        return self._name_embedder

    # ------------------------------------------------------------------ indexing
    def _check(self, documents: Sequence[Document | str]) -> list[Document]:
        if isinstance(documents, str | Document):
            documents = [documents]
        out = []
        for i, doc in enumerate(documents):
            if isinstance(doc, str):
                doc = Document(text=doc)
            if not isinstance(doc, Document) or not isinstance(doc.text, str):
                raise InputError(f"documents[{i}] must be a Document or a string")
            if not doc.text.strip():
                name = f" (id {doc.id!r})" if doc.id else ""
                raise InputError(f"documents[{i}]{name} is empty")
            if doc.id is None:
                doc = replace(doc, id=f"doc-{_doc_hash(doc)[:16]}")
            out.append(doc)
        ids = [d.id for d in out]
        if len(set(ids)) != len(ids):
            raise InputError("documents have duplicate ids")
        return out

    def insert(self, documents: Sequence[Document | str], progress: bool = True,
               batch: int = 32, window: int = 1024) -> InsertReport:
        """Add documents; unchanged ones are skipped and changed ones replaced.

        Work goes ``window`` documents at a time: their chunks are extracted in one call, then
        the passages and the entity names not stored yet are each embedded in one pass (the
        embedder sorts a pass by length, so its batches carry little padding: passages
        embedded 32 documents at a time took twice as long). The window is then written
        ``batch`` documents per transaction, so a crash loses at most the batch being
        written, never half a document."""
        from tqdm.auto import tqdm

        for name, value in (("batch", batch), ("window", window)):
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        docs = self._check(documents)
        report = InsertReport()
        started = time.perf_counter()
        todo = []
        for doc in docs:
            stored = self.store.document_hash(str(doc.id))
            if stored == _doc_hash(doc):
                report.skipped += 1
                continue
            if stored is not None:
                self.store.delete_document(str(doc.id))
                report.replaced += 1
            todo.append(doc)
        bar = tqdm(total=len(todo), disable=not progress or not todo, desc="graph index",
                   unit="doc")
        known = _EntityMatrix(self.store.entities())
        try:
            with self.store.bulk():
                for s in range(0, len(todo), window):
                    self._insert_window(todo[s:s + window], known, report, batch, bar)
                closing = time.perf_counter()
            report.seconds_write += time.perf_counter() - closing  # the closing checkpoint
        finally:
            bar.close()
            if todo:
                self._invalidate()
        report.seconds = time.perf_counter() - started
        return report

    def _insert_window(self, group: list[Document], known: _EntityMatrix,
                       report: InsertReport, batch: int, bar: Any) -> None:
        import numpy as np

        cfg = self.config
        chunks_by_doc = [chunk_documents([replace(d, metadata={**d.metadata,
                                                               "source": str(d.id)})],
                                         cfg.chunk_size, cfg.chunk_overlap) for d in group]
        flat = [c for chunks in chunks_by_doc for c in chunks]
        t = time.perf_counter()
        # the bar counts written documents; the stage says what the window is waiting on
        bar.set_postfix_str(f"extracting {len(flat)} chunks", refresh=True)
        extractions = self.extractor.extract([c.text for c in flat])
        report.seconds_extract += time.perf_counter() - t
        report.llm_calls += sum(x.llm_calls for x in extractions)
        fresh: dict[str, Any] = {}
        for x in extractions:
            for e in x.entities:
                if e.key not in known and e.key not in fresh:
                    fresh[e.key] = e
        t = time.perf_counter()
        bar.set_postfix_str(f"embedding {len(flat)} chunks, {len(fresh)} names", refresh=True)
        passage_vecs = _embed_array(self.embedder, [c.text for c in flat])
        names = sorted(fresh)
        t_names = time.perf_counter()
        vectors = dict(zip(names, _unit(_embed_names(
            self.name_embedder, [fresh[k].name for k in names])), strict=True)) \
            if names else {}
        report.seconds_embed_names += time.perf_counter() - t_names
        report.seconds_embed += time.perf_counter() - t
        t = time.perf_counter()
        bar.set_postfix_str(f"matching {len(fresh)} names", refresh=True)
        # each new entity belongs to the first document of the window that mentions it
        owned: list[list[str]] = [[] for _ in group]
        owner: dict[str, int] = {}
        where = 0
        for d, chunks in enumerate(chunks_by_doc):
            for x in extractions[where:where + len(chunks)]:
                for e in x.entities:
                    if e.key in fresh and e.key not in owner:
                        owner[e.key] = d
                        owned[d].append(e.key)
            where += len(chunks)
        for keys in owned:
            keys.sort()
        order = [k for keys in owned for k in keys]
        synonyms = self._window_synonyms(order, [owner[k] for k in order], vectors, known,
                                         len(group))
        if order:  # the next window matches against these too
            known.add(order, np.stack([vectors[k] for k in order]))
        report.seconds_synonyms += time.perf_counter() - t
        t = time.perf_counter()
        bar.set_postfix_str("writing", refresh=True)
        where = 0
        for s in range(0, len(group), batch):
            writes, empty = [], 0
            for d in range(s, min(s + batch, len(group))):
                doc, chunks = group[d], chunks_by_doc[d]
                mine = extractions[where:where + len(chunks)]
                vecs = passage_vecs[where:where + len(chunks)]
                where += len(chunks)
                entities = [{"id": k, "name": fresh[k].name, "label": fresh[k].label,
                             "emb": vectors[k]} for k in owned[d]]
                writes.append(self._prepare(doc, chunks, mine, vecs, entities, synonyms[d]))
                empty += sum(1 for x in mine if x.empty)
            self.store.write_documents(writes)  # one transaction
            report.documents += len(writes)
            report.empty_passages += empty
            for w in writes:
                report.passages += len(w.passages)
                report.new_entities += len(w.entities)
                report.relations += len(w.relations) + sum(
                    len(p.get("co_occurs", ())) for p in w.passages)
                report.synonyms += len(w.synonyms)
            bar.update(len(writes))
        report.seconds_write += time.perf_counter() - t

    def _window_synonyms(self, keys: list[str], owners: list[int], vectors: dict[str, Any],
                         known: _EntityMatrix, n_docs: int) -> list[list[tuple[str, str, float]]]:
        """Synonym edges (similarity >= ``synonym_threshold``) of a window's new entities,
        per document: a document gets the pairs between its new entities and everything
        stored or brought by an earlier document of the window, and among its own new ones
        -- the edges that matching each document in turn against all entities known so far
        gives. ``keys`` are in document order (``owners``: each one's document).

        Blocks of 512 names are scanned against the entities before them (one product per
        block, not per document: each document re-read the whole entity matrix) for
        candidates within :data:`_SCAN_MARGIN` of the threshold, in bf16 where the CPU
        computes it natively; each candidate's similarity is then computed exactly (float64
        dot product of the float32 vectors), so the edges and their values do not depend on
        the scan's precision nor on how documents were grouped. MuSiQue's 23,000 names:
        3.3-3.5 s matched document by document, 0.8-1.7 s in blocks."""
        import numpy as np

        found: list[set[tuple[str, str, float]]] = [set() for _ in range(n_docs)]
        if not keys:
            return [[] for _ in range(n_docs)]
        mat = np.stack([vectors[k] for k in keys]).astype(np.float32, copy=False)
        n_known = len(known.keys)
        pool = np.concatenate([known.view(), mat]) if n_known else mat
        pool_keys = [*known.keys, *keys]
        mine = np.asarray(owners, dtype=np.int64)
        pool_owner = np.concatenate([np.full(n_known, -1, dtype=np.int64), mine])
        threshold = self.config.synonym_threshold
        scan = _Scan(pool)
        for s in range(0, len(keys), 512):
            e = min(s + 512, len(keys))
            # the block's rows against everything up to its last document's names
            upto = n_known + int(np.searchsorted(mine, mine[e - 1], side="right"))
            rows, cols = scan.near(mat[s:e], upto, threshold)
            rows = rows + s
            # a pair is found once: from its later entity's row (the document that completes
            # it), or, between two entities of one document, from the first one's row
            keep = (pool_owner[cols] < mine[rows]) | ((pool_owner[cols] == mine[rows])
                                                      & (cols > n_known + rows))
            rows, cols = rows[keep], cols[keep]
            exact = np.einsum("ij,ij->i", mat[rows].astype(np.float64),
                              pool[cols].astype(np.float64))
            for i, j, sim in zip(rows.tolist(), cols.tolist(), exact.tolist(), strict=True):
                if sim >= threshold:
                    lo, hi = sorted((keys[i], pool_keys[j]))
                    found[owners[i]].add((lo, hi, round(sim, 4)))
        return [sorted(f) for f in found]

    def _prepare(self, doc: Document, chunks: list[Document], extractions: list[Any],
                 vecs: Sequence[Any], entities: list[dict[str, Any]],
                 synonyms: list[tuple[str, str, float]]) -> DocumentWrite:
        """What ``doc`` brings: its passages, the entities no earlier document brought, its
        mentions, relations and synonym edges. Co-occurrences travel with their passage
        (the store keeps them on it) unless ``config.co_occurrence_edges``."""
        passages, mentions, relations = [], [], []
        as_edges = self.config.co_occurrence_edges
        for n, (chunk, x, vec) in enumerate(zip(chunks, extractions, vecs, strict=True)):
            pid = f"{doc.id}#{n}"
            co_occurs = []
            for e in x.entities:
                mentions.append((pid, e.key))
            for r in x.relations:
                if r.relation == CO_OCCURS and not as_edges:
                    co_occurs.append((r.subject, r.object, r.sentence[:500]))
                else:
                    relations.append({"a": r.subject, "b": r.object, "relation": r.relation,
                                      "passage": pid, "sentence": r.sentence[:500]})
            passages.append({"id": pid, "position": n, "text": chunk.text,
                             "meta": {k: v for k, v in chunk.metadata.items()
                                      if k != "source"},
                             "emb": vec, "co_occurs": co_occurs})
        return DocumentWrite(str(doc.id), _doc_hash(doc), dict(doc.metadata), passages,
                             entities, sorted(set(mentions)), relations, synonyms)

    def delete(self, doc_id: str) -> bool:
        """Remove a document and what only it supported; False when it is not stored."""
        gone = self.store.delete_document(str(doc_id))
        if gone:
            self._invalidate()
        return gone

    def _invalidate(self) -> None:
        self._cache = None
        self._communities = None

    # ------------------------------------------------------------------ the graph in memory
    def _graph(self) -> dict[str, Any]:
        """Node index, the symmetric weighted adjacency (scipy) and lookups, cached until
        the graph changes."""
        if self._cache is not None:
            return self._cache
        import numpy as np
        from scipy import sparse

        entities = self.store.entities()
        passages = self.store.passages()
        ent_ids = [e[0] for e in entities]
        pas_ids = [p["id"] for p in passages]
        index = {k: i for i, k in enumerate(ent_ids)}
        offset = len(ent_ids)
        index.update({k: offset + i for i, k in enumerate(pas_ids)})
        rows, cols, vals = [], [], []

        def edge(a: str, b: str, w: float) -> None:
            if a in index and b in index and a != b:
                rows.extend((index[a], index[b]))
                cols.extend((index[b], index[a]))
                vals.extend((w, w))

        mentions = self.store.mentions()
        for p, e in mentions:
            edge(p, e, 1.0)
        relations = self.store.relations()
        for a, _, b, _, _, _ in relations:
            edge(a, b, 1.0)
        for a, b, s in self.store.synonyms():
            edge(a, b, s)
        n = len(index)
        adj = sparse.csr_matrix((vals, (rows, cols)), shape=(n, n), dtype=np.float64)
        adj.sum_duplicates()
        by_entity: dict[str, list[str]] = {}
        by_passage: dict[str, list[str]] = {}
        for p, e in mentions:
            by_entity.setdefault(e, []).append(p)
            by_passage.setdefault(p, []).append(e)
        self._cache = {
            "entities": entities, "ent_ids": ent_ids, "names": {e[0]: e[1] for e in entities},
            "ent_unit": _unit([e[3] for e in entities]) if entities else None,
            "passages": {p["id"]: p for p in passages}, "pas_ids": pas_ids,
            "pas_unit": _unit([p["emb"] for p in passages]) if passages else None,
            "index": index, "offset": offset, "adj": adj, "by_entity": by_entity,
            "by_passage": by_passage, "relations": relations,
        }
        return self._cache

    def _link(self, query: str) -> dict[str, float]:
        """The question's entities in the graph: exact normalised names (weight 1) and the
        nearest entity names by embedding above ``link_threshold`` (weight = similarity)."""
        import numpy as np

        g = self._graph()
        if not g["ent_ids"]:
            return {}
        if self._linker is None:
            from expertrag.graph.extract import SpacyExtractor

            self._linker = self.extractor if self.config.extraction == "spacy" \
                else SpacyExtractor()
        try:
            found = self._linker.entities_of(query)
            mentions, surface = [e.key for e in found], [e.name for e in found]
        except Exception:  # no spaCy: the question's keywords
            from expertrag.chains.base import keywords

            surface = keywords(query).split()
            mentions = [normalize(s) for s in surface]
        linked: dict[str, float] = {}
        names = set(g["ent_ids"])
        for key in mentions:
            if key in names:
                linked[key] = 1.0
        texts = surface or [query]
        vecs = _unit(_embed_array(self.name_embedder, texts))
        sims = vecs @ g["ent_unit"].T
        for row in sims:
            for j in np.argsort(-row)[: self.config.link_top]:
                if row[j] >= self.config.link_threshold:
                    key = g["ent_ids"][j]
                    linked[key] = max(linked.get(key, 0.0), float(row[j]))
        return linked

    def _dense(self, query: str, top: int) -> list[tuple[str, float]]:
        import numpy as np

        g = self._graph()
        if g["pas_unit"] is None:
            return []
        q = _unit([self.embedder.embed_query(query)])[0]
        sims = g["pas_unit"] @ q
        order = np.argsort(-sims)[:top]
        return [(g["pas_ids"][i], float(sims[i])) for i in order]

    # ------------------------------------------------------------------ searches
    def _document(self, pid: str, score: float, mode: str, **meta: Any) -> Document:
        p = self._graph()["passages"][pid]
        ents = self._graph()["by_passage"].get(pid, [])
        return Document(text=p["text"], id=pid, score=score,
                        metadata={**p["meta"], "source": p["doc"], "doc_id": p["doc"],
                                  "graph_mode": mode, "entities": ents[:20], **meta})

    def ppr(self, query: str, k: int = 5) -> list[Document]:
        """Personalized PageRank ranking of passages (HippoRAG 2 seeding)."""
        import numpy as np

        g = self._graph()
        n = g["adj"].shape[0]
        if n == 0:
            return []
        seeds = np.zeros(n)
        linked = self._link(query)
        if linked and self.config.entity_specificity:
            # HippoRAG's node specificity: an entity seed counts 1 / (passages mentioning
            # it), so "the city" weighs less than "Yeovil Town"; rescaled to the same total,
            # which keeps the balance with the dense passage seeds
            spec = {k: w / max(1, len(g["by_entity"].get(k, ()))) for k, w in linked.items()}
            scale = sum(linked.values()) / max(sum(spec.values()), 1e-12)
            weights = {k: v * scale for k, v in spec.items()}
        else:
            weights = linked
        for key, w in weights.items():
            seeds[g["index"][key]] += w
        dense = self._dense(query, self.config.dense_seed_top)
        if dense:
            top = max(s for _, s in dense)
            for pid, s in dense:
                seeds[g["index"][pid]] += self.config.passage_seed_weight * max(0.0, s) / \
                    max(top, 1e-9) * (1 if linked else 20)
        if seeds.sum() <= 0:
            return []
        scores = _pagerank(g["adj"], seeds / seeds.sum(), self.config.damping)
        off = g["offset"]
        pas = scores[off:]
        order = np.argsort(-pas)[:k]
        linked_names = sorted(linked, key=lambda e: -linked[e])[:10]
        return [self._document(g["pas_ids"][i], float(pas[i]), "ppr",
                               linked_entities=linked_names) for i in order if pas[i] > 0]

    def local(self, query: str, k: int = 5) -> list[Document]:
        """Passages around the question's entities (``hops`` hops), with the paths."""
        g = self._graph()
        linked = self._link(query)
        if not linked:
            return []
        adjacency: dict[str, list[tuple[str, str]]] = {}
        for a, rel, b, _, _, _ in g["relations"]:
            adjacency.setdefault(a, []).append((b, rel))
            adjacency.setdefault(b, []).append((a, rel))
        reached = dict(linked)
        paths: dict[str, list[str]] = {e: [] for e in linked}
        frontier = list(linked)
        for _ in range(self.config.hops):
            nxt = []
            for e in frontier:
                for other, rel in adjacency.get(e, []):
                    if other not in reached:
                        reached[other] = reached[e] * 0.5
                        name = g["names"]
                        verb = "appears with" if rel == CO_OCCURS else rel
                        paths[other] = [*paths[e], f"{name.get(e, e)} —{verb}→ "
                                                   f"{name.get(other, other)}"]
                        nxt.append(other)
            frontier = nxt
        scores: dict[str, float] = {}
        why: dict[str, list[str]] = {}
        for e, w in reached.items():
            for pid in g["by_entity"].get(e, []):
                scores[pid] = scores.get(pid, 0.0) + w
                why.setdefault(pid, []).extend(paths.get(e, []))
        order = sorted(scores, key=lambda p: (-scores[p], p))[:k]
        return [self._document(p, scores[p], "local", paths=sorted(set(why[p]))[:5],
                               linked_entities=sorted(linked)[:10]) for p in order]

    def communities(self) -> list[Community]:
        """Louvain communities of the entity graph with extractive summaries (top entities
        by degree and the sentences that hold the most of them), cached."""
        if self._communities is not None:
            return self._communities
        import networkx as nx

        g = self._graph()
        graph = nx.Graph()
        for a, _, b, _, _, _ in g["relations"]:
            w = graph.get_edge_data(a, b, {}).get("weight", 0.0)
            graph.add_edge(a, b, weight=w + 1.0)
        for a, b, s in self.store.synonyms():
            graph.add_edge(a, b, weight=s)
        out = []
        if graph.number_of_nodes():
            groups = nx.community.louvain_communities(
                graph, weight="weight", resolution=self.config.communities_resolution, seed=0)
            for cid, members in enumerate(sorted(groups, key=lambda s: (-len(s), min(s)))):
                if len(members) < 2:
                    continue
                top = sorted(members, key=lambda e: (-graph.degree(e, weight="weight"), e))
                sentences: dict[str, int] = {}
                for a, _, b, _, _, sentence in g["relations"]:
                    if a in members and b in members and sentence:
                        sentences[sentence] = sentences.get(sentence, 0) + 1
                best = sorted(sentences, key=lambda s: (-sentences[s], s))[
                    : self.config.community_sentences]
                names = ", ".join(g["names"].get(e, e) for e in top[:8])
                passages = sorted({p for e in members for p in g["by_entity"].get(e, [])})
                out.append(Community(cid, sorted(members), f"About: {names}. " + " ".join(best),
                                     passages))
        self._communities = out
        return out

    def global_search(self, query: str, k: int = 5) -> list[Document]:
        """Community summaries ranked against the question (embedding cosine)."""
        comms = self.communities()
        if not comms:
            return []
        q = _unit([self.embedder.embed_query(query)])[0]
        vecs = _unit(self.embedder.embed_documents([c.summary for c in comms]))
        sims = vecs @ q
        order = sorted(range(len(comms)), key=lambda i: -sims[i])[:k]
        return [Document(text=comms[i].summary, id=f"community-{comms[i].id}",
                         score=float(sims[i]),
                         metadata={"graph_mode": "global", "community": comms[i].id,
                                   "entities": comms[i].entities[:20],
                                   "passages": comms[i].passages[:20]}) for i in order]

    def hybrid(self, query: str, k: int = 5, pool: int = 50) -> list[Document]:
        """RRF of the PPR ranking with BM25 + dense retrieval over the same passages."""
        from expertrag.rerank.fusion import reciprocal_rank_fusion

        first = self._first_stage().retrieve(query, pool)
        graph = self.ppr(query, pool)
        fused = reciprocal_rank_fusion([graph, first], k=60)
        out = []
        for d in fused[:k]:
            base = self._document(d.id, d.score or 0.0, "hybrid") \
                if d.id in self._graph()["passages"] else d
            out.append(replace(base, score=d.score))
        return out

    def _first_stage(self) -> Any:
        g = self._graph()
        if "hybrid" not in g:
            from expertrag.retrieval.hybrid import HybridRetriever

            docs = [Document(text=g["passages"][pid]["text"], id=pid) for pid in g["pas_ids"]]
            # the stored passage embeddings, not a second embedding of the whole corpus
            g["hybrid"] = HybridRetriever(docs, embedder=self.embedder, vectors=g["pas_unit"])
        return g["hybrid"]

    def retrieve(self, query: str, k: int = 5, mode: str = "ppr") -> list[Document]:
        """The top ``k`` results of one search mode (see the module doc)."""
        if not isinstance(query, str) or not query.strip():
            raise InputError("query must be a non-empty string")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        if not self._graph()["pas_ids"]:
            return []
        return {"ppr": self.ppr, "local": self.local, "global": self.global_search,
                "hybrid": self.hybrid}[mode](query, k)

    # ------------------------------------------------------------------ export
    def to_networkx(self, passages: bool = True) -> Any:
        import networkx as nx

        g = self._graph()
        graph = nx.MultiGraph()
        for eid, name, label, _ in g["entities"]:
            graph.add_node(eid, kind="entity", name=name, label=label or "")
        for a, rel, b, doc, pid, _ in g["relations"]:
            graph.add_edge(a, b, kind="related", relation=rel, doc=doc, passage=pid)
        for a, b, s in self.store.synonyms():
            graph.add_edge(a, b, kind="synonym", sim=s)
        if passages:
            for pid, p in g["passages"].items():
                graph.add_node(pid, kind="passage", doc=p["doc"], text=p["text"][:200])
            for p, e in self.store.mentions():
                graph.add_edge(p, e, kind="mentions")
        return graph

    def export_graphml(self, path: str | os.PathLike[str]) -> Path:
        """The whole graph as GraphML (entities, passages, their edges), written atomically."""
        import tempfile

        import networkx as nx

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".graphml", dir=path.parent)
        os.close(fd)
        nx.write_graphml(self.to_networkx(), tmp)
        os.replace(tmp, path)
        return path

    def draw(self, documents: Sequence[Document], path: str | os.PathLike[str]) -> Path:
        """A picture of the subgraph behind ``documents`` (their passages, the entities they
        mention and the edges among those): ``.png`` (matplotlib) or ``.html`` (SVG)."""
        import networkx as nx

        path = Path(path)
        full = self.to_networkx()
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
            path.write_text(_svg_page(sub, pos, labels), encoding="utf-8")
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

    def stats(self) -> dict[str, Any]:
        counts = self.store.counts()
        return {**counts, "config": asdict(self.config)}


class _EntityMatrix:
    """The stored entities' unit embeddings, growing as documents are written (amortised
    appends), for synonym search against everything stored so far."""

    def __init__(self, entities: Sequence[tuple[str, str, str, list[float]]]) -> None:
        import numpy as np

        self.keys: list[str] = [e[0] for e in entities]
        self._set = set(self.keys)
        dim = len(entities[0][3]) if entities else 0
        self._buf = _unit([e[3] for e in entities]) if entities else np.zeros((0, dim),
                                                                                dtype=np.float32)

    def __contains__(self, key: str) -> bool:
        return key in self._set

    def view(self) -> Any:
        return self._buf[: len(self.keys)]

    def add(self, keys: list[str], rows: Any) -> None:
        import numpy as np

        n = len(self.keys)
        need = n + len(keys)
        if self._buf.shape[0] < need or self._buf.shape[1] != rows.shape[1]:
            grown = np.zeros((max(need, 2 * self._buf.shape[0], 64), rows.shape[1]),
                             dtype=np.float32)
            if n:
                grown[:n] = self._buf[:n]
            self._buf = grown
        self._buf[n:need] = rows
        self.keys.extend(keys)
        self._set.update(keys)


# a bf16 product of unit vectors is within 2u + u^2 + u (u = 2^-8, the last u the output's
# rounding) ~ 0.0118 of the exact one; candidates are taken this far below the threshold
_SCAN_MARGIN = {"bfloat16": 0.02, "float32": 1e-3}


class _Scan:
    """Candidate pairs of near-duplicate unit vectors: ``block`` rows against the first
    ``upto`` rows of ``pool`` scored >= threshold - margin (bf16 where native, else
    float32); callers recompute the candidates exactly."""

    def __init__(self, pool: Any) -> None:
        from expertrag.models.loading import cpu_has_native_bf16

        self.pool = pool
        self.precision = "bfloat16" if cpu_has_native_bf16() else "float32"
        if self.precision == "bfloat16":
            import torch

            self._pool_bf16 = torch.from_numpy(pool).to(torch.bfloat16)

    def near(self, block: Any, upto: int, threshold: float) -> tuple[Any, Any]:
        import numpy as np

        floor = threshold - _SCAN_MARGIN[self.precision]
        if self.precision == "bfloat16":
            import torch

            sims = torch.from_numpy(np.ascontiguousarray(block)).to(torch.bfloat16) \
                @ self._pool_bf16[:upto].T
            hits = (sims.float() >= floor).nonzero().numpy()  # floor not rounded to bf16
            return hits[:, 0].astype(np.int64), hits[:, 1].astype(np.int64)
        rows, cols = np.nonzero(block @ self.pool[:upto].T >= floor)
        return rows.astype(np.int64), cols.astype(np.int64)


def _pagerank(adj: Any, personalization: Any, damping: float, iters: int = 100,
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


def _svg_page(sub: Any, pos: dict[Any, Any], labels: dict[Any, str]) -> str:
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

