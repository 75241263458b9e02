"""What an expert is: its name, its card, its prompt, labels and output format, and the one
rule that attaches a shipped expert when a component needs it.

Experts ship as package data under ``expertrag/data/experts/<name>/`` (a peft LoRA adapter
and its card, ``expertrag_expert.json``):

>>> from expertrag.experts import attach_shipped, shipped_experts
>>> shipped_experts()                  # {"critic": Path(...), "grounded-qa": Path(...), ...}
>>> attach_shipped(llm)                # attach all of them (or attach_shipped(llm, ["relevance"]))

- :mod:`expertrag.experts.card`: :class:`ExpertCard`, the one reader and writer of a card;
- :mod:`expertrag.experts.grounded_qa`, :mod:`expertrag.experts.relevance`,
  :mod:`expertrag.experts.critic`, :mod:`expertrag.experts.hop`: one module per shipped
  expert (prompt, labels, refusal text, output format);
- :func:`ensure_attached`: a component that needs a shipped expert calls it.

This package is on the experts floor: it imports only ``errors`` and ``types``. A new expert
is one module here plus one recipe in :mod:`expertrag.training.recipes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from expertrag.errors import UnknownExpertError
from expertrag.experts.card import EXPERT_METADATA, ExpertCard
from expertrag.experts.critic import NAME as CRITIC
from expertrag.experts.grounded_qa import NAME as GROUNDED_QA
from expertrag.experts.hop import NAME as HOP
from expertrag.experts.relevance import NAME as RELEVANCE

#: the experts expertrag ships, by name
SHIPPED_NAMES: tuple[str, ...] = (CRITIC, GROUNDED_QA, HOP, RELEVANCE)

_REQUIRED = ("adapter_config.json", "adapter_model.safetensors")

__all__ = ["CRITIC", "EXPERT_METADATA", "GROUNDED_QA", "HOP", "RELEVANCE", "SHIPPED_NAMES",
           "ExpertCard", "attach_shipped", "check_shipped", "ensure_attached", "experts_dir",
           "shipped_experts"]


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
    return [ensure_attached(llm, name, available) for name in check_shipped(wanted, available)]


def ensure_attached(llm: Any, name: str, available: Mapping[str, Any] | None = None) -> str:
    """The one auto-attach rule: when ``llm`` does not serve ``name``, attach the shipped
    expert of that name (from ``available``, ``{name: folder}``, default
    :func:`shipped_experts`); an expert already attached is left as it is. Returns ``name``;
    a name that is neither attached nor shipped is an UnknownExpertError."""
    if name in (getattr(llm, "experts", None) or []):
        return name
    available = shipped_experts() if available is None else available
    check_shipped([name], available)
    llm.add_expert(name, available[name])
    return name


def check_shipped(wanted: list[str], available: Mapping[str, Any]) -> list[str]:
    """``wanted``, when every name is in ``available`` (``{name: folder}`` of shipped
    experts); else an UnknownExpertError naming the missing ones and what is shipped."""
    unknown = [n for n in wanted if n not in available]
    if unknown:
        have = ", ".join(available) or "none shipped"
        raise UnknownExpertError(f"no shipped expert named {unknown} (shipped: {have})")
    return wanted
