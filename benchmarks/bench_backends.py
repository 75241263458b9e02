"""In-process ExpertLLM vs LlamaCppLLM (llama-server with the experts as GGUF LoRA, and the
merged layout: one server per expert with the expert merged into Q8_0 weights) vs the
llama.cpp a user would otherwise run (``llama-bench``; a bare ``llama-server`` with no
adapters, called over plain HTTP), one run, one machine, the same GGUF and prompts.

    bash scripts/setup_llamacpp.sh            # once: builds llama-server and llama-bench
    python benchmarks/bench_backends.py --data-dir ../shared/data

Speed: single-stream decode tok/s (bare base, one expert), 8 concurrent requests (bare base,
one expert, the three experts and the base mixed; the first two on prompts every side
answers to the token limit, so tok/s compares decoding, not answer lengths), first-token
latency (streamed), label probabilities pairs/s (the relevance expert), CRAG seconds per
question with the stage that dominates. Every figure is the median of ``--reps`` rounds
taken side by side (round-robin), so a busy spell hits every side alike; every request's
prompt is new to the servers (a numbered request), so no prompt cache favours a side.
Quality: grounded-qa's answers through llama.cpp against in-process answers on the answer
benchmark's test split (the same questions, passages and prompts as bench_answers.py;
in-process answers come from its cache when there), with the paired bootstrap 95% interval
of each difference and the share of identical answers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import CRAG_QUESTIONS, SPEED_PROMPTS, crag_chain, fmt
from _common import print_table as _print

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
#: prompts every side answers to the token limit with the bare base and with grounded-qa (a
#: grounded answer is otherwise a few words, and tok/s would measure answer length)
LONG = [0, 1, 5]
PASSAGES = ["Paris is the capital and largest city of France.",
            "Bread is made from flour, water and yeast.",
            "The Eiffel Tower was designed by the company of Gustave Eiffel.",
            "Mount Everest is the highest mountain above sea level."]
QUERIES = ["What is the capital of France?", "Who designed the Eiffel Tower?",
           "How is bread made?", "What is the highest mountain?"]


# ---------------------------------------------------------------------------- sides
class BareServer:
    """llama.cpp's llama-server with no adapters, called the way a user's HTTP client or the
    LangChain / LlamaIndex llama.cpp wrappers call it: one ``/completion`` request per
    prompt (the same token ids expertrag sends), concurrent requests on threads."""

    def __init__(self, url: str, tokenizer: Any, render: Callable[[Any], str]) -> None:
        import httpx

        self.client = httpx.Client(base_url=url, timeout=600)
        self.tokenizer, self.render = tokenizer, render

    def _ids(self, conv: Any) -> list[int]:
        return self.tokenizer(self.render(conv), add_special_tokens=False)["input_ids"]

    def complete(self, conv: Any, tokens: int) -> int:
        body = {"prompt": self._ids(conv), "n_predict": tokens, "temperature": 0.0,
                "samplers": ["temperature"]}
        out = self.client.post("/completion", json=body).json()
        return int(out["tokens_predicted"])

    def generate(self, convs: list[Any], tokens: int) -> int:
        with ThreadPoolExecutor(max_workers=len(convs)) as pool:
            return sum(pool.map(lambda c: self.complete(c, tokens), convs))

    def first_token(self, conv: Any) -> float:
        body = {"prompt": self._ids(conv), "n_predict": 8, "temperature": 0.0,
                "samplers": ["temperature"], "stream": True}
        started = time.perf_counter()
        with self.client.stream("POST", "/completion", json=body,
                                headers={"Connection": "close"}) as response:
            took = float("nan")
            for line in response.iter_lines():  # read to the end: the server finishes cleanly
                if took != took and line.startswith("data: ") and json.loads(
                        line[6:]).get("content"):
                    took = time.perf_counter() - started
        return took


def peer_rate(peer: BareServer, n: int, tokens: int) -> float:
    """The bare server's tokens/s: ``n`` concurrent requests (n=1: two prompts in turn, as
    :func:`single_stream`)."""
    done, started = 0, time.perf_counter()
    if n == 1:
        for conv in fresh_convs(2, long=True):
            done += peer.complete(conv, tokens)
    else:
        done = peer.generate(fresh_convs(n, long=True), tokens)
    return done / (time.perf_counter() - started)


def convs_for(n: int, long: bool = False) -> list[Any]:
    pool = [SPEED_PROMPTS[i] for i in LONG] if long else SPEED_PROMPTS
    return [[{"role": "user", "content": pool[i % len(pool)]}] for i in range(n)]


_SEEN = [0]


def fresh_convs(n: int, long: bool = False) -> list[Any]:
    """Prompts never sent before (a numbered request), so no server's prompt cache helps:
    first-token latency is measured cold on every side."""
    out = []
    for conv in convs_for(n, long):
        _SEEN[0] += 1
        out.append([{"role": "user", "content": f"Request {_SEEN[0]}. {conv[0]['content']}"}])
    return out


def tok_per_s(llm: Any, n: int, experts: list[str | None], tokens: int) -> float:
    """Completion tokens per second for ``n`` requests at once (one batched call)."""
    convs = fresh_convs(n, long=len(experts) == 1)
    rows = [experts[i % len(experts)] for i in range(n)]
    started = time.perf_counter()
    out = llm.generate(convs, expert=rows, max_new_tokens=tokens, refusal_gate=False,
                       num_beams=1)
    return sum(r.completion_tokens for r in out) / (time.perf_counter() - started)


def single_stream(llm: Any, expert: str | None, tokens: int, prompts: int = 2) -> float:
    done, took = 0, 0.0
    for conv in fresh_convs(prompts, long=True):
        started = time.perf_counter()
        done += llm.generate(conv, expert=expert, max_new_tokens=tokens, refusal_gate=False,
                             num_beams=1).completion_tokens
        took += time.perf_counter() - started
    return done / took


def first_token(llm: Any, expert: str | None, reps: int) -> float:
    times = []
    for conv in fresh_convs(reps):
        started = time.perf_counter()
        for chunk in llm.stream(conv, expert=expert, max_new_tokens=8, refusal_gate=False,
                                num_beams=1):
            if chunk.text:
                times.append(time.perf_counter() - started)
                break
    return statistics.median(times)


def label_pairs_per_s(llm: Any, n: int) -> float:
    from expertrag.rerank.llm import RELEVANCE_PROMPT

    convs = [[{"role": "user", "content": RELEVANCE_PROMPT.format(
        passage=PASSAGES[i % 4], query=QUERIES[(i // 4) % 4])}] for i in range(n)]
    started = time.perf_counter()
    llm.label_probabilities(convs, expert="relevance")
    return n / (time.perf_counter() - started)


def crag_stages(llm: Any, n: int) -> tuple[float, dict[str, float]]:
    chain = crag_chain(llm)
    questions = (CRAG_QUESTIONS * (n // len(CRAG_QUESTIONS) + 1))[:n]
    started = time.perf_counter()
    results = chain.answer_many(questions)
    per_q = (time.perf_counter() - started) / n
    stages: dict[str, float] = {}
    for r in results:
        for stage, s in (r.seconds or {}).items():
            stages[stage] = stages.get(stage, 0.0) + s / n
    return per_q, stages


def llama_bench(binary: Path, gguf: str, threads: int) -> dict[str, float]:
    out = subprocess.run([str(binary), "-m", gguf, "-t", str(threads), "-p", "512", "-n", "64",
                          "-r", "3", "-o", "json"], capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)
    return {("pp512" if r["n_prompt"] else "tg64"): float(r["avg_ts"]) for r in rows}


# ---------------------------------------------------------------------------- quality
def quality(args: argparse.Namespace, local: Any, remote: Any, tag: str) -> list[list[str]]:
    """grounded-qa through llama.cpp against in-process on the answer sets' test split."""
    import bench_answers as ba

    from expertrag.embeddings import Embedder, MemoEmbedder
    from expertrag.evaluation.answer_sets import check_manifest, load_answer_set

    check_manifest(args.data_dir)
    (inproc,) = ba.build_systems(["grounded-qa"], local, {}, {})
    theirs = ba.System(f"grounded-qa@{tag}", f"{inproc.key}@{tag}", inproc.prompt,
                       expert="grounded-qa", gate=inproc.gate)
    embedder = MemoEmbedder(Embedder())
    rows = []
    for name in args.quality_sets.split(","):
        aset = load_answer_set(name, "test", args.data_dir, embedder=embedder, k=5, check=False)
        if args.quality_sample and args.quality_sample < len(aset.cases):
            keep = sorted(random.Random(f"{name}-test").sample(range(len(aset.cases)),
                                                                args.quality_sample))
            aset.cases = [aset.cases[i] for i in keep]
        scored = {}
        for system, llm in ((inproc, local), (theirs, remote)):
            records = ba.run_system(system, aset, llm, ba.AnswerCache(
                args.cache, system, name, "test"), args.batch)
            scored[system.name] = ba.score(records, aset, system.gate)
        a, b = scored[theirs.name], scored[inproc.name]
        diff = ba.comparisons(a, b)
        same = sum(x["answer"] == y["answer"] for x, y in zip(
            a["per_question"], b["per_question"], strict=True)) / len(a["per_question"])
        fa, fb = a["figures"], b["figures"]
        for metric in ("em", "f1", "contained"):
            d = diff[metric]
            verdict = "tie" if d["low"] <= 0 <= d["high"] else ("win" if d["low"] > 0 else
                                                                 "loss")
            rows.append([name, str(fa["n"]), metric, fmt(fb[metric]), fmt(fa[metric]),
                         f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] {verdict}",
                         f"{same:.2f}", f"{fb['seconds']:.2f} / {fa['seconds']:.2f}"])
    return rows


