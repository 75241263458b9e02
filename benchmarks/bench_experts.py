"""Before/after benchmark of the shipped experts on held-out data, base (and v1) in one run.

Same base (SmolLM2-135M-Instruct), same prompts and passages, one run:

- relevance: balanced (question, passage) pairs from HotpotQA test (gold paragraphs vs the
  item's own distractors). Accuracy (P(yes) > 0.5) and ROC AUC for the prompted base, the base
  + `relevance` expert, and the all-MiniLM-L6-v2 cosine score (a non-LLM baseline; AUC only).
- grounded-qa: RAFT-style prompts (``expertrag.experts.grounded_qa.build_messages``).
  HotpotQA test: the first 120 items, half with the oracle passages + 2 distractors, half
  with 4 distractors only.
  MuSiQue (out of domain, never trained on): every question with its supporting paragraphs
  + 2 of its own distractors. Exact match, token F1, answer-contained, refusal accuracy
  (oracle absent) and false-refusal rate (oracle present), for the prompted base, grounded-qa
  v1 (the first shipped adapter, read from git history) and the shipped expert.
- demo: the packaged sample corpus and questions through `RAGPipeline` (k=4), as
  `expertrag demo` runs them: answers right and cited.
- critic: Self-RAG's reflection judgements (`expertrag.reflection`) on held-out items:
  Retrieve accuracy (held-out instruction templates + HotpotQA test and MuSiQue questions),
  IsRel ROC AUC, IsSup macro-F1 and AUC(fully vs no) (HotpotQA test constructions + HaluEval
  rows 500-999, right vs hallucinated), IsUse Spearman against the constructed grades;
  prompted base vs the `critic` expert, with pairs/s.
- decode speed with and without an expert: the same batch of prompts that run to the token
  limit (counting, listing), so every side decodes the same number of tokens.

    python benchmarks/bench_experts.py --data-dir ../shared/data [--limit 200] [--part grounded]
    python benchmarks/bench_experts.py --part speed      # no shared data needed
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from _common import print_table as _print

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def load_test(data_dir: Path, limit: int | None, start: int = 0) -> list[dict[str, Any]]:
    """HotpotQA test.jsonl from item ``start``: evaluation only (the training loaders refuse
    this file)."""
    from expertrag.datasets import HOTPOT_TEST, load_hotpot_test

    path = data_dir / HOTPOT_TEST
    if not path.is_file():
        sys.exit(f"error: {path} not found: pass --data-dir pointing at the shared data folder")
    rows = load_hotpot_test(path)[start:]
    return rows[:limit] if limit else rows


def relevance_part(llm: Any, items: list[dict[str, Any]], batch_size: int) -> list[list[str]]:
    from expertrag.embeddings import Embedder
    from expertrag.training.data import build_relevance
    from expertrag.training.trainer import roc_auc

    pairs = build_relevance(items, seed=0)
    truth = [r["meta"]["label"] for r in pairs]
    convs = [r["messages"] for r in pairs]
    table = []
    for label, expert in (("base, prompted", None), ("base + relevance expert", "relevance")):
        started = time.perf_counter()
        probs = llm.label_probabilities(convs, labels=("yes", "no"), expert=expert,
                                        batch_size=batch_size)
        took = time.perf_counter() - started
        scores = [p["yes"] for p in probs]
        acc = sum((s > 0.5) == bool(y) for s, y in zip(scores, truth, strict=True)) / len(truth)
        table.append([label, f"{acc:.3f}", f"{roc_auc(scores, truth):.3f}",
                      f"{len(convs) / took:.1f}"])
    # the non-LLM baseline: cosine(question, passage) with all-MiniLM-L6-v2
    embedder = Embedder()
    texts = [_user_parts(c) for c in convs]
    q_vecs = embedder.embed_documents([q for q, _ in texts])
    p_vecs = embedder.embed_documents([p for _, p in texts])
    cos = [sum(a * b for a, b in zip(q, p, strict=True)) for q, p in zip(q_vecs, p_vecs,
                                                                            strict=True)]
    table.append(["all-MiniLM-L6-v2 cosine", "-", f"{roc_auc(cos, truth):.3f}", "-"])
    print(f"\nrelevance grading: {len(pairs)} balanced pairs from {len(items)} HotpotQA test items")
    _print(["scorer", "accuracy", "ROC AUC", "pairs/s"], table)
    return table


def _user_parts(conv: list[dict[str, str]]) -> tuple[str, str]:
    """(question, passage) back out of a relevance prompt (``relevance_messages``), for the
    embedding baseline."""
    text = conv[-1]["content"]
    passage, _, rest = text.removeprefix("Passage:\n").partition("\n\nQuestion: ")
    return rest.split("\n", 1)[0].strip(), passage.strip()


#: The first shipped grounded-qa adapter (v1), read from git history for comparison.
V1_GROUNDED = "fa93df6:src/expertrag/data/experts/grounded-qa"


def _generate_all(llm: Any, rows: list[dict[str, Any]], expert: str | None, batch_size: int,
                  max_new_tokens: int, gate: Any = None) -> tuple[list[str], float]:
    """Greedy answers to the rows (their ``meta`` question and passages, the prompt they were
    built with), through ``RAGPipeline``'s batched step, and seconds per row. With ``gate``
    the passages are scored first and the stopped rows refused without generating."""
    from expertrag.chains.naive import generate_grounded
    from expertrag.types import Document

    preds: list[str] = []
    started = time.perf_counter()
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        out = generate_grounded(llm, [r["meta"]["question"] for r in chunk],
                                [[Document(text=t) for t in r["meta"]["passages"]]
                                 for r in chunk], expert=expert, gate=gate,
                                max_new_tokens=max_new_tokens)
        preds += [res.text for res, _ in out]
    return preds, (time.perf_counter() - started) / max(len(rows), 1)


def grounded_part(llm: Any, items: list[dict[str, Any]], musique: list[dict[str, Any]],
                  models: list[tuple[str, str | None]], batch_size: int,
                  max_new_tokens: int) -> dict[str, list[list[str]]]:
    from expertrag.evaluation.datasets import musique_rows
    from expertrag.training.data import build_raft
    from expertrag.training.trainer import answer_metrics

    sets = {"hotpotqa": build_raft(items, distractors_k=2, p_no_oracle=0.5, seed=0)}
    if musique:
        sets["musique"] = musique_rows(musique, distractors_k=2, seed=0)
    from expertrag.chains.naive import EvidenceGate

    runs: list[tuple[str, str | None, Any]] = [(label, e, None) for label, e in models]
    if any(e == "grounded-qa" for _, e in models):
        gate = EvidenceGate.for_expert(llm, "grounded-qa")
        if gate is not None:
            runs.append((f"grounded-qa (shipped) + evidence gate {gate.threshold:.3f} "
                         "(opt-in)", "grounded-qa", gate))
    tables: dict[str, list[list[str]]] = {}
    for name, rows in sets.items():
        table = []
        for label, expert, gate in runs:
            preds, took = _generate_all(llm, rows, expert, batch_size, max_new_tokens, gate)
            m = answer_metrics(preds, rows)
            table.append([label, *(f"{m[k]:.3f}" for k in (
                "exact_match", "f1", "answer_contained", "refusal_accuracy",
                "false_refusal_rate")), f"{took:.2f}"])
        n_oracle = sum(r["meta"]["has_oracle"] for r in rows)
        print(f"\ngrounded QA, {name}: {len(rows)} items ({n_oracle} with the oracle passages,"
              f" {len(rows) - n_oracle} without)")
        _print(["model", "EM", "F1", "contained", "refusal acc", "false refusal", "s / item"],
               table)
        tables[name] = table
    return tables


def demo_part(llm: Any, models: list[tuple[str, str | None]]) -> list[list[str]]:
    """The packaged sample corpus and questions through RAGPipeline, as `expertrag demo`."""
    import tempfile
    from importlib import resources

    from expertrag.chains.naive import RAGPipeline
    from expertrag.cli import check_sample_answer, sample_questions
    from expertrag.ingest import ingest_folder
    from expertrag.retrieval import VectorStore

    questions = sample_questions()
    table = []
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as db, \
            resources.as_file(resources.files("expertrag") / "data" / "sample_corpus") as corpus:
        store = VectorStore(path=db)
        ingest_folder(Path(corpus), store, progress=False)
        for label, expert in models:
            answers = RAGPipeline(llm, store, k=4, expert=expert).answer_many(questions)
            right = [bool(check_sample_answer(a.question, a.text)) for a in answers]
            cited = [ok and any(d.metadata.get("cited") for d in a.citations)
                     for ok, a in zip(right, answers, strict=True)]
            table.append([label, f"{sum(right)}/{len(right)}", f"{sum(cited)}/{len(right)}",
                          " / ".join(a.text.replace("|", "/")[:40] for a in answers)])
    print(f"\ndemo: {len(questions)} sample questions over the sample corpus (k=4)")
    _print(["model", "right", "right + cited", "answers"], table)
    return table


def critic_part(llm: Any, items: list[dict[str, Any]], musique: list[dict[str, Any]],
                halu_heldout: list[dict[str, Any]], batch_size: int,
                caps: dict[str, int]) -> list[list[str]]:
    """The four reflection judgements on held-out items, prompted base vs critic expert."""
    from scipy.stats import spearmanr
    from sklearn.metrics import f1_score

    from expertrag.reflection import ISREL, ISSUP, ISUSE, LABELS, RETRIEVE, Critic
    from expertrag.training.critic_data import (
        cap_rows,
        critic_halueval_rows,
        critic_hotpot_rows,
        critic_retrieve_rows,
        load_instructions,
    )
    from expertrag.training.trainer import roc_auc

    questions = [r["question"] for r in items[:60]] + [q["question"] for q in musique[:40]]
    rows = (critic_retrieve_rows(load_instructions(), questions, part="heldout")
            + critic_hotpot_rows(items, seed=0, source="hotpotqa-test")
            + critic_halueval_rows(halu_heldout, seed=0))
    rows = cap_rows(rows, caps, seed=0)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_task.setdefault(r["meta"]["task"], []).append(r)
    table = []
    for label, expert in (("base, prompted", None), ("base + critic expert", "critic")):
        critic = Critic(llm, expert=expert, batch_size=batch_size)
        figures: dict[str, str] = {}
        started, n = time.perf_counter(), 0
        for task, task_rows in by_task.items():
            items_ = [_critic_fields(r) for r in task_rows]
            judged = critic.judge(task, items_)
            n += len(judged)
            truth = [r["answer"] for r in task_rows]
            if task == RETRIEVE:
                pred = [j.label for j in judged]
                acc = sum(p == t for p, t in zip(pred, truth, strict=True)) / len(truth)
                per = [sum(p == t for p, t in zip(pred, truth, strict=True) if t == lab)
                       / max(1, truth.count(lab)) for lab in LABELS[RETRIEVE]]
                figures["retrieve acc"] = f"{acc:.3f}"
                figures["retrieve bal. acc"] = f"{sum(per) / len(per):.3f}"
            elif task == ISREL:
                figures["IsRel AUC"] = f"{roc_auc([j.score for j in judged], [t == 'relevant' for t in truth]):.3f}"  # noqa: E501
            elif task == ISSUP:
                pred = [j.label for j in judged]
                figures["IsSup macro-F1"] = (
                    f"{f1_score(truth, pred, labels=list(LABELS[ISSUP]), average='macro'):.3f}")
                pairs = [(j.score, t == "fully") for j, t in zip(judged, truth, strict=True)
                         if t in ("fully", "no")]
                figures["IsSup AUC full/no"] = (
                    f"{roc_auc([a for a, _ in pairs], [b for _, b in pairs]):.3f}")
            elif task == ISUSE:
                expected = [sum(int(g) * p for g, p in j.probs.items()) for j in judged]
                rho = spearmanr(expected, [int(t) for t in truth]).statistic
                figures["IsUse Spearman"] = f"{rho:.3f}"
        took = time.perf_counter() - started
        table.append([label, *(figures.get(k, "-") for k in _CRITIC_COLUMNS),
                      f"{n / took:.1f}"])
    sizes = ", ".join(f"{t} {len(v)}" for t, v in sorted(by_task.items()))
    print(f"\ncritic: held-out judgements ({sizes}): HotpotQA test, HaluEval rows 500-999, "
          "held-out instruction templates, MuSiQue questions")
    _print(["model", *_CRITIC_COLUMNS, "pairs/s"], table)
    return table


_CRITIC_COLUMNS = ["retrieve acc", "retrieve bal. acc", "IsRel AUC", "IsSup macro-F1",
                   "IsSup AUC full/no", "IsUse Spearman"]


def _critic_fields(row: dict[str, Any]) -> dict[str, str]:
    """(question, passage, answer) back out of a critic prompt (``critic_messages``)."""
    text = row["messages"][-1]["content"]
    out: dict[str, str] = {}
    if text.startswith("Passage:\n"):
        passage, _, text = text.removeprefix("Passage:\n").partition("\n\nQuestion: ")
        out["passage"] = passage
    elif text.startswith("Instruction:\n"):
        out["question"] = text.removeprefix("Instruction:\n").split("\n\nDoes answering")[0]
        return out
    else:
        text = text.removeprefix("Question: ")
    question, _, rest = text.partition("\n")
    out["question"] = question
    if rest.startswith("Answer: "):
        out["answer"] = rest.removeprefix("Answer: ").split("\n")[0]
    return out


#: Prompts whose answers run to any token limit, so base and expert decode equal lengths.
SPEED_PROMPTS = [
    "Count from 1 to 200, separated by commas.",
    "List the numbers from 500 to 700, one per line.",
    "Write the alphabet from A to Z, then again in lower case, then again in upper case.",
    "Write a long story about a lighthouse keeper and a storm.",
    "Explain in detail how a steam engine works, step by step.",
    "Count backwards from 300 to 1, separated by spaces.",
    "Describe every planet of the solar system in detail.",
    "Write a long poem about the sea.",
]


def speed_part(llm: Any, experts: list[str], new_tokens: int, reps: int = 3) -> list[list[str]]:
    """Decode tok/s of one batch of 8 with the bare base and with each expert (same prompts)."""
    convs = [[{"role": "user", "content": p}] for p in SPEED_PROMPTS]
    sides = [("base", None), *((f"base + {e}", e) for e in experts)]
    llm.generate(convs[:2], max_new_tokens=4)  # warm-up
    times: dict[str, list[float]] = {label: [] for label, _ in sides}
    tokens: dict[str, int] = {}
    for _ in range(reps):  # interleaved, so drifting machine load hits every side alike
        for label, expert in sides:
            started = time.perf_counter()
            out = llm.generate(convs, expert=expert, max_new_tokens=new_tokens)
            times[label].append(time.perf_counter() - started)
            tokens[label] = sum(o.completion_tokens for o in out)
    base_tps = tokens["base"] / min(times["base"])
    table = []
    for label, _ in sides:
        tps = tokens[label] / min(times[label])
        # an expert that stops early (relevance says one word) decodes mostly prefill: no ratio
        same = tokens[label] >= 0.9 * tokens["base"]
        table.append([label, str(tokens[label]), f"{tps:.1f}",
                      f"{tps / base_tps:.2f}x" if same else "n/a (stopped early)"])
    print(f"\ndecode speed: batch of {len(convs)}, up to {new_tokens} new tokens each, "
          f"best of {reps}")
    _print(["model", "tokens", "tok/s", "vs base"], table)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--experts-dir", type=Path,
                        default=ROOT / "src" / "expertrag" / "data" / "experts")
    parser.add_argument("--v1", default=V1_GROUNDED,
                        help="grounded-qa v1 to compare: REV:PATH in git history or a folder "
                             "('' to leave it out)")
    parser.add_argument("--limit", type=int, default=120, help="first N HotpotQA test items")
    parser.add_argument("--hotpot-start", type=int, default=0,
                        help="first HotpotQA test item (300: the slice that chooses between "
                             "training candidates, kept apart from the reported 0-119)")
    parser.add_argument("--skip-musique", action="store_true",
                        help="grounded part: HotpotQA only (for choosing between candidates)")
    parser.add_argument("--models", default="base,v1,shipped",
                        help="grounded / demo parts: which of base,v1,shipped to run")
    parser.add_argument("--part", choices=["relevance", "grounded", "demo", "critic", "speed",
                                           "all"], default="all")
    parser.add_argument("--speed-tokens", type=int, default=64,
                        help="new tokens per prompt in the decode-speed part")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--critic-caps", default="retrieve=400,isrel=200,issup=300,isuse=200",
                        help="held-out judgements per task in the critic part")
    parser.add_argument("--dtype", default=None,
                        help="the model's dtype (float32, bfloat16; default: ExpertLLM's own)")
    parser.add_argument("--json", type=Path, help="also write the tables here")
    args = parser.parse_args()

    from expertrag import ExpertLLM

    parts = {"relevance", "grounded", "demo", "critic", "speed"} if args.part == "all" \
        else {args.part}
    needs_data = parts & {"relevance", "grounded", "critic"}
    items = load_test(args.data_dir, args.limit, args.hotpot_start) if needs_data else []
    musique: list[dict[str, Any]] = []
    halu: list[dict[str, Any]] = []
    if parts & {"grounded", "critic"}:
        from expertrag.evaluation.datasets import load_musique
        from expertrag.training.data import HALUEVAL_QA, load_halueval

        if not (args.skip_musique and "critic" not in parts):
            musique = load_musique(args.data_dir / "musique" / "questions.json")
        if "critic" in parts:
            halu = load_halueval(args.data_dir / HALUEVAL_QA, part="heldout")
    llm = ExpertLLM(dtype=args.dtype).load()
    print(f"model dtype: {llm.base_model.dtype}")
    needed = {"relevance": {"relevance"}, "grounded": {"grounded-qa"}, "demo": {"grounded-qa"},
              "critic": {"critic"}, "speed": {"relevance", "grounded-qa", "critic"}}
    names = sorted(set().union(*(needed[p] for p in parts)))
    for name in names:
        folder = args.experts_dir / name
        if not (folder / "adapter_config.json").is_file():
            sys.exit(f"error: expert {name!r} not found in {folder}: train it first "
                     f"(expertrag train --recipe {name} --output {folder})")
        _attach(llm, name, folder)
    wanted = set(args.models.split(","))
    models: list[tuple[str, str | None]] = [("base, prompted", None)] if "base" in wanted else []
    if args.v1 and "v1" in wanted and parts & {"grounded", "demo"}:
        from expertrag.training.recipes import adapter_from_git

        folder = Path(args.v1) if Path(args.v1).is_dir() else \
            adapter_from_git(*args.v1.split(":", 1))
        _attach(llm, "grounded-qa-v1", folder)
        models.append(("grounded-qa v1", "grounded-qa-v1"))
    if "shipped" in wanted:
        models.append(("grounded-qa (shipped)", "grounded-qa"))
    out: dict[str, Any] = {}
    if "relevance" in parts:
        out["relevance"] = relevance_part(llm, items, args.batch_size)
    if "grounded" in parts:
        out["grounded"] = grounded_part(llm, items, musique, models, args.batch_size,
                                        args.max_new_tokens)
    if "demo" in parts:
        out["demo"] = demo_part(llm, models)
    if "critic" in parts:
        caps = {k: int(v) for k, v in (kv.split("=") for kv in args.critic_caps.split(","))}
        out["critic"] = critic_part(llm, items, musique, halu, args.batch_size, caps)
    if "speed" in parts:
        out["speed"] = speed_part(llm, names, args.speed_tokens)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


def _attach(llm: Any, name: str, folder: Path) -> None:
    from expertrag.experts import ExpertCard

    llm.add_expert(name, folder)
    meta = ExpertCard.read(folder, name).to_dict()
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 1e6
    train_s = meta.get("training", {}).get("seconds")
    print(f"expert {name}: {size:.1f} MB on disk, training time "
          f"{train_s if train_s is None else f'{train_s / 60:.1f} min'} "
          f"on {meta.get('training', {}).get('device', '?')}")


if __name__ == "__main__":
    main()
