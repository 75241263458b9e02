"""Recalibrate the shipped grounded-qa expert's refusal gate on held-out multi-hop questions.

HotpotQA test items 400-499 (the calibration slice: no benchmark's answer set uses it, and
training never reads test.jsonl), each once with its gold paragraphs + 2 distractors and, for
half of them, once with distractors only (the same question, now unanswerable). The gate's
threshold is the best balanced accuracy among those that refuse at most
``--max-false-refusals`` of the answerable rows; ``--write`` records it in the shipped
expert's metadata and model card (the previous calibration is kept under ``previous``).

    python benchmarks/calibrate_gate.py --data-dir ../shared/data [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--max-false-refusals", type=float, default=0.15)
    parser.add_argument("--write", action="store_true",
                        help="record the gate in src/expertrag/data/experts/grounded-qa")
    args = parser.parse_args()
    path = args.data_dir / "hotpotqa" / "test.jsonl"
    if not path.is_file():
        sys.exit(f"error: {path} not found: pass --data-dir pointing at the shared data folder")

    from expertrag import ExpertLLM
    from expertrag.experts import attach_shipped, shipped_experts
    from expertrag.models.llm import EXPERT_METADATA
    from expertrag.rag import REFUSAL
    from expertrag.training.data import build_raft
    from expertrag.training.gate import pick_threshold, record_gate, refusal_probabilities

    items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
             if line][400:500]
    rows = build_raft(items, distractors_k=2, p_no_oracle=0.5, seed=0, pair_refusals=True)
    llm = ExpertLLM().load()
    attach_shipped(llm)
    probs = refusal_probabilities(llm, rows, "grounded-qa")
    refuse = [r["answer"] == REFUSAL for r in rows]
    result = pick_threshold(probs, refuse, args.max_false_refusals)
    free = pick_threshold(probs, refuse)
    result["source"] = ("HotpotQA test items 400-499 (the calibration slice), gold + 2 "
                        "distractors, half also with distractors only; "
                        "benchmarks/calibrate_gate.py")
    print(json.dumps({"capped": result, "uncapped": free}, indent=2))
    if args.write:
        folder = shipped_experts()["grounded-qa"]
        previous = json.loads((folder / EXPERT_METADATA).read_text(encoding="utf-8")).get(
            "refusal_gate")
        if previous:
            result["previous"] = {"threshold": previous["threshold"],
                                  **{k: v for k, v in previous["calibration"].items()
                                     if k != "previous"}}
        record_gate(folder, result["threshold"], result)
        print(f"recorded threshold {result['threshold']} in {folder}")


if __name__ == "__main__":
    main()
