"""GraphRAG vs BM25 / dense / hybrid retrieval on MuSiQue, one run, same passages.

Shared MuSiQue: 100 multi-hop questions over the open corpus of 1,890 paragraphs (each one
a document; the graph splits the longest into two or more chunks, which count as their
paragraph in the recall). Passage Recall@2 / Recall@5 of the supporting paragraphs for BM25,
dense (all-MiniLM-L6-v2), hybrid (RRF), graph PPR, graph local and PPR fused with hybrid.
Indexing without the LLM (spaCy): seconds (and against embedding the same corpus),
entities and edges per chunk, share of chunks with nothing extracted, index size on disk,
query latency p50/p95. With the LLM (grammar-constrained triples): the same extraction
figures on a sample of ``--llm-chunks`` passages (the whole corpus with ``--llm-full``).
Answer accuracy with the ``grounded-qa`` expert over the best graph mode vs hybrid.

    python benchmarks/bench_graph.py --data-dir ../shared/data [--llm-chunks 120]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import print_table as _print

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def recall(ranked: list[str], gold: set[str], k: int) -> float:
    """Share of the gold paragraphs among the first `k` distinct paragraphs ranked. Ids are
    paragraph (document) ids: the graph splits a long paragraph into several chunks
    (``m5#0``, ``m5#1``), which count as that one paragraph, found once."""
    seen: list[str] = []
    for pid in ranked:
        doc = pid.split("#", 1)[0]
        if doc not in seen:
            seen.append(doc)
    return len(set(seen[:k]) & gold) / len(gold) if gold else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--llm-chunks", type=int, default=120,
                        help="passages to extract with the LLM for its figures")
    parser.add_argument("--llm-full", action="store_true",
                        help="index the whole corpus with the LLM too (slow on CPU)")
    parser.add_argument("--answers", type=int, default=60,
                        help="questions answered with grounded-qa (0: skip)")
    parser.add_argument("--graph-dir", type=Path,
                        help="keep the spaCy graph here; a graph already holding the corpus "
                             "is reused (recall and answers only, no indexing figures)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from expertrag.datasets import (
        MUSIQUE_CORPUS,
        MUSIQUE_QUESTIONS,
        load_musique,
        load_musique_corpus,
    )

    qpath = args.data_dir / MUSIQUE_QUESTIONS
    if not qpath.is_file():
        sys.exit(f"error: {qpath} not found: pass --data-dir")

    from expertrag.embeddings import Embedder
    from expertrag.evaluation.datasets import answer_correct, musique_items
    from expertrag.graph import GraphConfig, GraphRAG
    from expertrag.retrieval.bm25 import BM25Retriever
    from expertrag.retrieval.hybrid import HybridRetriever
    from expertrag.types import Document

    questions = load_musique(qpath)[: args.questions]
    corpus = load_musique_corpus(args.data_dir / MUSIQUE_CORPUS)
    docs = [Document(text=c["text"], id=f"m{i}", metadata={"title": c.get("title", "")})
            for i, c in enumerate(corpus)]
    by_text = {d.text.strip(): d.id for d in docs}
    items = musique_items(questions)
    gold = []
    for q in questions:
        ids = {by_text.get(p["paragraph_text"].strip()) for p in q["paragraphs"]
               if p.get("is_supporting")}
        gold.append({i for i in ids if i})
    missing = sum(1 for g, q in zip(gold, questions, strict=True)
                  if len(g) < sum(p.get("is_supporting", False) for p in q["paragraphs"]))
    print(f"MuSiQue: {len(questions)} questions, {len(docs)} passages "
          f"({missing} questions with a supporting paragraph not found in the corpus)")

    embedder = Embedder()
    embedder.embed_documents(["load the model before timing"])

    def time_embedding() -> float:
        started = time.perf_counter()
        embedder.embed_documents([d.text for d in docs])
        return time.perf_counter() - started

    # timed before and after indexing (this machine's speed drifts by 20% within minutes);
    # the faster of the two is the reference, which is the stricter one for the ratio
    embed_times = [time_embedding()]
    print(f"embedding the corpus alone: {embed_times[0]:.1f} s")

    # ---------------------------------------------------------------- baselines
    chunk_ids = [Document(text=d.text, id=f"{d.id}#0") for d in docs]
    bm25 = BM25Retriever(chunk_ids)
    hybrid = HybridRetriever(chunk_ids, embedder=embedder, k=5)
    rankers: dict[str, Any] = {
        "BM25": lambda q: [d.id for d in bm25.retrieve(q, 5)],
        "dense (all-MiniLM-L6-v2)": lambda q: [d.id for d in hybrid.dense_retrieve(q, 5)],
        "hybrid (BM25 + dense, RRF)": lambda q: [d.id for d in hybrid.retrieve(q, 5)],
    }

    # ---------------------------------------------------------------- graph, no LLM
    folder = Path(tempfile.mkdtemp(prefix="bench-graph-"))
    spacy_dir = args.graph_dir or folder / "spacy"
    graph = GraphRAG(spacy_dir, embedder=embedder, config=GraphConfig())
    report = graph.insert(docs, progress=True)
    embed_times.append(time_embedding())
    embed_s = min(embed_times)
    print(f"embedding the corpus alone, again after indexing: {embed_times[1]:.1f} s "
          f"(reference: {embed_s:.1f} s)")
    counts = graph.store.counts()
    graph.retrieve(items[0].question, k=5)  # build the in-memory graph once
    index_rows = []
    if report.skipped == len(docs):
        print(f"reusing the spaCy graph in {spacy_dir}: no indexing figures")
    else:
        index_rows.append(["spaCy (no LLM)", f"{report.seconds:.1f}",
                           f"{report.seconds / embed_s:.2f}x", "0",
                           f"{report.new_entities / report.passages:.2f}",
                           f"{report.relations / report.passages:.2f}",
                           f"{report.empty_passages / report.passages:.3f}",
                           f"{_size(spacy_dir) / 1e6:.1f}"])
    for mode in ("ppr", "local", "hybrid"):
        label = {"ppr": "graph PPR", "local": "graph local",
                 "hybrid": "graph PPR + hybrid (RRF)"}[mode]
        # 10 chunks, so that 5 distinct paragraphs remain when a paragraph has two chunks
        rankers[label] = (lambda m: lambda q: [d.id for d in graph.retrieve(q, 10, mode=m)])(
            mode)

    rows, latency, figures = [], {}, {}
    for label, rank in rankers.items():
        r2, r5, times = [], [], []
        for item, g in zip(items, gold, strict=True):
            t = time.perf_counter()
            ranked = rank(item.question)
            times.append(time.perf_counter() - t)
            r2.append(recall(ranked, g, 2))
            r5.append(recall(ranked, g, 5))
        times.sort()
        latency[label] = (statistics.median(times), times[int(0.95 * (len(times) - 1))])
        figures[label] = {"recall@2": statistics.mean(r2), "recall@5": statistics.mean(r5)}
        rows.append([label, f"{figures[label]['recall@2']:.3f}",
                     f"{figures[label]['recall@5']:.3f}",
                     f"{latency[label][0] * 1000:.0f}", f"{latency[label][1] * 1000:.0f}"])
    print(f"\npassage recall, {len(items)} MuSiQue questions, {len(docs)} passages")
    _print(["retriever", "Recall@2", "Recall@5", "p50 ms", "p95 ms"], rows)
    dense5 = figures["dense (all-MiniLM-L6-v2)"]["recall@5"]
    hybrid5 = figures["hybrid (BM25 + dense, RRF)"]["recall@5"]
    best = max((k for k in figures if k.startswith("graph")),
               key=lambda k: figures[k]["recall@5"])
    print(f"best graph mode: {best}: Recall@5 {figures[best]['recall@5']:.3f} "
          f"({(figures[best]['recall@5'] - dense5) * 100:+.1f} points vs dense, "
          f"{(figures[best]['recall@5'] - hybrid5) * 100:+.1f} vs hybrid)")

    # ---------------------------------------------------------------- graph, with the LLM
    from expertrag import ExpertLLM

    llm = ExpertLLM().load()
    timed = [("spaCy", report)] if index_rows else []
    sample = docs if args.llm_full else docs[: args.llm_chunks]
    if sample:
        llm_graph = GraphRAG(folder / "llm", embedder=embedder, llm=llm,
                             config=GraphConfig(extraction="llm"))
        rep = llm_graph.insert(sample, progress=True)
        timed.append(("LLM", rep))
        index_rows.append([f"LLM triples ({len(sample)} passages)", f"{rep.seconds:.1f}",
                           f"{rep.seconds / (embed_s * len(sample) / len(docs)):.1f}x",
                           f"{rep.llm_calls / rep.passages:.2f}",
                           f"{rep.new_entities / rep.passages:.2f}",
                           f"{rep.relations / rep.passages:.2f}",
                           f"{rep.empty_passages / rep.passages:.3f}",
                           f"{_size(folder / 'llm') / 1e6:.1f}"])
    if index_rows:
        print("\nindexing")
        _print(["extraction", "seconds", "vs embedding", "LLM calls / chunk",
                "entities / chunk", "edges / chunk", "chunks with nothing", "index MB"],
               index_rows)
    print(f"spaCy graph: {counts}")
    for name, r in timed:
        rest = (r.seconds - r.seconds_extract - r.seconds_embed - r.seconds_synonyms
                - r.seconds_write)
        print(f"{name} indexing time: extraction {r.seconds_extract:.1f} s, embedding "
              f"{r.seconds_embed:.1f} s (passages {r.seconds_embed - r.seconds_embed_names:.1f}"
              f" s, new entity names {r.seconds_embed_names:.1f} s), synonym edges "
              f"{r.seconds_synonyms:.1f} s, graph writes {r.seconds_write:.1f} s, the rest "
              f"{rest:.1f} s")

    # ---------------------------------------------------------------- answers
    answer_rows = []
    if args.answers:
        from expertrag.chains.naive import RAGPipeline
        from expertrag.experts import attach_shipped
        from expertrag.graph.pipeline import GraphRetrieverAdapter

        attach_shipped(llm, ["grounded-qa"])
        sub = items[: args.answers]
        best_mode = {"graph PPR": "ppr", "graph local": "local",
                     "graph PPR + hybrid (RRF)": "hybrid"}[best]
        for label, retriever in (("hybrid", hybrid),
                                 (best, GraphRetrieverAdapter(graph, best_mode))):
            pipe = RAGPipeline(llm, retriever, k=5, expert="grounded-qa", max_new_tokens=48)
            t = time.perf_counter()
            answers = []
            for s in range(0, len(sub), 8):
                answers += pipe.answer_many([it.question for it in sub[s:s + 8]])
            took = time.perf_counter() - t
            acc = statistics.mean(answer_correct(a.text, it) for a, it in
                                  zip(answers, sub, strict=True))
            answer_rows.append([label, f"{acc:.3f}", f"{took / len(sub):.2f}"])
        print(f"\nanswers with grounded-qa, k=5, {len(sub)} questions")
        _print(["retriever", "accuracy", "s / question"], answer_rows)
    if args.json:
        args.json.write_text(json.dumps({"recall": figures, "latency": latency,
                                         "embedding_seconds": embed_times,
                                         "index": index_rows, "answers": answer_rows},
                                        indent=2))


if __name__ == "__main__":
    main()
