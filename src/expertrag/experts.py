"""Expert adapters shipped as package data under ``expertrag/data/experts/<name>/``.

>>> from expertrag.experts import attach_shipped, shipped_experts
>>> shipped_experts()                  # {"grounded-qa": Path(...), "relevance": Path(...)}
>>> attach_shipped(llm)                # attach all of them (or attach_shipped(llm, ["relevance"]))
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from expertrag.errors import UnknownExpertError

_REQUIRED = ("adapter_config.json", "adapter_model.safetensors")


def experts_dir() -> Path:
    """The folder that holds the shipped experts (may not exist)."""
    return Path(str(resources.files("expertrag"))) / "data" / "experts"


def shipped_experts() -> dict[str, Path]:
    """``{name: folder}`` of every complete adapter shipped with expertrag (sorted by name);
    empty when none are shipped."""
    root = experts_dir()
    if not root.is_dir():
        return {}
    return {
        folder.name: folder
        for folder in sorted(root.iterdir())
        if folder.is_dir() and all((folder / f).is_file() for f in _REQUIRED)
    }


def attach_shipped(llm: Any, names: Iterable[str] | str | None = None) -> list[str]:
    """Attach shipped experts to ``llm`` (an ExpertLLM) under their own names: ``names`` or
    all of them; already attached ones are left as they are. Returns the attached names."""
    available = shipped_experts()
    wanted = [names] if isinstance(names, str) else list(names or available)
    unknown = [n for n in wanted if n not in available]
    if unknown:
        have = ", ".join(available) or "none shipped"
        raise UnknownExpertError(f"no shipped expert named {unknown} (shipped: {have})")
    present = set(getattr(llm, "experts", []) or [])
    for name in wanted:
        if name not in present:
            llm.add_expert(name, available[name])
    return wanted
