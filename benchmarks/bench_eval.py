"""Evaluators: judge validity, RAGAS side by side, and the robustness table, one run.

Held-out data never trained on:

1. **Judge validity** (accuracy at 0.5 and ROC AUC against labels we hold):
   - faithfulness: HaluEval rows 500-999 (each question's right answer vs its hallucinated
     one, with the same knowledge as context) and HotpotQA test items (the gold paragraphs
     with the right answer vs with another question's answer);
   - context relevance: HotpotQA test gold vs distractor paragraphs;
   - answer relevance: HotpotQA test right answers vs another question's answers;
   for expertrag's judges (one forward pass each) and for the RAGAS metric on the same items
   through expertrag's judge (a subset: ``--ragas-items``).
2. **RAGAS side by side**, same judge model (SmolLM2-135M-Instruct) and items: RAGAS driven
   through its own LangChain wrapper around ``ChatHuggingFace`` (the path a user tries first)
   vs RAGAS through expertrag's judge: failed / NaN share per metric and seconds per item;
   expertrag's own judges for the speed ratio.
3. **Robustness** (RGB): noise ratios, negative rejection, counterfactual, information
   integration, for every pipeline (naive, CRAG, Self-RAG, GraphRAG) on HotpotQA test items.

    python benchmarks/bench_eval.py --data-dir ../shared/data [--part validity|ragas|robustness]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from _common import fmt as _f
from _common import print_table as _print

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("OPENAI_API_KEY", None)  # nothing may reach OpenAI, even by accident

ROOT = Path(__file__).resolve().parents[1]


def _acc_auc(scores: list[float], labels: list[int],
             threshold: float = 0.5) -> tuple[float, float]:
    """Accuracy at `threshold` (a judge's own) and ROC AUC, NaN scores left out."""
    from expertrag.training.trainer import roc_auc

    ok = [(s, y) for s, y in zip(scores, labels, strict=True) if s == s]
    if not ok:
        return float("nan"), float("nan")
    acc = sum((s >= threshold) == bool(y) for s, y in ok) / len(ok)
    return acc, roc_auc([s for s, _ in ok], [y for _, y in ok])


# ------------------------------------------------------------------------------ item sets
def faithfulness_items(data_dir: Path, n_halu: int, n_hotpot: int) -> list[dict[str, Any]]:
    from expertrag.evaluation.datasets import load_hotpot_test
    from expertrag.training.data import HALUEVAL_QA, knowledge_passages, load_halueval

    halu = load_halueval(data_dir / HALUEVAL_QA, part="heldout")[:n_halu]
    items = []
    for r in halu:
        ctx = knowledge_passages(r["knowledge"])
        items.append({"question": r["question"], "answer": r["right_answer"], "contexts": ctx,
                      "label": 1, "source": "halueval"})
        items.append({"question": r["question"], "answer": r["hallucinated_answer"],
                      "contexts": ctx, "label": 0, "source": "halueval"})
    rows = load_hotpot_test(data_dir / "hotpotqa" / "test.jsonl")[200:200 + n_hotpot]
    answers = [r["answer"] for r in rows]
    rng = random.Random("bench-eval-faith")
    for i, r in enumerate(rows):
        gold = set(r["supporting_facts"]["title"])
        ctx = ["".join(s) for t, s in zip(r["context"]["title"], r["context"]["sentences"],
                                          strict=True) if t in gold]
        other = rng.choice([a for j, a in enumerate(answers) if j != i
                            and a.lower() not in " ".join(ctx).lower()] or ["unknown"])
        items.append({"question": r["question"], "answer": r["answer"], "contexts": ctx,
                      "label": 1, "source": "hotpotqa"})
        items.append({"question": r["question"], "answer": other, "contexts": ctx,
                      "label": 0, "source": "hotpotqa"})
    return items


def relevance_items(data_dir: Path, n: int) -> list[dict[str, Any]]:
    from expertrag.evaluation.datasets import load_hotpot_test

    rows = load_hotpot_test(data_dir / "hotpotqa" / "test.jsonl")[200:200 + n]
    items = []
    for r in rows:
        gold = set(r["supporting_facts"]["title"])
        paras = list(zip(r["context"]["title"], r["context"]["sentences"], strict=True))
        pos = next("".join(s) for t, s in paras if t in gold)
        neg = next("".join(s) for t, s in paras if t not in gold)
        items.append({"question": r["question"], "contexts": [pos], "label": 1,
                      "answer": r["answer"]})
        items.append({"question": r["question"], "contexts": [neg], "label": 0,
                      "answer": r["answer"]})
    return items


def answer_items(data_dir: Path, n: int) -> list[dict[str, Any]]:
    from expertrag.evaluation.datasets import load_hotpot_test

    rows = load_hotpot_test(data_dir / "hotpotqa" / "test.jsonl")[200:200 + n]
    answers = [r["answer"] for r in rows]
    rng = random.Random("bench-eval-answer")
    items = []
    for i, r in enumerate(rows):
        items.append({"question": r["question"], "answer": r["answer"], "label": 1})
        items.append({"question": r["question"], "label": 0,
                      "answer": rng.choice([a for j, a in enumerate(answers) if j != i])})
    return items


# ------------------------------------------------------------------------------ parts
def validity_part(llm: Any, data_dir: Path, n: int, ragas_items: int,
                  checks: tuple[str, ...] = ("faithfulness", "context relevance",
                                             "answer relevance")) -> list[list[str]]:
    from expertrag.evaluation.judges import (
        AnswerRelevanceJudge,
        ContextRelevanceJudge,
        EvalItem,
        FaithfulnessJudge,
    )

    sets = {"faithfulness": (lambda: faithfulness_items(data_dir, n, n // 2),
                             lambda: FaithfulnessJudge(llm), "Faithfulness"),
            "context relevance": (lambda: relevance_items(data_dir, n),
                                  lambda: ContextRelevanceJudge(llm), "ContextRelevance"),
            "answer relevance": (lambda: answer_items(data_dir, n),
                                 lambda: AnswerRelevanceJudge(llm), "AnswerRelevancy")}
    rows = []
    for name in checks:
        make_items, make_judge, ragas_name = sets[name]
        items, judge = make_items(), make_judge()
        evals = [EvalItem(it["question"], it.get("answer", ""), it.get("contexts", []))
                 for it in items]
        started = time.perf_counter()
        scores = [v.score for v in judge(evals)]
        took = (time.perf_counter() - started) / len(items)
        acc, auc = _acc_auc(scores, [it["label"] for it in items], judge.threshold)
        rows.append([name, "expertrag judge", str(len(items)), _f(acc), _f(auc), "0.000",
                     f"{took:.3f}"])
        if ragas_items:
            sub = items[: ragas_items]
            values, took, nan = ragas_scores(llm, ragas_name, sub)
            acc, auc = _acc_auc(values, [it["label"] for it in sub])
            rows.append([name, f"RAGAS {ragas_name}, expertrag judge", str(len(sub)), _f(acc),
                         _f(auc), f"{nan:.3f}", f"{took:.2f}"])
    print("\njudge validity on held-out labelled items")
    _print(["check", "judge", "items", "accuracy", "ROC AUC", "NaN/failed", "s / item"], rows)
    return rows


def ragas_scores(llm: Any, metric_name: str, items: list[dict[str, Any]],
                 max_new_tokens: int = 128) -> tuple[list[float], float, float]:
    """RAGAS collections metric values through expertrag's judge, s/item, NaN share."""
    import asyncio

    from expertrag.evaluation.ragas_backend import (
        ExpertRagasEmbeddings,
        ExpertRagasLLM,
        no_openai,
        ragas_metric,
    )

    judge = ExpertRagasLLM(llm, max_new_tokens=max_new_tokens)
    kwargs: dict[str, Any] = {}
    if metric_name == "AnswerRelevancy":
        kwargs = {"embeddings": ExpertRagasEmbeddings(), "strictness": 1}
    inputs = []
    for it in items:
        row = {"user_input": it["question"]}
        if metric_name != "ContextRelevance":
            row["response"] = it.get("answer") or "(no answer)"
        if metric_name != "AnswerRelevancy":
            row["retrieved_contexts"] = it.get("contexts") or ["(none)"]
        inputs.append(row)
    with no_openai():
        metric = ragas_metric(metric_name, llm=judge, **kwargs)
        started = time.perf_counter()
        results = asyncio.run(_gather(metric, inputs))
        took = (time.perf_counter() - started) / len(items)
    values = []
    for r in results:
        v = float("nan") if isinstance(r, Exception) else float(r.value)
        values.append(v)
    nan = sum(1 for v in values if v != v) / len(values)
    return values, took, nan


async def _gather(metric: Any, inputs: list[dict[str, Any]]) -> list[Any]:
    import asyncio

    return await asyncio.gather(*(metric.ascore(**row) for row in inputs),
                                return_exceptions=True)


RAGAS_METRICS = ("Faithfulness", "AnswerRelevancy", "ContextPrecision", "ContextRecall",
                 "FactualCorrectness", "NoiseSensitivity")


def ragas_part(llm: Any, data_dir: Path, n: int, anchor_n: int,
               metrics: tuple[str, ...] = RAGAS_METRICS) -> list[list[str]]:
    """RAGAS through expertrag's judge over ``n`` items, then through LangChain's
    ChatHuggingFace over the first ``anchor_n`` of the same items (it is ~10x slower per
    item). Each row is printed as it is measured, so a stopped run keeps its figures."""
    from expertrag.evaluation.judges import EvalItem, FaithfulnessJudge

    items = faithfulness_items(data_dir, n // 2, 0)[:n]
    rows: list[list[str]] = []
    header = ["metric", "path", "items", "failed or NaN", "s / item"]
    print(f"\nRAGAS side by side (same judge model, SmolLM2-135M-Instruct; "
          f"{len(items)} items, the anchor on the first {min(anchor_n, len(items))})")
    _print(header, [])

    def add(row: list[str]) -> None:
        rows.append(row)
        print("| " + " | ".join(row) + " |", flush=True)

    metrics = list(metrics)
    started = time.perf_counter()
    FaithfulnessJudge(llm)([EvalItem(it["question"], it["answer"], it["contexts"])
                            for it in items])
    own = (time.perf_counter() - started) / len(items)
    add(["faithfulness", "expertrag FaithfulnessJudge (one forward pass)", str(len(items)),
         "0.000", f"{own:.3f}"])
    # 1. the same metrics through expertrag's grammar-constrained judge
    ours: dict[str, float] = {}
    for name in metrics:
        sub = [{**it, "reference": it["answer"]} for it in items]
        _values, took, nan = ragas_scores_reference(llm, name, sub)
        ours[name] = took
        add([name, "RAGAS + expertrag judge", str(len(items)), _f(nan), f"{took:.2f}"])
    # 2. the path a user tries first: legacy evaluate() with ragas' LangChain wrapper
    anchor = items[:anchor_n]
    theirs: dict[str, float] = {}
    paths = ((False, "RAGAS + LangchainLLMWrapper(ChatHuggingFace)"),
             (True, "same, async run in a thread (a user's workaround)")) if anchor else ()
    for threaded, path in paths:
        for name, (fail, took) in langchain_path(llm, anchor, metrics, threaded).items():
            if threaded:
                theirs[name] = took
            add([name, path, str(len(anchor)), _f(fail), f"{took:.2f}" if took == took else "-"])
    if ours.get("Faithfulness"):
        print(f"expertrag's faithfulness judge: {ours['Faithfulness'] / own:.1f}x faster per "
              "item than RAGAS Faithfulness through expertrag's judge, "
              f"{theirs.get('Faithfulness', float('nan')) / own:.1f}x faster than RAGAS "
              "Faithfulness through ChatHuggingFace (threaded), same model")
    return rows


def ragas_scores_reference(llm: Any, name: str, items: list[dict[str, Any]]
                           ) -> tuple[list[float], float, float]:
    import asyncio

    from expertrag.evaluation.ragas_backend import (
        ExpertRagasEmbeddings,
        ExpertRagasLLM,
        no_openai,
        ragas_metric,
    )

    judge = ExpertRagasLLM(llm, max_new_tokens=128)
    kwargs: dict[str, Any] = {}
    if name == "AnswerRelevancy":
        kwargs = {"embeddings": ExpertRagasEmbeddings(), "strictness": 1}
    fields = {"Faithfulness": ("user_input", "response", "retrieved_contexts"),
              "AnswerRelevancy": ("user_input", "response"),
              "ContextPrecision": ("user_input", "reference", "retrieved_contexts"),
              "ContextRecall": ("user_input", "retrieved_contexts", "reference"),
              "FactualCorrectness": ("response", "reference"),
              "NoiseSensitivity": ("user_input", "response", "reference",
                                   "retrieved_contexts")}[name]
    source = {"user_input": "question", "response": "answer", "retrieved_contexts": "contexts",
              "reference": "reference"}
    inputs = [{f: it[source[f]] for f in fields} for it in items]
    with no_openai():
        metric = ragas_metric(name, llm=judge, **kwargs)
        started = time.perf_counter()
        results = asyncio.run(_gather(metric, inputs))
        took = (time.perf_counter() - started) / len(items)
    values = [float("nan") if isinstance(r, Exception) else float(r.value) for r in results]
    return values, took, sum(1 for v in values if v != v) / len(values)


def langchain_path(llm: Any, items: list[dict[str, Any]], metrics: list[str],
                   threaded: bool = False) -> dict[str, tuple[float, float]]:
    """Failed/NaN share and s/item of RAGAS' legacy evaluate() over ChatHuggingFace.

    RAGAS calls the LLM asynchronously, and ``ChatHuggingFace`` over a local
    ``HuggingFacePipeline`` raises ``NotImplementedError`` for async generation, so as a
    user first wires it every job fails. ``threaded=True`` is the workaround a user would
    write next (the sync call in a worker thread, one at a time), which measures what the
    small judge itself gets wrong without a grammar."""
    import asyncio
    out: dict[str, tuple[float, float]] = {}
    try:
        from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
        from transformers import pipeline as hf_pipeline

        from expertrag.evaluation.ragas_backend import import_ragas

        import_ragas()
        from ragas import EvaluationDataset, evaluate
        from ragas.embeddings import LangchainEmbeddingsWrapper
        from ragas.llms import LangchainLLMWrapper
        from ragas.metrics._answer_relevance import AnswerRelevancy
        from ragas.metrics._context_precision import LLMContextPrecisionWithReference
        from ragas.metrics._context_recall import LLMContextRecall
        from ragas.metrics._factual_correctness import FactualCorrectness
        from ragas.metrics._faithfulness import Faithfulness
        from ragas.metrics._noise_sensitivity import NoiseSensitivity
        from ragas.run_config import RunConfig

        from expertrag.langchain import ExpertEmbeddings
    except Exception as exc:  # the path fails before it starts: every item fails
        print(f"LangChain path unavailable: {type(exc).__name__}: {exc}")
        return {m: (1.0, float("nan")) for m in metrics}
    # return_full_text=False, as a careful user wires it: otherwise ChatHuggingFace hands
    # RAGAS the prompt plus the reply, its fix-output retries feed that back, and the
    # prompts grow past the model's 8192-token window
    pipe = hf_pipeline("text-generation", model=llm.base_model, tokenizer=llm.tokenizer,
                       max_new_tokens=128, do_sample=False, return_full_text=False)
    chat_class = ChatHuggingFace
    if threaded:
        class ThreadedChat(ChatHuggingFace):
            async def _agenerate(self, messages: Any, stop: Any = None,
                                 run_manager: Any = None, **kwargs: Any) -> Any:
                return await asyncio.to_thread(self._generate, messages, stop, None,
                                               **kwargs)

        chat_class = ThreadedChat
    chat = chat_class(llm=HuggingFacePipeline(pipeline=pipe))
    wrapped = LangchainLLMWrapper(chat)
    emb = LangchainEmbeddingsWrapper(ExpertEmbeddings())
    legacy = {"Faithfulness": Faithfulness(), "AnswerRelevancy": AnswerRelevancy(strictness=1),
              "ContextPrecision": LLMContextPrecisionWithReference(),
              "ContextRecall": LLMContextRecall(), "FactualCorrectness": FactualCorrectness(),
              "NoiseSensitivity": NoiseSensitivity()}
    data = EvaluationDataset.from_list([{
        "user_input": it["question"], "response": it["answer"],
        "retrieved_contexts": it["contexts"], "reference": it["answer"]} for it in items])
    for name in metrics:
        started = time.perf_counter()
        try:
            result = evaluate(data, metrics=[legacy[name]], llm=wrapped, embeddings=emb,
                              show_progress=False, raise_exceptions=False,
                              run_config=RunConfig(max_workers=1, timeout=600,
                                                   max_retries=2, max_wait=2))
            frame = result.to_pandas()
            column = next(c for c in frame.columns if c not in ("user_input", "response",
                                                            "retrieved_contexts",
                                                            "reference"))
            values = [float(v) for v in frame[column]]
            fail = sum(1 for v in values if v != v or math.isinf(v)) / len(values)
        except Exception as exc:
            print(f"  {name} through LangChain failed: {type(exc).__name__}: {exc}")
            fail = 1.0
        out[name] = (fail, (time.perf_counter() - started) / len(items))
    return out


def robustness_part(llm: Any, data_dir: Path, n: int, pipelines: list[str],
                    out_dir: Path) -> list[list[str]]:
    from expertrag.evaluation.datasets import hotpot_items, load_hotpot_test
    from expertrag.evaluation.report import markdown_table, summarize, write_report
    from expertrag.evaluation.robustness import robustness_cases
    from expertrag.evaluation.runner import PIPELINES, ResultCache, run_cases

    items = hotpot_items(load_hotpot_test(data_dir / "hotpotqa" / "test.jsonl")[280:280 + n])
    cases = robustness_cases(items, ["noise", "negative", "counterfactual", "integration"])
    results = run_cases(cases, {p: PIPELINES[p] for p in pipelines}, llm,
                        cache=ResultCache(out_dir / "cache"), progress=True)
    rows = summarize(results)
    columns = ["pipeline", "condition", "n", "accuracy", "refusal_rate",
               "follows_counterfactual", "errors", "seconds_per_item"]
    print(f"\nrobustness (RGB) on {len(items)} HotpotQA test items 280..")
    print(markdown_table(rows, columns))
    written = write_report(results, out_dir, title="expertrag robustness (bench_eval)")
    print(f"report: {written['report.html']}")
    return [[str(r.get(c, "")) for c in columns] for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--part", choices=["validity", "ragas", "robustness", "all"],
                        default="all")
    parser.add_argument("--items", type=int, default=100,
                        help="labelled items per validity check (HaluEval rows etc.)")
    parser.add_argument("--checks", default="faithfulness,context relevance,answer relevance",
                        help="validity checks to run, comma-separated")
    parser.add_argument("--ragas-items", type=int, default=30,
                        help="items scored by the generative RAGAS metric in validity")
    parser.add_argument("--side-items", type=int, default=100,
                        help="items of the RAGAS side-by-side through expertrag's judge")
    parser.add_argument("--anchor-items", type=int, default=10,
                        help="the first N of those also through ChatHuggingFace")
    parser.add_argument("--ragas-metrics", default=",".join(RAGAS_METRICS),
                        help="RAGAS metrics of the side-by-side, comma-separated")
    parser.add_argument("--robust-items", type=int, default=20)
    parser.add_argument("--pipelines", default="naive,crag,self-rag,graph")
    parser.add_argument("--out", type=Path, default=Path("bench-eval-report"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not (args.data_dir / "hotpotqa" / "test.jsonl").is_file():
        sys.exit(f"error: {args.data_dir} holds no hotpotqa/test.jsonl: pass --data-dir")

    from expertrag import ExpertLLM
    from expertrag.experts import attach_shipped

    llm = ExpertLLM().load()
    attach_shipped(llm)
    report: dict[str, Any] = {}
    if args.part in ("validity", "all"):
        checks = tuple(c.strip() for c in args.checks.split(",") if c.strip())
        report["validity"] = validity_part(llm, args.data_dir, args.items, args.ragas_items,
                                           checks)
    if args.part in ("ragas", "all"):
        metrics = tuple(m.strip() for m in args.ragas_metrics.split(",") if m.strip())
        unknown = sorted(set(metrics) - set(RAGAS_METRICS))
        if unknown:
            sys.exit(f"error: unknown --ragas-metrics {unknown}; choose from {RAGAS_METRICS}")
        report["ragas"] = ragas_part(llm, args.data_dir, args.side_items,
                                     args.anchor_items, metrics)
    if args.part in ("robustness", "all"):
        report["robustness"] = robustness_part(llm, args.data_dir, args.robust_items,
                                               args.pipelines.split(","), args.out)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
