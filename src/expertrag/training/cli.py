"""The ``expertrag train`` sub-command (wired into ``expertrag.cli`` by
:func:`add_train_subcommand`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_train_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``train`` to an argparse sub-parser set; its handler is :func:`cmd_train`."""
    from expertrag.training.data import DEFAULT_DATA_DIR
    from expertrag.training.recipes import recipe_names

    p = subparsers.add_parser(
        "train", help="train a LoRA expert from a recipe",
        description="Train a LoRA expert from a recipe.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  expertrag train --recipe grounded-qa --output experts/my-qa\n"
               "  expertrag train --recipe critic --max-steps 50 --device cpu",
    )
    p.add_argument("--recipe", required=True, choices=recipe_names(), help="recipe to run")
    p.add_argument("--output", default=None, help="adapter folder (default: experts/<recipe>)")
    p.add_argument("--data-dir", default=None,
                   help=f"shared data folder (default: $EXPERTRAG_DATA_DIR or {DEFAULT_DATA_DIR})")
    p.add_argument("--model", default=None, help="base model (default: the recipe's base)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when present)")
    p.add_argument("--method", default=None, choices=["lora", "dora", "qlora"],
                   help="override the recipe's method")
    p.add_argument("--precision", default=None, choices=["auto", "bf16", "fp32"],
                   help="training precision (default auto: bf16 autocast where the GPU or "
                        "CPU computes bf16 natively)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_train)
    return p


def cmd_train(args: argparse.Namespace) -> int:
    """Run a recipe and print its report (errors surface as ExpertRAGError -> exit 2)."""
    from expertrag.training.recipes import run_recipe

    overrides: dict[str, Any] = {}
    if args.device:
        overrides["device"] = args.device
    if args.method:
        overrides["method"] = args.method
    if args.precision:
        overrides["precision"] = args.precision
    report = run_recipe(
        args.recipe, args.output, data=args.data_dir, base_model=args.model,
        resume=args.resume, max_steps=args.max_steps, progress=not args.quiet, **overrides,
    )
    if args.json:
        data = {k: v for k, v in vars(report).items() if k != "history"}
        data["output_dir"] = str(report.output_dir)
        print(json.dumps(data, indent=2))
    else:
        print(report.summary())
    if args.max_steps is not None and report.steps < report.total_steps:  # pragma: no cover
        print("note: stopped early by --max-steps", file=sys.stderr)
    return 0
