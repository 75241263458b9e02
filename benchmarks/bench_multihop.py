"""Multi-hop answers: MultiHopRAG against naive RAG, CRAG and Self-RAG, same answerer, same
questions, paired 95% intervals.

Sets (the answer benchmark's, :mod:`expertrag.evaluation.answer_sets`, split once in code
with a manifest): ``hotpotqa-open`` (HotpotQA test, every test paragraph pooled, the hybrid
retriever), ``hotpotqa-distractor`` (each question over its own 10 paragraphs; only the items
that keep their gold paragraphs, the standard distractor setting), ``musique-open`` (MuSiQue
over its 1,890-passage corpus). Systems, all answering with the shipped ``grounded-qa``:

- ``naive``: top-``k`` hybrid passages (``RAGPipeline``; the answer benchmark's cached
  ``grounded-qa`` answers are the same answers);
- ``crag``, ``self-rag``: shipped defaults, retrieving from the same retriever;
- ``multihop``: :class:`~expertrag.chains.MultiHopRAG`, shipped defaults (or ``--config``);
- with ``--candidate-config JSON``: ``multihop-candidate``, the chain with those settings
  on top, compared with ``multihop`` as well as with naive RAG (e.g. the next-query
  lookahead: ``'{"lookahead": 5}'``);
- with ``--graph SET=DIR`` (a GraphRAG index of the set's corpus, built there from the
  set's corpus with spaCy entities when DIR does not exist): ``naive-graph`` and
  ``multihop-graph``, the same answerers over the graph's paragraphs (``--graph-mode``,
  ``--graph-settings``).

``--graph-retrieval`` answers nothing: it compares the graph's searches (PPR, and PPR fused
with BM25 + dense, at three passage seed weights) with the set's hybrid retriever by
Recall@k, with paired intervals; on the calibration split it names the best setting.

Per system and set: EM, token F1, answer contained (a refusal scores 0), both-gold recall of
the final context (every supporting paragraph among the passages the answerer read; naive
and multihop), hops, model calls and seconds per question, and the paired bootstrap 95%
interval of each system's difference from naive RAG with McNemar's p (a win or a loss only
when the interval excludes 0). Answers are cached per system, set and split
(``benchmarks/.cache/answers``), so an interrupted run goes on where it stopped.

    python benchmarks/bench_multihop.py --data-dir ../shared/data --split test
    python benchmarks/bench_multihop.py --data-dir ../shared/data --split calibration \\
        --systems naive,multihop --config '{"assemble": "evidence"}'
    python benchmarks/bench_multihop.py --data-dir ../shared/data --tune --sample 60 \\
        --sets hotpotqa-open,musique-open
    python benchmarks/bench_multihop.py --data-dir ../shared/data --split calibration \\
        --sets musique-open,hotpotqa-open --graph-retrieval \\
        --graph musique-open=graphs/musique --graph hotpotqa-open=graphs/hotpotqa-open
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from _common import table
from bench_answers import (
    AnswerCache,
    System,
    build_systems,
    comparisons,
    expert_fingerprint,
    plot,
    run_system,
    score,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SETS = ("hotpotqa-open", "hotpotqa-distractor", "musique-open")
DEFAULT_SYSTEMS = "naive,crag,self-rag,multihop"


def multihop_key(config: Any) -> str:
    """Cache key: the hop and answer experts' weights and the chain's settings."""
    from expertrag.experts import shipped_experts

    folders = shipped_experts()
    prints = "-".join(expert_fingerprint(folders[e]) for e in ("hop", "grounded-qa"))
    settings = config.to_dict()
    if not settings.get("lookahead"):  # settings that change nothing keep the old key
        for name in ("lookahead", "lookahead_margin", "lookahead_names"):
            settings.pop(name, None)
    text = json.dumps(settings, sort_keys=True, default=str)
    return f"multihop-{prints}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def run_multihop(chain_config: Any, aset: Any, llm: Any, cache: AnswerCache,
                 per_call: int) -> list[dict[str, Any]]:
    """Every case's record (answer, context ids, hops, calls, seconds), running what the
    cache lacks. Each ``answer_many`` call gets ``per_call`` questions and batches its
    generations by prompt length (``batch_size`` rows, as naive RAG's answers are batched);
    on a set whose questions each search their own paragraphs every question brings its
    own source."""
    from tqdm import tqdm

    from expertrag.chains.multihop import MultiHopRAG

    cases = aset.cases
    todo = [i for i, c in enumerate(cases) if c.id not in cache.records]
    per_question = getattr(aset.retriever, "retrievers", None)
    bar = tqdm(total=len(todo), desc=f"multihop / {aset.name}", unit="q")
    for s in range(0, len(todo), per_call):
        chunk = todo[s:s + per_call]
        sources = (None if per_question is None else
                   [per_question[cases[i].question] for i in chunk])
        chain = MultiHopRAG(llm, sources[0] if sources else aset.retriever, chain_config)
        started = time.perf_counter()
        results = chain.answer_many([cases[i].question for i in chunk], sources=sources)
        took = (time.perf_counter() - started) / len(chunk)
        cache.add([{"id": cases[i].id, "answer": r.answer, "p_refusal": None, "seconds": took,
                    "hops": len(r.hops), "calls": r.forward_calls,
                    "stopped": r.context.stopped, "queries": [h.query for h in r.hops],
                    "context": [d.text for d in r.context.passages]}
                   for i, r in zip(chunk, results, strict=True)])
        bar.update(len(chunk))
    bar.close()
    return [cache.records[c.id] for c in cases]


class GraphParagraphs:
    """``retrieve(query, k)`` over a GraphRAG index of a set's corpus: the graph's chunks
    (search ``mode``, query ``settings``) merged into their whole paragraphs (one per
    paragraph, in the graph's order), so the answerer reads the same paragraphs as over
    hybrid retrieval and both-gold recall compares."""

    def __init__(self, graph: Any, documents: list[Any], mode: str = "hybrid",
                 settings: dict[str, Any] | None = None) -> None:
        from expertrag.graph.pipeline import GraphRetrieverAdapter

        self.search = GraphRetrieverAdapter(graph, mode, config=settings or None)
        self.by_id = {d.id: d for d in documents}

    def retrieve(self, query: str, k: int = 5) -> list[Any]:
        out: list[Any] = []
        for chunk in self.search.retrieve(query, 3 * k):
            doc = self.by_id.get(chunk.metadata.get("doc_id", chunk.id))
            if doc is not None and doc not in out:
                out.append(doc)
        return out[:k]


def open_graph_index(folder: Path, documents: list[Any], embedder: Any) -> Any:
    """The GraphRAG index of a set's corpus at ``folder`` (spaCy entities, default
    settings), built first when the folder does not exist: into a sibling ``.partial``
    folder, renamed when complete, so an interrupted build never passes for an index."""
    import shutil

    from expertrag.graph import GraphRAG

    if not folder.exists():
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        started = time.perf_counter()
        graph = GraphRAG(str(partial), embedder=embedder)
        try:
            graph.insert(documents)
        finally:
            graph.close()
        partial.rename(folder)
        print(f"built the graph index {folder} ({len(documents)} paragraphs) in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    return GraphRAG(str(folder), embedder=embedder)


def graph_digest(folder: Path) -> str:
    """A cache key for a graph index: its files' names and sizes."""
    listing = sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file())
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:8]


