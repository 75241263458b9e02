"""Settings that can be saved and loaded: the one config mixin every config dataclass uses.

A config dataclass (``CRAGConfig``, ``SelfRAGConfig``, ``GraphConfig`` and its parts,
``TrainConfig``) mixes in :class:`ConfigMixin` and gets ``to_dict``, ``from_dict`` (unknown
keys are a :class:`~expertrag.errors.ConfigKeyError`), ``save`` (JSON, written atomically)
and ``load``. :func:`as_config` turns what a caller hands a component (the config object, a
dict or the path of a saved config) into the config, so each component that takes a
config accepts all three. This module is on the ground floor: it imports only ``errors``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from expertrag.errors import ConfigKeyError, InputError

C = TypeVar("C", bound="ConfigMixin")


class ConfigMixin:
    """``to_dict`` / ``from_dict`` / ``save`` / ``load`` for a config dataclass.

    ``from_dict`` refuses names the dataclass does not have (a typo must not silently fall
    back to a default), builds nested configs from nested dicts, and runs ``validate()``
    when the class has one, so a loaded config is as checked as a constructed one.
    """

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (nested configs as nested dicts)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def config_keys(cls) -> set[str]:
        """The names ``from_dict`` accepts."""
        return {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """The config from a dict such as ``to_dict`` returns; unknown keys are a
        :class:`ConfigKeyError` naming them."""
        if not isinstance(data, Mapping):
            raise InputError(f"{cls.__name__}.from_dict needs a dict, got "
                             f"{type(data).__name__}")
        unknown = sorted(set(data) - cls.config_keys())
        if unknown:
            raise ConfigKeyError(f"unknown {cls.__name__} fields: {unknown}", unknown)
        values = {key: _nested(cls, key, value) for key, value in data.items()}
        config = cls(**values)
        validate = getattr(config, "validate", None)
        return validate() if callable(validate) else config

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the config as JSON, atomically (a temporary file, then a rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.to_dict(), handle, indent=2)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls: type[C], path: str | os.PathLike[str]) -> C:
        """A config written by :meth:`save` (or any JSON object of its fields)."""
        return cls.from_dict(read_config_file(path, cls.__name__))


def read_config_file(path: str | os.PathLike[str], what: str = "config") -> dict[str, Any]:
    """The JSON object in a saved config file; an unreadable file or another JSON value is
    an InputError naming ``what`` and the path."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {what} file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{what} file {path} is not a JSON object")
    return data


def _nested(cls: type, key: str, value: Any) -> Any:
    """``value`` as the nested config that field ``key`` holds by default, when it is a
    dict and the field's default is a config; otherwise unchanged."""
    if not isinstance(value, Mapping):
        return value
    for f in dataclasses.fields(cls):
        if f.name != key:
            continue
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = f.default
        if isinstance(default, ConfigMixin):
            return type(default).from_dict(value)
    return value


def as_config(cls: type[C], value: Any) -> C:
    """``value`` as a ``cls`` config: None gives the defaults; a ``cls`` is returned as it
    is; a dict goes through ``from_dict``; a ``str`` or path names a saved JSON config."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return cls.from_dict(value)
    if isinstance(value, str | os.PathLike):
        return cls.load(value)
    raise InputError(f"a {cls.__name__} must be the config, a dict or the path of a saved "
                     f"config, got {type(value).__name__}")
