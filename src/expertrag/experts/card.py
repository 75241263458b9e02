"""The expert card: ``expertrag_expert.json``, the record an adapter folder carries beside
peft's files.

:class:`ExpertCard` is the one reader and writer of that file. Reading checks it (a JSON
object of known fields, each of the right kind; a refusal gate, an evidence gate and a beam
width within their ranges) and fails with :class:`~expertrag.errors.ExpertError` naming the
expert and the field; writing is atomic (a temporary file, then a rename). Every backend,
the trainer and the calibration steps read and write cards through it.

Fields (all optional; a missing file is an empty card):

- ``format``, ``name``, ``task``; ``base``: the base model it was trained for (``name``,
  ``fingerprint``, ``kind``); ``recipe``, ``hyperparameters``, ``evaluation``, ``training``,
  ``adapter_bytes``: what the trainer recorded; ``shrunk``: a rank cut after training;
- ``refusal_gate``: ``{"text", "threshold"}``, the calibrated P(refusal) gate;
- ``evidence_gate``: ``{"expert", "threshold", "refusal_threshold"}``, the relevance floor
  the naive pipeline applies before generating;
- ``decoding``: ``{"num_beams"}``, the beam width greedy calls use.

This module is on the experts floor: it imports only ``errors``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expertrag.errors import ExpertError, InputError

#: the card's file name inside an adapter folder
EXPERT_METADATA = "expertrag_expert.json"
#: the card format the trainer writes
CARD_FORMAT = 1
#: the card field that holds a calibrated evidence gate
EVIDENCE_GATE_KEY = "evidence_gate"
#: the widest beam search a call or a card may ask for
MAX_BEAMS = 16


def check_num_beams(value: Any) -> int | None:
    """A beam width: None (the caller's default) or an int within [1, MAX_BEAMS]; anything
    else is an InputError naming the value."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BEAMS:
        raise InputError(f"num_beams must be None or an int within [1, {MAX_BEAMS}], got "
                         f"{value!r}")
    return value


#: how a field that is not an object should look, in errors
_LIKE = {"decoding": 'an object like {"num_beams": 3}',
         "refusal_gate": 'an object like {"text": ..., "threshold": 0.5}'}


def _unit(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) \
        and 0.0 <= value <= 1.0


@dataclass
class ExpertCard:
    """An expert's card; :meth:`read` / :meth:`from_dict` check it, :meth:`write` saves it."""

    format: int | None = None
    name: str | None = None
    task: str | None = None
    base: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None
    hyperparameters: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    adapter_bytes: int | None = None
    refusal_gate: dict[str, Any] | None = None
    evidence_gate: dict[str, Any] | None = None
    decoding: dict[str, Any] | None = None
    shrunk: dict[str, Any] | None = None

    # ------------------------------------------------------------------ reading
    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: Any, expert: str | None = None) -> ExpertCard:
        """A checked card from the JSON object ``data``; ``expert`` names it in errors."""
        who = f"expert {expert!r}: " if expert else ""
        if not isinstance(data, Mapping):
            raise ExpertError(f"{who}{EXPERT_METADATA} is not a JSON object")
        unknown = sorted(set(data) - set(cls.fields()))
        if unknown:
            raise ExpertError(f"{who}{EXPERT_METADATA} has unknown fields {unknown} "
                              f"(known: {', '.join(cls.fields())})")
        return cls(**data).validate(expert)

    @classmethod
    def read(cls, folder: str | os.PathLike[str], expert: str | None = None) -> ExpertCard:
        """The card in adapter folder ``folder`` (an empty card when it has none); a damaged
        or invalid card is an ExpertError naming ``expert`` and the folder."""
        path = Path(folder) / EXPERT_METADATA
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("base", {}), dict):
                raise ValueError("not an expert card (a JSON object with a 'base' object)")
        except (OSError, ValueError) as exc:
            who = f"expert {expert!r}: " if expert else ""
            raise ExpertError(f"{who}unreadable {EXPERT_METADATA} in {folder}: {exc}") from exc
        return cls.from_dict(data, expert)

    def validate(self, expert: str | None = None) -> ExpertCard:
        """Check every field; returns the card. Errors are ExpertErrors naming the field."""
        who = f"expert {expert!r}: " if expert else ""
        kinds = {"format": int, "name": str, "task": str, "adapter_bytes": int}
        for name in self.fields():
            value = getattr(self, name)
            kind = kinds.get(name, dict)
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                want = _LIKE.get(name, "an object" if kind is dict else kind.__name__)
                raise ExpertError(f"{who}{EXPERT_METADATA}: {name} must be {want}, got "
                                  f"{value!r}")
        self._check_gate(who)
        self._check_evidence(who)
        self._check_decoding(who)
        return self

    def _check_evidence(self, who: str) -> None:
        spec = self.evidence_gate
        if spec is None:
            return
        ok = (_unit(spec.get("threshold")) and isinstance(spec.get("expert", ""), str)
              and (spec.get("refusal_threshold") is None or _unit(spec["refusal_threshold"])))
        if not ok:
            raise ExpertError(f"{who}{EVIDENCE_GATE_KEY} in {EXPERT_METADATA} needs a "
                              "'threshold' within [0, 1], an 'expert' name and a "
                              "'refusal_threshold' within [0, 1] or null")

    def _check_decoding(self, who: str) -> None:
        try:
            check_num_beams((self.decoding or {}).get("num_beams", 1))
        except InputError as exc:
            raise ExpertError(f"{who}{EXPERT_METADATA}: {exc}") from exc

    # ------------------------------------------------------------------ what it sets
    def _check_gate(self, who: str) -> tuple[str, float] | None:
        gate = self.refusal_gate
        if gate is None:
            return None
        ok = (isinstance(gate.get("text"), str) and gate["text"].strip()
              and _unit(gate.get("threshold")))
        if not ok:
            raise ExpertError(f"{who}refusal_gate in {EXPERT_METADATA} needs a non-empty "
                              "'text' and a 'threshold' within [0, 1]")
        return gate["text"], float(gate["threshold"])

    @property
    def gate(self) -> tuple[str, float] | None:
        """The calibrated refusal gate as ``(text, threshold)``, or None."""
        return self._check_gate(f"expert {self.name!r}: " if self.name else "")

    @property
    def num_beams(self) -> int:
        """The beam width greedy calls use (``decoding.num_beams``, default 1)."""
        return int((self.decoding or {}).get("num_beams", 1))

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint of the base it was trained for, when recorded."""
        return (self.base or {}).get("fingerprint")

    # ------------------------------------------------------------------ writing
    def to_dict(self) -> dict[str, Any]:
        """The card as JSON data: the fields that are set, in the file's order."""
        return {name: value for name in self.fields()
                if (value := getattr(self, name)) is not None}

    def updated(self, **fields: Any) -> ExpertCard:
        """A checked copy with ``fields`` replaced (unknown names are an ExpertError)."""
        return ExpertCard.from_dict({**self.to_dict(), **fields}, self.name)

    def write(self, folder: str | os.PathLike[str]) -> Path:
        """Save the card into ``folder`` atomically (a temporary file, then a rename)."""
        self.validate(self.name)
        path = Path(folder) / EXPERT_METADATA
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path


def update_card(folder: str | os.PathLike[str], **fields: Any) -> ExpertCard:
    """Set ``fields`` in the card of ``folder`` (read, checked, written atomically)."""
    card = ExpertCard.read(folder).updated(**fields)
    card.write(folder)
    return card
