"""Building the graph: documents in, passages, entities, relations and synonyms written.

:class:`GraphBuilder` does one ``insert``: chunk each document (as ingest does), extract
entities and relations (:mod:`expertrag.graph.extract`), embed the passages and the entity
names the graph does not hold yet, match those names against every stored one for synonym
edges, and write each batch of documents in one transaction. Only what new documents bring
is computed. Timings of each stage on a large corpus are in benchmarks/RESULTS.md
(``benchmarks/bench_graph.py``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from expertrag.errors import InputError
from expertrag.graph.config import GraphIndexConfig
from expertrag.graph.extract import CO_OCCURS
from expertrag.graph.store import DocumentWrite, GraphStore
from expertrag.graph.view import embed_array, unit
from expertrag.ingest import chunk_documents
from expertrag.types import Document


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


def doc_hash(doc: Document) -> str:
    """The content hash an unchanged document is recognised by."""
    return hashlib.sha256(doc.text.encode("utf-8")).hexdigest()[:32]


def check_documents(documents: Sequence[Document | str] | Document | str) -> list[Document]:
    """Documents (or strings) checked: non-empty text, unique ids; a document without an id
    gets one from its content."""
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
            doc = replace(doc, id=f"doc-{doc_hash(doc)[:16]}")
        out.append(doc)
    ids = [d.id for d in out]
    if len(set(ids)) != len(ids):
        raise InputError("documents have duplicate ids")
    return out


def embed_names(embedder: Any, texts: list[str]) -> Any:
    """Entity names embedded as :func:`~expertrag.graph.view.embed_array` does, one pass per
    token count for an expertrag ``Embedder``: sentence-transformers sorts a pass by
    characters, so batches of names mixed token counts and were padded to their longest; a
    pass of equal counts pads nothing (same vectors, faster: benchmarks/RESULTS.md)."""
    import numpy as np

    from expertrag.embeddings import Embedder

    if not isinstance(embedder, Embedder) or len(texts) < 2:
        return embed_array(embedder, texts)
    model = embedder.model
    ids = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
    groups: dict[int, list[int]] = {}
    for i, tokens in enumerate(ids):
        groups.setdefault(len(tokens), []).append(i)
    out: Any = None
    for count in sorted(groups):
        rows = groups[count]
        vecs = embed_array(embedder, [texts[i] for i in rows])
        if out is None:
            out = np.zeros((len(texts), vecs.shape[1]), dtype=np.float32)
        out[rows] = vecs
    return out


def names_at_precision(embedder: Any, precision: str) -> Any:
    """The embedder for entity names at ``precision`` (see
    :attr:`GraphIndexConfig.name_precision`): names are a few tokens each, so a bf16
    variant with eager attention and large batches of one token count suits them."""
    from expertrag.embeddings import Embedder

    if precision == "float32":
        return embedder
    if not isinstance(embedder, Embedder):
        if precision == "bfloat16":
            raise InputError("name_precision='bfloat16' needs an expertrag Embedder, got "
                             f"{type(embedder).__name__}")
        return embedder
    if precision == "auto" and not native_bf16(embedder):
        return embedder
    return embedder.variant(precision="bfloat16", batch_size=256, attention="eager")


def native_bf16(embedder: Any) -> bool:
    """Whether the embedder's device computes bf16 in hardware."""
    import torch

    from expertrag.models.loading import cpu_has_native_bf16

    device = str(embedder.model.device)
    if device.startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported())
    return device == "cpu" and cpu_has_native_bf16()


