"""Graph storage behind one small interface, in Cypher: an embedded Ladybug database by
default (the maintained fork of Kuzu, MIT, persistent, transactional), or a Neo4j server
through its official driver for graphs that outgrow one machine.

The schema (property graph):

- ``(:Document {id, hash, meta})``
- ``(:Passage {id, doc, position, text, meta, emb, cooc})``, ``emb`` the passage embedding,
  ``cooc`` the co-occurrences found in the passage (JSON: its entity ids and sentences
  once each, (entity, entity, sentence) triples as indices), which
  :meth:`GraphStore.relations` reads back as ``co_occurs`` relations: one RELATED edge each
  made them a quarter of MuSiQue's writing time, and on their passage they add little to the
  passage rows; deleting the passage deletes them
- ``(:Entity {id, name, label, emb})``, ``id`` the normalised name
- embeddings are stored as float32 bytes (``BLOB``): a list of 384 doubles per row made
  writing entities several times slower; stores written before (``DOUBLE[]``) are read and
  extended in their own format (figures of this schema's choices: benchmarks/RESULTS.md,
  "GraphRAG")
- ``(:Passage)-[:MENTIONS]->(:Entity)``
- ``(:Entity)-[:RELATED {relation, doc, passage, sentence}]->(:Entity)``, the LLM's triples
  (and co-occurrences when the index asks for edges), one per supporting passage, so
  deleting a document removes exactly the edges only it supported
- ``(:Entity)-[:SYNONYM {sim}]->(:Entity)``, entity-resolution edges

A batch of documents is written in one transaction (:meth:`GraphStore.write_documents`) and
a document is deleted in one (:meth:`GraphStore.delete_document`): a process killed mid-index
loses nothing already committed and leaves no half-written document.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expertrag.errors import ExpertRAGError, InputError
from expertrag.graph.extract import CO_OCCURS

_SCHEMA = [
    "CREATE NODE TABLE IF NOT EXISTS Document(id STRING, hash STRING, meta STRING, "
    "PRIMARY KEY(id))",
    "CREATE NODE TABLE IF NOT EXISTS Passage(id STRING, doc STRING, position INT64, "
    "text STRING, meta STRING, emb BLOB, cooc STRING, PRIMARY KEY(id))",
    # stores created before co-occurrences moved onto their passage
    "ALTER TABLE Passage ADD IF NOT EXISTS cooc STRING DEFAULT ''",
    "CREATE NODE TABLE IF NOT EXISTS Entity(id STRING, name STRING, label STRING, "
    "emb BLOB, PRIMARY KEY(id))",
    "CREATE REL TABLE IF NOT EXISTS MENTIONS(FROM Passage TO Entity)",
    "CREATE REL TABLE IF NOT EXISTS RELATED(FROM Entity TO Entity, relation STRING, "
    "doc STRING, passage STRING, sentence STRING)",
    "CREATE REL TABLE IF NOT EXISTS SYNONYM(FROM Entity TO Entity, sim DOUBLE)",
]
_NEO4J_SCHEMA = [
    "CREATE CONSTRAINT expertrag_document IF NOT EXISTS FOR (d:Document) REQUIRE d.id IS UNIQUE",
    "CREATE CONSTRAINT expertrag_passage IF NOT EXISTS FOR (p:Passage) REQUIRE p.id IS UNIQUE",
    "CREATE CONSTRAINT expertrag_entity IF NOT EXISTS FOR (e:Entity) REQUIRE e.id IS UNIQUE",
]


@dataclass
class DocumentWrite:
    """Everything one document brings to the graph, ready to be written."""

    doc_id: str
    doc_hash: str
    meta: dict[str, Any]
    passages: Sequence[dict[str, Any]]
    entities: Sequence[dict[str, Any]]  # the new ones only
    mentions: Sequence[tuple[str, str]]  # (passage id, entity id)
    relations: Sequence[dict[str, Any]]
    synonyms: Sequence[tuple[str, str, float]]


_BULK_CHECKPOINT_BYTES = 256 * 1024 * 1024


class GraphStoreError(ExpertRAGError, RuntimeError):
    """The graph database cannot be opened or a write failed (nothing was committed)."""


def _pack_co_occurs(triples: Sequence[tuple[str, str, str]]) -> str:
    """A passage's (entity, entity, sentence) co-occurrences as compact JSON: each entity
    id and sentence once, the triples as indices ('' when there are none)."""
    if not triples:
        return ""
    keys: dict[str, int] = {}
    sentences: dict[str, int] = {}
    rows = [[keys.setdefault(a, len(keys)), keys.setdefault(b, len(keys)),
             sentences.setdefault(sentence, len(sentences))] for a, b, sentence in triples]
    return json.dumps({"k": list(keys), "s": list(sentences), "r": rows},
                      ensure_ascii=False, separators=(",", ":"))


def _unpack_co_occurs(packed: str | None) -> list[tuple[str, str, str]]:
    if not packed:
        return []
    data = json.loads(packed)
    keys, sentences = data["k"], data["s"]
    return [(keys[a], keys[b], sentences[s]) for a, b, s in data["r"]]


def _decode_vector(value: Any) -> Any:
    """A stored embedding as a float32 array: float32 bytes, or a list from an older store."""
    import numpy as np

    if value is None:
        return np.zeros(0, dtype=np.float32)
    if isinstance(value, bytes | bytearray | memoryview):
        return np.frombuffer(bytes(value), dtype=np.float32).copy()
    return np.asarray(value, dtype=np.float32)


class _Ladybug:
    """The embedded Ladybug (Kuzu) database at ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        try:
            import ladybug
        except ImportError as exc:
            raise GraphStoreError("the embedded graph database needs ladybug: pip install "
                                  "'expertrag[graph]'") from exc
        folder = Path(path)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GraphStoreError(f"cannot use {folder} for the graph database: {exc} (give "
                                  "a folder path; it is created if missing)") from exc
        try:
            self.db = ladybug.Database(str(folder / "graph.lbdb"))
            self.conn = ladybug.Connection(self.db)
        except RuntimeError as exc:
            raise GraphStoreError(f"cannot open the graph database at {folder}: {exc}") from exc
        for statement in _SCHEMA:
            self.conn.execute(statement)
        columns = self.conn.execute("CALL TABLE_INFO('Entity') RETURN *").get_all()
        # a store created before embeddings became bytes keeps its list columns
        self.vectors_as_lists = any(c[1] == "emb" and str(c[2]).endswith("[]")
                                    for c in columns)

    def run(self, query: str, params: dict[str, Any] | None = None) -> list[list[Any]]:
        result = self.conn.execute(query, params or {})
        return result.get_all() if result.has_next() else []

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """Many transactions in a row: the write-ahead log is merged into the database once
        at the end instead of every 16 MB (less writing time: benchmarks/RESULTS.md).
        Each commit is as durable as before; a crash replays the log on reopening."""
        threshold = self.conn.execute(
            "CALL current_setting('checkpoint_threshold') RETURN *").get_all()[0][0]
        self.conn.execute(f"CALL checkpoint_threshold={_BULK_CHECKPOINT_BYTES}")
        try:
            yield
        finally:
            self.conn.execute(f"CALL checkpoint_threshold={int(threshold)}")
            self.conn.execute("CHECKPOINT")

    def close(self) -> None:
        self.conn.close()
        self.db.close()


