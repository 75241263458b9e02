"""Small plain types shared by the core and both skins."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Document:
    """A retrievable unit of text with its id, metadata and (optional) relevance score."""

    text: str
    id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    score: float | None = None
