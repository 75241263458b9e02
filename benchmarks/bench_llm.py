"""Side-by-side LLM benchmark: expertrag vs langchain-huggingface vs llama-index-llms-huggingface.

Same model (the embedded SmolLM2-135M-Instruct, from expertrag's safetensors cache), same
prompts, greedy decoding, one run. Each system runs in its own fresh process so that one
side's OpenMP thread pools cannot slow the other. Prints a table of tokens/s and ratios.

    python benchmarks/bench_llm.py            # full run (~20 min on 2 cores)
    python benchmarks/bench_llm.py --quick    # fewer repetitions

Needs: pip install -e ".[bench]" (langchain-huggingface, llama-index-llms-huggingface).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPTS = [
    "Explain in three sentences why the sky is blue.",
    "Write a short paragraph about the history of bread.",
    "Give three tips for learning a new language.",
    "Describe how a bicycle works.",
    "What are the main causes of ocean tides?",
    "Summarise the water cycle for a child.",
    "List some benefits of regular exercise.",
    "Why do leaves change colour in autumn?",
]
MAX_NEW = 64


def _model_dir() -> str:
    from expertrag.models.loading import _smollm2_gguf, gguf_cache_dir, load_base_model

    load_base_model("smollm2-135m-instruct")  # make sure the cache exists
    return str(gguf_cache_dir(_smollm2_gguf()))


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _timeit(fn: Any, reps: int) -> tuple[float, Any]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(reps):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


# ------------------------------------------------------------------ systems
def _workload() -> tuple[list[Any], list[Any]]:
    """The chat prompts and the (passage, question) relevance prompts every run of ours uses."""
    msgs = [[{"role": "user", "content": p}] for p in PROMPTS]
    passages = [f"{p} The answer involves {w}." for p in PROMPTS for w in ("light", "water")]
    pairs = [[{"role": "user", "content": f"Passage: {t}\nQuestion: {q}\nRelevant? yes or no"}]
             for t in passages for q in PROMPTS[:2]]
    return msgs, pairs


def run_ours(model_dir: str, reps: int) -> dict[str, Any]:
    """Ours in float32 (the peers' default dtype) with the fast paths (the default: lean
    LoRA, fast LM head; plus the opt-in speculative single stream) and with the stock peft /
    LM-head forwards, interleaved in one process: decode tok/s, label-probability pairs/s,
    prefill tok/s and a corrective-RAG answer's seconds, before and after."""
    from _common import CRAG_QUESTIONS

    from expertrag import ExpertLLM
    from expertrag.models import fastpath

    llm = ExpertLLM(model_dir, dtype="float32").load()  # like for like with the peers
    msgs, pairs = _workload()
    long_prompts = [[{"role": "user", "content": " ".join(PROMPTS) * 3}]] * 8
    crag = _crag(llm)
    out: dict[str, Any] = {}
    for label in ("stock", "fast", "stock", "fast"):  # interleaved against drifting load
        if label == "stock":
            fastpath.remove_fast_paths(llm._model)
        else:
            fastpath.install_fast_head(llm.base_model)
            fastpath.install_lean_lora(llm._model)
        single_t, single = _timeit(lambda: llm.generate(msgs[0], max_new_tokens=MAX_NEW), reps)
        if label == "fast":  # the opt-in speculative single stream, same prompt
            llm.speculative = True
            spec_t, spec = _timeit(lambda: llm.generate(msgs[0], max_new_tokens=MAX_NEW), reps)
            llm.speculative = False
            out["speculative_single_tps"] = max(out.get("speculative_single_tps", 0.0),
                                                spec.completion_tokens / spec_t)
        batch_t, batch = _timeit(lambda: llm.generate(msgs, max_new_tokens=MAX_NEW), reps)
        pairs_t, _ = _timeit(lambda: llm.label_probabilities(pairs), reps)
        pre_t, pre = _timeit(lambda: llm.generate(long_prompts, max_new_tokens=1), reps)
        crag_t, _ = _timeit(crag, 1)
        figures = {
            "single_tps": single.completion_tokens / single_t,
            "batch_tps": sum(r.completion_tokens for r in batch) / batch_t,
            "pairs_per_s": len(pairs) / pairs_t,
            "prefill_tps": sum(r.prompt_tokens for r in pre) / pre_t,
            "crag_s_per_question": crag_t / len(CRAG_QUESTIONS),
        }
        for key, value in figures.items():  # the better of the two rounds
            name = key if label == "fast" else f"stock_{key}"
            best = max if not key.startswith("crag") else min
            out[name] = best(out.get(name, value), value)
    out["texts"] = [r.text for r in batch]  # the fast paths' greedy answers
    llm.speculative = False  # the single-stream answers without speculation: the same?
    eager = [llm.generate(m, max_new_tokens=MAX_NEW).text for m in msgs]
    llm.speculative = True
    spec = [llm.generate(m, max_new_tokens=MAX_NEW).text for m in msgs]
    llm.speculative = False
    out["speculative_same"] = sum(a == b for a, b in zip(eager, spec, strict=True))
    out["speculative_stats"] = dict(llm.last_speculation)
    started = time.perf_counter()
    from expertrag.models.speculative import bf16_draft

    bf16_draft(llm.base_model)
    out["draft_build_s"] = time.perf_counter() - started
    rel_t, _ = _timeit(lambda: llm.label_probabilities(pairs, expert="relevance"), reps)
    out["relevance_pairs_per_s"] = len(pairs) / rel_t
    return out