class _Neo4j:
    """A Neo4j server through the official ``neo4j`` driver (same Cypher)."""

    def __init__(self, uri: str, auth: tuple[str, str] | None = None,
                 database: str | None = None) -> None:
        try:
            import neo4j
        except ImportError as exc:
            raise GraphStoreError("Neo4j storage needs the official driver: pip install "
                                  "neo4j") from exc
        self.driver = neo4j.GraphDatabase.driver(uri, auth=auth)
        self.database = database
        self.session = self.driver.session(database=database)
        self.tx: Any = None
        self.vectors_as_lists = False  # byte arrays; lists from older stores still read
        for statement in _NEO4J_SCHEMA:
            self.session.run(statement).consume()

    def run(self, query: str, params: dict[str, Any] | None = None) -> list[list[Any]]:
        target = self.tx if self.tx is not None else self.session
        return [list(record.values()) for record in target.run(query, params or {})]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.tx = self.session.begin_transaction()
        try:
            yield
        except BaseException:
            self.tx.rollback()
            raise
        else:
            self.tx.commit()
        finally:
            self.tx = None

    @contextmanager
    def bulk(self) -> Iterator[None]:
        yield  # the server manages its own log

    def close(self) -> None:
        self.session.close()
        self.driver.close()


class _Closed:
    """Stands in for a backend after :meth:`GraphStore.close`: every use says so."""

    vectors_as_lists = False

    def __init__(self, where: str) -> None:
        self.where = where

    def _refuse(self, *_args: Any, **_kwargs: Any) -> Any:
        raise GraphStoreError(f"the graph store {self.where} is closed: open it again "
                              "(GraphRAG(path) or GraphStore(path)) to use it")

    run = transaction = bulk = _refuse

    def close(self) -> None:  # closing twice is harmless
        return None


