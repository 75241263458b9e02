"""RAGAS (0.4, the ``ragas.metrics.collections`` API) with expertrag's local judge.

- :func:`import_ragas` imports RAGAS, working around its import-time failure with
  langchain-community 0.4 (RAGAS 0.4.3 imports ``langchain_community.chat_models.vertexai``,
  which 0.4 removed; ragas issues #2741, #2745, #2753). Only when that exact import fails, a
  stand-in module with a ``ChatVertexAI`` that cannot be built is registered, and RAGAS is
  imported again; once RAGAS stops importing it, the stand-in is never installed.
- :class:`ExpertRagasLLM` is an ``InstructorBaseRagasLLM`` over :class:`ExpertLLM`: every
  structured call is decoded under the response model's JSON Schema (xgrammar), so it always
  parses; array fields must hold at least one item, so the empty statement lists that make
  Faithfulness and friends return NaN cannot occur. A verdict list that answers a list of
  input statements (Faithfulness, FactualCorrectness, NoiseSensitivity) holds exactly one
  verdict per statement (:func:`_pin_to_input`), because NoiseSensitivity stacks the verdict
  lists into a matrix and fails on one of another length. Concurrent
  calls (RAGAS' ``abatch_score`` gathers them) are batched into one ``generate`` per schema.
- :class:`ExpertRagasEmbeddings` is a ``BaseRagasEmbedding`` over :class:`Embedder`.
- :func:`no_openai` makes RAGAS' silent OpenAI fallback impossible: while it is active, the
  factories that would build an OpenAI client raise instead.

Nothing leaves the machine unless the user configures it.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from expertrag.errors import ExpertRAGError, InputError

_VERTEX = "langchain_community.chat_models.vertexai"


class RagasUnavailableError(ExpertRAGError, ImportError):
    """RAGAS is not installed (``pip install 'expertrag[ragas]'``) or cannot be imported."""


class OpenAIFallbackError(ExpertRAGError, RuntimeError):
    """Something asked RAGAS for its default OpenAI client while :func:`no_openai` was on."""


def _vertex_stand_in() -> types.ModuleType:
    module = types.ModuleType(_VERTEX)

    class ChatVertexAI:  # only ever used by RAGAS in isinstance checks
        """Stand-in registered by expertrag: langchain-community 0.4 has no VertexAI chat."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ImportError("ChatVertexAI is not in langchain-community >= 0.4; install "
                              "langchain-google-vertexai for Vertex AI models")

    module.ChatVertexAI = ChatVertexAI  # type: ignore[attr-defined]
    module.__expertrag_stand_in__ = True  # type: ignore[attr-defined]
    return module


def import_ragas() -> Any:
    """``import ragas``, with the langchain-community 0.4 workaround when it is needed."""
    try:
        import ragas
        return ragas
    except ModuleNotFoundError as exc:
        if exc.name != _VERTEX and _VERTEX not in str(exc):
            if exc.name and exc.name.split(".")[0] == "ragas":
                raise RagasUnavailableError(
                    "RAGAS is not installed: pip install 'expertrag[ragas]'") from exc
            raise RagasUnavailableError(f"RAGAS cannot be imported: {exc}") from exc
    for name in [m for m in sys.modules if m == "ragas" or m.startswith("ragas.")]:
        del sys.modules[name]  # the half-imported package from the failed attempt
    sys.modules[_VERTEX] = _vertex_stand_in()
    import ragas
    return ragas


def _non_empty_arrays(schema: Any) -> Any:
    """A copy of ``schema`` whose arrays need at least one item (recursively)."""
    if isinstance(schema, dict):
        out = {k: _non_empty_arrays(v) for k, v in schema.items()}
        if out.get("type") == "array" and not out.get("minItems"):
            out["minItems"] = 1
        return out
    if isinstance(schema, list):
        return [_non_empty_arrays(v) for v in schema]
    return schema


_INPUT_MARK = "Now perform the same with the following input\ninput:"


def _prompt_input(prompt: str) -> dict[str, Any] | None:
    """The JSON object after a RAGAS prompt's input mark (the item being judged: the
    examples come before the mark, the item's own text after it, so its first occurrence is
    the template's), or None when there is none."""
    at = prompt.find(_INPUT_MARK)
    start = prompt.find("{", at) if at >= 0 else -1
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder(strict=False).raw_decode(prompt, start)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


VERDICT_TOKENS = 48  # the decoding budget per pinned verdict: statement, reason, verdict
REASON_CHARS = 160


