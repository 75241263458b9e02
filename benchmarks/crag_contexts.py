"""Which refined context the answerer gets right: CRAG's passage selection against the gold.

CRAG keeps the best-scored passages of the ``k`` retrieved and hands only those to the
generator. This script asks how much that choice can matter. On the answerable HotpotQA
questions of a slice (bench_chains' set-up: each question retrieves from its own
paragraphs, k=5), it scores every retrieved passage with the ``relevance`` expert, and
also each passage read together with the best one (a pair-aware score: "does this pair
help?"). Then it builds the context under several selection rules, generates with
grounded-qa, and prints for each rule:

- its selection figures: passages kept, distractors kept, questions whose two gold passages
  are both kept, and questions whose kept set is exactly the gold among the retrieved;
- its answer accuracy, overall and on the questions with both gold passages retrieved.

The ``gold`` rule keeps exactly the retrieved gold passages. It reads the answer key, so
it is the ceiling of any selection from these k passages. Identical contexts are generated
once, so rules that agree on a question get the same answer. Tune on 300-399 / 400-499, not
on bench_chains' test slices.

    python benchmarks/crag_contexts.py --data-dir ../shared/data [--start 300] [--n 100]
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]

from expertrag.chains.corrective import Strip, joint_text, logit, ranked_strips  # noqa: E402

Row = dict[str, Any]  # scores (per passage), joint (per passage; None for the best), gold
Rule = Callable[[Row], list[int]]


def ranked(scores: list[float]) -> list[int]:
    """Passage indices by score, best first (ties: retrieval order)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def top(m: int, floor: float = -math.inf) -> Rule:
    """The best passage, plus the next best up to ``m`` that score >= ``floor``; kept in
    retrieval order (CRAG's shipped refinement is ``top(3)``)."""
    def rule(row: Row) -> list[int]:
        order = ranked(row["scores"])
        return sorted(order[:1] + [i for i in order[1:m] if row["scores"][i] >= floor])
    return rule


def gap(m: int, g: float) -> Rule:
    """The best passage, plus the next best up to ``m`` within ``g`` logits of it."""
    def rule(row: Row) -> list[int]:
        order = ranked(row["scores"])
        best = logit(row["scores"][order[0]])
        return sorted(order[:1] + [i for i in order[1:m]
                                   if logit(row["scores"][i]) >= best - g])
    return rule


def pair(m: int) -> Rule:
    """The best passage, then the others by logit(own score) + logit(score read together
    with the best passage): a bridge passage the question alone rates low can rise. The
    chain's own rule (``CRAGConfig(select="pair", max_strips=m)``) on whole passages."""
    def rule(row: Row) -> list[int]:
        strips = [Strip("", i, 0, s, joint=j)
                  for i, (s, j) in enumerate(zip(row["scores"], row["joint"], strict=True))]
        return sorted(s.source for s in ranked_strips(strips, -math.inf, "pair", m))
    return rule


def gold(row: Row) -> list[int]:
    """Exactly the retrieved gold passages (the best passage when none was retrieved)."""
    return [i for i, g in enumerate(row["gold"]) if g] or ranked(row["scores"])[:1]


RULES: dict[str, Rule] = {
    "all k (naive RAG's context)": lambda row: list(range(len(row["scores"]))),
    "top 3 (CRAG's shipped refinement)": top(3),
    "top 2": top(2),
    "top 2, second >= 0.1": top(2, 0.1),
    "top 3, others >= 0.7": top(3, 0.7),
    "top 2 within 5 logits": gap(2, 5.0),
    "pair-aware, 2 passages": pair(2),
    "pair-aware, 3 passages": pair(3),
    "gold among retrieved (ceiling)": gold,
}


