"""The floors of docs/architecture.md: a module imports only from its own floor and those
below it (imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

import expertrag

FLOORS = {
    "types": 0, "errors": 0, "config": 0, "datasets": 0,
    "experts": 1, "compat": 1, "prompt_format": 1,
    "models": 2, "embeddings": 2,
    "retrieval": 3, "rerank": 3, "ingest": 3,
    "chains": 4, "graph": 4, "reflection": 4, "rag": 4, "decisions": 4,
    "evaluation": 5,
    "training": 6,
    "langchain": 7, "llama_index": 7, "cli": 7,
}
ROOT = Path(expertrag.__file__).parent


def _floor(module: str) -> int | None:
    """The floor of ``expertrag.<top>...``; None for a module the table does not place."""
    parts = module.split(".")
    return FLOORS.get(parts[1]) if len(parts) > 1 and parts[0] == "expertrag" else None


def test_no_module_imports_from_a_floor_above_its_own():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        own = _floor(".".join(rel.parts))
        if own is None:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                floor = _floor(name)
                if floor is not None and floor > own:
                    upward.append(f"{rel} -> {name}")
    assert upward == []