def _crag(llm: Any) -> Any:
    """Four corrective-RAG answers (bench_serving's chain), with the shipped experts."""
    from _common import CRAG_QUESTIONS, crag_chain

    from expertrag.experts import attach_shipped

    attach_shipped(llm)
    chain = crag_chain(llm)
    return lambda: chain.answer_many(CRAG_QUESTIONS)


def run_langchain(model_dir: str, reps: int, dtype: str | None = None) -> dict[str, Any]:
    from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline

    pipe = HuggingFacePipeline.from_model_id(
        model_id=model_dir, task="text-generation",
        pipeline_kwargs={"max_new_tokens": MAX_NEW, "do_sample": False,
                         "return_full_text": False},
        model_kwargs={"dtype": dtype} if dtype else None,
    )
    chat = ChatHuggingFace(llm=pipe, model_id=model_dir)
    tok = pipe.pipeline.tokenizer
    single_t, single = _timeit(lambda: chat.invoke(PROMPTS[0]), reps)
    batch_t, batch = _timeit(lambda: chat.batch(PROMPTS), reps)
    return {
        "single_tps": _count(tok, single.content) / single_t,
        "batch_tps": sum(_count(tok, m.content) for m in batch) / batch_t,
    }


def run_llama_index(model_dir: str, reps: int, dtype: str | None = None) -> dict[str, Any]:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.huggingface import HuggingFaceLLM

    llm = HuggingFaceLLM(model_name=model_dir, tokenizer_name=model_dir,
                         max_new_tokens=MAX_NEW, generate_kwargs={"do_sample": False},
                         device_map="cpu", is_chat_model=True,
                         model_kwargs={"dtype": dtype} if dtype else {})
    tok = llm._tokenizer

    def one(p: str) -> str:
        return llm.chat([ChatMessage(role="user", content=p)]).message.content or ""

    single_t, single = _timeit(lambda: one(PROMPTS[0]), reps)
    # HuggingFaceLLM has no batch: a batch is a loop (what a user gets)
    batch_t, batch = _timeit(lambda: [one(p) for p in PROMPTS], reps)
    return {
        "single_tps": _count(tok, single) / single_t,
        "batch_tps": sum(_count(tok, t) for t in batch) / batch_t,
    }