def selection(rows: list[Row], rule: Rule) -> dict[str, float]:
    """How a rule selects against the gold: mean kept and distractors kept per question,
    and the questions keeping every retrieved gold passage / exactly those."""
    kept = [rule(r) for r in rows]
    golds = [[i for i, g in enumerate(r["gold"]) if g] for r in rows]
    return {"kept": sum(map(len, kept)) / len(rows),
            "distractors": sum(sum(not r["gold"][i] for i in k)
                               for r, k in zip(rows, kept, strict=True)) / len(rows),
            "all_gold": sum(set(g) <= set(k) for g, k in zip(golds, kept, strict=True)),
            "exact": sum(g == k for g, k in zip(golds, kept, strict=True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--start", type=int, default=300)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write per-question rows and answers here")
    args = parser.parse_args()

    from _common import hotpot_setup
    from _common import print_table as _print
    from tqdm import tqdm

    from expertrag import ExpertLLM
    from expertrag.chains.naive import generate_grounded
    from expertrag.embeddings import Embedder
    from expertrag.evaluation.datasets import answer_correct
    from expertrag.experts import attach_shipped
    from expertrag.rerank.llm import LLMReranker

    llm = ExpertLLM().load()
    attach_shipped(llm, ["grounded-qa", "relevance"])
    evaluator = LLMReranker.with_relevance_expert(llm)
    items, routed, _, has_answer = hotpot_setup(args.data_dir, args.n, Embedder(), args.k,
                                                args.start)
    items = [it for it, h in zip(items, has_answer, strict=True) if h]
    rows, docs = [], []
    for item in tqdm(items, desc="scoring passages"):
        retrieved = routed.retrieve(item.question, args.k)
        scores = evaluator.score_pairs([(item.question, d.text) for d in retrieved])
        best = ranked(scores)[0]
        others = [i for i in range(len(retrieved)) if i != best]
        joint = evaluator.score_pairs([(item.question,
                                        joint_text(retrieved[best].text, retrieved[i].text))
                                       for i in others])
        gold_ids = {d.id for d in item.gold}
        with_best = dict(zip(others, joint, strict=True))
        rows.append({"question": item.question, "answer": item.answer, "scores": scores,
                     "joint": [with_best.get(i) for i in range(len(retrieved))],
                     "gold": [d.id in gold_ids for d in retrieved]})
        docs.append(retrieved)

    answers: dict[tuple[int, tuple[int, ...]], str] = {}
    todo = list(dict.fromkeys((q, tuple(rule(r))) for rule in RULES.values()
                              for q, r in enumerate(rows)))
    for s in tqdm(range(0, len(todo), 8), desc="generating"):
        part = todo[s:s + 8]
        out = generate_grounded(llm, [items[q].question for q, _ in part],
                                [[docs[q][i] for i in idx] for q, idx in part],
                                expert="grounded-qa", max_new_tokens=64)
        answers.update({key: result.text for key, (result, _) in zip(part, out, strict=True)})

    both = [q for q, r in enumerate(rows) if sum(r["gold"]) >= 2]
    table, per_rule = [], {}
    for name, rule in RULES.items():
        right = [answer_correct(answers[(q, tuple(rule(r)))], items[q])
                 for q, r in enumerate(rows)]
        f = selection(rows, rule)
        per_rule[name] = right
        table.append([name, f"{f['kept']:.2f}", f"{f['distractors']:.2f}",
                      f"{f['all_gold']}", f"{f['exact']}",
                      f"{sum(right) / len(right):.3f}",
                      f"{sum(right[q] for q in both) / max(1, len(both)):.3f}"])
    print(f"\nHotpotQA test {args.start}-{args.start + args.n - 1}: {len(rows)} answerable "
          f"questions, {len(both)} with both gold passages among the {args.k} retrieved\n")
    _print(["selection rule", "kept", "distractors kept", "every gold kept",
            "exactly the gold", "accuracy", f"accuracy, both gold retrieved ({len(both)})"],
           table)
    some = sum(any(per_rule[n][q] for n in RULES) for q in range(len(rows)))
    print(f"\nsome rule's context answers right: {some / len(rows):.3f}")
    if args.json:
        args.json.write_text(json.dumps(
            {"rows": rows, "answers": {f"{q}:{list(idx)}": a for (q, idx), a in answers.items()},
             "right": per_rule}, indent=1))


if __name__ == "__main__":
    main()