class GraphStore:
    """The knowledge graph's storage. ``GraphStore(path)`` opens (or creates) the embedded
    database in the folder ``path``; ``GraphStore.neo4j(uri, auth)`` reaches a server."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, backend: Any = None
                 ) -> None:
        if backend is None:
            if path is None:
                raise InputError("GraphStore needs a folder path (or a backend)")
            backend = _Ladybug(path)
        self.backend = backend
        self.path = Path(path) if path is not None else None

    @classmethod
    def neo4j(cls, uri: str, auth: tuple[str, str] | None = None,
              database: str | None = None) -> GraphStore:
        return cls(backend=_Neo4j(uri, auth, database))

    def close(self) -> None:
        """Close the database; any later use raises :class:`GraphStoreError`."""
        backend = self.backend
        self.backend = _Closed(str(self.path) if self.path is not None else "(server)")
        backend.close()

    @property
    def closed(self) -> bool:
        return isinstance(self.backend, _Closed)

    def __enter__(self) -> GraphStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """Around a run of :meth:`write_documents` calls (see the backends' ``bulk``)."""
        bulk = getattr(self.backend, "bulk", None)
        if bulk is None:
            yield
            return
        with bulk():
            yield

    # ------------------------------------------------------------------ reads
    def document_hash(self, doc_id: str) -> str | None:
        rows = self.backend.run("MATCH (d:Document {id: $id}) RETURN d.hash", {"id": doc_id})
        return rows[0][0] if rows else None

    def documents(self) -> list[str]:
        return sorted(r[0] for r in self.backend.run("MATCH (d:Document) RETURN d.id"))

    def _encode_vector(self, vector: Any) -> Any:
        import numpy as np

        arr = np.asarray(vector, dtype=np.float32)
        if getattr(self.backend, "vectors_as_lists", False):
            return arr.astype(float).tolist()
        return arr.tobytes()

    def entities(self) -> list[tuple[str, str, str, Any]]:
        """(id, name, label, embedding as a float32 array) of every entity, by id."""
        rows = self.backend.run("MATCH (e:Entity) RETURN e.id, e.name, e.label, e.emb")
        return [(r[0], r[1], r[2], _decode_vector(r[3]))
                for r in sorted(rows, key=lambda r: r[0])]

    def passages(self, ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Passages (all, or those with ``ids``) as dicts, by id."""
        if ids is None:
            rows = self.backend.run("MATCH (p:Passage) RETURN p.id, p.doc, p.position, "
                                    "p.text, p.meta, p.emb")
        else:
            rows = self.backend.run("MATCH (p:Passage) WHERE p.id IN $ids RETURN p.id, p.doc, "
                                    "p.position, p.text, p.meta, p.emb", {"ids": list(ids)})
        out = [{"id": r[0], "doc": r[1], "position": r[2], "text": r[3],
                "meta": json.loads(r[4] or "{}"), "emb": _decode_vector(r[5])} for r in rows]
        return sorted(out, key=lambda p: p["id"])

    def mentions(self) -> list[tuple[str, str]]:
        rows = self.backend.run("MATCH (p:Passage)-[:MENTIONS]->(e:Entity) RETURN p.id, e.id")
        return sorted((r[0], r[1]) for r in rows)

    def relations(self) -> list[tuple[str, str, str, str, str, str]]:
        """(subject, relation, object, doc, passage, sentence) of every relation: the
        RELATED edges and the co-occurrences kept on passages (relation ``co_occurs``)."""
        rows = self.backend.run("MATCH (a:Entity)-[r:RELATED]->(b:Entity) RETURN a.id, "
                                "r.relation, b.id, r.doc, r.passage, r.sentence")
        out = [tuple(r) for r in rows]
        for pid, doc, packed in self._co_occurs():
            out += [(a, CO_OCCURS, b, doc, pid, sentence)
                    for a, b, sentence in _unpack_co_occurs(packed)]
        return sorted(out)  # type: ignore[arg-type]

    def _co_occurs(self) -> list[list[Any]]:
        """(passage id, doc id, packed co-occurrences) of the passages that hold some."""
        rows = self.backend.run("MATCH (p:Passage) RETURN p.id, p.doc, p.cooc")
        return [r for r in rows if r[2]]

    def synonyms(self) -> list[tuple[str, str, float]]:
        rows = self.backend.run("MATCH (a:Entity)-[s:SYNONYM]->(b:Entity) RETURN a.id, b.id, "
                                "s.sim")
        return sorted((r[0], r[1], float(r[2])) for r in rows)

    def counts(self) -> dict[str, int]:
        q = {"documents": "MATCH (d:Document) RETURN count(*)",
             "passages": "MATCH (p:Passage) RETURN count(*)",
             "entities": "MATCH (e:Entity) RETURN count(*)",
             "mentions": "MATCH ()-[m:MENTIONS]->() RETURN count(*)",
             "relations": "MATCH ()-[r:RELATED]->() RETURN count(*)",
             "synonyms": "MATCH ()-[s:SYNONYM]->() RETURN count(*)"}
        out = {k: int(self.backend.run(v)[0][0]) for k, v in q.items()}
        out["relations"] += sum(len(json.loads(packed)["r"])
                                for _, _, packed in self._co_occurs())
        return out

    # ------------------------------------------------------------------ writes
    def write_documents(self, docs: Sequence[DocumentWrite]) -> None:
        """Several documents in one transaction: all of them are committed or none is, so a
        crash never leaves half a document. Each kind of row goes in one ``UNWIND``
        statement for the whole batch, in dependency order (nodes before the edges that
        name them), which is what makes indexing a corpus cheap: six statements per batch
        instead of six per document. Edge endpoints are matched as ``MATCH (a) WHERE a.id =
        r.a``, one match per clause: Ladybug looks these up in the primary-key index, whereas
        the pattern form ``MATCH (a {id: r.a}), (b {id: r.b})`` scanned the whole Entity
        table per statement (about a hundred times slower: benchmarks/RESULTS.md, "GraphRAG").
        Everything a write names is new: documents, passages, entities (the ones no stored
        or earlier document brought), mentions and synonyms are created, not merged (MERGE
        looked each up first, over twice as slow), so writing a document,
        passage or entity that is already stored fails and commits nothing (``GraphRAG``
        deletes a changed document before writing it again). A batch's later documents may
        mention the entities its earlier ones bring."""
        if not docs:
            return
        run = self.backend.run
        rows: dict[str, list[dict[str, Any]]] = {k: [] for k in (
            "docs", "passages", "entities", "mentions", "relations", "synonyms")}
        for d in docs:
            rows["docs"].append({"id": d.doc_id, "hash": d.doc_hash,
                                 "meta": json.dumps(d.meta, default=str)})
            rows["passages"] += [{"id": p["id"], "position": p["position"],
                                  "text": p["text"], "doc": d.doc_id,
                                  "emb": self._encode_vector(p["emb"]),
                                  "meta": json.dumps(p.get("meta") or {}, default=str),
                                  "cooc": _pack_co_occurs(p.get("co_occurs") or ())}
                                 for p in d.passages]
            rows["entities"] += [{**e, "emb": self._encode_vector(e["emb"])}
                                 for e in d.entities]
            rows["mentions"] += [{"p": p, "e": e} for p, e in d.mentions]
            rows["relations"] += [{**r, "doc": d.doc_id} for r in d.relations]
            rows["synonyms"] += [{"a": a, "b": b, "sim": sim} for a, b, sim in d.synonyms]
        statements = [
            ("docs", "UNWIND $rows AS r CREATE (:Document {id: r.id, hash: r.hash, "
                     "meta: r.meta})"),
            ("passages", "UNWIND $rows AS r CREATE (:Passage {id: r.id, doc: r.doc, "
                         "position: r.position, text: r.text, meta: r.meta, emb: r.emb, "
                         "cooc: r.cooc})"),
            ("entities", "UNWIND $rows AS r CREATE (:Entity {id: r.id, name: r.name, "
                         "label: r.label, emb: r.emb})"),
            ("mentions", "UNWIND $rows AS r MATCH (p:Passage) WHERE p.id = r.p "
                         "MATCH (e:Entity) WHERE e.id = r.e CREATE (p)-[:MENTIONS]->(e)"),
            ("relations", "UNWIND $rows AS r MATCH (a:Entity) WHERE a.id = r.a "
                          "MATCH (b:Entity) WHERE b.id = r.b CREATE (a)-[:RELATED {"
                          "relation: r.relation, doc: r.doc, passage: r.passage, "
                          "sentence: r.sentence}]->(b)"),
            ("synonyms", "UNWIND $rows AS r MATCH (a:Entity) WHERE a.id = r.a "
                         "MATCH (b:Entity) WHERE b.id = r.b "
                         "CREATE (a)-[:SYNONYM {sim: r.sim}]->(b)"),
        ]
        try:
            with self.backend.transaction():
                for kind, query in statements:
                    if rows[kind]:
                        run(query, {"rows": rows[kind]})
        except RuntimeError as exc:
            names = ", ".join(repr(d.doc_id) for d in docs[:3]) + (
                f" and {len(docs) - 3} more" if len(docs) > 3 else "")
            raise GraphStoreError(f"writing documents {names} failed (nothing of them was "
                                  f"committed): {exc}") from exc

    def delete_document(self, doc_id: str) -> bool:
        """Remove the document, its passages, the relations only it supported and the
        entities no remaining passage mentions, in one transaction. False if absent."""
        if self.document_hash(doc_id) is None:
            return False
        run = self.backend.run
        with self.backend.transaction():
            run("MATCH (:Entity)-[r:RELATED]->(:Entity) WHERE r.doc = $doc DELETE r",
                {"doc": doc_id})
            run("MATCH (p:Passage) WHERE p.doc = $doc DETACH DELETE p", {"doc": doc_id})
            run("MATCH (e:Entity) WHERE NOT EXISTS { MATCH (e)<-[:MENTIONS]-(:Passage) } "
                "DETACH DELETE e")
            run("MATCH (d:Document {id: $id}) DELETE d", {"id": doc_id})
        return True