class EntityMatrix:
    """The stored entities' unit embeddings, growing as documents are written (amortised
    appends), for synonym search against everything stored so far."""

    def __init__(self, entities: Sequence[tuple[str, str, str, list[float]]]) -> None:
        import numpy as np

        self.keys: list[str] = [e[0] for e in entities]
        self._set = set(self.keys)
        dim = len(entities[0][3]) if entities else 0
        self._buf = unit([e[3] for e in entities]) if entities else np.zeros((0, dim),
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
SCAN_MARGIN = {"bfloat16": 0.02, "float32": 1e-3}


class Scan:
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

        floor = threshold - SCAN_MARGIN[self.precision]
        if self.precision == "bfloat16":
            import torch

            sims = torch.from_numpy(np.ascontiguousarray(block)).to(torch.bfloat16) \
                @ self._pool_bf16[:upto].T
            hits = (sims.float() >= floor).nonzero().numpy()  # floor not rounded to bf16
            return hits[:, 0].astype(np.int64), hits[:, 1].astype(np.int64)
        rows, cols = np.nonzero(block @ self.pool[:upto].T >= floor)
        return rows.astype(np.int64), cols.astype(np.int64)


def window_synonyms(keys: list[str], owners: list[int], vectors: dict[str, Any],
                    known: EntityMatrix, n_docs: int, threshold: float
                    ) -> list[list[tuple[str, str, float]]]:
    """Synonym edges (similarity >= ``threshold``) of a window's new entities, per
    document: a document gets the pairs between its new entities and everything stored or
    brought by an earlier document of the window, and among its own new ones -- the edges
    that matching each document in turn against all entities known so far gives. ``keys``
    are in document order (``owners``: each one's document).

    Blocks of 512 names are scanned against the entities before them (one product per
    block, not per document) for candidates within :data:`SCAN_MARGIN` of the threshold,
    in bf16 where the CPU computes it natively; each candidate's similarity is then
    computed exactly (float64 dot product of the float32 vectors), so the edges and their
    values do not depend on the scan's precision nor on how documents were grouped."""
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
    scan = Scan(pool)
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


def document_write(doc: Document, chunks: list[Document], extractions: list[Any],
                   vecs: Sequence[Any], entities: list[dict[str, Any]],
                   synonyms: list[tuple[str, str, float]],
                   co_occurrence_edges: bool = False) -> DocumentWrite:
    """What ``doc`` brings: its passages, the entities no earlier document brought, its
    mentions, relations and synonym edges. Co-occurrences travel with their passage
    (the store keeps them on it) unless ``co_occurrence_edges``."""
    passages, mentions, relations = [], [], []
    for n, (chunk, x, vec) in enumerate(zip(chunks, extractions, vecs, strict=True)):
        pid = f"{doc.id}#{n}"
        co_occurs = []
        for e in x.entities:
            mentions.append((pid, e.key))
        for r in x.relations:
            if r.relation == CO_OCCURS and not co_occurrence_edges:
                co_occurs.append((r.subject, r.object, r.sentence[:500]))
            else:
                relations.append({"a": r.subject, "b": r.object, "relation": r.relation,
                                  "passage": pid, "sentence": r.sentence[:500]})
        passages.append({"id": pid, "position": n, "text": chunk.text,
                         "meta": {k: v for k, v in chunk.metadata.items() if k != "source"},
                         "emb": vec, "co_occurs": co_occurs})
    return DocumentWrite(str(doc.id), doc_hash(doc), dict(doc.metadata), passages,
                         entities, sorted(set(mentions)), relations, synonyms)


class GraphBuilder:
    """One ``insert`` into ``store`` (see the module doc): ``embedder`` embeds passages,
    ``name_embedder`` entity names, ``extractor`` finds entities and relations."""

    def __init__(self, store: GraphStore, embedder: Any, name_embedder: Any, extractor: Any,
                 config: GraphIndexConfig) -> None:
        self.store, self.embedder, self.name_embedder = store, embedder, name_embedder
        self.extractor, self.config = extractor, config

    def insert(self, documents: Sequence[Document | str], progress: bool = True,
               batch: int = 32, window: int = 1024) -> InsertReport:
        """Add documents; unchanged ones are skipped and changed ones replaced.

        Work goes ``window`` documents at a time: their chunks are extracted in one call,
        then the passages and the entity names not stored yet are each embedded in one pass
        (the embedder sorts a pass by length, so its batches carry little padding). The
        window is then written ``batch`` documents per transaction, so a crash loses at
        most the batch being written, never half a document."""
        from tqdm.auto import tqdm

        for name, value in (("batch", batch), ("window", window)):
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        docs = check_documents(documents)
        report = InsertReport()
        started = time.perf_counter()
        todo = []
        for doc in docs:
            stored = self.store.document_hash(str(doc.id))
            if stored == doc_hash(doc):
                report.skipped += 1
                continue
            if stored is not None:
                self.store.delete_document(str(doc.id))
                report.replaced += 1
            todo.append(doc)
        bar = tqdm(total=len(todo), disable=not progress or not todo, desc="graph index",
                   unit="doc")
        known = EntityMatrix(self.store.entities())
        try:
            with self.store.bulk():
                for s in range(0, len(todo), window):
                    self._insert_window(todo[s:s + window], known, report, batch, bar)
                closing = time.perf_counter()
            report.seconds_write += time.perf_counter() - closing  # the closing checkpoint
        finally:
            bar.close()
        report.seconds = time.perf_counter() - started
        return report

    def _insert_window(self, group: list[Document], known: EntityMatrix,
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
        passage_vecs = embed_array(self.embedder, [c.text for c in flat])
        names = sorted(fresh)
        t_names = time.perf_counter()
        vectors = dict(zip(names, unit(embed_names(
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
        synonyms = window_synonyms(order, [owner[k] for k in order], vectors, known,
                                   len(group), cfg.synonym_threshold)
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
                writes.append(document_write(doc, chunks, mine, vecs, entities, synonyms[d],
                                             cfg.co_occurrence_edges))
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
