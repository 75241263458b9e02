"""The answer-quality benchmark: every answerer against the bare base prompted plainly, on the
same held-out questions and passages, with paired 95% intervals.

Sets and splits: :mod:`expertrag.evaluation.answer_sets` (SQuAD 2.0 sample, HotpotQA test in
the distractor and the open setting, MuSiQue open; calibration / test fixed by a manifest).
Systems that answer from given passages all get the same top-k of the hybrid retriever; the
chains (CRAG, Self-RAG) retrieve for themselves from the same retriever with the same k.

- ``base-plain``, ``base-plain-brief``: the bare base with a plain prompt, as a user would
  write it (the issue's "Answer the question using the documents"); the better one on the
  calibration split is the reference every system is compared with.
- ``base-project``: the bare base with expertrag's grounded prompt (``rag.build_messages``).
- ``grounded-qa`` (shipped; the same answers as naive RAG with it) and candidates attached
  with ``--expert NAME=PATH`` (a shipped name replaces the shipped expert, in the chains
  too): answers are generated with the refusal barred and P(refusal) recorded, and the gate
  (the expert's own threshold, or ``--gate NAME=T``) is applied afterwards, which gives the
  same answers as gating while generating (the gate only bars the refusal's first token).
- ``grounded-qa+evidence`` (any ``EXPERT+evidence``): the same answers behind the evidence
  gate of ``RAGPipeline(evidence_gate="auto")``: the ``relevance`` expert scores every
  passage (one batched forward pass, scores cached) and the answer is the refusal when the
  best passage scores below the expert card's floor (or ``--evidence-gate NAME=T``); past the
  gate the expert's own refusal is barred (the card's ``refusal_threshold`` 1.0) or gated.
- ``crag``, ``self-rag``: the chains with their shipped defaults (k as above).

Per system and set: exact match, token F1 and answer contained over the answerable questions
(a refusal scores 0), refusal accuracy where the passages do not hold the answer, false
refusals where they do, mean answer length, seconds per question (batched, sorted by prompt
length; answers come from the cache when a run was interrupted, with their own timing). Each
system against the reference (and each chain against naive RAG): the paired bootstrap 95%
interval of the difference and McNemar's exact p; a win or a loss only when the interval
excludes 0.

    python benchmarks/bench_answers.py --data-dir ../shared/data --split test
    python benchmarks/bench_answers.py --data-dir ../shared/data --split calibration \\
        --systems base-plain,base-plain-brief,base-project,grounded-qa --calibrate-gate grounded-qa
    python benchmarks/bench_answers.py --data-dir ../shared/data --split calibration \\
        --systems base-plain,grounded-qa+evidence --calibrate-evidence grounded-qa
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import table

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SYSTEMS = "base-plain,base-plain-brief,base-project,grounded-qa,crag,self-rag"
#: the plain prompt chosen on the calibration split (the best bare-base prompt there)
REFERENCE = "base-plain"
MAX_NEW_TOKENS = 64


# ------------------------------------------------------------------------------ prompts
def plain_prompt(question: str, passages: Sequence[Any]) -> list[dict[str, str]]:
    """What a user writes without expertrag: the documents, the question, one instruction."""
    from expertrag.rag import format_passages

    return [{"role": "user", "content": "Answer the question using the documents.\n\n"
             f"Documents:\n{format_passages(passages)}\n\nQuestion: {question.strip()}"}]


def plain_brief_prompt(question: str, passages: Sequence[Any]) -> list[dict[str, str]]:
    """The plain prompt asking for a short answer."""
    from expertrag.rag import format_passages

    return [{"role": "user", "content": "Answer the question using the documents. Answer with "
             "a short phrase.\n\n"
             f"Documents:\n{format_passages(passages)}\n\nQuestion: {question.strip()}"}]


def project_prompt(question: str, passages: Sequence[Any]) -> list[dict[str, str]]:
    from expertrag.rag import build_messages

    return build_messages(question, passages)


# ------------------------------------------------------------------------------ systems
@dataclass(frozen=True)
class Evidence:
    """An evidence gate as the benchmark applies it: refuse when the best passage's
    P(relevant) is below ``threshold``; past it, the expert's own gate applies only when
    ``refusal_threshold`` is None (1.0 bars the refusal, as ``RAGPipeline`` does)."""

    threshold: float
    refusal_threshold: float | None = 1.0
    scorer: str = "relevance"


@dataclass
class System:
    """One answerer: a prompt and an expert over given passages, or a chain."""

    name: str
    key: str  # cache key: changes whenever the answers could
    prompt: Callable[[str, Sequence[Any]], list[dict[str, str]]] | None = None
    expert: str | None = None
    chain: str | None = None  # "crag" / "self-rag"
    gate: float | None = None  # applied afterwards to forced answers (experts with a gate)
    evidence: Evidence | None = None  # the evidence gate in front of the expert
    notes: dict[str, Any] = field(default_factory=dict)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def expert_fingerprint(folder: Path) -> str:
    return _digest(folder / "adapter_model.safetensors")


def build_systems(names: list[str], llm: Any, candidates: dict[str, Path],
                  gates: dict[str, float], evidence: dict[str, float] | None = None
                  ) -> list[System]:
    from expertrag.experts import shipped_experts

    folders = {**shipped_experts(), **candidates}  # a candidate may stand in for a shipped one
    out = []
    for name in names:
        if name == "base-plain":
            out.append(System(name, "base-plain-v1", plain_prompt))
        elif name == "base-plain-brief":
            out.append(System(name, "base-plain-brief-v1", plain_brief_prompt))
        elif name == "base-project":
            out.append(System(name, "base-project-v1", project_prompt))
        elif name in ("crag", "self-rag"):
            prints = "-".join(expert_fingerprint(folders[e])
                              for e in ("grounded-qa", "relevance", "critic"))
            out.append(System(name, f"{name}-{prints}-{chain_config_digest(name)}",
                              chain=name))
        else:
            expert = name.split(":", 1)[1] if name.startswith("expert:") else name
            expert, plus, rest = expert.partition("+")
            if plus and rest != "evidence":
                raise SystemExit(f"error: unknown system {name!r} (EXPERT+evidence is the one "
                                 "variant)")
            if expert not in getattr(llm, "experts", []):
                raise SystemExit(f"error: no expert named {expert!r} (attached: "
                                 f"{', '.join(folders)}; add one with --expert NAME=PATH)")
            folder = folders[expert]
            threshold = gates.get(expert, _own_gate(llm, expert))
            gate = _evidence_gate(llm, expert, (evidence or {}).get(expert)) if plus else None
            if plus and gate is None:
                raise SystemExit(f"error: {expert} has no evidence gate on its card; give one "
                                 f"with --evidence-gate {expert}=T")
            out.append(System(name if plus else expert,
                              f"expert-{expert}-{expert_fingerprint(folder)}",
                              project_prompt, expert=expert, gate=threshold, evidence=gate))
    return out


def _evidence_gate(llm: Any, expert: str, threshold: float | None) -> Evidence | None:
    """The card's evidence gate, its floor replaced by ``threshold`` when given."""
    from expertrag.experts.card import EVIDENCE_GATE_KEY

    spec = (llm.expert_info(expert).get("metadata") or {}).get(EVIDENCE_GATE_KEY) or {}
    if threshold is None and "threshold" not in spec:
        return None
    return Evidence(float(spec["threshold"]) if threshold is None else threshold,
                    spec.get("refusal_threshold", 1.0), str(spec.get("expert", "relevance")))


