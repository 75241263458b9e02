"""Typed errors: every bad input names what was wrong."""

from __future__ import annotations


class ExpertRAGError(Exception):
    """Base class of all expertrag errors."""


class InputError(ExpertRAGError, ValueError):
    """An argument or input document is invalid (empty, unreadable, wrong type)."""


class ConfigKeyError(InputError):
    """A config dict or file names a setting its config dataclass does not have; ``keys``
    lists every such name."""

    def __init__(self, message: str, keys: list[str] | None = None) -> None:
        super().__init__(message)
        self.keys = list(keys or [])


class InvalidFilesError(InputError):
    """Some files of a folder cannot be ingested; ``problems`` lists every one of them as
    ``(relative_path, reason)``, not just the first."""

    def __init__(self, message: str, problems: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.problems = problems


class ModelNotFoundError(ExpertRAGError, FileNotFoundError):
    """A model alias, path or id could not be resolved to loadable weights."""


class ExpertError(ExpertRAGError, ValueError):
    """An expert adapter cannot be attached (missing files, wrong base, bad config)."""


class UnknownExpertError(ExpertError, KeyError):
    """A call named an expert that is not attached."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown expert"


class ContextWindowExceededError(ExpertRAGError, ValueError):
    """The prompt does not fit in the model's context window."""


class StructuredOutputError(ExpertRAGError, ValueError):
    """A JSON schema or tool definition cannot be compiled, or output failed validation."""


class UnsupportedSchemaError(StructuredOutputError):
    """A JSON Schema uses a keyword (or combination) that structured output can neither
    enforce nor check and retry; raised before any token is generated. ``keyword`` names
    it and ``path`` says where it is (a JSON pointer, "" for the root)."""

    def __init__(self, message: str, *, keyword: str = "", path: str = "") -> None:
        super().__init__(message)
        self.keyword = keyword
        self.path = path


class EmptyCollectionError(ExpertRAGError, LookupError):
    """A question was asked of a vector collection that holds no documents."""


class StoreConnectionError(ExpertRAGError, ConnectionError):
    """A vector or graph store server (Chroma, Neo4j) cannot be reached; names where."""


class StoreError(ExpertRAGError, RuntimeError):
    """A vector store cannot be opened or used: the path is not a folder, the database is
    corrupt or not a Chroma database, or a write was asked of a store opened read-only."""


class MissingStoreError(StoreError, LookupError):
    """A store opened read-only does not exist: no database at the path, or no collection
    of that name in it (nothing is created by looking)."""