#: the graph searches compared with hybrid retrieval by ``--graph-retrieval``: mode and
#: the dense passage seeds' weight in Personalized PageRank (0.3 is the default)
GRAPH_GRID = tuple((mode, w) for mode in ("ppr", "hybrid") for w in (0.1, 0.3, 0.6))


def gold_recall(case: Any, texts: list[str]) -> float:
    """Share of ``case``'s supporting paragraphs among ``texts`` (Recall@k of a top k)."""
    have = {t.strip() for t in texts}
    return sum(g.text.strip() in have for g in case.gold) / len(case.gold)


def graph_retrieval(args: argparse.Namespace, graph_dirs: dict[str, Path],
                    embedder: Any) -> None:
    """Recall@k and both-gold recall at k of each graph search of :data:`GRAPH_GRID`
    against the set's hybrid retriever, on the questions whose supporting paragraphs are in
    the corpus, with the paired 95% interval of each Recall@k difference; on the
    calibration split also the setting with the best mean Recall@k over the sets."""
    from tqdm import tqdm

    from expertrag.evaluation.answer_sets import load_answer_set
    from expertrag.evaluation.stats import compare

    rows, means = [], {}
    for set_name in args.sets.split(","):
        if set_name not in graph_dirs:
            sys.exit(f"error: --graph-retrieval needs --graph {set_name}=DIR")
        aset = load_answer_set(set_name, args.split, args.data_dir, embedder=embedder,
                               k=args.k, check=False)
        draw(aset, args.sample, f"{set_name}-{args.split}")
        aset = answerable_only(aset)
        graph = open_graph_index(graph_dirs[set_name], aset.retriever.documents, embedder)
        hybrid = [[d.text for d in p] for p in aset.passages()]
        base = [gold_recall(c, t) for c, t in zip(aset.cases, hybrid, strict=True)]
        both = [float(both_gold(c, t)) for c, t in zip(aset.cases, hybrid, strict=True)]
        n = len(aset.cases)
        rows.append([set_name, "hybrid (BM25 + dense)", "-", f"{sum(base) / n:.3f}",
                     f"{sum(both) / n:.3f}", "", "-"])
        for mode, weight in GRAPH_GRID:
            source = GraphParagraphs(graph, aset.retriever.documents, mode,
                                     {"passage_seed_weight": weight})
            started = time.perf_counter()
            texts = [[d.text for d in source.retrieve(c.question, args.k)]
                     for c in tqdm(aset.cases, desc=f"{set_name} {mode} {weight}")]
            ms = 1000 * (time.perf_counter() - started) / n
            per = [gold_recall(c, t) for c, t in zip(aset.cases, texts, strict=True)]
            pboth = sum(both_gold(c, t) for c, t in zip(aset.cases, texts, strict=True)) / n
            c = compare(per, base, binary=False).to_dict()
            rows.append([set_name, f"graph {mode}", f"{weight:.1f}", f"{sum(per) / n:.3f}",
                         f"{pboth:.3f}", f"{c['diff']:+.3f} [{c['low']:+.3f}, "
                         f"{c['high']:+.3f}] **{c['verdict']}**", f"{ms:.0f}"])
            means.setdefault((mode, weight), []).append(sum(per) / n)
        graph.close()
    print(table(["set", "search", "passage seed weight", f"Recall@{args.k}",
                 f"both gold in top {args.k}", f"Recall@{args.k} vs hybrid (95% CI)",
                 "ms / q"], rows))
    if args.split == "calibration":
        best = max(means, key=lambda key: sum(means[key]) / len(means[key]))
        print(f"\nbest on calibration: mode={best[0]} passage_seed_weight={best[1]} "
              f"(mean Recall@{args.k} {sum(means[best]) / len(means[best]):.3f})")


