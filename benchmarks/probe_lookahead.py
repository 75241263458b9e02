"""The hop expert's next query chosen by a one-step lookahead (issue 43's next-query hit).

The shipped hop expert generates one next query greedily; on held-out rows it names the
missing paragraph's entity about half the time, while the right entity is usually in its
prompt. This probe asks whether the expert can verify its own candidates:

- candidates: the greedy query, then up to ``--candidates`` - 1 names the evidence mentions
  that are not in the question (:func:`~expertrag.experts.hop.lookahead_candidates`), found
  by each ``--names`` finder (:func:`~expertrag.chains.multihop.name_finder`: capitalised
  spans, or spaCy's entities from the graph extra);
- each candidate retrieves its top 5 from the open pool; the first passage not already in
  the evidence is read by the expert's keep judgement (:func:`~expertrag.experts.hop.
  keep_messages`, P(yes), one forward pass);
- the greedy query is replaced by the candidate of highest keep probability only when that
  probability beats the greedy query's by at least ``margin``
  (:func:`~expertrag.experts.hop.choose_query`). MultiHopRAG's ``lookahead`` does the same.

Rows, pool and hit@5 are ``bench_hop.py``'s (HotpotQA test, never trained on; items 300-499
the calibration part). Reports greedy hit@5, the oracle over the candidates, the hit at each
margin, and for ``--margin`` (choose it on the calibration split) the paired bootstrap 95%
interval of its difference from greedy with McNemar's p.

    python benchmarks/probe_lookahead.py --data-dir ../shared/data --split calibration --limit 150
    python benchmarks/probe_lookahead.py --data-dir ../shared/data --split test --margin 0.2

Each ``--names`` finder gets its own lines; a candidate two finders share is retrieved and
judged once.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
MARGINS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def evidence_text(prompt: str) -> str:
    """The evidence passages of a next-query prompt, without their ``[n]`` numbers."""
    text = prompt.split("Evidence so far:\n", 1)[1].split("\n\nWhat should be looked up")[0]
    return re.sub(r"^\[\d+\] ", "", text, flags=re.M)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--split", choices=("calibration", "test"), default="test")
    parser.add_argument("--limit", type=int, help="the first N next-query rows")
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--names", default="capitalized,spacy",
                        help="name finders to compare, comma-separated")
    parser.add_argument("--margin", type=float, default=0.2,
                        help="the margin whose difference from greedy gets an interval")
    args = parser.parse_args(argv)

    from bench_hop import load_rows, next_queries
    from tqdm import tqdm

    from expertrag import ExpertLLM
    from expertrag.chains.multihop import name_finder
    from expertrag.embeddings import Embedder, MemoEmbedder
    from expertrag.evaluation.stats import compare
    from expertrag.experts import attach_shipped
    from expertrag.experts.hop import (
        LABELS,
        choose_query,
        keep_messages,
        lookahead_candidates,
    )
    from expertrag.retrieval.hybrid import HybridRetriever

    finders = {kind: name_finder(kind) for kind in args.names.split(",")}
    rows, pool = load_rows(args.data_dir)
    rows_ = [r for r in rows[args.split] if r["meta"]["kind"] == "next"][:args.limit]
    llm = ExpertLLM().load()
    attach_shipped(llm)
    retriever = HybridRetriever(pool, embedder=MemoEmbedder(Embedder()))
    started = time.perf_counter()
    greedy = next_queries(llm, rows_, "hop", 16)
    targets = [r["meta"]["second_text"].strip() for r in rows_]
    cands: dict[str, list[list[str]]] = {kind: [] for kind in finders}
    keep: list[dict[str, float]] = []  # per row: each candidate's keep probability
    found: list[dict[str, bool]] = []  # per row: does each candidate's top 5 hold the target
    for row, query, target in zip(tqdm(rows_, desc="lookahead", unit="row"), greedy, targets,
                                  strict=True):
        question = row["meta"]["question"]
        evidence = evidence_text(row["messages"][0]["content"])
        for kind, names in finders.items():
            cands[kind].append(lookahead_candidates(query, question, names(evidence),
                                                    args.candidates))
        unique = list(dict.fromkeys(c for kind in finders for c in cands[kind][-1]))
        messages: dict[str, Any] = {}
        hit: dict[str, bool] = {}
        for c in unique:
            top = retriever.retrieve(c, 5)
            hit[c] = any(d.text.strip() == target for d in top)  # bench_hop's hit@5
            new = [d for d in top if d.text.strip()[:200] not in evidence]
            if new:
                messages[c] = keep_messages(question, c, new[0].text)
        found.append(hit)
        probs = llm.label_probabilities(list(messages.values()), labels=LABELS,
                                        expert="hop") if messages else []
        scores = dict(zip(messages, (float(p[LABELS[0]]) for p in probs), strict=True))
        keep.append({c: scores.get(c, -1.0) for c in unique})
    seconds = time.perf_counter() - started
    n = len(rows_)
    base = [h.get(q, False) for q, h in zip(greedy, found, strict=True)]
    print(f"{args.split}: {n} next-query rows, {seconds:.0f} s")
    print(f"greedy hit@5 {sum(base) / n:.3f}")
    for kind, cs_ in cands.items():
        oracle = [any(h[c] for c in cs) for cs, h in zip(cs_, found, strict=True)]
        print(f"\n{kind}: {sum(map(len, cs_)) / n:.1f} candidates per row, oracle over them "
              f"{sum(oracle) / n:.3f}")
        for margin in sorted({*MARGINS, args.margin}):
            hit = [h.get(choose_query(cs, [k[c] for c in cs], margin), False)
                   for cs, k, h in zip(cs_, keep, found, strict=True)]
            line = f"margin {margin:.1f}: hit@5 {sum(hit) / n:.3f}"
            if margin == args.margin:
                c = compare([float(h) for h in hit], [float(h) for h in base], binary=True)
                line += (f"; minus greedy {c.diff:+.3f} [{c.low:+.3f}, {c.high:+.3f}], "
                         f"McNemar p={c.p_mcnemar:.2g} **{c.verdict}**")
            print(line)


if __name__ == "__main__":
    main()