def run_ours_dtype(model_dir: str, reps: int, dtype: str = "bfloat16") -> dict[str, Any]:
    """Ours with another weight dtype (fast paths on): decode tok/s, label-probability
    pairs/s with the shipped relevance expert and a CRAG answer's seconds, plus how many
    of the batch's greedy answers equal the fp32 ones."""
    from _common import CRAG_QUESTIONS

    from expertrag import ExpertLLM

    llm = ExpertLLM(model_dir, dtype=dtype).load()
    msgs, pairs = _workload()
    single_t, single = _timeit(lambda: llm.generate(msgs[0], max_new_tokens=MAX_NEW), reps)
    batch_t, batch = _timeit(lambda: llm.generate(msgs, max_new_tokens=MAX_NEW), reps)
    crag = _crag(llm)
    pairs_t, _ = _timeit(lambda: llm.label_probabilities(pairs, expert="relevance"), reps)
    crag_t, _ = _timeit(crag, 1)
    return {"single_tps": single.completion_tokens / single_t,
            "batch_tps": sum(r.completion_tokens for r in batch) / batch_t,
            "pairs_per_s": len(pairs) / pairs_t,
            "crag_s_per_question": crag_t / len(CRAG_QUESTIONS),
            "texts": [r.text for r in batch]}