def both_gold(case: Any, texts: list[str]) -> bool:
    """Every supporting paragraph of ``case`` is among ``texts``."""
    have = {t.strip() for t in texts}
    return bool(case.gold) and all(g.text.strip() in have for g in case.gold)


def draw(aset: Any, n: int | None, seed: str) -> None:
    """Cut ``aset`` to a fixed random ``n`` of its questions (in their order), seeded by
    ``seed``; all of them when ``n`` is None or not smaller."""
    if n and n < len(aset.cases):
        keep = sorted(random.Random(seed).sample(range(len(aset.cases)), n))
        aset.cases = [aset.cases[i] for i in keep]


def answerable_only(aset: Any) -> Any:
    """The set restricted to questions whose gold paragraphs are in their pool."""
    return replace(aset, cases=[c for c in aset.cases if c.answerable], _passages=None)


STOP_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def replay(hops: list[Any], t: float, mode: str, size: int) -> tuple[list[str], int]:
    """The context (texts) and hop count MultiHopRAG would have had with stop threshold
    ``t`` and ``assemble=mode``, from a run that never stopped early: it stops at the first
    hop whose stop probability reaches ``t``. Exact for these two settings; the run's own
    keep settings stay."""
    from expertrag.chains.multihop import assemble

    last = len(hops)
    for h in hops:
        if h.stop_probability is not None and h.stop_probability >= t:
            last = h.number
            break
    return [d.text for d in assemble(hops[:last], size, mode)], last


