"""GraphRAG on tiny hand-made documents: a rule-based test extractor and a hashing embedder
(no spaCy, no model download), the embedded Ladybug store, incremental insert and delete,
the four searches, export, and crash safety."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import ClassVar

import pytest

pytest.importorskip("ladybug")

from expertrag.errors import InputError
from expertrag.graph import GraphConfig, GraphRAG, GraphStore, normalize
from expertrag.graph.extract import CO_OCCURS, Entity, Extraction, Relation
from expertrag.graph.store import DocumentWrite, GraphStoreError
from expertrag.types import Document

DOCS = [
    Document("Ada Lovelace worked with Charles Babbage in London. Babbage designed the "
             "Analytical Engine.", id="ada"),
    Document("The Analytical Engine was never built. Charles Babbage lived in London.",
             id="engine"),
    Document("Mr Holmes lives in London with Watson. Sherlock plays the violin.", id="holmes"),
    Document("Paris is the capital of France. The Seine flows through Paris.", id="paris"),
]


class CapsExtractor:
    """Capitalised word runs are entities; two in one sentence co-occur."""

    name = "caps"

    def entities_of(self, text: str) -> list[Entity]:
        found = {}
        for m in re.finditer(r"(?:[A-Z][a-z]+)(?:\s+[A-Z][a-z]+)*", text):
            name = m.group(0)
            key = normalize(name)
            if key not in ("the", "mr", "who", "what", "where", "when") and key not in found:
                found[key] = Entity(name, key, "CAPS")
        return list(found.values())

    def extract(self, texts):
        out = []
        for text in texts:
            ents, rels = {}, []
            for sentence in re.split(r"(?<=\.)\s+", text):
                mine = self.entities_of(sentence)
                for e in mine:
                    ents.setdefault(e.key, e)
                for i, a in enumerate(mine):
                    for b in mine[i + 1:]:
                        lo, hi = sorted((a.key, b.key))
                        rels.append(Relation(lo, CO_OCCURS, hi, sentence))
            out.append(Extraction(list(ents.values()), rels))
        return out


class HashEmbedder:
    """Bag-of-words hashing; "sherlock", "holmes" and "mr holmes" share a bucket."""

    ALIAS: ClassVar[dict[str, str]] = {"sherlock": "holmes"}

    def _vec(self, text: str) -> list[float]:
        v = [0.0] * 64
        for w in re.findall(r"\w+", text.lower()):
            w = self.ALIAS.get(w, w)
            if w in ("mr", "the"):
                continue
            v[int(hashlib.md5(w.encode()).hexdigest(), 16) % 64] += 1.0
        v[63] += 1e-3
        return v

    def embed_documents(self, texts):
        return [self._vec(t) for t in texts]

    def embed_query(self, text):
        return self._vec(text)


def graph_at(path: Path, **config) -> GraphRAG:
    g = GraphRAG(path, embedder=HashEmbedder(), config=GraphConfig(**config))
    g.extractor = g._linker = CapsExtractor()
    return g


def test_insert_builds_passages_entities_and_synonyms(tmp_path):
    g = graph_at(tmp_path / "g", synonym_threshold=0.9)
    report = g.insert(DOCS, progress=False)
    assert report.documents == 4 and report.passages == 4 and report.skipped == 0
    counts = g.store.counts()
    assert counts["documents"] == 4 and counts["passages"] == 4
    names = {e[0] for e in g.store.entities()}
    assert {"ada lovelace", "charles babbage", "london", "analytical engine"} <= names
    # "Sherlock" and "Mr Holmes" meet through a synonym edge
    syn = {(a, b) for a, b, _ in g.store.synonyms()}
    assert ("holmes", "sherlock") in syn or ("mr holmes", "sherlock") in syn
    again = g.insert(DOCS, progress=False)
    assert again.skipped == 4 and again.documents == 0  # re-inserting is a no-op
    assert g.store.counts() == counts
    g.close()


def _state(store):
    """Everything stored, embeddings as exact float lists (they come back as arrays)."""
    entities = [(i, n, lab, emb.tolist()) for i, n, lab, emb in store.entities()]
    return entities, store.relations(), store.synonyms(), store.mentions()


@pytest.mark.parametrize("edges", [False, True])
def test_delete_keeps_shared_entities_and_reinsert_restores_results(tmp_path, edges):
    g = graph_at(tmp_path / "g", co_occurrence_edges=edges)
    g.insert(DOCS, progress=False)
    queries = ["Who worked with Charles Babbage?", "Where does Sherlock live?",
               "What flows through Paris?"]
    before = {(q, m): [(d.id, round(d.score, 8)) for d in g.retrieve(q, k=3, mode=m)]
              for q in queries for m in ("ppr", "local")}
    state = _state(g.store)
    assert g.delete("ada")
    names = {e[0] for e in g.store.entities()}
    assert "ada lovelace" not in names  # only "ada" mentioned her
    assert {"charles babbage", "london"} <= names  # shared with other documents
    assert all(r[3] != "ada" for r in g.store.relations())
    assert not g.delete("ada")
    g.insert([DOCS[0]], progress=False)
    assert _state(g.store) == state
    after = {(q, m): [(d.id, round(d.score, 8)) for d in g.retrieve(q, k=3, mode=m)]
             for q in queries for m in ("ppr", "local")}
    assert after == before
    g.close()


class TripleExtractor(CapsExtractor):
    """CapsExtractor plus a named relation where a sentence says "X worked with Y"."""

    def extract(self, texts):
        out = super().extract(texts)
        for text, x in zip(texts, out, strict=True):
            for sentence in re.split(r"(?<=\.)\s+", text):
                m = re.search(r"([A-Z][a-z]+(?: [A-Z][a-z]+)*) worked with "
                              r"([A-Z][a-z]+(?: [A-Z][a-z]+)*)", sentence)
                if m:
                    x.relations.append(Relation(normalize(m.group(1)), "worked with",
                                                normalize(m.group(2)), sentence))
        return out


def _related_edges(g):
    return int(g.store.backend.run("MATCH ()-[r:RELATED]->() RETURN count(*)")[0][0])


def _results(g, queries=("Who worked with Charles Babbage?", "Where does Sherlock live?",
                         "What flows through Paris?", "Tell me about Ada Lovelace")):
    return {(q, m): [(d.id, round(d.score, 8), d.metadata.get("paths"))
                     for d in g.retrieve(q, k=3, mode=m)]
            for q in queries for m in ("ppr", "local", "global")}


def test_co_occurrences_kept_on_passages_read_back_as_the_edges_were(tmp_path):
    """By default a passage keeps its co-occurrences (no RELATED edge each); the store
    reads them back as the same relations, so both layouts give the same graph, counts,
    report and searches. Named relations (the LLM's triples) stay edges either way."""
    graphs, reports = {}, {}
    for edges in (False, True):
        g = graph_at(tmp_path / f"g{edges}", co_occurrence_edges=edges)
        g.extractor = TripleExtractor()
        reports[edges] = g.insert(DOCS, progress=False)
        graphs[edges] = g
    relations = graphs[True].store.relations()
    assert ("ada lovelace", "worked with", "charles babbage") in {r[:3] for r in relations}
    assert sum(r[1] == CO_OCCURS for r in relations) >= 5
    assert _related_edges(graphs[True]) == len(relations)
    assert _related_edges(graphs[False]) == 1  # the named relation only
    assert _state(graphs[False].store) == _state(graphs[True].store)
    assert graphs[False].store.counts() == graphs[True].store.counts()
    assert graphs[False].store.counts()["relations"] == len(relations)
    assert reports[False].relations == reports[True].relations == len(relations)
    assert _results(graphs[False]) == _results(graphs[True])
    paths = graphs[False].retrieve("Tell me about Ada Lovelace", k=1, mode="local")[0]
    assert any("—appears with→" in p for p in paths.metadata["paths"])
    for g in graphs.values():
        g.close()


def test_a_store_with_co_occurrence_edges_is_read_and_extended(tmp_path):
    """A store whose co-occurrences are RELATED edges (written with co_occurrence_edges,
    or before they moved onto passages) takes new documents the default way; it reads,
    searches and deletes as a store written one way throughout."""
    old = graph_at(tmp_path / "g", co_occurrence_edges=True)
    old.insert(DOCS[:2], progress=False)
    old.close()
    g = graph_at(tmp_path / "g")
    g.insert(DOCS[2:], progress=False)
    assert _related_edges(g) > 0
    fresh = graph_at(tmp_path / "fresh")
    fresh.insert(DOCS, progress=False)
    assert _related_edges(fresh) == 0
    assert _state(g.store) == _state(fresh.store)
    assert _results(g) == _results(fresh)
    for doc in ("ada", "holmes"):  # one with edges, one with co-occurrences on passages
        assert g.delete(doc) and fresh.delete(doc)
        assert all(r[3] != doc for r in g.store.relations())
        assert _state(g.store) == _state(fresh.store)
    g.insert(DOCS, progress=False)
    fresh.insert(DOCS, progress=False)
    assert _state(g.store) == _state(fresh.store)
    assert _results(g) == _results(fresh)
    g.close()
    fresh.close()


def test_writing_what_is_stored_fails_and_commits_nothing(tmp_path):
    """Writes create their nodes (no MERGE): a batch naming a stored document or entity
    fails as a whole."""
    g = graph_at(tmp_path / "g")
    g.insert(DOCS[:1], progress=False)
    state, counts = _state(g.store), g.store.counts()

    def write(doc, entities=()):
        return DocumentWrite(doc, "hash", {}, [{"id": f"{doc}#0", "position": 0,
                                               "text": "Some text.", "emb": [0.5] * 64}],
                             [{"id": e, "name": e, "label": "", "emb": [0.5] * 64}
                              for e in entities], [], [], [])

    for bad in (write("ada"), write("other", ["london"])):
        with pytest.raises(GraphStoreError, match="nothing of them was committed"):
            g.store.write_documents([write("fine", ["zebra"]), bad])
        assert _state(g.store) == state and g.store.counts() == counts
        assert g.store.documents() == ["ada"]
    g.close()


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_window_synonyms_are_the_document_by_document_ones(tmp_path, monkeypatch, precision):
    """Synonyms found per block of a window (scanned in bf16 or float32, then computed
    exactly) are the pairs that matching each document in turn against everything known
    so far finds, with the same similarities, each in the document that completes it."""
    import numpy as np

    from expertrag.graph.index import _EntityMatrix
    from expertrag.models import loading

    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: precision == "bfloat16")
    rng = np.random.default_rng(0)
    base = rng.normal(size=(15, 32))
    # near-duplicates of 15 base vectors: many pairs on both sides of 0.9
    vecs = np.repeat(base, 20, axis=0) + rng.normal(scale=0.33, size=(300, 32))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    # and 150 pairs at cosines within 0.006 of 0.9, where a bf16 product errs
    u = rng.normal(size=(150, 32))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    w = rng.normal(size=(150, 32))
    w -= (w * u).sum(axis=1, keepdims=True) * u
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    cos = 0.9 + rng.uniform(-0.006, 0.006, size=(150, 1))
    vecs = np.concatenate([vecs, u, cos * u + np.sqrt(1 - cos ** 2) * w]).astype(np.float32)
    keys = [f"e{i:03d}" for i in rng.permutation(600)]
    known_keys, new_keys = keys[:100], keys[100:]
    owners = sorted(rng.integers(0, 25, size=len(new_keys)).tolist())
    # keys are grouped by document and sorted within one, as _insert_window orders them
    by_doc: dict[int, list[str]] = {}
    for k, d in zip(new_keys, owners, strict=True):
        by_doc.setdefault(d, []).append(k)
    order = [k for d in sorted(by_doc) for k in sorted(by_doc[d])]
    owners = [d for d in sorted(by_doc) for _ in by_doc[d]]
    vectors = dict(zip(keys, vecs, strict=True))
    known = _EntityMatrix([(k, k, "", vectors[k]) for k in known_keys])
    g = graph_at(tmp_path / "g", synonym_threshold=0.9)
    got = g._window_synonyms(order, owners, vectors, known, 25)
    seen = list(known_keys)
    near = 0
    for d in range(25):
        mine = sorted(by_doc.get(d, []))
        want = set()
        for i, a in enumerate(mine):
            for b in seen + mine[i + 1:]:
                sim = float(np.dot(vectors[a].astype(np.float64), vectors[b].astype(np.float64)))
                near += abs(sim - 0.9) < 0.01
                if sim >= 0.9:
                    want.add((*sorted((a, b)), sim))
        assert [p[:2] for p in got[d]] == sorted(p[:2] for p in want)
        assert [p[2] for p in got[d]] == pytest.approx(
            [round(p[2], 4) for p in sorted(want)], abs=1e-12)
        seen += mine
    assert sum(map(len, got)) > 200 and near > 100  # many pairs, many near the threshold
    g.close()