def chain_config_digest(chain: str) -> str:
    """A short hash of the chain's default settings: new defaults, new cache entries."""
    from expertrag.chains.corrective import CRAGConfig
    from expertrag.chains.self_reflective import SelfRAGConfig

    config = CRAGConfig() if chain == "crag" else SelfRAGConfig()
    text = json.dumps(config.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _own_gate(llm: Any, expert: str) -> float | None:
    gate = (llm.expert_info(expert).get("metadata") or {}).get("refusal_gate") or {}
    return float(gate["threshold"]) if "threshold" in gate else None


# ------------------------------------------------------------------------------ cache
class AnswerCache:
    """Per system, set and split, the answers already generated (JSON lines, appended and
    flushed per batch: an interrupted run keeps every finished batch; a torn last line is
    ignored on reading)."""

    def __init__(self, folder: Path, system: System, set_name: str, split: str) -> None:
        self.path = folder / system.key / f"{set_name}-{split}.jsonl"
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.records[record["id"]] = record

    def add(self, records: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            for r in records:
                handle.write(json.dumps(r, ensure_ascii=False) + "\n")
                self.records[r["id"]] = r
            handle.flush()
            os.fsync(handle.fileno())


class EvidenceCache(AnswerCache):
    """Per scorer, set and split, each case's passage scores (P(relevant), in passage order)."""

    def __init__(self, folder: Path, llm: Any, scorer: str, set_name: str, split: str) -> None:
        from expertrag.experts import shipped_experts

        source = llm.expert_info(scorer).get("path") or shipped_experts()[scorer]
        key = f"evidence-{scorer}-{expert_fingerprint(Path(source))}"
        super().__init__(folder, System(scorer, key), set_name, split)


def run_evidence(aset: Any, llm: Any, scorer: str, cache: EvidenceCache,
                 batch: int) -> list[list[float]]:
    """Every case's passage scores from the relevance expert, scoring what the cache lacks."""
    from tqdm import tqdm

    from expertrag.chains.naive import EvidenceGate
    from expertrag.rerank.llm import LLMReranker

    cases = aset.cases
    todo = [i for i, c in enumerate(cases) if c.id not in cache.records]
    if todo:
        gate = EvidenceGate(LLMReranker.with_relevance_expert(llm, expert=scorer), 0.5)
        passages = aset.passages()
        for s in tqdm(range(0, len(todo), batch), desc=f"evidence / {aset.name}", unit="batch"):
            chunk = todo[s:s + batch]
            scores = gate.scores([cases[i].question for i in chunk], [passages[i] for i in chunk])
            cache.add([{"id": cases[i].id, "scores": sc}
                       for i, sc in zip(chunk, scores, strict=True)])
    return [cache.records[c.id]["scores"] for c in cases]


def run_system(system: System, aset: Any, llm: Any, cache: AnswerCache,
               batch: int) -> list[dict[str, Any]]:
    """Every case's record (id, answer, p_refusal, seconds), generating what the cache lacks."""
    from tqdm import tqdm

    cases = aset.cases
    todo = [i for i, c in enumerate(cases) if c.id not in cache.records]
    if todo:
        chain = _chain(system, llm, aset) if system.chain else None
        passages = aset.passages() if chain is None else None
        # similar lengths batch together: less padding
        todo.sort(key=lambda i: len(cases[i].question) + (
            0 if passages is None else sum(len(p.text) for p in passages[i])))
        bar = tqdm(total=len(todo), desc=f"{system.name} / {aset.name}", unit="q")
        for s in range(0, len(todo), batch):
            chunk = todo[s:s + batch]
            started = time.perf_counter()
            if chain is not None:
                results = chain.answer_many([cases[i].question for i in chunk])
                answers = [(r.answer, None) for r in results]
            else:
                convs = [system.prompt(cases[i].question, passages[i]) for i in chunk]
                extra = {"refusal_threshold": 1.0} if system.gate is not None else {}
                results = llm.generate(convs, expert=system.expert, temperature=0.0,
                                       max_new_tokens=MAX_NEW_TOKENS, **extra)
                answers = [(r.text, getattr(r, "refusal_probability", None)) for r in results]
            took = (time.perf_counter() - started) / len(chunk)
            cache.add([{"id": cases[i].id, "answer": text, "p_refusal": p, "seconds": took}
                       for i, (text, p) in zip(chunk, answers, strict=True)])
            bar.update(len(chunk))
        bar.close()
    return [cache.records[c.id] for c in cases]


def _chain(system: System, llm: Any, aset: Any) -> Any:
    from expertrag.chains.corrective import CorrectiveRAG, CRAGConfig
    from expertrag.chains.self_reflective import SelfRAG, SelfRAGConfig

    if system.chain == "crag":
        return CorrectiveRAG(llm, aset.retriever, config=CRAGConfig(k=aset.k))
    return SelfRAG(llm, aset.retriever, config=SelfRAGConfig(k=aset.k))


def final_answer(record: dict[str, Any], gate: float | None,
                 evidence: Evidence | None = None) -> str:
    """The answer the system gives: with a gate, the refusal where P(refusal) reaches it;
    with an evidence gate (``record["evidence"]``: its passages' P(relevant)), the refusal
    where no passage reaches the floor, and the own gate past it only when the evidence gate
    keeps it."""
    from expertrag.rag import REFUSAL

    if evidence is not None:
        scores = record.get("evidence")
        if scores is None:
            raise ValueError(f"{record['id']}: no evidence scores for the evidence gate")
        if not scores or max(scores) < evidence.threshold:
            return REFUSAL
        if evidence.refusal_threshold is not None:
            gate = evidence.refusal_threshold
    p = record.get("p_refusal")
    if gate is not None and p is not None and p >= gate:
        return REFUSAL
    return record["answer"]


# ------------------------------------------------------------------------------ scoring
def score(records: list[dict[str, Any]], aset: Any, gate: float | None,
          evidence: Evidence | None = None) -> dict[str, Any]:
    """Per-question scores and the set's figures for one system."""
    from expertrag.evaluation.metrics import contains, exact_match, token_f1
    from expertrag.rag import is_refusal, strip_citations

    present = aset.present()
    per = []
    for case, record, here in zip(aset.cases, records, present, strict=True):
        text = final_answer(record, gate, evidence)
        refused = is_refusal(text)
        plain = strip_citations(text)
        ok = case.answerable and not refused
        per.append({"id": case.id, "answer": text, "refused": refused, "present": here,
                    "answerable": case.answerable,
                    "em": float(ok and exact_match(plain, case.answers)),
                    "f1": token_f1(plain, case.answers) if ok else 0.0,
                    "contained": float(ok and contains(plain, case.answers)),
                    "words": len(plain.split()), "seconds": float(record["seconds"])})
    answerable = [p for p in per if p["answerable"]]
    absent = [p for p in per if not p["present"]]
    here = [p for p in per if p["present"]]
    mean = lambda rows, key: (sum(float(r[key]) for r in rows) / len(rows)  # noqa: E731
                              if rows else float("nan"))
    figures = {"n": len(per), "answerable": len(answerable), "absent": len(absent),
               "em": mean(answerable, "em"), "f1": mean(answerable, "f1"),
               "contained": mean(answerable, "contained"),
               "refusal_accuracy": mean(absent, "refused"),
               "false_refusals": mean(here, "refused"),
               "words": mean([p for p in per if not p["refused"]], "words"),
               "seconds": mean(per, "seconds")}
    return {"per_question": per, "figures": figures}


METRICS = (("contained", True), ("em", True), ("f1", False))


def comparisons(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """A against B on the answerable questions, per metric."""
    from expertrag.evaluation.stats import compare

    rows_a = [p for p in a["per_question"] if p["answerable"]]
    rows_b = [p for p in b["per_question"] if p["answerable"]]
    return {m: compare([p[m] for p in rows_a], [p[m] for p in rows_b], binary=binary).to_dict()
            for m, binary in METRICS}


# ------------------------------------------------------------------------------ gate
def calibrate_gate(records_by_set: dict[str, list[dict[str, Any]]], sets: dict[str, Any],
                   cap: float) -> dict[str, Any]:
    """The refusal threshold of best balanced accuracy over all calibration sets pooled,
    among those keeping false refusals within ``cap`` on every set."""
    from expertrag.training.gate import pick_threshold

    probs, refuse, groups = [], [], []
    for name, records in records_by_set.items():
        for record, here in zip(records, sets[name].present(), strict=True):
            if record.get("p_refusal") is None:
                raise SystemExit(f"error: {name} holds answers without P(refusal)")
            probs.append(record["p_refusal"])
            refuse.append(not here)
            groups.append(name)
    return pick_threshold(probs, refuse, max_false_refusals=cap, groups=groups)


def calibrate_evidence(records_by_set: dict[str, list[dict[str, Any]]], sets: dict[str, Any],
                       cap: float, own_gate: float | None) -> dict[str, Any]:
    """The evidence gate's relevance floor of best balanced accuracy over the calibration
    sets pooled, false refusals within ``cap`` on every set; chosen for both ways past the
    gate (the expert's refusal barred, or kept under its own gate) and the better one kept."""
    from expertrag.errors import InputError
    from expertrag.training.gate import pick_evidence_threshold
    from expertrag.training.trainer import roc_auc

    rows = [(name, record, here) for name, records in records_by_set.items()
            for record, here in zip(records, sets[name].present(), strict=True)]
    refuse = [not here for _, _, here in rows]
    groups = [name for name, _, _ in rows]
    best = [max(r["evidence"]) if r["evidence"] else 0.0 for _, r, _ in rows]
    own = [r.get("p_refusal") for _, r, _ in rows]
    ways = {"barred": None}
    if own_gate is not None:
        ways["own gate"] = [(p or 0.0) >= own_gate for p in own]
    options = {}
    for way, anyway in ways.items():
        try:
            pick = pick_evidence_threshold(best, refuse, cap, groups=groups,
                                           refused_anyway=anyway)
        except InputError:  # the own gate alone refuses too many answerable rows somewhere
            continue
        options[way] = {**pick, "refusal_threshold": 1.0 if anyway is None else None,
                        "past_the_gate": way}
    chosen = max(options.values(), key=lambda o: (o["at_threshold"]["balanced_accuracy"],
                                                  o["refusal_threshold"] is not None))
    chosen["auc"] = roc_auc([1.0 - b for b in best], [int(r) for r in refuse])
    if all(p is not None for p in own):
        chosen["own_gate_auc"] = roc_auc(own, [int(r) for r in refuse])
    chosen["options"] = {k: {"threshold": v["threshold"], "at_threshold": v["at_threshold"]}
                         for k, v in options.items()}
    return chosen


def _calibration_source(records_by_set: dict[str, Any], sets: dict[str, Any],
                        args: argparse.Namespace) -> str:
    """Where a calibrated gate comes from, for its card: the sets, their sizes, the cap."""
    sizes = ", ".join(f"{name} {len(sets[name].cases)}" for name in records_by_set)
    sample = f"`--sample {args.sample}`, " if args.sample else ""
    return (f"bench_answers calibration split ({sample}{sizes} questions), top-{args.k} "
            f"hybrid-retrieved passages; false refusals capped at "
            f"{args.max_false_refusals:.0%} on every set")


# ------------------------------------------------------------------------------ output
def _f(v: Any, digits: int = 3) -> str:
    return "-" if v is None or v != v else f"{v:.{digits}f}"


def set_tables(name: str, scored: dict[str, dict[str, Any]], reference: str,
               compared: dict[str, dict[str, dict[str, Any]]]) -> str:
    first = next(iter(scored.values()))["figures"]
    out = [f"### {name} ({first['n']} questions, {first['answerable']} answerable, "
           f"{first['absent']} without the answer in their passages)", ""]
    rows = []
    for sys_name, s in scored.items():
        f = s["figures"]
        rows.append([sys_name, _f(f["em"]), _f(f["f1"]), _f(f["contained"]),
                     _f(f["refusal_accuracy"]), _f(f["false_refusals"]), _f(f["words"], 1),
                     _f(f["seconds"], 2)])
    out.append(table(["system", "EM", "F1", "contained", "refusal acc (absent)",
                      "false refusals (present)", "words", "s / q"], rows))
    out.append("")
    rows = []
    for label, per_metric in compared.items():
        row = [label]
        for metric, _ in METRICS:
            c = per_metric[metric]
            p = "" if c["p_mcnemar"] is None else f", p={c['p_mcnemar']:.3g}"
            row.append(f"{c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]{p} "
                       f"**{c['verdict']}**")
        rows.append(row)
    out.append(table([f"difference (answerable, 95% CI; vs {reference} unless named)",
                      "contained", "EM", "F1"], rows))
    return "\n".join(out)


def plot(path: Path, results: dict[str, dict[str, Any]], reference: str) -> None:
    """One panel per set: each system's answer-contained difference to the reference, with
    its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), sharey=True,
                             squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        comp = {k: v["contained"] for k, v in results[name]["compared"].items()
                if k.endswith(f"vs {reference}") or " vs " not in k}
        labels = list(comp)
        diffs = [comp[k]["diff"] for k in labels]
        err = [[comp[k]["diff"] - comp[k]["low"] for k in labels],
               [comp[k]["high"] - comp[k]["diff"] for k in labels]]
        colors = ["tab:green" if comp[k]["verdict"] == "win" else "tab:red"
                  if comp[k]["verdict"] == "loss" else "tab:gray" for k in labels]
        ax.barh(range(len(labels)), diffs, xerr=err, color=colors, capsize=3)
        for y, d in enumerate(diffs):
            ax.annotate(f"{d:+.3f}", (d, y), xytext=(4 if d >= 0 else -4, 6),
                        textcoords="offset points", ha="left" if d >= 0 else "right",
                        fontsize=7)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(labels)), [k.split(" vs ")[0] for k in labels], fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(f"answer contained minus {reference}", fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ main
def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            raise SystemExit(f"error: {what} takes NAME=VALUE, got {v!r}")
        key, value = v.split("=", 1)
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> None:
    from expertrag.evaluation.answer_sets import SETS, SPLITS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--systems", default=DEFAULT_SYSTEMS,
                        help="comma-separated: base-plain, base-plain-brief, base-project, "
                             "grounded-qa (or any attached expert's name), crag, self-rag")
    parser.add_argument("--expert", action="append", default=[], metavar="NAME=PATH",
                        help="attach a candidate expert folder under NAME (then list NAME "
                             "in --systems); a shipped name (grounded-qa) replaces the shipped "
                             "expert everywhere, the chains included; repeatable")
    parser.add_argument("--gate", action="append", default=[], metavar="NAME=THRESHOLD",
                        help="apply this refusal threshold to expert NAME's answers")
    parser.add_argument("--evidence-gate", action="append", default=[],
                        metavar="NAME=THRESHOLD",
                        help="the relevance floor of NAME+evidence (default: NAME's card)")
    parser.add_argument("--reference", default=REFERENCE)
    parser.add_argument("--limit", type=int, help="first N questions of each set (a smoke run)")
    parser.add_argument("--sample", type=int,
                        help="a fixed random N questions of each set (seeded by set and split: "
                             "every run and system gets the same ones)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache" / "answers")
    parser.add_argument("--out", type=Path, help="write results.json, tables.md, the plot")
    parser.add_argument("--calibrate-gate", metavar="EXPERT",
                        help="pick EXPERT's refusal threshold on these sets (calibration split)")
    parser.add_argument("--max-false-refusals", type=float, default=0.05)
    parser.add_argument("--write-gate", type=Path, metavar="FOLDER",
                        help="record the calibrated threshold in this expert folder")
    parser.add_argument("--calibrate-evidence", metavar="EXPERT",
                        help="pick EXPERT's evidence gate floor on these sets (calibration "
                             "split; list EXPERT or EXPERT+evidence in --systems)")
    parser.add_argument("--write-evidence", type=Path, metavar="FOLDER",
                        help="record the calibrated evidence gate in this expert folder")
    args = parser.parse_args(argv)

    from expertrag import ExpertLLM
    from expertrag.embeddings import Embedder, MemoEmbedder
    from expertrag.evaluation.answer_sets import check_manifest, load_answer_set
    from expertrag.experts import attach_shipped

    if (args.calibrate_gate or args.calibrate_evidence) and args.split != "calibration":
        raise SystemExit("error: --calibrate-gate / --calibrate-evidence choose on the "
                         "calibration split only")
    check_manifest(args.data_dir)
    candidates = {k: Path(v) for k, v in _pairs(args.expert, "--expert").items()}
    gates = {k: float(v) for k, v in _pairs(args.gate, "--gate").items()}
    llm = ExpertLLM(dtype=args.dtype).load()
    for name, folder in candidates.items():  # first: --expert grounded-qa=PATH replaces it
        llm.add_expert(name, folder)
    attach_shipped(llm)  # the shipped experts not replaced by a candidate
    names = args.systems.split(",")
    floors = {k: float(v) for k, v in _pairs(args.evidence_gate, "--evidence-gate").items()}
    systems = build_systems(names, llm, candidates, gates, floors)
    if args.calibrate_evidence and not any(
            s.expert == args.calibrate_evidence for s in systems):
        raise SystemExit(f"error: --calibrate-evidence {args.calibrate_evidence} needs it in "
                         "--systems")
    print(f"model dtype {llm.base_model.dtype}; split {args.split}; k={args.k}; "
          f"systems {', '.join(f'{s.name} [{s.key}]' for s in systems)}", flush=True)
    embedder = MemoEmbedder(Embedder())
    sets = {}
    for name in args.sets.split(","):
        aset = load_answer_set(name, args.split, args.data_dir, embedder=embedder, k=args.k,
                               check=False)
        if args.sample and args.sample < len(aset.cases):
            keep = sorted(random.Random(f"{name}-{args.split}").sample(
                range(len(aset.cases)), args.sample))
            aset.cases = [aset.cases[i] for i in keep]
        if args.limit:
            aset.cases = aset.cases[:args.limit]
        sets[name] = aset
    results: dict[str, Any] = {}
    report = [f"Split: {args.split}; k={args.k}; dtype {llm.base_model.dtype}; "
              f"`python benchmarks/bench_answers.py {' '.join(argv or sys.argv[1:])}`", ""]
    gate_records: dict[str, list[dict[str, Any]]] = {}
    evidence_records: dict[str, list[dict[str, Any]]] = {}
    for set_name, aset in sets.items():
        scored, compared = {}, {}
        for system in systems:
            records = run_system(system, aset, llm, AnswerCache(args.cache, system, set_name,
                                                                args.split), args.batch)
            wants = system.evidence is not None or (
                args.calibrate_evidence is not None and system.expert == args.calibrate_evidence
                and set_name not in evidence_records)
            if wants:
                scorer = system.evidence.scorer if system.evidence else "relevance"
                evidence = run_evidence(aset, llm, scorer, EvidenceCache(
                    args.cache, llm, scorer, set_name, args.split), args.batch)
                records = [{**r, "evidence": e} for r, e in zip(records, evidence, strict=True)]
                if system.expert == args.calibrate_evidence:
                    evidence_records[set_name] = records
            scored[system.name] = score(records, aset, system.gate, system.evidence)
            if system.name == args.calibrate_gate:
                gate_records[set_name] = records
        ref = scored.get(args.reference)
        for sys_name, s in scored.items():
            if ref is not None and sys_name != args.reference:
                compared[f"{sys_name} vs {args.reference}"] = comparisons(s, ref)
            if sys_name in ("crag", "self-rag") and "grounded-qa" in scored:
                compared[f"{sys_name} vs naive RAG"] = comparisons(s, scored["grounded-qa"])
        results[set_name] = {"figures": {k: v["figures"] for k, v in scored.items()},
                             "compared": compared,
                             "answers": {k: v["per_question"] for k, v in scored.items()}}
        text = set_tables(set_name, scored, args.reference, compared)
        print("\n" + text, flush=True)
        report += [text, ""]
    if args.calibrate_gate:
        gate = calibrate_gate(gate_records, sets, args.max_false_refusals)
        gate["source"] = _calibration_source(gate_records, sets, args)
        print(f"\nrefusal gate for {args.calibrate_gate}: {json.dumps(gate, indent=1)}")
        report += [f"Refusal gate for {args.calibrate_gate}: {json.dumps(gate)}", ""]
        if args.write_gate:
            from expertrag.training.gate import record_gate

            record_gate(args.write_gate, gate["threshold"], gate)
            print(f"recorded in {args.write_gate}")
    if args.calibrate_evidence:
        expert = args.calibrate_evidence
        gate = calibrate_evidence(evidence_records, sets, args.max_false_refusals,
                                  gates.get(expert, _own_gate(llm, expert)))
        gate["source"] = _calibration_source(evidence_records, sets, args)
        print(f"\nevidence gate for {expert}: {json.dumps(gate, indent=1)}")
        report += [f"Evidence gate for {expert}: {json.dumps(gate)}", ""]
        if args.write_evidence:
            from expertrag.training.gate import record_evidence_gate

            record_evidence_gate(args.write_evidence, "relevance", gate["threshold"], gate,
                                 refusal_threshold=gate["refusal_threshold"])
            print(f"recorded in {args.write_evidence}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False),
                                               encoding="utf-8")
        (args.out / "tables.md").write_text("\n".join(report), encoding="utf-8")
        if any(r["compared"] for r in results.values()):
            plot(args.out / "answers.png", results, args.reference)
        print(f"wrote {args.out}/results.json, tables.md, answers.png")


if __name__ == "__main__":
    main()