def tune(args: argparse.Namespace, base: Any, llm: Any, embedder: Any) -> None:
    """Choose ``stop_threshold``, ``assemble`` and ``search_with_question`` on the
    calibration split by the final context's both-gold recall: one run per search mode that
    never stops early (stop threshold 1.0), every hop kept, each threshold and assembly then
    replayed from the hops."""
    from tqdm import tqdm

    from expertrag.chains.multihop import ASSEMBLE_MODES, MultiHopRAG
    from expertrag.evaluation.answer_sets import load_answer_set

    rows: list[tuple[str, tuple[bool, float, str], float, float, float]] = []
    for set_name in args.sets.split(","):
        aset = load_answer_set(set_name, "calibration", args.data_dir, embedder=embedder,
                               k=args.k, check=False)
        draw(aset, args.sample, f"{set_name}-calibration-tune")
        aset = answerable_only(aset)
        naive = sum(both_gold(c, [d.text for d in p]) for c, p in
                    zip(aset.cases, aset.passages(), strict=True)) / len(aset.cases)
        per_question = getattr(aset.retriever, "retrievers", None)
        step = 1 if per_question is not None else args.batch
        for mode in (False, True):
            cfg = replace(base, stop_threshold=1.0, search_with_question=mode)
            runs = []
            for s in tqdm(range(0, len(aset.cases), step), desc=f"tune {set_name} {mode}"):
                chunk = aset.cases[s:s + step]
                source = per_question[chunk[0].question] if per_question else aset.retriever
                runs += [ctx.hops for ctx in MultiHopRAG(llm, source, cfg).retrieve_many(
                    [c.question for c in chunk])]
            for t in STOP_GRID:
                for how in ASSEMBLE_MODES:
                    sims = [replay(h, t, how, base.context_size) for h in runs]
                    recall = sum(both_gold(c, x) for c, (x, _) in
                                 zip(aset.cases, sims, strict=True)) / len(sims)
                    hops = sum(n for _, n in sims) / len(sims)
                    rows.append((set_name, (mode, t, how), recall, naive, hops))
    # the setting with the best mean recall over the sets, fewer hops on a tie
    by: dict[tuple[bool, float, str], list[tuple[float, float]]] = {}
    for _, setting, recall, _, hops in rows:
        by.setdefault(setting, []).append((recall, hops))
    mean = {k: (sum(r for r, _ in v) / len(v), sum(h for _, h in v) / len(v))
            for k, v in by.items()}
    best = max(mean, key=lambda k: (mean[k][0], -mean[k][1]))
    print(table(["set", "search_with_question", "stop_threshold", "assemble",
                 "both-gold recall", "naive recall", "hops / q"],
                [[name, str(m), f"{t:.1f}", how, f"{r:.3f}", f"{nv:.3f}", f"{h:.2f}"]
                 for name, (m, t, how), r, nv, h in rows]))
    print(f"\nbest on calibration: search_with_question={best[0]} stop_threshold={best[1]:.1f} "
          f"assemble={best[2]} (mean recall {mean[best][0]:.3f})")