def _pin_to_input(schema: dict[str, Any], prompt: str) -> tuple[dict[str, Any], int]:
    """``schema`` with each top-level array of verdicts pinned to the length of the prompt's
    input list of the same name, and the number of items pinned (0: none). An output
    ``statements`` array whose items have a ``statement`` field, for an input
    ``statements`` list of n strings, must hold exactly n items; an integer ``verdict`` is
    0 or 1, as the prompt asks, and a ``reason`` is at most ``REASON_CHARS`` long, so that n
    verdicts fit a budget of about ``VERDICT_TOKENS`` each. Only the count is pinned, not the
    statements' text, so that prompts with as many statements share one schema and one
    batched ``generate``; RAGAS reads the verdicts by position."""
    given = _prompt_input(prompt)
    props = schema.get("properties")
    if not given or not isinstance(props, dict):
        return schema, 0
    out, pinned = None, 0
    for key, prop in props.items():
        values = given.get(key)
        if (not key.endswith("s") or not isinstance(values, list)
                or not all(isinstance(v, str) for v in values)
                or not isinstance(prop, dict) or prop.get("type") != "array"):
            continue
        item = prop.get("items", {})
        if "$ref" in item:  # pydantic puts nested models in $defs
            item = schema.get("$defs", {}).get(item["$ref"].rsplit("/", 1)[-1], {})
        fields = item.get("properties", {})
        if key[:-1] not in fields:
            continue
        out = out or copy.deepcopy(schema)
        row = copy.deepcopy(item)
        if fields.get("verdict", {}).get("type") == "integer":
            row["properties"]["verdict"].update(minimum=0, maximum=1)
        if fields.get("reason", {}).get("type") == "string":
            row["properties"]["reason"]["maxLength"] = REASON_CHARS
        out["properties"][key] = {**prop, "items": row, "minItems": len(values),
                                  "maxItems": len(values)}
        pinned += len(values)
    return (out, pinned) if out is not None else (schema, 0)


def _base_classes() -> tuple[type, type]:
    import_ragas()
    from ragas.embeddings.base import BaseRagasEmbedding
    from ragas.llms.base import InstructorBaseRagasLLM

    return InstructorBaseRagasLLM, BaseRagasEmbedding


class _Batcher:
    """Collects concurrent structured requests for a moment and runs each schema's group as
    one batched ``generate`` on the model's worker."""

    def __init__(self, run: Any, window: float) -> None:
        self.run, self.window = run, window
        self.pending: list[tuple[str, type, asyncio.Future[Any]]] = []
        self.flushing: asyncio.Task[None] | None = None

    async def submit(self, prompt: str, model: type) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.pending.append((prompt, model, future))
        if self.flushing is None or self.flushing.done():
            self.flushing = loop.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        await asyncio.sleep(self.window)
        batch, self.pending = self.pending, []
        groups: dict[type, list[tuple[str, asyncio.Future[Any]]]] = {}
        for prompt, model, future in batch:
            groups.setdefault(model, []).append((prompt, future))
        for model, rows in groups.items():
            try:
                results = await asyncio.to_thread(self.run, [p for p, _ in rows], model)
            except Exception as exc:  # handed to every waiting caller
                for _, future in rows:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), value in zip(rows, results, strict=True):
                if future.done():
                    continue
                if isinstance(value, Exception):  # that row alone failed
                    future.set_exception(value)
                else:
                    future.set_result(value)
        if self.pending:  # requests that arrived while this batch ran
            self.flushing = asyncio.get_running_loop().create_task(self._flush())


