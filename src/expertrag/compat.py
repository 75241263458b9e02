"""Old argument forms kept working for one release, with a deprecation warning.

The chat skins name the base model ``model`` and the expert ``expert`` (the names every
LangChain chat model and LlamaIndex LLM use). Before 0.2 the LangChain chat model took the
base as ``base_model`` and the expert as ``model``, the LlamaIndex LLM the base as
``base_model``. :func:`model_and_expert` turns the old forms into the new ones.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

__all__ = ["ExpertRAGDeprecationWarning", "model_and_expert", "warn_deprecated"]


class ExpertRAGDeprecationWarning(DeprecationWarning):
    """A name or form that still works and goes away in the next release. Shown by
    default (Python hides plain DeprecationWarnings raised inside libraries)."""


warnings.filterwarnings("default", category=ExpertRAGDeprecationWarning)


def warn_deprecated(message: str, stacklevel: int = 3) -> None:
    warnings.warn(message, ExpertRAGDeprecationWarning, stacklevel=stacklevel)


def _is_expert_name(value: Any, experts: Any) -> bool:
    """Whether ``value``, passed as ``model``, can only mean an expert: a key of the
    ``experts`` mapping, or a shipped expert's name that is no folder or file."""
    if not isinstance(value, str) or not value:
        return False
    if isinstance(experts, dict) and value in experts:
        return True
    from expertrag.experts import shipped_experts

    return value in shipped_experts() and not Path(value).exists()


def model_and_expert(data: dict[str, Any], cls_name: str,
                     legacy_model_is_expert: bool) -> dict[str, Any]:
    """Constructor keywords with the old names turned into ``model`` (the base) and
    ``expert``, warning once per old form.

    ``base_model=`` becomes ``model=``. Where ``legacy_model_is_expert`` (the LangChain chat
    model), ``model=`` together with ``base_model=``, ``model=None``, or ``model=`` naming an
    attached-on-use or shipped expert is read as the expert, as it was.
    """
    data = dict(data)
    if "base_model" in data:
        base = data.pop("base_model")
        if legacy_model_is_expert and "model" in data and "expert" not in data:
            warn_deprecated(f"{cls_name}(base_model=..., model=<expert>) is deprecated: "
                            "use model=<base model> and expert=<expert>", stacklevel=5)
            data["expert"] = data.pop("model")
        else:
            warn_deprecated(f"{cls_name}(base_model=...) is deprecated: use model=... "
                            "(the base model)", stacklevel=5)
        if "model" not in data:
            data["model"] = base
        return data
    if not legacy_model_is_expert or "model" not in data or "expert" in data:
        return data
    value = data["model"]
    if value is None:
        warn_deprecated(f"{cls_name}(model=None) meaning the bare base is deprecated: "
                        "leave expert unset (model now names the base model)", stacklevel=5)
        data.pop("model")
    elif _is_expert_name(value, data.get("experts")):
        warn_deprecated(f"{cls_name}(model={value!r}) naming an expert is deprecated: use "
                        f"expert={value!r} (model now names the base model)", stacklevel=5)
        data["expert"] = data.pop("model")
    return data
