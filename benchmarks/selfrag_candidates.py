"""Where Self-RAG's answer accuracy goes: each candidate kind against the critic's pick.

Runs ``SelfRAG`` (shipped critic and grounded-qa, k passages) on HotpotQA items with
bench_chains' set-up (gold removed from half), and beside its candidates (one per top
passage, one from the top two) generates the naive-RAG answer from all k passages and has
the critic judge it too. Prints, on the answerable questions, the accuracy of each
candidate kind, of the critic's pick, of any candidate being right (the selection ceiling),
and of the pick under other weightings with and without the all-passages candidate. Use the
tuning slices (400-499, 300-399) for choices, the test slice only to report.

    python benchmarks/selfrag_candidates.py --data-dir ../shared/data [--start 400] [--n 100]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def collect(chain: Any, llm: Any, routed: Any, items: list[Any], has_answer: list[bool],
            k: int, batch: int) -> list[dict[str, Any]]:
    """Per question: every candidate's scores and correctness, and the all-passages one."""
    from tqdm import tqdm

    from expertrag.evaluation.datasets import answer_correct
    from expertrag.experts.grounded_qa import REFUSAL, build_messages, is_refusal, tidy_citations
    from expertrag.reflection import ISREL, ISSUP, ISUSE

    rows = []
    for s in tqdm(range(0, len(items), batch), desc="Self-RAG candidates"):
        chunk = items[s:s + batch]
        qs = [it.question for it in chunk]
        results = chain.answer_many(qs)
        docs = [routed.retrieve(q, k) for q in qs]
        gen = llm.generate([build_messages(q, d) for q, d in zip(qs, docs, strict=True)],
                           expert=chain.config.expert, max_new_tokens=chain.config.max_new_tokens,
                           num_beams=1, logprobs=True)
        texts = [tidy_citations(g.text.strip()) or REFUSAL for g in gen]
        rel = chain.critic.judge(ISREL, [{"question": q, "passage": p.text}
                                         for q, d in zip(qs, docs, strict=True) for p in d])
        sup = chain.critic.judge(ISSUP, [{"question": q, "answer": t, "passage": "\n".join(
            p.text for p in d)} for q, d, t in zip(qs, docs, texts, strict=True)])
        use = chain.critic.judge(ISUSE, [{"question": q, "answer": t}
                                         for q, t in zip(qs, texts, strict=True)])
        offsets = list(itertools.accumulate([0, *(len(d) for d in docs)]))
        for j, (item, res) in enumerate(zip(chunk, results, strict=True)):
            def row(text: str, n: int, isrel: float | None, issup: float | None,
                    isuse: float, logprob: float | None, item: Any = item) -> dict[str, Any]:
                return {"text": text, "passages": n, "isrel": isrel, "issup": issup,
                        "isuse": isuse, "logprob": logprob,
                        "correct": answer_correct(text, item), "refused": is_refusal(text)}

            rels = [r.score for r in rel[offsets[j]:offsets[j + 1]]]
            rows.append({
                "question": item.question, "has_answer": has_answer[s + j],
                "best": res.best, "retrieved": res.retrieved,
                "candidates": [row(c.text, len(c.passages), c.isrel, c.issup, c.isuse,
                                   c.logprob) for c in res.candidates],
                "all_passages": row(texts[j], len(docs[j]),
                                    sum(rels) / len(rels) if rels else None,
                                    sup[j].score, use[j].score, gen[j].mean_logprob)})
    return rows


def pick(row: dict[str, Any], w: tuple[float, float, float], with_all: bool) -> dict[str, Any]:
    """The candidate scored best by w_rel * IsRel + w_sup * IsSup + w_use * IsUse."""
    pool = row["candidates"] + ([row["all_passages"]] if with_all else [])
    return max(pool, key=lambda c: (w[0] * (c["isrel"] or 0.0) + w[1] * (c["issup"] or 0.0)
                                    + w[2] * c["isuse"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--start", type=int, default=400)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--json", type=Path, help="also write every candidate here")
    args = parser.parse_args()
    if not (args.data_dir / "hotpotqa" / "test.jsonl").is_file():
        sys.exit(f"error: {args.data_dir} holds no hotpotqa/test.jsonl: pass --data-dir")

    from _common import hotpot_setup
    from _common import print_table as _print

    from expertrag import ExpertLLM
    from expertrag.chains.self_reflective import SelfRAG, SelfRAGConfig
    from expertrag.embeddings import Embedder
    from expertrag.experts import attach_shipped

    llm = ExpertLLM(dtype=args.dtype).load()
    attach_shipped(llm)
    items, routed, _, has_answer = hotpot_setup(args.data_dir, args.n, Embedder(), args.k,
                                                args.start)
    chain = SelfRAG(llm, routed, config=SelfRAGConfig(k=args.k))  # as shipped
    rows = collect(chain, llm, routed, items, has_answer, args.k, args.batch)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    pos = [r for r in rows if r["has_answer"]]
    share = lambda flags: sum(flags) / len(flags) if flags else float("nan")  # noqa: E731
    table = []
    kinds = max(len(r["candidates"]) for r in pos)
    for i in range(kinds):
        got = [r["candidates"][i] for r in pos if len(r["candidates"]) > i]
        table.append([f"candidate {i + 1} ({got[0]['passages']} passage(s))",
                      f"{share([c['correct'] for c in got]):.3f}"])
    table.append([f"all {args.k} passages (naive RAG's context)",
                  f"{share([r['all_passages']['correct'] for r in pos]):.3f}"])
    table.append(["critic's pick (SelfRAGConfig's defaults)",
                  f"{share([r['candidates'][r['best']]['correct'] for r in pos]):.3f}"])
    anyone = [any(c["correct"] for c in r["candidates"] + [r["all_passages"]]) for r in pos]
    table.append(["any candidate right (selection ceiling)", f"{share(anyone):.3f}"])
    for w in [(1, 1, 0.5), (0, 1, 0.5), (0, 2, 0), (1, 2, 0.5)]:
        for with_all in (False, True):
            table.append([f"pick by w_rel, w_sup, w_use = {w}"
                          + (" + all-passages candidate" if with_all else ""),
                          f"{share([pick(r, w, with_all)['correct'] for r in pos]):.3f}"])
    print(f"\nHotpotQA {args.start}-{args.start + args.n - 1}: {len(pos)} answerable")
    _print(["answer", "accuracy (answerable)"], table)


if __name__ == "__main__":
    main()