def ExpertRagasLLM(llm: Any, expert: str | None = None, max_new_tokens: int = 256,
                   batch_window: float = 0.02) -> Any:
    """A RAGAS ``InstructorBaseRagasLLM`` over ``llm`` (an :class:`ExpertLLM`), answering with
    ``expert`` (None: the base). Built on call so importing this module needs no RAGAS."""
    base, _ = _base_classes()

    class _ExpertRagasLLM(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.llm, self.expert, self.max_new_tokens = llm, expert, max_new_tokens
            self.calls = 0
            self._batcher: _Batcher | None = None
            self._loop: asyncio.AbstractEventLoop | None = None

        def _run(self, prompts: list[str], response_model: type) -> list[Any | Exception]:
            """One batched ``generate`` per distinct (pinned) schema. A pinned verdict list
            gets ``VERDICT_TOKENS`` per verdict when that is more than ``max_new_tokens``,
            so that every statement is judged rather than closed by the grammar. A row that
            fails is retried alone, so one bad item does not fail its batch; what still
            fails comes back as the exception, for its own caller."""
            schema = _non_empty_arrays(copy.deepcopy(response_model.model_json_schema()))
            groups: dict[str, tuple[dict[str, Any], int, list[int]]] = {}
            for i, prompt in enumerate(prompts):
                own, pinned = _pin_to_input(schema, prompt)
                budget = max(self.max_new_tokens, VERDICT_TOKENS * pinned)
                key = json.dumps(own, sort_keys=True)
                groups.setdefault(key, (own, budget, []))[2].append(i)
            out: list[Any] = [None] * len(prompts)
            for own, budget, rows in groups.values():
                try:
                    out_rows = self._generate([prompts[i] for i in rows], own, budget,
                                              response_model)
                except Exception:
                    out_rows = []
                    for i in rows:  # alone, so that only the bad row fails
                        try:
                            out_rows += self._generate([prompts[i]], own, budget,
                                                       response_model)
                        except Exception as exc:
                            out_rows.append(exc)
                for i, value in zip(rows, out_rows, strict=True):
                    out[i] = value
            return out

        def _generate(self, prompts: list[str], schema: dict[str, Any], budget: int,
                      response_model: type) -> list[Any]:
            convs = [[{"role": "user", "content": p}] for p in prompts]
            results = self.llm.generate(convs, expert=self.expert, json_schema=schema,
                                        max_new_tokens=budget)
            self.calls += len(convs)
            return [response_model.model_validate(r.parsed) for r in results]

        def generate(self, prompt: str, response_model: type) -> Any:
            value = self._run([prompt], response_model)[0]
            if isinstance(value, Exception):
                raise value
            return value

        async def agenerate(self, prompt: str, response_model: type) -> Any:
            loop = asyncio.get_running_loop()
            if self._batcher is None or self._loop is not loop:
                self._batcher, self._loop = _Batcher(self._run, batch_window), loop
            return await self._batcher.submit(prompt, response_model)

        def __repr__(self) -> str:
            return f"ExpertRagasLLM({getattr(self.llm, 'model_name', self.llm)!r}, " \
                   f"expert={self.expert!r})"

    return _ExpertRagasLLM()


def ExpertRagasEmbeddings(embedder: Any = None) -> Any:
    """A RAGAS ``BaseRagasEmbedding`` over expertrag's :class:`Embedder` (default model)."""
    _, base = _base_classes()
    if embedder is None:
        from expertrag.embeddings import Embedder

        embedder = Embedder()

    class _ExpertRagasEmbeddings(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.embedder = embedder

        def embed_text(self, text: str, **kwargs: Any) -> list[float]:
            return list(self.embedder.embed_query(text))

        async def aembed_text(self, text: str, **kwargs: Any) -> list[float]:
            return await asyncio.to_thread(self.embed_text, text)

        def embed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
            return [list(v) for v in self.embedder.embed_documents(list(texts))]

        async def aembed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
            return await asyncio.to_thread(self.embed_texts, texts)

    return _ExpertRagasEmbeddings()


@contextmanager
def no_openai() -> Iterator[None]:
    """While active, RAGAS' default-client factories raise :class:`OpenAIFallbackError`
    instead of building an OpenAI client (``evaluate()`` without ``llm=`` would)."""
    import_ragas()
    import ragas.embeddings as emb_pkg
    import ragas.embeddings.base as emb_base
    import ragas.llms as llms_pkg
    import ragas.llms.base as llms_base

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OpenAIFallbackError(
            "RAGAS tried to build its default OpenAI client; pass expertrag's judge "
            "(ExpertRagasLLM / ExpertRagasEmbeddings) to every metric instead")

    targets = [(mod, name) for mod in (llms_pkg, llms_base, emb_pkg, emb_base)
               for name in ("llm_factory", "embedding_factory")
               if hasattr(mod, name)]
    evaluation = sys.modules.get("ragas.evaluation")
    saved = [(mod, name, getattr(mod, name)) for mod, name in targets]
    if evaluation is not None:
        for name in ("llm_factory", "embedding_factory"):
            if hasattr(evaluation, name):
                saved.append((evaluation, name, getattr(evaluation, name)))
    for mod, name, _ in saved:
        setattr(mod, name, refuse)
    try:
        yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)


def ragas_metric(name: str, llm: Any = None, embeddings: Any = None, **kwargs: Any) -> Any:
    """A ``ragas.metrics.collections`` metric by name, wired to the given judge."""
    import_ragas()
    from ragas.metrics import collections as mc

    metric_class = getattr(mc, name, None)
    if metric_class is None:
        raise InputError(f"RAGAS has no collections metric {name!r}")
    import inspect

    params = inspect.signature(metric_class.__init__).parameters
    if "llm" in params:
        if llm is None:
            raise InputError(f"{name} needs an LLM judge (ExpertRagasLLM)")
        kwargs["llm"] = llm
    if "embeddings" in params:
        if embeddings is None:
            raise InputError(f"{name} needs embeddings (ExpertRagasEmbeddings)")
        kwargs["embeddings"] = embeddings
    return metric_class(**kwargs)