def test_names_are_embedded_one_pass_per_token_count():
    """An expertrag Embedder gets the names in passes of equal token counts (so batches
    carry no padding); the vectors come back in the names' order. Other embedders get one
    pass."""
    import numpy as np

    from expertrag.embeddings import Embedder
    from expertrag.graph.index import _embed_names

    class Model:  # the SentenceTransformer surface that Embedder and _embed_names use
        max_seq_length = 5

        def __init__(self):
            self.passes = []

        def tokenizer(self, texts, truncation, max_length):
            assert truncation
            return {"input_ids": [[0] * min(len(t.split()) + 2, max_length) for t in texts]}

        def encode(self, texts, **_):
            self.passes.append(list(texts))
            return np.array([[len(t), len(t.split()), 1.0] for t in texts], dtype=np.float32)

    embedder = Embedder()
    embedder._model = model = Model()
    names = ["Ada Lovelace", "London", "the Analytical Engine", "Paris", "Charles Babbage",
             "a very long name of six words"]
    out = _embed_names(embedder, names)
    assert out.tolist() == [[len(n), len(n.split()), 1.0] for n in names]
    counts = [{min(len(t.split()) + 2, 5) for t in p} for p in model.passes]
    assert all(len(c) == 1 for c in counts) and len(model.passes) == 3
    assert sorted(model.passes, key=len)[-1] == ["the Analytical Engine",
                                                 "a very long name of six words"]
    plain = HashEmbedder()
    assert _embed_names(plain, names).tolist() == \
        np.asarray(plain.embed_documents(names), dtype=np.float32).tolist()


