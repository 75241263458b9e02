"""Training recipes for the shipped experts: data builders, their parameters and settings.

A recipe is plain data, so a run is reproducible from the repository alone:
``expertrag train --recipe grounded-qa`` (see ``training/cli.py``). Sizes are chosen so that
a CPU run on 2 cores takes well under the 90-minute budget (measured seconds/step in the
recipe's ``timing`` note); a GPU run takes a few minutes.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from expertrag.errors import InputError
from expertrag.training.config import TrainConfig, TrainReport
from expertrag.training.data import (
    HOTPOT_TRAIN,
    MSMARCO_DIR,
    RELEVANCE_LABELS,
    SQUAD_SAMPLE,
    build_raft,
    build_relevance,
    build_squad_raft,
    data_dir,
    load_hotpot,
    load_msmarco,
    load_squad,
)

DEFAULT_BASE = "smollm2-135m-instruct"

#: What the shipped adapters may be used under. Both recipes train only on CC BY-SA 4.0 data
#: (MS MARCO, research-use only, is kept out), so the weights follow its share-alike terms.
ADAPTER_LICENCE = ("CC BY-SA 4.0 (the adapter weights are trained on CC BY-SA 4.0 data; the "
                   "base model SmolLM2-135M-Instruct is Apache-2.0, expertrag's code Apache-2.0)")

_HOTPOT = {"name": "HotpotQA train, distractor setting (300 items; test.jsonl never used)",
           "licence": "CC BY-SA 4.0", "path": HOTPOT_TRAIN}
_SQUAD = {"name": "SQuAD 2.0 dev sample (2 articles, with unanswerable questions)",
          "licence": "CC BY-SA 4.0", "path": SQUAD_SAMPLE}
RECIPES: dict[str, dict[str, Any]] = {
    "grounded-qa": {
        "name": "grounded-qa",
        "task": "grounded question answering with citations and refusal",
        "description": (
            "Answers a question briefly from numbered passages and cites them (`Paris [2].`); "
            "says `I don't know.` when the passages do not hold the answer. Trained RAFT-style "
            "(Zhang et al. 2024) on the prompt of `expertrag.rag.build_messages`."
        ),
        "base": DEFAULT_BASE,
        "builders": [
            # 4 passages per prompt, as RAGPipeline retrieves by default (k=4)
            {"builder": "raft", "source": "hotpotqa",
             "params": {"distractors_k": 2, "p_no_oracle": 0.25}},
            {"builder": "squad_raft", "source": "squad2",
             "params": {"distractors_k": 3, "p_no_oracle": 0.0, "max_questions": 160}},
        ],
        "data": [{**_HOTPOT, "use": "question + 2 gold + 2 distractor paragraphs; 25% with 4 "
                  "distractors and no gold (target: refusal)"},
                 {**_SQUAD, "use": "160 questions (seeded sample): its paragraph + 3 paragraphs of "
                  "the same article; unanswerable questions target the refusal"}],
        "config": {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.05,
                   "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
                   "learning_rate": 3e-4, "epochs": 1, "batch_size": 4, "grad_accum": 2,
                   "max_length": 1024, "warmup_ratio": 0.05, "eval_fraction": 0.1,
                   "eval_generate": 24, "eval_max_new_tokens": 24, "save_every": 5,
                   "save_dtype": "float16", "seed": 42},
        "timing": ("2 CPU cores, near-idle: ~33 s/step (8 rows x ~660 tokens, ~160 trained "
                   "tok/s); ~51 steps + evaluation: ~32 min. Under heavy sharing (load 5-8) "
                   "~128 s/step."),
        "usage": "Pass `expert=\"grounded-qa\"` to `RAGPipeline` (the CLI does it when shipped).",
        "licence": ADAPTER_LICENCE,
    },
    "relevance": {
        "name": "relevance",
        "task": "relevance grading (CRAG retrieval evaluator)",
        "description": (
            "Grades whether a passage helps answer a question. Score it without generation: "
            "`llm.label_probabilities([relevance_messages(q, p)], labels=RELEVANCE_LABELS, "
            "expert=\"relevance\")` gives P(yes), a score to rank and threshold."
        ),
        "base": DEFAULT_BASE,
        "builders": [
            {"builder": "relevance", "source": "hotpotqa+squad2",
             "params": {"positives_per_item": 2, "hotpot_rounds": 3, "squad_per_label": 200,
                        "squad_negatives": "sibling"}},
        ],
        "data": [{**_HOTPOT, "use": "gold paragraphs (yes) vs the item's distractor "
                  "paragraphs (no: hard negatives); 3 rounds, each pairing the 2 gold "
                  "paragraphs with 2 unseen distractors"},
                 {**_SQUAD, "use": "200 answerable questions, each with its own paragraph (yes) "
                  "and another paragraph of the same article (no: on topic, no answer)"}],
        # MS MARCO is left out on purpose: its terms allow research use only, and the shipped
        # adapter should carry no such restriction. `build_relevance(msmarco=...)` still
        # takes it for research runs; bench_rerank_quality.py scores the expert on it.
        "eval_labels": list(RELEVANCE_LABELS),
        # lr 2e-4 on q/k/v/o underfitted (train loss stayed at the label's chance level);
        # the MLP projections and a higher rate give the adapter room to learn the match
        "config": {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.05,
                   "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj",
                                      "gate_proj", "up_proj", "down_proj"],
                   "learning_rate": 6e-4, "epochs": 1, "batch_size": 8, "grad_accum": 1,
                   "max_length": 1024, "warmup_ratio": 0.05, "eval_fraction": 0.1,
                   "save_every": 10, "save_dtype": "float16", "seed": 42},
        "timing": ("2 CPU cores, near-idle: ~8.3 s/step (8 rows x ~205 tokens, MLP targets "
                   "included); 444 steps + evaluation of 424 rows: ~66 min. The train loss sits "
                   "at the label's chance level (~0.35) for ~170 steps, then falls."),
        # trained at r=16, shipped at r=8 (truncated SVD): 4.9 MB instead of 9.8 MB
        "ship_rank": 8,
        "usage": "See `expertrag.training.data.relevance_scores` for a one-line scorer.",
        "licence": ADAPTER_LICENCE,
    },
}


def recipe_names() -> list[str]:
    return sorted(RECIPES)


def get_recipe(name: str) -> dict[str, Any]:
    """A deep copy of the named recipe."""
    if name not in RECIPES:
        raise InputError(f"unknown recipe {name!r}; available: {', '.join(recipe_names())}")
    return copy.deepcopy(RECIPES[name])


def build_recipe_rows(recipe: dict[str, Any], data: str | os.PathLike[str] | None = None,
                      seed: int | None = None) -> list[dict[str, Any]]:
    """Run the recipe's data builders on the shared data; records row counts in the recipe."""
    folder = data_dir(data)
    seed = recipe.get("config", {}).get("seed", 42) if seed is None else seed
    rows: list[dict[str, Any]] = []
    for spec in recipe["builders"]:
        params = dict(spec.get("params", {}))
        kind = spec["builder"]
        if kind == "raft":
            built = build_raft(load_hotpot(folder / HOTPOT_TRAIN), seed=seed, **params)
        elif kind == "squad_raft":
            built = build_squad_raft(load_squad(folder / SQUAD_SAMPLE), seed=seed, **params)
        elif kind == "relevance":
            msmarco = (load_msmarco(folder / MSMARCO_DIR, part=spec.get("msmarco_part"))
                       if "msmarco" in spec["source"] else None)
            squad = load_squad(folder / SQUAD_SAMPLE) if "squad2" in spec["source"] else None
            built = build_relevance(load_hotpot(folder / HOTPOT_TRAIN), msmarco=msmarco,
                                    squad=squad, seed=seed, **params)
        else:
            raise InputError(f"unknown data builder {kind!r} in recipe {recipe.get('name')!r}")
        spec["rows"] = len(built)
        spec["seed"] = seed
        rows.extend(built)
    return rows