def bound_rows(args: argparse.Namespace, aset: Any, scored: dict[str, Any],
               extra: dict[str, Any], contexts_of: dict[str, Any], naive: dict[str, Any],
               bounder: list[Any]) -> dict[str, Any]:
    """The bound rows: naive's and multihop's contexts of the first ``args.bound`` questions
    answered by the bound model, beside naive (grounded-qa) on the same questions; returns
    each bound row's paired comparison with that naive row."""
    from bound_model import SHA256, BoundAnswerer, bound_gguf
    from tqdm import tqdm

    from expertrag.types import Document

    n = min(args.bound, len(aset.cases))
    sub = replace(aset, cases=aset.cases[:n], _passages=None)
    base = f"naive (first {n})"
    scored[base] = score(naive["records"][:n], sub, naive["gate"])
    extra[base] = {"hops": 1.0, "calls": 1.0, "recall": None, "recall_per": None}
    compared = {}
    for source in ("naive", "multihop"):
        name = f"bound on {source} context"
        key = f"bound-{SHA256[:12]}-{source}-" + hashlib.sha256(json.dumps(
            contexts_of[source][:n]).encode()).hexdigest()[:8]
        cache = AnswerCache(args.cache, System(name, key), aset.name, args.split)
        todo = [i for i, c in enumerate(sub.cases) if c.id not in cache.records]
        if todo and not bounder:
            bounder.append(BoundAnswerer(bound_gguf()))
        for i in tqdm(todo, desc=f"{name} / {aset.name}", unit="q"):
            case = sub.cases[i]
            started = time.perf_counter()
            text = bounder[0].answer(case.question, [Document(text=t) for t in
                                                     contexts_of[source][i]])
            cache.add([{"id": case.id, "answer": text, "p_refusal": None,
                        "seconds": time.perf_counter() - started}])
        scored[name] = score([cache.records[c.id] for c in sub.cases], sub, None)
        extra[name] = {"hops": None, "calls": 1.0, "recall": None, "recall_per": None}
        compared[f"{name} vs {base}"] = comparisons(scored[name], scored[base])
    return compared


