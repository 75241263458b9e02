"""Calibrate CRAG's default thresholds for the shipped relevance expert, on held-out data.

HotpotQA test items 400-499 (never used by the benchmarks' answer sets): each question's
top-k from its own paragraphs, with the gold paragraphs removed from half of the corpora;
a question "has the answer" when a gold paragraph is among its retrieved ones. Prints the
thresholds ``CorrectiveRAG.calibrate`` picks (they are the ``CRAGConfig`` defaults) and
writes the config with its calibration record when ``--out`` is given.

    python benchmarks/calibrate_crag.py --data-dir ../shared/data [--out crag.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--k", type=int, default=4, help="passages per question (CRAGConfig.k)")
    parser.add_argument("--precision", type=float, default=0.9)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from expertrag import ExpertLLM
    from expertrag.chains.corrective import CorrectiveRAG, CRAGConfig
    from expertrag.embeddings import Embedder
    from expertrag.evaluation.datasets import hotpot_items, load_hotpot_test
    from expertrag.retrieval.hybrid import HybridRetriever

    items = hotpot_items(load_hotpot_test(args.data_dir / "hotpotqa" / "test.jsonl")[400:500])
    removed = set(random.Random("calibrate-crag").sample(range(len(items)), len(items) // 2))
    embedder = Embedder()
    labelled = []
    for i, item in enumerate(items):
        docs = item.distractors + ([] if i in removed else item.gold)
        top = HybridRetriever(docs, embedder=embedder, k=args.k).retrieve(item.question)
        gold = {d.id for d in item.gold}
        labelled.append({"question": item.question, "documents": top,
                         "has_answer": any(d.id in gold for d in top)})
    llm = ExpertLLM().load()
    chain = CorrectiveRAG(llm, lambda q, k: [], config=CRAGConfig(k=args.k))
    result = chain.calibrate(labelled, precision=args.precision)
    print(json.dumps(result, indent=2))
    if args.out:
        chain.config.save(args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