def test_changed_document_is_replaced(tmp_path):
    g = graph_at(tmp_path / "g")
    g.insert(DOCS[:2], progress=False)
    report = g.insert([Document("Grace Hopper wrote compilers.", id="ada")], progress=False)
    assert report.replaced == 1 and report.documents == 1
    names = {e[0] for e in g.store.entities()}
    assert "grace hopper" in names and "ada lovelace" not in names
    g.close()


def test_searches_rank_and_explain(tmp_path):
    g = graph_at(tmp_path / "g")
    g.insert(DOCS, progress=False)
    ppr = g.retrieve("Who worked with Charles Babbage?", k=2, mode="ppr")
    assert ppr[0].id == "ada#0" and ppr[0].score > ppr[1].score
    assert ppr[0].metadata["source"] == "ada" and "charles babbage" in \
        ppr[0].metadata["linked_entities"]
    local = g.retrieve("Tell me about Ada Lovelace", k=3, mode="local")
    assert local[0].id == "ada#0"
    assert any("Ada Lovelace —appears with→" in p for p in local[0].metadata["paths"]) or \
        local[0].metadata["linked_entities"] == ["ada lovelace"]
    glob = g.retrieve("Paris and the Seine", k=1, mode="global")
    assert glob and glob[0].metadata["graph_mode"] == "global"
    assert "paris#0" in glob[0].metadata["passages"]
    embedded: list[str] = []
    real = g.embedder.embed_documents
    g.embedder.embed_documents = lambda texts: embedded.extend(texts) or real(texts)
    hybrid = g.retrieve("What flows through Paris?", k=2, mode="hybrid")
    assert hybrid[0].id == "paris#0"
    assert not set(embedded) & {d.text for d in DOCS}  # the stored passage vectors are used
    with pytest.raises(InputError, match="mode"):
        g.retrieve("x", mode="telepathy")
    with pytest.raises(InputError, match="empty"):
        g.insert([Document("  ", id="blank")], progress=False)
    with pytest.raises(InputError, match="query"):
        g.retrieve(" ")
    g.close()