def _f(v: Any, digits: int = 3) -> str:
    return "-" if v is None or v != v else f"{v:.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--split", choices=("calibration", "test"), default="test")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--systems", default=DEFAULT_SYSTEMS)
    parser.add_argument("--config", default=None,
                        help="MultiHopConfig settings as JSON (default: the shipped ones)")
    parser.add_argument("--candidate-config", default=None,
                        help="MultiHopConfig settings (JSON) on top of --config: adds the "
                             "system multihop-candidate, compared with multihop")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8,
                        help="rows per answer generation, prompts of similar length together "
                             "(every system)")
    parser.add_argument("--per-call", type=int, default=64,
                        help="questions per MultiHopRAG.answer_many call")
    parser.add_argument("--limit", type=int, help="first N questions of each set")
    parser.add_argument("--sample", type=int,
                        help="the answer benchmark's fixed random N questions of each set "
                             "(the same draw as bench_answers.py --sample N, so its cached "
                             "chain answers are reused; the distractor set is then cut to "
                             "its answerable questions)")
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache" / "answers")
    parser.add_argument("--out", type=Path, help="write results.json and tables.md here")
    parser.add_argument("--graph", action="append", default=[], metavar="SET=DIR",
                        help="a GraphRAG index of SET's corpus, built there first when DIR "
                             "does not exist: adds naive-graph and multihop-graph, the same "
                             "answerers over the graph's paragraphs")
    parser.add_argument("--graph-mode", default="hybrid", choices=("ppr", "hybrid"),
                        help="the graph search of naive-graph and multihop-graph (default: "
                             "the graph retrievers' default, hybrid)")
    parser.add_argument("--graph-settings", default=None,
                        help="GraphQueryConfig settings as JSON for that search")
    parser.add_argument("--graph-retrieval", action="store_true",
                        help="only retrieval: Recall@k of the graph searches against hybrid "
                             "retrieval on each --graph set (no answers)")
    parser.add_argument("--bound", type=int, default=0, metavar="N",
                        help="also answer naive's and multihop's contexts of each set's first "
                             "N questions with the bound model (benchmarks/bound_model.py: "
                             "Qwen2.5-Coder 1.5B Instruct, llama-server, plain prompt)")
    parser.add_argument("--tune", action="store_true",
                        help="choose stop_threshold, assemble and search_with_question on the "
                             "calibration split (both-gold recall of the final context)")
    args = parser.parse_args(argv)

    from expertrag import ExpertLLM
    from expertrag.chains.multihop import MultiHopConfig
    from expertrag.embeddings import Embedder, MemoEmbedder
    from expertrag.evaluation.answer_sets import check_manifest, load_answer_set
    from expertrag.experts import attach_shipped, shipped_experts

    if "hop" not in shipped_experts():
        sys.exit("error: the hop expert is not shipped (expertrag/data/experts/hop)")
    check_manifest(args.data_dir)
    embedder = MemoEmbedder(Embedder())
    graphs = {}
    for spec in args.graph:
        set_name, _, folder = spec.partition("=")
        if set_name not in SETS or not folder or Path(folder).is_file():
            sys.exit(f"error: --graph wants SET=DIR with SET one of {SETS} and DIR a folder "
                     f"(built when missing), got {spec!r}")
        graphs[set_name] = Path(folder)
    graph_settings = json.loads(args.graph_settings or "{}")
    if args.graph_retrieval:
        graph_retrieval(args, graphs, embedder)  # no model needed
        return
    llm = ExpertLLM().load()
    attach_shipped(llm)
    config = MultiHopConfig.from_dict({"k": args.k, "batch_size": args.batch,
                                       **json.loads(args.config or "{}")})
    candidate = (None if args.candidate_config is None else MultiHopConfig.from_dict(
        {**config.to_dict(), **json.loads(args.candidate_config)}))
    if args.tune:
        tune(args, config, llm, embedder)
        return
    names = args.systems.split(",")
    chains = build_systems([n if n != "naive" else "grounded-qa" for n in names
                            if n != "multihop"], llm, {}, {})
    systems: dict[str, System | None] = {("naive" if s.name == "grounded-qa" else s.name): s
                                         for s in chains}
    if "multihop" in names:
        systems["multihop"] = None
    if candidate is not None:
        systems["multihop-candidate"] = None
    bounder: list[Any] = []  # the bound model's server, started at its first use
    command = f"`python benchmarks/bench_multihop.py {' '.join(argv or sys.argv[1:])}`"
    report = [f"Split: {args.split}; k={args.k}; {command}; multihop config "
              f"{json.dumps(config.to_dict())}", ""]
    if candidate is not None:
        report[-1:-1] = [f"multihop-candidate config {json.dumps(candidate.to_dict())}"]
    results: dict[str, Any] = {}
    for set_name in args.sets.split(","):
        aset = load_answer_set(set_name, args.split, args.data_dir, embedder=embedder,
                               k=args.k, check=False)
        draw(aset, args.sample, f"{set_name}-{args.split}")
        if set_name == "hotpotqa-distractor":
            aset = answerable_only(aset)
        if args.limit:
            aset.cases = aset.cases[:args.limit]
        scored, extra = {}, {}
        contexts_of: dict[str, list[list[str]] | None] = {}
        naive_of: dict[str, Any] = {}
        runs: dict[str, tuple[System | None, Any]] = {n: (s, aset) for n, s in systems.items()}
        tag = ""
        if set_name in graphs:
            graph = open_graph_index(graphs[set_name], aset.retriever.documents, embedder)
            gset = replace(aset, retriever=GraphParagraphs(
                graph, aset.retriever.documents, args.graph_mode, graph_settings),
                _passages=None)
            tag = f"-graph-{graph_digest(graphs[set_name])}"
            if args.graph_mode != "ppr" or graph_settings:
                tag += "-" + hashlib.sha256(json.dumps(
                    [args.graph_mode, graph_settings], sort_keys=True).encode()).hexdigest()[:8]
            if "naive" in systems and systems["naive"] is not None:
                naive = systems["naive"]
                runs["naive-graph"] = (replace(naive, name="naive-graph",
                                               key=naive.key + tag), gset)
            if "multihop" in systems:
                runs["multihop-graph"] = (None, gset)
        for name, (system, xset) in runs.items():
            if system is None:
                chosen = candidate if name == "multihop-candidate" else config
                key = multihop_key(chosen) + (tag if name == "multihop-graph" else "")
                records = run_multihop(chosen, xset, llm, AnswerCache(
                    args.cache, System(name, key), set_name, args.split), args.per_call)
                gate = None
                contexts = [r["context"] for r in records]
                extra[name] = {
                    "hops": sum(r["hops"] for r in records) / len(records),
                    "calls": sum(r["calls"] for r in records) / len(records)}
            else:
                records = run_system(system, xset, llm, AnswerCache(args.cache, system,
                                                                    set_name, args.split),
                                     args.batch)
                gate = system.gate
                plain = name.startswith("naive")
                contexts = [[d.text for d in p] for p in xset.passages()] if plain else None
                extra[name] = {"hops": 1.0 if plain else None, "calls": 1.0 if plain else None}
            scored[name] = score(records, xset, gate)
            contexts_of[name] = contexts
            if name == "naive":
                naive_of = {"records": records, "gate": gate}
            per = (None if contexts is None else
                   [both_gold(c, t) for c, t in zip(aset.cases, contexts, strict=True)])
            extra[name]["recall_per"] = per
            extra[name]["recall"] = None if per is None else sum(per) / len(per)
        compared = {f"{n} vs naive": comparisons(s, scored["naive"])
                    for n, s in scored.items() if n != "naive" and "naive" in scored}
        if args.bound and "naive" in scored and "multihop" in scored:
            compared.update(bound_rows(args, aset, scored, extra, contexts_of,
                                       naive_of, bounder))
        from expertrag.evaluation.stats import compare

        for n in scored:
            if n != "naive" and "naive" in scored and extra[n]["recall_per"]:
                compared[f"{n} vs naive"]["both_gold_recall"] = compare(
                    extra[n]["recall_per"], extra["naive"]["recall_per"],
                    binary=True).to_dict()
        for other in ("multihop-graph", "multihop-candidate"):  # against the shipped chain
            if other in scored and "multihop" in scored:
                label = f"{other} vs multihop"
                compared[label] = comparisons(scored[other], scored["multihop"])
                compared[label]["both_gold_recall"] = compare(
                    extra[other]["recall_per"], extra["multihop"]["recall_per"],
                    binary=True).to_dict()
        rows = []
        for name, s in scored.items():
            f, e = s["figures"], extra[name]
            rows.append([name, _f(f["em"]), _f(f["f1"]), _f(f["contained"]),
                         _f(e["recall"]), _f(e["hops"], 2), _f(e["calls"], 1),
                         _f(f["seconds"], 2)])
        first = next(iter(scored.values()))["figures"]
        text = [f"### {set_name} ({first['n']} questions, {args.split})", "",
                table(["system", "EM", "F1", "contained", "both-gold recall", "hops / q",
                       "model calls / q", "s / q"], rows), ""]
        crows = []
        for label, per in compared.items():
            row = [label]
            for metric in ("contained", "em", "f1", "both_gold_recall"):
                c = per.get(metric)
                if c is None:
                    row.append("-")
                    continue
                p = "" if c["p_mcnemar"] is None else f", p={c['p_mcnemar']:.3g}"
                row.append(f"{c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]{p} "
                           f"**{c['verdict']}**")
            crows.append(row)
        if crows:
            text.append(table(["difference (95% CI)", "contained", "EM", "F1",
                               "both-gold recall"], crows))
        print("\n" + "\n".join(text), flush=True)
        report += [*text, ""]
        results[set_name] = {"figures": {n: {**s["figures"], **{k: v for k, v in
                                                                 extra[n].items()
                                                                 if k != "recall_per"}}
                                         for n, s in scored.items()},
                             "compared": compared}
    for b in bounder:
        b.close()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        (args.out / "tables.md").write_text("\n".join(report))
        plot(args.out / "multihop.png", results, "naive")


if __name__ == "__main__":
    main()
