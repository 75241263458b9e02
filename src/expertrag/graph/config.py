"""GraphRAG settings: what building the index fixes, and what each search may change.

:class:`GraphIndexConfig` holds what a graph is built with (extraction, chunking, synonym
matching, entity-name precision): changing it means building the graph again.
:class:`GraphQueryConfig` holds how it is searched (entity linking, PageRank, hops,
communities): a retriever over an existing graph may pass its own. :class:`GraphConfig`
holds one of each, and also takes and gives the settings by their old flat names
(``GraphConfig(hops=2).hops``), so code written before the split keeps working. All three
are saved and loaded as JSON (:class:`~expertrag.config.ConfigMixin`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from expertrag.config import ConfigMixin, as_config, read_config_file
from expertrag.errors import ConfigKeyError, InputError
from expertrag.ingest import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE

#: the search modes of :meth:`~expertrag.graph.GraphRAG.retrieve`
MODES = ("ppr", "local", "global", "hybrid")
#: the search a retriever uses when none is named: graph PPR fused with BM25 + dense
#: retrieval. Chosen on the answer benchmark's calibration parts (benchmarks/RESULTS.md,
#: GraphRAG, 2026-12-07): PPR alone found fewer supporting paragraphs than hybrid retrieval
#: on HotpotQA's open corpus; fused, the graph was level or better on both sets.
DEFAULT_MODE = "hybrid"
EXTRACTIONS = ("spacy", "llm")
NAME_PRECISIONS = ("auto", "float32", "bfloat16")


@dataclass
class GraphIndexConfig(ConfigMixin):
    """What a graph is built with (fixed once documents are inserted)."""

    extraction: str = "spacy"  # "spacy" (no LLM) or "llm"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP
    #: entities whose name embeddings reach this cosine get a SYNONYM edge (HippoRAG)
    synonym_threshold: float = 0.9
    # co-occurrences (the spaCy mode's relations) as RELATED edges in the database, for
    # Cypher queries that walk them; by default each passage keeps its own (read back as
    # the same relations, same searches) and writing is much faster (benchmarks/RESULTS.md)
    co_occurrence_edges: bool = False
    # entity names embedded in bf16 where the hardware computes it natively ("auto"), always
    # ("bfloat16", an expertrag Embedder only) or never ("float32"); a question's mentions
    # are embedded the same way, so it is fixed with the graph
    name_precision: str = "auto"

    def validate(self) -> GraphIndexConfig:
        if self.extraction not in EXTRACTIONS:
            raise InputError(f"extraction must be 'spacy' or 'llm', got {self.extraction!r}")
        if not 0.0 < self.synonym_threshold <= 1.0:
            raise InputError("synonym_threshold must be within (0, 1]")
        if self.name_precision not in NAME_PRECISIONS:
            raise InputError("name_precision must be 'auto', 'float32' or 'bfloat16', got "
                             f"{self.name_precision!r}")
        return self


@dataclass
class GraphQueryConfig(ConfigMixin):
    """How a graph is searched (may differ per retriever over the same graph)."""

    #: a question's mention links to the ``link_top`` nearest entity names at or above this
    link_threshold: float = 0.8
    link_top: int = 5
    damping: float = 0.5  # Personalized PageRank's
    # dense passage seeds against linked entities: HippoRAG 2's 0.05 suits its filtered
    # facts; beside spaCy's many noun phrases 0.3 ranked better on MuSiQue
    # (benchmarks/RESULTS.md)
    passage_seed_weight: float = 0.3
    # HippoRAG's node specificity: an entity seed counts 1 / (passages mentioning it)
    entity_specificity: bool = True
    dense_seed_top: int = 20
    hops: int = 1  # how far "local" search expands from the question's entities
    communities_resolution: float = 1.0  # Louvain's
    community_sentences: int = 3  # sentences in each community summary

    def validate(self) -> GraphQueryConfig:
        if not 0.0 < self.link_threshold <= 1.0:
            raise InputError("link_threshold must be within (0, 1]")
        if not 0.0 < self.damping < 1.0:
            raise InputError(f"damping must be within (0, 1), got {self.damping!r}")
        if self.hops < 0:
            raise InputError(f"hops must be >= 0, got {self.hops!r}")
        return self


_INDEX_KEYS = frozenset(f.name for f in fields(GraphIndexConfig))
_QUERY_KEYS = frozenset(f.name for f in fields(GraphQueryConfig))


def _part_of(name: str) -> str | None:
    """Which part holds a flat setting: "index", "query", or None."""
    if name in _INDEX_KEYS:
        return "index"
    if name in _QUERY_KEYS:
        return "query"
    return None


@dataclass(init=False)
class GraphConfig(ConfigMixin):
    """Settings of a :class:`~expertrag.graph.GraphRAG` index and its searches: ``index``
    (:class:`GraphIndexConfig`) and ``query`` (:class:`GraphQueryConfig`).

    Each part may be given as the config, a dict or a saved file's path; settings may also
    be given by their flat names, over the parts: ``GraphConfig(hops=2)``,
    ``GraphConfig(index=saved, damping=0.6)``. Flat names read and write through:
    ``config.hops`` is ``config.query.hops``. ``to_dict`` gives ``{"index": {...},
    "query": {...}}``; ``from_dict`` takes that or the flat form.
    """

    index: GraphIndexConfig = field(default_factory=GraphIndexConfig)
    query: GraphQueryConfig = field(default_factory=GraphQueryConfig)

    def __init__(self, index: Any = None, query: Any = None, **settings: Any) -> None:
        unknown = sorted(k for k in settings if _part_of(k) is None)
        if unknown:
            raise ConfigKeyError(f"unknown GraphConfig fields: {unknown}", unknown)
        index = as_config(GraphIndexConfig, index)
        query = as_config(GraphQueryConfig, query)
        object.__setattr__(self, "index", replace(
            index, **{k: v for k, v in settings.items() if k in _INDEX_KEYS}))
        object.__setattr__(self, "query", replace(
            query, **{k: v for k, v in settings.items() if k in _QUERY_KEYS}))

    def __getattr__(self, name: str) -> Any:
        part = _part_of(name)
        if part is None or part not in self.__dict__:
            raise AttributeError(f"'GraphConfig' object has no attribute {name!r}")
        return getattr(self.__dict__[part], name)

    def __setattr__(self, name: str, value: Any) -> None:
        part = _part_of(name)
        if part is None:
            object.__setattr__(self, name, value)
        else:
            setattr(getattr(self, part), name, value)

    @classmethod
    def config_keys(cls) -> set[str]:
        return {"index", "query", *_INDEX_KEYS, *_QUERY_KEYS}

    def validate(self) -> GraphConfig:
        self.index.validate()
        self.query.validate()
        return self

    def updated(self, changes: Mapping[str, Any]) -> GraphConfig:
        """A copy with ``changes`` (flat names, or nested under "index" / "query") applied
        and checked."""
        data = self.to_dict()
        for part in ("index", "query"):
            if part in changes:
                if not isinstance(changes[part], Mapping):
                    raise InputError(f"GraphConfig {part!r} must be a dict, got "
                                     f"{type(changes[part]).__name__}")
                data[part] = {**data[part], **changes[part]}
        flat = {k: v for k, v in changes.items() if k not in ("index", "query")}
        return GraphConfig.from_dict({**data, **flat})

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name (the shape before the split)."""
        return {**self.index.to_dict(), **self.query.to_dict()}


def query_settings(config: Any, built_with: GraphConfig) -> GraphQueryConfig:
    """The search settings of a retriever over a graph built with ``built_with``: None
    gives the graph's own; a :class:`GraphQueryConfig` is used as it is; a dict (flat or
    nested names) or a saved config's path changes the graph's own settings; a
    :class:`GraphConfig` gives its query part. What results must keep the graph's index
    settings: a graph cannot be searched as if it had been built otherwise."""
    if config is None:
        return built_with.query
    if isinstance(config, GraphQueryConfig):
        return config.validate()
    if isinstance(config, str | os.PathLike):
        config = read_config_file(config, "GraphConfig")
    if isinstance(config, Mapping):
        config = built_with.updated(config)
    if not isinstance(config, GraphConfig):
        raise InputError("graph search settings must be a GraphConfig, a GraphQueryConfig, "
                         f"a dict or a saved config's path, got {type(config).__name__}")
    if config.index != built_with.index:
        raise InputError("this graph was built with other index settings "
                         f"({built_with.index.to_dict()}); pass search settings only, or "
                         "build a graph with these")
    return config.query.validate()