def run_recipe(
    name: str,
    output_dir: str | os.PathLike[str] | None = None,
    *,
    data: str | os.PathLike[str] | None = None,
    base_model: Any = None,
    resume: bool = False,
    max_steps: int | None = None,
    progress: bool = True,
    **overrides: Any,
) -> TrainReport:
    """Build the recipe's data and train its expert into ``output_dir``
    (default ``experts/<name>``). ``overrides`` replace TrainConfig fields."""
    from expertrag.training.trainer import train_expert

    recipe = get_recipe(name)
    settings = {**recipe.pop("config"), **overrides}
    settings["output_dir"] = str(output_dir or Path("experts") / name)
    settings["progress"] = progress
    if max_steps is not None:
        settings["max_steps"] = max_steps
    config = TrainConfig(**settings).validate()
    rows = build_recipe_rows(recipe, data, seed=config.seed)
    report = train_expert(base_model or recipe.get("base", DEFAULT_BASE), rows, None, config,
                          recipe, resume=resume)
    if recipe.get("ship_rank"):
        record_shrink(report.output_dir, recipe["ship_rank"])
    return report


def record_shrink(folder: str | os.PathLike[str], rank: int) -> dict[str, Any]:
    """Shrink the adapter in ``folder`` to ``rank`` (:func:`shrink_adapter`) and note it in
    its metadata and model card (the card's figures were measured before shrinking)."""
    from expertrag.models.llm import EXPERT_METADATA
    from expertrag.training.shrink import shrink_adapter

    folder = Path(folder)
    kept = {"rank": rank, **shrink_adapter(folder, rank)}
    meta_path = folder / EXPERT_METADATA
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["shrunk"] = kept
    tmp = meta_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    os.replace(tmp, meta_path)
    card = folder / "README.md"
    if card.is_file():
        card.write_text(card.read_text(encoding="utf-8").rstrip("\n") + (
            f"\n\nShipped at rank {rank}: each update was cut to its leading {rank} singular "
            f"directions (truncated SVD; {kept['mean_energy_kept']:.1%} of the update norm kept "
            "on average). The figures above were measured at the training rank.\n"),
            encoding="utf-8")
    return kept