# ---------------------------------------------------------------------------- main
def median_rounds(reps: int, jobs: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Each job ``reps`` times, round-robin; the median of each."""
    got: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(reps):
        for key, job in jobs.items():
            got[key].append(job())
    return {k: statistics.median(v) for k, v in got.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--parallel", type=int, default=8, help="server slots = concurrency")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--latency-reps", type=int, default=8)
    parser.add_argument("--label-pairs", type=int, default=32)
    parser.add_argument("--crag-questions", type=int, default=8)
    parser.add_argument("--weights", default="gguf", help="LlamaCppLLM's weights (gguf, f16, "
                        "f32); the peers always serve the GGUF file")
    parser.add_argument("--quality-sets", default="squad2,hotpotqa-distractor,hotpotqa-open,"
                        "musique-open", help="answer-benchmark sets ('' for none)")
    parser.add_argument("--quality-sample", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--skip-speed", action="store_true",
                        help="answer quality only (the speed tables come from a full run)")
    parser.add_argument("--layouts", default="lora,merged",
                        help="LlamaCppLLM layouts to measure, comma-separated (lora, merged)")
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache" / "answers")
    args = parser.parse_args(argv)

    from expertrag import ExpertLLM
    from expertrag.experts import attach_shipped
    from expertrag.models.llamacpp import LlamaCppLLM, _base_files, find_llama_server

    binary = find_llama_server()
    gguf, _ = _base_files("smollm2-135m-instruct")
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}; `python benchmarks/bench_backends.py "
          f"{' '.join(argv or sys.argv[1:])}`; {args.threads} threads, {args.parallel} slots, "
          f"{args.tokens} new tokens per request", flush=True)
    local = ExpertLLM().load()
    attach_shipped(local)
    sides = {layout: LlamaCppLLM.start(parallel=args.parallel, threads=args.threads,
                                       weights=args.weights, layout=layout)
             for layout in args.layouts.split(",")}
    try:
        if args.skip_speed:
            for layout, llm in sides.items():
                report_quality(args, local, llm, layout)
            return
        speed(args, binary, gguf, local, sides)
        for layout, llm in sides.items():
            report_quality(args, local, llm, layout)
    finally:
        for llm in sides.values():
            llm.close()


def speed(args: argparse.Namespace, binary: Path, gguf: str, local: Any,
          sides: dict[str, Any]) -> None:
    """The speed tables: in-process, the bare server and each LlamaCppLLM layout."""
    from expertrag.models.llamacpp import LlamaCppServer

    bench = llama_bench(binary.parent / "llama-bench", gguf, args.threads)
    first = next(iter(sides.values()))
    peer_server = LlamaCppServer(gguf, [], parallel=args.parallel, threads=args.threads,
                                 ctx_per_slot=first.server.ctx_per_slot).start()  # same slots
    peer = BareServer(peer_server.url, first.tokenizer, first.render)
    one, mixed, n = ["grounded-qa"], ["grounded-qa", "critic", "relevance", None], args.parallel
    llms = {"in-process": local, **{f"LlamaCppLLM {k}": v for k, v in sides.items()}}
    t = args.tokens
    group = max(1, n // len(mixed))  # requests per expert in the mixed load
    jobs: dict[str, Callable[[], float]] = {
        "bare 1": lambda: peer_rate(peer, 1, t), "bare n": lambda: peer_rate(peer, n, t),
        "bare group": lambda: peer_rate(peer, group, t),
        "bare ttft": lambda: statistics.median(
            peer.first_token(c) for c in fresh_convs(args.latency_reps))}
    for side, llm in llms.items():
        jobs |= {
            f"{side}|1 base": lambda llm=llm: single_stream(llm, None, t),
            f"{side}|1 expert": lambda llm=llm: single_stream(llm, "grounded-qa", t),
            f"{side}|n base": lambda llm=llm: tok_per_s(llm, n, [None], t),
            f"{side}|n expert": lambda llm=llm: tok_per_s(llm, n, one, t),
            f"{side}|n mixed": lambda llm=llm: tok_per_s(llm, n, mixed, t),
            f"{side}|ttft": lambda llm=llm: first_token(llm, None, args.latency_reps),
            f"{side}|ttft expert": lambda llm=llm: first_token(llm, "grounded-qa",
                                                                args.latency_reps),
            f"{side}|labels": lambda llm=llm: label_pairs_per_s(llm, args.label_pairs)}
    try:
        for llm in llms.values():  # warm-up
            llm.generate(convs_for(2), max_new_tokens=4, refusal_gate=False)
        peer.generate(convs_for(2), 4)
        s = median_rounds(args.reps, jobs)
        crag = {side: crag_stages(llm, args.crag_questions) for side, llm in llms.items()}
    finally:
        peer_server.stop()
    print(f"\nllama-bench, same GGUF, {args.threads} threads: tg64 {bench['tg64']:.1f} tok/s, "
          f"pp512 {bench['pp512']:.1f} tok/s")
    ours = [k for k in llms if k != "in-process"]
    loads = [("1 base", "single stream, bare base", "bare 1"),
             ("1 expert", "single stream, grounded-qa", "bare 1"),
             ("n base", f"{n} concurrent, bare base", "bare n"),
             ("n expert", f"{n} concurrent, grounded-qa", "bare n"),
             ("n mixed", f"{n} concurrent, 3 experts + base mixed", "bare n")]
    rows = []
    for key, label, bare in loads:
        row = [label, f"{s['in-process|' + key]:.1f}",
               f"{s[bare]:.1f}" if key.endswith("base") else "-"]
        row += [f"{s[o + '|' + key]:.1f}" for o in ours]
        row += [_x(s[o + "|" + key], s["in-process|" + key]) for o in ours]
        row += [_x(s[o + "|" + key], s[bare]) for o in ours]
        rows.append(row)
    print(f"\ndecode tok/s ({args.tokens} new tokens per request; median of {args.reps} rounds;"
          " the ratio to the bare server is against its figure with the same concurrency)")
    _print(["load", "in-process", "bare llama-server", *ours,
            *(f"{o} / in-process" for o in ours), *(f"{o} / bare server" for o in ours)], rows)
    for o in ours:
        print(f"one expert against the bare base through {o}: single stream "
              f"{_x(s[o + '|1 expert'], s[o + '|1 base'])}, {n} concurrent "
              f"{_x(s[o + '|n expert'], s[o + '|n base'])}")
    print(f"mixed experts run as batches of {group} (llama.cpp computes a batch with one set "
          f"of weights); the bare server at {group} concurrent: {s['bare group']:.1f} tok/s; "
          + ", ".join(f"{o} mixed against it {_x(s[o + '|n mixed'], s['bare group'])}"
                      for o in ours))
    print("\nlatency, scoring and CRAG")
    _print(["measure", "bare llama-server", *llms], [
        ["first token, s (median, streamed, bare base)", f"{s['bare ttft']:.3f}",
         *(f"{s[k + '|ttft']:.3f}" for k in llms)],
        ["first token, s (median, streamed, grounded-qa)", "-",
         *(f"{s[k + '|ttft expert']:.3f}" for k in llms)],
        [f"label probabilities, pairs/s ({args.label_pairs} pairs)", "-",
         *(f"{s[k + '|labels']:.1f}" for k in llms)],
        [f"CRAG, s / question ({args.crag_questions} questions)", "-",
         *(f"{crag[k][0]:.2f}" for k in llms)],
    ])
    for side, (_per_q, stages) in crag.items():
        top = sorted(stages.items(), key=lambda kv: -kv[1])
        print(f"CRAG stages, {side}: " + ", ".join(f"{k} {v:.2f} s" for k, v in top))


def report_quality(args: argparse.Namespace, local: Any, ours: Any, layout: str) -> None:
    if args.quality_sets:
        print(f"\ngrounded-qa answers: LlamaCppLLM ({layout} layout) against in-process, test "
              "split (difference and paired bootstrap 95% interval)", flush=True)
        tag = f"llamacpp-{args.weights}" + ("" if layout == "lora" else f"-{layout}")
        _print(["set", "questions", "metric", "in-process", "LlamaCppLLM", "difference",
                "identical answers", "s / question (in-process / llama.cpp)"],
               quality(args, local, ours, tag))


def _x(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


if __name__ == "__main__":
    main()