def make_random_adapter(model_dir: str, out: str, seed: int, r: int = 8) -> None:
    """A LoRA adapter with random (non-zero) weights, to measure serving costs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    peft = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, init_lora_weights=False,
                                           target_modules=["q_proj", "k_proj", "v_proj",
                                                           "o_proj"]))
    peft.save_pretrained(out)


def run_experts(model_dir: str, reps: int) -> dict[str, Any]:
    """Expert switching overhead, mixed-expert batches and constrained decoding cost."""
    from expertrag import ExpertLLM

    llm = ExpertLLM(model_dir).load()  # the default dtype (bf16 on a CPU with native bf16)
    tmp = tempfile.mkdtemp()
    names = [f"e{i}" for i in range(4)]
    for i, name in enumerate(names):
        make_random_adapter(model_dir, f"{tmp}/{name}", seed=i)
        llm.add_expert(name, f"{tmp}/{name}")
    msg = [{"role": "user", "content": PROMPTS[0]}]

    def latency(experts: list[str]) -> float:
        times = []
        for e in experts:
            started = time.perf_counter()
            llm.generate(msg, expert=e, max_new_tokens=1)
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    # interleaved blocks, so drifting machine load hits both sides alike
    latency(names * 2)
    same, switching = [], []
    for _ in range(4):
        same.append(latency(["e0"] * 12))
        switching.append(latency(names * 3))
    same_s, switching_s = statistics.median(same), statistics.median(switching)
    msgs = [[{"role": "user", "content": p}] for p in PROMPTS]
    # one expert vs the bare base on the same batch, as row-steps per second (rows x the
    # longest row's tokens: a batch decodes until its longest row ends), interleaved
    steps: dict[str | None, list[float]] = {None: [], "e0": []}
    for _ in range(reps + 1):
        for e in (None, "e0"):
            started = time.perf_counter()
            rows = llm.generate(msgs, expert=e, max_new_tokens=MAX_NEW)
            took = time.perf_counter() - started
            steps[e].append(len(rows) * max(r.completion_tokens for r in rows) / took)
    single_t, single = _timeit(lambda: llm.generate(msgs, expert="e0", max_new_tokens=MAX_NEW),
                               reps)
    mixed_experts = [names[i % 4] for i in range(len(PROMPTS))]
    mixed_t, mixed = _timeit(
        lambda: llm.generate(msgs, expert=mixed_experts, max_new_tokens=MAX_NEW), reps)

    schema = {"type": "object", "properties": {
        "title": {"type": "string"}, "year": {"type": "integer"},
        "keywords": {"type": "array", "items": {"type": "string"}}},
        "required": ["title", "year", "keywords"]}
    prompt = [{"role": "user", "content": "Describe a famous book as JSON with its title, "
                                          "year and a few keywords."}]
    llm.speculative = False  # the same decoding loop on both sides (JSON is not drafted)
    json_t, json_r = _timeit(lambda: llm.generate(prompt, json_schema=schema,
                                                  max_new_tokens=200), reps)
    free_t, free_r = _timeit(lambda: llm.generate(prompt, max_new_tokens=json_r.completion_tokens),
                             reps)
    return {
        "dtype": str(llm.base_model.dtype).removeprefix("torch."),
        "switch_overhead_ms": (switching_s - same_s) * 1000,
        "call_latency_ms": same_s * 1000,
        "single_expert_batch_tps": sum(r.completion_tokens for r in single) / single_t,
        "expert_vs_base_same_batch": max(steps["e0"]) / max(steps[None]),
        "mixed_expert_batch_tps": sum(r.completion_tokens for r in mixed) / mixed_t,
        "json_ms_per_token": json_t / json_r.completion_tokens * 1000,
        "free_ms_per_token": free_t / free_r.completion_tokens * 1000,
        "json_tokens": json_r.completion_tokens,
        "free_tokens": free_r.completion_tokens,
    }


def run_load(_: str, reps: int) -> dict[str, Any]:
    """First load (de-quantize GGUF, write cache) vs cached load, in a fresh cache."""
    from expertrag.models.loading import load_base_model

    os.environ["EXPERTRAG_CACHE"] = tempfile.mkdtemp()
    first = load_base_model("smollm2-135m-instruct")
    assert not first.from_cache
    cached = [load_base_model("smollm2-135m-instruct") for _ in range(max(1, reps))]
    assert all(c.from_cache for c in cached)
    return {"first_load_s": first.load_seconds,
            "cached_load_s": statistics.median(c.load_seconds for c in cached)}


SYSTEMS = {"ours": run_ours, "langchain-huggingface": run_langchain,
           "llama-index-llms-huggingface": run_llama_index, "experts": run_experts,
           "load": run_load,
           # bfloat16 weights on all three sides (ours: the default on a CPU with native bf16)
           "ours-bf16": partial(run_ours_dtype, dtype="bfloat16"),
           "langchain-bf16": partial(run_langchain, dtype="bfloat16"),
           "llama-index-bf16": partial(run_llama_index, dtype="bfloat16")}


def _child(name: str, model_dir: str, reps: int, conn: Any) -> None:
    try:
        conn.send(SYSTEMS[name](model_dir, reps))
    except Exception as exc:  # reported in the table
        conn.send({"error": f"{type(exc).__name__}: {exc}"})


def _isolated(name: str, model_dir: str, reps: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(name, model_dir, reps, child))
    proc.start()
    result = parent.recv()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--only", choices=list(SYSTEMS), help="run one part and print its raw "
                        "figures (the tables need all parts)")
    args = parser.parse_args()
    reps = 1 if args.quick else 3
    model_dir = _model_dir()
    if args.only:
        print(json.dumps(_isolated(args.only, model_dir, reps), indent=2))
        return
    res = {}
    for name in SYSTEMS:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        res[name] = _isolated(name, model_dir, reps)
    if args.json:  # raw figures first, so a failed table still leaves them
        args.json.write_text(json.dumps(res, indent=2))
    ours, lc, li, ex, ld, ob, lb, ib = (res[k] for k in SYSTEMS)
    for k, v in res.items():
        if "error" in v:
            print(f"{k}: {v['error']}")
    if any("error" in res[k] for k in ("ours", "experts", "load", "ours-bf16")):
        raise SystemExit(1)
    for v in res.values():
        if "error" in v:
            v.update({"single_tps": float("nan"), "batch_tps": float("nan")})
    from expertrag.models.loading import resolve_dtype

    default = str(resolve_dtype(None, "cpu")).removeprefix("torch.")
    mine = ob if default == "bfloat16" else ours  # what ExpertLLM() picks on this CPU
    print(f"\n| defaults (ours: {default}; the peers: float32) | expertrag | langchain-hf | "
          "llama-index-hf | ours / lc | ours / li |")
    print("|---|---|---|---|---|---|")
    for key, label in (("single_tps", "single-stream tok/s"), ("batch_tps", "batch of 8 tok/s")):
        print(f"| {label} | {mine[key]:.1f} | {lc[key]:.1f} | {li[key]:.1f} | "
              f"{mine[key] / lc[key]:.2f}x | {mine[key] / li[key]:.2f}x |")
    print("\n| float32 weights, all three sides | expertrag | langchain-hf | llama-index-hf | "
          "ours / lc | ours / li |")
    print("|---|---|---|---|---|---|")
    for key, label in (("single_tps", "single-stream tok/s"), ("batch_tps", "batch of 8 tok/s")):
        print(f"| {label} | {ours[key]:.1f} | {lc[key]:.1f} | {li[key]:.1f} | "
              f"{ours[key] / lc[key]:.2f}x | {ours[key] / li[key]:.2f}x |")
    print("\n| bfloat16 weights, all three sides | expertrag | langchain-hf | llama-index-hf | "
          "ours / lc | ours / li | ours bf16 / lc fp32 | ours bf16 / li fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for key, label in (("single_tps", "single-stream tok/s"), ("batch_tps", "batch of 8 tok/s")):
        print(f"| {label} | {ob[key]:.1f} | {lb[key]:.1f} | {ib[key]:.1f} | "
              f"{ob[key] / lb[key]:.2f}x | {ob[key] / ib[key]:.2f}x | "
              f"{ob[key] / lc[key]:.2f}x | {ob[key] / li[key]:.2f}x |")
    same = sum(a == b for a, b in zip(ob["texts"], ours["texts"], strict=True))
    print(f"\nexpertrag bfloat16 vs float32: relevance pairs/s {ob['pairs_per_s']:.2f} "
          f"(fp32 {ours['relevance_pairs_per_s']:.2f}), CRAG {ob['crag_s_per_question']:.2f} "
          f"s / question (fp32 {ours['crag_s_per_question']:.2f}); greedy answers equal to "
          f"fp32: {same} of {len(ours['texts'])} (64 new tokens each)")
    print(f"\nspeculative single stream (opt-in): {ours['speculative_single_tps']:.1f} tok/s "
          f"({ours['speculative_single_tps'] / ours['single_tps']:.2f}x ours without it, "
          f"{ours['speculative_single_tps'] / lc['single_tps']:.2f}x langchain-hf, "
          f"{ours['speculative_single_tps'] / li['single_tps']:.2f}x llama-index-hf); "
          f"{ours['speculative_same']} of {len(PROMPTS)} answers "
          f"equal to transformers' greedy loop ({MAX_NEW} new tokens each); the bf16 draft "
          f"is built once per process in {ours['draft_build_s']:.2f} s")
    print("\n| expertrag float32, stock forwards vs fast paths | stock | fast | fast / stock |")
    print("|---|---|---|---|")
    for key, label in (("single_tps", "single-stream tok/s"), ("batch_tps", "batch of 8 tok/s"),
                       ("pairs_per_s", "label probabilities, pairs/s"),
                       ("prefill_tps", "prefill, prompt tok/s (batch of 8)"),
                       ("crag_s_per_question", "CRAG answer, s / question")):
        a, b = ours[f"stock_{key}"], ours[key]
        ratio = a / b if key.startswith("crag") else b / a
        print(f"| {label} | {a:.2f} | {b:.2f} | {ratio:.2f}x |")
    print(f"\n| measure ({ex['dtype']}, the default dtype) | value | target |")
    print("|---|---|---|")
    print(f"| expert switch overhead per call | {ex['switch_overhead_ms']:.2f} ms (call with "
          f"1 new token: {ex['call_latency_ms']:.0f} ms) | < 10 ms |")
    print(f"| batch of 8, one expert | {ex['single_expert_batch_tps']:.1f} tok/s | |")
    print(f"| one unmerged expert vs the bare base, same batch of 8 | "
          f"{ex['expert_vs_base_same_batch']:.2f}x | >= 0.85x |")
    ratio = ex["mixed_expert_batch_tps"] / ex["single_expert_batch_tps"]
    print(f"| batch of 8 mixing 4 experts | {ex['mixed_expert_batch_tps']:.1f} tok/s "
          f"({ratio:.2f}x) | >= 0.7x |")
    slow = ex["json_ms_per_token"] / ex["free_ms_per_token"] - 1
    print(f"| JSON-schema decoding | {ex['json_ms_per_token']:.1f} ms/token vs "
          f"{ex['free_ms_per_token']:.1f} unconstrained ({slow:+.0%}) | <= +15% |")
    print(f"| first GGUF load (de-quantize + cache) | {ld['first_load_s']:.1f} s | |")
    print(f"| cached load | {ld['cached_load_s']:.2f} s "
          f"({ld['first_load_s'] / ld['cached_load_s']:.0f}x faster) | |")


if __name__ == "__main__":
    main()