def test_export_and_pictures(tmp_path):
    g = graph_at(tmp_path / "g")
    g.insert(DOCS, progress=False)
    path = g.export_graphml(tmp_path / "out" / "graph.graphml")
    text = path.read_text()
    assert "<graphml" in text and "charles babbage" in text
    docs = g.retrieve("Who worked with Charles Babbage?", k=2)
    png = g.draw(docs, tmp_path / "out" / "answer.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    page = g.draw(docs, tmp_path / "out" / "answer.html").read_text()
    assert "<svg" in page and "charles babbage" in page.lower()
    g.close()


def test_reopening_keeps_the_graph(tmp_path):
    g = graph_at(tmp_path / "g")
    g.insert(DOCS, progress=False)
    counts = g.store.counts()
    g.close()
    again = graph_at(tmp_path / "g")
    assert again.store.counts() == counts
    assert again.retrieve("Who worked with Charles Babbage?", k=1)[0].id == "ada#0"
    again.close()


def test_entity_specificity_favours_the_rare_entity(tmp_path):
    """HippoRAG's node specificity: "London" (in four passages) seeds less than "Zed" (in
    one), so the passage that holds Zed gains on London's passages."""
    docs = [Document(f"Town{c} is near London.", id=f"t{c}") for c in "abc"]
    docs.append(Document("Zed lives in London.", id="zed"))
    shares = []
    for on in (False, True):
        g = graph_at(tmp_path / f"g{on}", entity_specificity=on, passage_seed_weight=1e-6)
        g.insert(docs, progress=False)
        scores = {d.id: d.score for d in g.ppr("Zed and London?", k=4)}
        assert set(scores) == {"ta#0", "tb#0", "tc#0", "zed#0"}
        shares.append(scores["zed#0"] / scores["ta#0"])
        g.close()
    assert shares[1] > shares[0] * 1.2


def test_a_killed_index_loses_nothing_committed(tmp_path):
    """A process dies in the middle of writing its second batch (the third document):
    reopening shows the first batch's two documents complete and nothing of the third."""
    root = Path(__file__).resolve().parents[1]
    script = textwrap.dedent(f"""
        import os, sys
        sys.path[:0] = [{str(root)!r}, {str(root / 'unit')!r}]
        from test_graph import DOCS, graph_at
        from pathlib import Path
        g = graph_at(Path({str(tmp_path / 'g')!r}))
        run = g.store.backend.run
        batches = [0]
        def dying(query, params=None):
            if query.startswith("UNWIND") and "MENTIONS" in query:
                batches[0] += 1
                if batches[0] == 2:
                    os._exit(3)  # killed mid-transaction, after passages and entities
            return run(query, params)
        g.store.backend.run = dying
        g.insert(DOCS[:3], progress=False, batch=2)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    store = GraphStore(tmp_path / "g")
    assert store.documents() == ["ada", "engine"]
    assert {p["doc"] for p in store.passages()} == {"ada", "engine"}
    assert not any("holmes" in e[0] for e in store.entities())
    store.close()


def test_a_batch_is_one_transaction_and_the_same_graph(tmp_path):
    """Writing four documents as one batch gives the graph that one-by-one writing gives,
    in one transaction of six statements instead of four."""
    graphs = []
    for batch, window in ((1, 1), (32, 1024), (3, 2)):
        g = graph_at(tmp_path / f"g{batch}-{window}", synonym_threshold=0.9)
        statements = []
        real = g.store.backend.conn.execute

        def execute(query, params=None, real=real, statements=statements):
            statements.append(query)
            return real(query, params or {})

        g.store.backend.conn.execute = execute
        report = g.insert(DOCS, progress=False, batch=batch, window=window)
        assert report.documents == 4
        graphs.append((g.store.counts(), sorted(g.store.mentions()),
                       sorted(g.store.synonyms()), sorted(r[:3] for r in g.store.relations())))
        begins = statements.count("BEGIN TRANSACTION")
        writes = [q for q in statements if q.startswith("UNWIND")]
        if batch == 1:
            assert begins == 4
        elif batch == 32:
            assert begins == 1 and len(writes) <= 6
        else:  # windows of 2 documents, each written as one batch
            assert begins == 2
        g.close()
    assert graphs[0] == graphs[1] == graphs[2]


def test_insert_checks_batch_and_window(tmp_path):
    g = graph_at(tmp_path / "g")
    for bad in ({"batch": 0}, {"window": -1}, {"window": 2.5}):
        with pytest.raises(InputError, match=next(iter(bad))):
            g.insert(DOCS, progress=False, **bad)
    assert g.store.counts()["documents"] == 0
    g.close()


def test_a_store_with_list_embeddings_is_read_and_extended(tmp_path):
    """Stores written before embeddings became float32 bytes (DOUBLE[] columns) open,
    read, take new documents in their own format, and search as before."""
    import ladybug

    folder = tmp_path / "old"
    folder.mkdir()
    db = ladybug.Database(str(folder / "graph.lbdb"))
    conn = ladybug.Connection(db)
    for statement in (
            "CREATE NODE TABLE Document(id STRING, hash STRING, meta STRING, PRIMARY KEY(id))",
            "CREATE NODE TABLE Passage(id STRING, doc STRING, position INT64, text STRING, "
            "meta STRING, emb DOUBLE[], PRIMARY KEY(id))",
            "CREATE NODE TABLE Entity(id STRING, name STRING, label STRING, emb DOUBLE[], "
            "PRIMARY KEY(id))"):
        conn.execute(statement)
    conn.close()
    db.close()
    g = graph_at(folder)
    assert g.store.backend.vectors_as_lists
    g.insert(DOCS, progress=False)
    new = graph_at(tmp_path / "new")
    assert not new.store.backend.vectors_as_lists
    new.insert(DOCS, progress=False)
    assert _state(g.store) == _state(new.store)
    emb = g.store.entities()[0][3]
    assert emb.dtype.name == "float32" and emb.shape == (64,)
    for q in ("Where does Sherlock live?", "Who worked with Charles Babbage?"):
        assert [d.id for d in g.retrieve(q, k=3)] == [d.id for d in new.retrieve(q, k=3)]
    g.close()
    new.close()


def test_names_precision_follows_the_embedder(tmp_path):
    g = graph_at(tmp_path / "g")  # a plain embedder: names use it as it is
    assert g.name_embedder is g.embedder
    forced = graph_at(tmp_path / "h", name_precision="bfloat16")
    with pytest.raises(InputError, match="needs an expertrag Embedder"):
        _ = forced.name_embedder
    g.close()
    forced.close()


def test_config_is_checked():
    with pytest.raises(InputError, match="extraction"):
        GraphConfig(extraction="magic").validate()
    with pytest.raises(InputError, match="damping"):
        GraphConfig(damping=1.0).validate()
    with pytest.raises(InputError, match="name_precision"):
        GraphConfig(name_precision="half").validate()


def test_llm_extractor_parses_triples_on_a_tiny_model():
    from tiny_models import tiny_llm

    from expertrag.graph.extract import LLMExtractor

    ex = LLMExtractor(tiny_llm(max_positions=4096), max_new_tokens=40)
    out = ex.extract(["Ada Lovelace worked with Charles Babbage.", "Paris is big."])
    assert len(out) == 2 and all(x.llm_calls == 1 for x in out)
    text = "Ada Lovelace worked with Charles Babbage in London."
    parsed = LLMExtractor._parse(text, {"entities": ["London", "Paris", "London"], "triples": [
        {"subject": "Ada Lovelace", "relation": "Worked With", "object": "Charles Babbage"},
        {"subject": "Ada Lovelace", "relation": "worked  with", "object": "Charles Babbage"},
        {"subject": "Ada Lovelace", "relation": "met", "object": "Mary Shelley"},
        {"subject": "it", "relation": "is", "object": "it"}]})
    # Paris and Mary Shelley are not in the passage: made up, dropped; duplicates fold
    assert [e.key for e in parsed.entities] == ["london", "ada lovelace", "charles babbage"]
    assert [(r.subject, r.relation, r.object) for r in parsed.relations] == [
        ("ada lovelace", "worked with", "charles babbage")]
    assert LLMExtractor._parse(text, {"entities": ["Nobody"], "triples": []}).empty


def test_llm_extractor_keeps_the_grounded_head_of_a_run_on_name():
    from expertrag.graph.extract import LLMExtractor, normalize

    text = ("The Church of the Gesù (, ) is the mother church of the Society of Jesus. "
            "Peter Appleyard was a vibraphonist.")
    body = f" {normalize(text)} "
    # the model copied the name and ran on into its sentence, cut at maxLength
    assert LLMExtractor._grounded("The Church of the Gesù (, ) is the mother church of the Soci",
                                  body) == "church of the gesù"
    assert LLMExtractor._grounded("Society of Jesus and the", body) == "society of jesus"
    assert LLMExtractor._grounded("Mary Shelley", body) is None
    assert LLMExtractor._grounded("the", body) is None
    # a grounded triple endpoint is an entity even when its triple is dropped
    parsed = LLMExtractor._parse(text, {"entities": [", "], "triples": [
        {"subject": "Peter Appleyard", "relation": "object", "object": "people"}]})
    assert [e.key for e in parsed.entities] == ["peter appleyard"] and not parsed.relations
    run_on = LLMExtractor._parse(text, {"entities": [
        "The Church of the Gesù (, ) is the mother church of the Soci"], "triples": []})
    assert [e.name for e in run_on.entities] == ["church of the gesù"]  # what gets embedded


def test_graph_skins_and_pipeline(tmp_path):
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import QueryBundle

    from expertrag.graph.pipeline import GraphRetrieverAdapter
    from expertrag.langchain.graph import ExpertGraphRetriever
    from expertrag.llama_index.graph import ExpertGraphRetriever as LIGraphRetriever

    g = graph_at(tmp_path / "g")
    g.insert(DOCS, progress=False)
    lc = ExpertGraphRetriever(graph=g, k=2)
    docs = lc.invoke("Who worked with Charles Babbage?")
    assert docs[0].id == "ada#0" and docs[0].metadata["graph_mode"] == "hybrid"  # the default
    assert docs[0].metadata["linked_entities"]  # fused results name the linked entities too
    assert len(lc.invoke("Who worked with Charles Babbage?", k=1)) == 1
    ppr = ExpertGraphRetriever(graph=g, k=2, mode="ppr").invoke("Who worked with Babbage?")
    assert ppr[0].metadata["graph_mode"] == "ppr"
    li = LIGraphRetriever(graph=g, k=2, mode="local")
    nodes = li.retrieve(QueryBundle("Tell me about Ada Lovelace"))
    assert nodes[0].node.node_id == "ada#0"
    adapter = GraphRetrieverAdapter(g, "hybrid")
    assert adapter.query("What flows through Paris?", 1)[0].id == "paris#0"
    with pytest.raises(InputError, match="mode"):
        GraphRetrieverAdapter(g, "nope")
    g.close()


def test_graph_evaluation_pipeline_ranks_only_the_case_passages(monkeypatch):
    from expertrag.evaluation.datasets import QAItem
    from expertrag.evaluation.robustness import plain_cases
    from expertrag.evaluation.runner import CaseRetriever
    from expertrag.graph import pipeline

    real = GraphRAG.__init__

    def init(self, store, embedder=None, llm=None, config=None):
        real(self, store, embedder=HashEmbedder(), llm=llm, config=config)
        self.extractor = self._linker = CapsExtractor()

    monkeypatch.setattr(GraphRAG, "__init__", init)
    items = [QAItem(id=str(i), question=f"Who worked with {who}?", answer="x",
                    gold=[Document(DOCS[i].text, id=f"g{i}")],
                    distractors=[Document(DOCS[3].text, id=f"n{i}")]) for i, who in
             enumerate(["Charles Babbage", "Babbage"])]
    retriever = CaseRetriever(plain_cases(items, n=2))
    graph = pipeline._CaseGraph(retriever)
    got = graph.retrieve(items[0].question, 2)
    assert {d.metadata.get("doc_id", d.id) for d in got} == {"g0", "n0"}
    assert got[0].metadata["doc_id"] == "g0"
    assert graph.retrieve("unknown question", 2) == []


def test_bulk_insert_restores_the_checkpoint_setting(tmp_path):
    g = graph_at(tmp_path / "g")
    conn = g.store.backend.conn

    def threshold():
        return conn.execute("CALL current_setting('checkpoint_threshold') RETURN *"
                            ).get_all()[0][0]

    before = threshold()
    seen = []
    real = g.store.write_documents

    def write(docs):
        seen.append(threshold())
        real(docs)

    g.store.write_documents = write
    g.insert(DOCS, progress=False, batch=2)
    assert seen and all(int(s) > int(before) for s in seen)  # raised while writing
    assert threshold() == before
    g.close()
