"""The hop expert's next query chosen by a one-step lookahead (issue 43's next-query hit).

The shipped hop expert generates one next query greedily; on held-out rows it names the
missing paragraph's entity about half the time, while the right entity is usually in its
prompt. This probe asks whether the expert can verify its own candidates:

- candidates: the greedy query, then up to ``--candidates`` - 1 named entities of the
  evidence (spaCy, the graph extra's ``en_core_web_sm``) not in the question;
- each candidate retrieves its top 5 from the open pool; the first passage not already in
  the evidence is read by the expert's keep judgement (:func:`~expertrag.experts.hop.
  keep_messages`, P(yes), one forward pass);
- the greedy query is replaced by the candidate of highest keep probability only when that
  probability beats the greedy query's by at least ``margin``.

Rows, pool and hit@5 are ``bench_hop.py``'s (HotpotQA test, never trained on; items 300-499
the calibration part). Reports greedy hit@5, the oracle over the candidates, the hit at each
margin, and for ``--margin`` (choose it on the calibration split) the paired bootstrap 95%
interval of its difference from greedy with McNemar's p.

    python benchmarks/probe_lookahead.py --data-dir ../shared/data --split calibration --limit 150
    python benchmarks/probe_lookahead.py --data-dir ../shared/data --split test --margin 0.2
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
#: spaCy entity labels that name no page to look up
SKIP_LABELS = frozenset({"DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL"})


def evidence_text(prompt: str) -> str:
    """The evidence passages of a next-query prompt, without their ``[n]`` numbers."""
    text = prompt.split("Evidence so far:\n", 1)[1].split("\n\nWhat should be looked up")[0]
    return re.sub(r"^\[\d+\] ", "", text, flags=re.M)


def candidates(greedy: str, question: str, entities: list[tuple[str, str]],
               most: int) -> list[str]:
    """The greedy query first, then entity names (``(text, label)``) that the question does
    not contain and that name something to look up, without repeats, at most ``most``."""
    out = [greedy] if greedy else []
    for name, label in entities:
        name = name.strip()
        if len(out) >= most:
            break
        if name and label not in SKIP_LABELS and name.lower() not in question.lower() \
                and name not in out:
            out.append(name)
    return out


def choose(cands: list[str], keeps: list[float], margin: float) -> str:
    """The candidate of highest keep probability when it beats the first (greedy) one by
    at least ``margin``; the greedy one otherwise ("" when there is none)."""
    if not cands:
        return ""
    best = max(range(len(cands)), key=lambda i: keeps[i])
    return cands[best] if keeps[best] >= keeps[0] + margin else cands[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--split", choices=("calibration", "test"), default="test")
    parser.add_argument("--limit", type=int, help="the first N next-query rows")
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--margin", type=float, default=0.2,
                        help="the margin whose difference from greedy gets an interval")
    args = parser.parse_args(argv)

    import spacy
    from bench_hop import load_rows, next_queries
    from tqdm import tqdm

    from expertrag import ExpertLLM
    from expertrag.embeddings import Embedder, MemoEmbedder
    from expertrag.evaluation.stats import compare
    from expertrag.experts import attach_shipped
    from expertrag.experts.hop import LABELS, keep_messages
    from expertrag.graph.extract import SPACY_MODEL
    from expertrag.retrieval.hybrid import HybridRetriever

    rows, pool = load_rows(args.data_dir)
    rows_ = [r for r in rows[args.split] if r["meta"]["kind"] == "next"][:args.limit]
    llm = ExpertLLM().load()
    attach_shipped(llm)
    retriever = HybridRetriever(pool, embedder=MemoEmbedder(Embedder()))
    nlp = spacy.load(SPACY_MODEL, disable=["lemmatizer"])
    started = time.perf_counter()
    greedy = next_queries(llm, rows_, "hop", 16)
    targets = [r["meta"]["second_text"].strip() for r in rows_]
    cands: list[list[str]] = []
    keeps: list[list[float]] = []
    found: list[dict[str, bool]] = []  # per row: does each candidate's top 5 hold the target
    for row, query, target in zip(tqdm(rows_, desc="lookahead", unit="row"), greedy, targets,
                                  strict=True):
        question = row["meta"]["question"]
        evidence = evidence_text(row["messages"][0]["content"])
        cs = candidates(query, question, [(e.text, e.label_) for e in nlp(evidence).ents],
                        args.candidates)
        messages: list[Any] = []
        hit: dict[str, bool] = {}
        for c in cs:
            top = retriever.retrieve(c, 5)
            hit[c] = any(d.text.strip() == target for d in top)  # bench_hop's hit@5
            new = [d for d in top if d.text.strip()[:200] not in evidence]
            messages.append(keep_messages(question, c, new[0].text) if new else None)
        found.append(hit)
        live = [m for m in messages if m is not None]
        probs = iter(llm.label_probabilities(live, labels=LABELS, expert="hop") if live else [])
        keeps.append([float(next(probs)[LABELS[0]]) if m is not None else -1.0
                      for m in messages])
        cands.append(cs)
    seconds = time.perf_counter() - started
    n = len(rows_)
    base = [h.get(q, False) for q, h in zip(greedy, found, strict=True)]
    oracle = [any(h.values()) for h in found]
    print(f"{args.split}: {n} next-query rows, {seconds:.0f} s, "
          f"{sum(map(len, cands)) / n:.1f} candidates per row")
    print(f"greedy hit@5 {sum(base) / n:.3f}; oracle over the candidates {sum(oracle) / n:.3f}")
    for margin in sorted({*MARGINS, args.margin}):
        hit = [h.get(choose(cs, ks, margin), False)
               for cs, ks, h in zip(cands, keeps, found, strict=True)]
        line = f"margin {margin:.1f}: hit@5 {sum(hit) / n:.3f}"
        if margin == args.margin:
            c = compare([float(h) for h in hit], [float(h) for h in base], binary=True)
            line += (f"; minus greedy {c.diff:+.3f} [{c.low:+.3f}, {c.high:+.3f}], "
                     f"McNemar p={c.p_mcnemar:.2g} **{c.verdict}**")
        print(line)


if __name__ == "__main__":
    main()
