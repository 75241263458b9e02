"""Reranking quality on a BEIR MS MARCO sample: nDCG@10, MRR@10 and Recall@100 for BM25, dense
(all-MiniLM-L6-v2), hybrid RRF, and rerankers applied to the hybrid top-100.

Data: ``../shared/data/beir/msmarco`` (corpus.jsonl, queries.jsonl, qrels/test.tsv with graded
labels and no header); ``--data`` points elsewhere. Metrics come from ``ir-measures`` (which
runs ``pytrec_eval``), a maintained implementation of the TREC measures.

The LLM pointwise reranker costs one forward pass per pair. It runs twice: the bare SmolLM2-135M
prompted, and with the shipped ``relevance`` expert and its training prompt
(``LLMReranker.with_relevance_expert``; ``--expert-path`` scores another relevance adapter
instead, ``--no-expert`` skips it). The shipped expert trained on HotpotQA and SQuAD 2.0 only,
so every MS MARCO query is unseen; an adapter whose record lists MS MARCO training data is
scored on the held-out half of the queries only. Throughput is measured first and, when the
top-100 would not fit in ``--llm-budget`` seconds, it reranks the top-N only (N in the table).
Documents below the reranked depth keep their hybrid order, so Recall@100 stays comparable.
"Stack" rows fuse the hybrid ranking with a reranker's ranking by RRF.

    python benchmarks/bench_rerank_quality.py                    # ~10-20 min on 2 cores
    python benchmarks/bench_rerank_quality.py --queries 10 --llm-budget 60   # a quick look
    python benchmarks/bench_rerank_quality.py --cross-encoder DIR   # with real weights
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "beir" / "msmarco"


def load_beir(folder: Path, max_queries: int | None) -> tuple[list[Any], dict[str, str],
                                                                 dict[str, dict[str, int]]]:
    from expertrag.datasets import read_jsonl
    from expertrag.types import Document

    corpus = [Document(text=(row.get("title", "") + " " + row["text"]).strip(),
                       id=str(row["_id"])) for row in read_jsonl(folder / "corpus.jsonl")]
    qrels: dict[str, dict[str, int]] = {}
    with (folder / "qrels" / "test.tsv").open(encoding="utf-8") as fh:
        for line in fh:
            parts = line.strip().split("\t")
            if len(parts) != 3 or not parts[2].lstrip("-").isdigit():
                continue  # tolerate a header line
            qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    queries = {str(row["_id"]): row["text"] for row in read_jsonl(folder / "queries.jsonl")
               if str(row["_id"]) in qrels}
    if max_queries:
        queries = dict(list(queries.items())[:max_queries])
    return corpus, queries, qrels


def evaluate(run: dict[str, list[Any]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    import ir_measures
    from ir_measures import RR, R, nDCG

    scored = {qid: {d.id: float(len(docs) - r) for r, d in enumerate(docs)}
              for qid, docs in run.items()}  # rank-based scores: ties cannot reorder
    agg = ir_measures.calc_aggregate([nDCG @ 10, RR @ 10, R @ 100],
                                     {q: qrels[q] for q in run}, scored)
    return {"nDCG@10": agg[nDCG @ 10], "MRR@10": agg[RR @ 10], "Recall@100": agg[R @ 100]}


def rerank_run(reranker: Any, queries: dict[str, str], first: dict[str, list[Any]],
               depth: int) -> tuple[dict[str, list[Any]], float]:
    run, started = {}, time.perf_counter()
    for i, (qid, text) in enumerate(queries.items()):
        head = reranker.rerank(text, first[qid][:depth])
        run[qid] = head + first[qid][depth:]
        print(f"\r  {i + 1}/{len(queries)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return run, time.perf_counter() - started


def fuse(*runs: dict[str, list[Any]], k: int = 60) -> dict[str, list[Any]]:
    """Per query, the reciprocal rank fusion of the given runs."""
    from expertrag.rerank import reciprocal_rank_fusion

    return {q: reciprocal_rank_fusion([r[q] for r in runs], k=k) for q in runs[0]}


class CachedEmbedder:
    """The project's Embedder with a text -> vector cache (on disk under the temp dir), so
    the corpus is embedded once across runs and the embedding reranker reuses the same
    vectors instead of re-encoding 100 passages per query."""

    def __init__(self, embedder: Any, corpus_texts: list[str]) -> None:
        import hashlib

        import numpy as np

        self.embedder = embedder
        digest = hashlib.sha256("\n".join(corpus_texts).encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"expertrag-bench-{digest}.npy"
        if path.exists():
            vectors = np.load(path)
        else:
            vectors = np.asarray(embedder.embed_documents(corpus_texts), dtype=np.float32)
            np.save(path, vectors)
        self.cache = dict(zip(corpus_texts, vectors.tolist(), strict=True))

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.embedder.embed_documents(missing), strict=True))
        return [self.cache[t] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.embed_query(text)


def saw_msmarco(folder: Path) -> bool:
    """Whether an expert's record (``expertrag_expert.json``) lists MS MARCO training data."""
    from expertrag.experts import EXPERT_METADATA, ExpertCard

    if not (folder / EXPERT_METADATA).is_file():
        return True  # unknown provenance: score it on the held-out half to be safe
    recipe = ExpertCard.read(folder).recipe or {}
    sources = [b.get("source", "") for b in recipe.get("builders", [])]
    sources += [d.get("path", "") for d in recipe.get("data", [])]
    return any("msmarco" in str(src).lower() for src in sources)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--queries", type=int, default=None, help="first N queries only")
    parser.add_argument("--depth", type=int, default=100, help="hybrid candidates reranked")
    parser.add_argument("--llm-budget", type=float, default=900.0,
                        help="seconds the LLM reranker may take over all queries")
    parser.add_argument("--llm-batch", type=int, default=8)
    parser.add_argument("--expert-path", help="a LoRA relevance expert for the LLM reranker "
                        "(default: the shipped 'relevance' expert)")
    parser.add_argument("--no-expert", action="store_true",
                        help="score the bare base LLM only")
    parser.add_argument("--cross-encoder", help="a cross-encoder id/dir with real weights")
    parser.add_argument("--skip-llm", action="store_true")
    parser.add_argument("--skip-base", action="store_true",
                        help="run the LLM reranker with the relevance expert only")
    parser.add_argument("--heldout-only", action="store_true",
                        help="only the half of the MS MARCO queries that the relevance "
                             "recipe's opt-in MS MARCO builder never trains on (implied when "
                             "the expert's record lists MS MARCO data)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    folder = args.data.resolve()
    if not (folder / "corpus.jsonl").exists() or not (folder / "qrels" / "test.tsv").exists():
        print(f"data folder missing: {folder} needs corpus.jsonl, queries.jsonl and "
              "qrels/test.tsv (BEIR layout); pass --data", file=sys.stderr)
        return 2

    from expertrag.embeddings import Embedder
    from expertrag.rerank import EmbeddingReranker, LLMReranker
    from expertrag.retrieval.hybrid import HybridRetriever

    corpus, queries, qrels = load_beir(folder, args.queries)
    expert_path = None
    if not args.no_expert and not args.skip_llm:
        from expertrag.experts import shipped_experts

        expert_path = args.expert_path or shipped_experts().get("relevance")
    if args.heldout_only or (expert_path and saw_msmarco(Path(expert_path))):
        from expertrag.datasets import msmarco_part

        # the relevance expert trained on the other half of the queries: score it only here
        queries = {q: t for q, t in queries.items() if msmarco_part(q) == "heldout"}
        notes_heldout = ("held-out half of the queries only (the relevance expert trained on "
                         "the other half)")
    else:
        notes_heldout = ""
    print(f"{len(corpus)} passages, {len(queries)} queries", file=sys.stderr)
    started = time.perf_counter()
    embedder = CachedEmbedder(Embedder(), [d.text for d in corpus])
    hybrid = HybridRetriever(corpus, embedder=embedder, k=args.depth, bm25_k=100, dense_k=100,
                             stemmer="english")
    _ = hybrid.dense.matrix  # embed the corpus once
    print(f"indexed in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    runs: dict[str, dict[str, list[Any]]] = {"BM25 (bm25s, k1=1.5, b=0.75, stemmed)": {},
                                             "dense (all-MiniLM-L6-v2, cosine)": {},
                                             "hybrid RRF (BM25 + dense, k=60)": {}}
    names = list(runs)
    for qid, text in queries.items():
        runs[names[0]][qid] = hybrid.bm25.retrieve(text, 100)
        runs[names[1]][qid] = hybrid.dense_retrieve(text, 100)
        runs[names[2]][qid] = hybrid.retrieve(text, args.depth)
    first = runs[names[2]]
    notes: dict[str, str] = {}
    timing: dict[str, float] = {}

    name = f"hybrid top-{args.depth} -> embedding reranker (MiniLM cosine)"
    runs[name], timing[name] = rerank_run(EmbeddingReranker(embedder), queries, first,
                                          args.depth)

    if args.cross_encoder:
        from expertrag.rerank import CrossEncoderReranker

        name = f"hybrid top-{args.depth} -> cross-encoder ({args.cross_encoder})"
        runs[name], timing[name] = rerank_run(CrossEncoderReranker(args.cross_encoder),
                                              queries, first, args.depth)
    else:
        notes["cross-encoder"] = ("not run: no cross-encoder weights are available offline "
                                  "(pass --cross-encoder DIR)")

    llm_names = []
    if not args.skip_llm:
        from expertrag.models import ExpertLLM

        llm = ExpertLLM().load()
        variants = []
        if not args.skip_base:
            variants.append(("base SmolLM2-135M", LLMReranker(llm, batch_size=args.llm_batch)))
        if expert_path:
            llm.add_expert("relevance", expert_path)
            variants.append(("relevance expert", LLMReranker.with_relevance_expert(
                llm, batch_size=args.llm_batch)))
        for label, rr in variants:
            probe_q = next(iter(queries))
            t0 = time.perf_counter()
            rr.rerank(queries[probe_q], first[probe_q][:32])
            pps = 32 / (time.perf_counter() - t0)
            depth = min(args.depth, max(5, int(args.llm_budget * pps / len(queries))))
            print(f"LLM ({label}): {pps:.1f} pairs/s -> reranking top-{depth}", file=sys.stderr)
            name = f"hybrid top-{depth} -> LLM pointwise P(yes) ({label})"
            runs[name], timing[name] = rerank_run(rr, queries, first, depth)
            notes[name] = f"{pps:.1f} pairs/s measured first; depth {depth} fits the budget"
            llm_names.append(name)

    emb_name = next(n for n in runs if "embedding reranker" in n)
    for n in [emb_name, *llm_names]:
        runs[f"stack: RRF(hybrid, {n.split('-> ')[1]})"] = fuse(first, runs[n])
    expert_names = [n for n in llm_names if "relevance expert" in n]
    if expert_names:  # the two rerankers that each beat the base: dense cosine and the expert
        runs["stack: RRF(hybrid, embedding reranker, relevance expert)"] = fuse(
            first, runs[emb_name], runs[expert_names[0]])

    results = {n: evaluate(r, qrels) for n, r in runs.items()}
    print(f"\nBEIR msmarco sample: {len(corpus)} passages, {len(queries)} queries "
          "(graded qrels); metrics by ir-measures/pytrec_eval\n")
    print("| system | nDCG@10 | MRR@10 | Recall@100 | rerank time |")
    print("|---|---|---|---|---|")
    for n, m in results.items():
        t = f"{timing[n]:.0f} s" if n in timing else ""
        print(f"| {n} | {m['nDCG@10']:.4f} | {m['MRR@10']:.4f} | {m['Recall@100']:.4f} | {t} |")
    if notes_heldout:
        notes["queries"] = notes_heldout
    for key, note in notes.items():
        print(f"\n- {key}: {note}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "notes": notes,
                                         "timing": timing}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
