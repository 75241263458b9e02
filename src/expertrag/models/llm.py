"""ExpertLLM: one base causal LM carrying named LoRA experts, chosen per call.

All model work runs on one dedicated worker thread (see ``worker.py``), which makes the
per-call expert choice safe under concurrency: peft's active adapter is global state, and the
worker sets it for each call before that call runs. A batch may mix experts (peft's
``adapter_names``), generation is truly batched (left padding, one ``generate``), and
structured output / tool calls are constrained by a grammar so they always parse.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import re
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from expertrag.errors import (
    ContextWindowExceededError,
    ExpertError,
    ExpertRAGError,
    InputError,
    StructuredOutputError,
    UnknownExpertError,
)
from expertrag.models.batching import (
    attention_span,
    default_overhead,
    pad_rows,
    plan_batches,
)
from expertrag.models.chat import check_num_beams, render_prompt, validate_messages
from expertrag.models.fastpath import install_fast_head, install_lean_lora
from expertrag.models.loading import (
    DEFAULT_MODEL,
    LoadedModel,
    cpu_has_native_bf16,
    load_base_model,
    model_fingerprint,
)
from expertrag.models.schemas import prepare_schema
from expertrag.models.structured import (
    TOOL_CALL_OPEN,
    GrammarFactory,
    SchemaViolation,
    ToolCall,
    call_key,
    normalize_tool,
    parse_json,
    parse_tool_calls,
)
from expertrag.models.worker import ModelWorker

logger = logging.getLogger(__name__)

EXPERT_METADATA = "expertrag_expert.json"
_BASE = "__base__"  # peft's name for "no adapter" inside a mixed batch
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: how many times a row whose JSON fails a post-checked keyword (uniqueItems) is generated
#: again, sampling; bounded, so a call never loops
SCHEMA_RETRIES = 2
ENV_SPECULATIVE = "EXPERTRAG_SPECULATIVE"  # "0" turns the speculative path off
# True / "bf16": the base's bf16 copy drafts; "ngram": prompt lookup (no draft model);
# "auto": bf16 where the CPU computes it natively; False: off
SPECULATIVE_MODES = (False, True, "auto", "bf16", "ngram")

Messages = list[dict[str, Any]]


@contextmanager
def peft_deprecation_quiet() -> Iterator[None]:
    """Silence the one FutureWarning that wrapping a model in peft triggers with
    transformers >= 5: peft reads ``model.is_gradient_checkpointing``, a property transformers
    deprecated for ``is_activation_checkpointing``. peft's use is internal (nothing for a user
    to change), so the warning is noise on every first run; every other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning)
        yield


_SHARED: dict[str, ExpertLLM] = {}
_SHARED_LOCK = threading.Lock()


@dataclass
class GenerationResult:
    """The outcome of one generation: text or tool calls or parsed JSON, plus usage."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | "tool_calls"
    model_name: str
    expert: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    parsed: Any = None
    #: log-probability of each generated token (with ``logprobs=True``)
    logprobs: list[float] | None = None
    #: the probability that the answer starts as the refusal, where a refusal gate applied
    refusal_probability: float | None = None
    #: set while the parsed JSON fails the schema (before a retry); never on a returned result
    _violation: SchemaViolation | None = field(default=None, repr=False, compare=False)

    @property
    def mean_logprob(self) -> float | None:
        """The mean token log-probability of the answer (Self-RAG's sequence score)."""
        if not self.logprobs:
            return None
        return sum(self.logprobs) / len(self.logprobs)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class StreamChunk:
    """A piece of streamed text; the last chunk has ``final`` set to the full result."""

    text: str
    final: GenerationResult | None = None


@dataclass
class _Options:
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    json_schema: dict[str, Any] | None
    json_mode: bool
    tools: list[dict[str, Any]]
    tool_choice: str
    parallel_tool_calls: bool = True
    logprobs: bool = False
    continue_final_message: bool = False
    refusal_gate: bool = True
    refusal_threshold: float | None = None
    num_beams: int | None = None  # None: the expert's own (metadata ``decoding``), else 1
    attempt: int = 0  # > 0 on a retry after a failed post-check (see _grouped)

    @property
    def constrained(self) -> bool:
        return bool(self.json_schema is not None or self.json_mode or self.tools)


class ExpertLLM:
    """A local causal LM with named LoRA experts; weights load lazily on first use.

    >>> llm = ExpertLLM()                        # embedded SmolLM2-135M-Instruct
    >>> llm.add_expert("grounded-qa", "path/to/adapter")
    >>> llm.generate([{"role": "user", "content": "Hi"}], expert="grounded-qa").text

    ``dtype`` None / "auto" loads bf16 on a GPU and on a CPU that computes bf16 natively
    (AVX512-BF16, AMX), fp32 on any other CPU (``loading.resolve_dtype``): a CPU decode step
    streams every weight, so bf16 decodes ~2x faster, and the shipped experts score and
    answer held-out questions as well as in fp32 (README, "Benchmarks"). ``dtype="float32"``
    keeps fp32.

    ``speculative`` (opt-in, for fp32 weights): one greedy, unconstrained row is drafted by a
    bf16 copy of the base and verified by the served fp32 model
    (``expertrag.models.speculative``): the same tokens, fewer weight-bound fp32 steps.
    "auto" uses it only on CPUs with native bf16 and fp32 weights. It costs a bf16 copy of
    the base weights (270 MB for SmolLM2-135M), built on first use; on 2 Zen 5 cores it
    measured 0.81-1.15x eager, so it is off by default. "ngram" drafts by prompt lookup
    instead (no draft model; 0.91-0.97x eager there, where a 5-token verifying pass costs
    1.39x a 1-token step). ``EXPERTRAG_SPECULATIVE=0`` turns
    it off everywhere.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        dtype: Any = None,
        device: str | None = None,
        quantization: str | None = None,
        trust_remote_code: bool = False,
        experts: dict[str, str] | None = None,
        speculative: bool | str = False,
    ) -> None:
        if speculative not in SPECULATIVE_MODES:
            raise InputError(f"speculative must be one of {SPECULATIVE_MODES}, got "
                             f"{speculative!r}")
        self.model_id = model
        self.speculative = speculative
        self._draft: Any = None  # the bf16 draft model, built on first speculative use
        self.last_speculation: dict[str, int] = {}  # counts from the last speculative row
        self._load_kwargs = {"dtype": dtype, "device": device, "quantization": quantization,
                             "trust_remote_code": trust_remote_code}
        self._loaded: LoadedModel | None = None
        self._peft: Any = None
        self._experts: dict[str, dict[str, Any]] = {}
        self._serving: str | None = None  # expert kept merged into the base weights
        self._merged: str | None = None
        self._tuner_layers: list[Any] | None = None  # peft's adapter layers, for routing
        self._grammars: GrammarFactory | None = None
        self._fingerprint: str | None = None
        self._worker = ModelWorker()
        self._pending_experts = dict(experts or {})

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_MODEL, **kwargs: Any) -> ExpertLLM:
        """Build and load now (rather than on first use)."""
        return cls(model, **kwargs).load()

    @classmethod
    def shared(cls, model: str = DEFAULT_MODEL, **kwargs: Any) -> ExpertLLM:
        """A process-wide instance per (model, load options), so framework wrappers that are
        built many times (one per chain, per test) share one set of weights and one worker.
        Experts attached to it are visible to every holder."""
        key = json.dumps([model, {k: str(v) for k, v in sorted(kwargs.items())}])
        with _SHARED_LOCK:
            if key not in _SHARED:
                _SHARED[key] = cls(model, **kwargs)
            return _SHARED[key]

    @classmethod
    def from_model(cls, hf_model: Any, tokenizer: Any, name: str = "custom") -> ExpertLLM:
        """Wrap an already-loaded transformers model and tokenizer (tests, custom set-ups)."""
        from expertrag.models.loading import ModelSource

        llm = cls(name)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        hf_model.eval()
        install_fast_head(hf_model)
        llm._loaded = LoadedModel(hf_model, tokenizer, ModelSource(name, "dir", name), 0.0, False)
        return llm

    def load(self) -> ExpertLLM:
        """Load the base model (idempotent) and attach experts given to the constructor."""
        if self._loaded is None:
            self._loaded = self._worker.run(
                lambda: load_base_model(self.model_id, **self._load_kwargs)
            )
            install_fast_head(self._loaded.model)
        pending, self._pending_experts = self._pending_experts, {}
        for name, path in pending.items():
            self.add_expert(name, path)
        return self

    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            self.load()
        assert self._loaded is not None
        return self._loaded

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def base_model(self) -> Any:
        return self.loaded.model

    @property
    def model_name(self) -> str:
        return self._loaded.name if self._loaded else self.model_id

    @property
    def context_window(self) -> int:
        config = self.base_model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            if getattr(config, key, None):
                return int(getattr(config, key))
        return int(getattr(self.tokenizer, "model_max_length", 2048))

    @property
    def fingerprint(self) -> str:
        """Content hash of the base model; experts record it and are refused elsewhere."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.base_model)
        return self._fingerprint

    @property
    def _model(self) -> Any:
        return self._peft if self._peft is not None else self.base_model

    @property
    def grammars(self) -> GrammarFactory:
        if self._grammars is None:
            vocab = int(self.base_model.config.vocab_size)
            self._grammars = GrammarFactory(self.tokenizer, vocab)
        return self._grammars

    # ------------------------------------------------------------------ experts
    @property
    def experts(self) -> list[str]:
        """Names of the attached experts."""
        return list(self._experts) + list(self._pending_experts)

    def expert_info(self, name: str) -> dict[str, Any]:
        """The adapter's path, peft config and expertrag metadata."""
        self._check_expert(name)
        return dict(self._experts[name])

    def add_expert(self, name: str, path: str | Path, *, check_base: bool = True) -> None:
        """Attach the PEFT LoRA/DoRA adapter at `path` under `name`.

        Fails with ExpertError when files are missing, the adapter is not LoRA, it uses
        pickle weights, or it was trained for another base (recorded fingerprint or tensor
        shapes). `check_base=False` skips the fingerprint comparison (shapes are always
        checked), e.g. for an adapter trained on a differently quantized copy of the base.
        """
        if not isinstance(name, str) or not _NAME_RE.match(name) or name == _BASE:
            raise ExpertError(f"invalid expert name {name!r}: use letters, digits, '-', '_', '.'")
        if name in self._experts:
            raise ExpertError(f"an expert named {name!r} is already attached; remove it first")
        if not isinstance(path, str | Path):
            raise ExpertError(f"expert {name!r}: path must be a folder path, got "
                              f"{type(path).__name__}")
        info = self._inspect_adapter(name, Path(path), check_base)
        try:
            self._worker.run(lambda: self._attach(name, info))
        except ExpertRAGError:
            raise
        except Exception as exc:  # peft refused the adapter's files
            raise ExpertError(f"expert {name!r}: peft cannot load the adapter in {path} "
                              f"({type(exc).__name__}: {exc})") from exc
        self._experts[name] = info

    def _inspect_adapter(self, name: str, folder: Path, check_base: bool = True) -> dict[str, Any]:
        from safetensors import safe_open

        if not folder.is_dir():
            raise ExpertError(f"expert {name!r}: adapter folder not found: {folder}")
        config_file = folder / "adapter_config.json"
        weights = folder / "adapter_model.safetensors"
        if not config_file.is_file():
            raise ExpertError(f"expert {name!r}: {folder} has no adapter_config.json")
        if not weights.is_file():
            hint = " (pickle-based adapter_model.bin is refused)" if (
                folder / "adapter_model.bin").exists() else ""
            raise ExpertError(f"expert {name!r}: {folder} has no adapter_model.safetensors{hint}")
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ExpertError(f"expert {name!r}: unreadable adapter_config.json: {exc}") from exc
        if not isinstance(config, dict):
            raise ExpertError(f"expert {name!r}: adapter_config.json is not a JSON object")
        if config.get("peft_type") != "LORA":
            raise ExpertError(
                f"expert {name!r}: peft_type {config.get('peft_type')!r} is not supported (LORA)"
            )
        meta: dict[str, Any] = {}
        if (folder / EXPERT_METADATA).is_file():
            try:
                meta = json.loads((folder / EXPERT_METADATA).read_text(encoding="utf-8"))
                if not isinstance(meta, dict) or not isinstance(meta.get("base", {}), dict):
                    raise ValueError("not an expert card (a JSON object with a 'base' object)")
            except (OSError, ValueError) as exc:
                raise ExpertError(f"expert {name!r}: unreadable {EXPERT_METADATA} in "
                                  f"{folder}: {exc}") from exc
            recorded = meta.get("base", {}).get("fingerprint")
            if check_base and recorded and recorded != self.fingerprint:
                raise ExpertError(
                    f"expert {name!r} was trained for base {meta['base'].get('name')!r} "
                    f"(fingerprint {recorded}); this model is {self.model_name!r} "
                    f"(fingerprint {self.fingerprint})"
                )
        modules = dict(self.base_model.named_modules())
        try:
            with safe_open(str(weights), framework="pt") as handle:
                for key in handle.keys():
                    if ".lora_A" not in key and ".lora_B" not in key:
                        continue
                    module_name = key.split(".lora_")[0].removeprefix("base_model.model.")
                    module = modules.get(module_name)
                    if module is None:
                        raise ExpertError(
                            f"expert {name!r} targets module {module_name!r}, which base "
                            f"{self.model_name!r} does not have: it was trained for another base"
                        )
                    shape = handle.get_slice(key).get_shape()
                    in_f = getattr(module, "in_features", None)
                    out_f = getattr(module, "out_features", None)
                    ok = (shape[-1] == in_f) if ".lora_A" in key else (shape[0] == out_f)
                    if in_f is not None and out_f is not None and not ok:
                        raise ExpertError(
                            f"expert {name!r}: weight {key} has shape {list(shape)} but module "
                            f"{module_name} is {in_f}->{out_f}: it was trained for another base"
                        )
        except ExpertError:
            raise
        except Exception as exc:  # safetensors' SafetensorError, OSError: a damaged file
            raise ExpertError(
                f"expert {name!r}: {weights} cannot be read ({type(exc).__name__}: {exc}): "
                "the file is damaged or truncated; copy it again or retrain the expert"
            ) from exc
        gate = meta.get("refusal_gate")
        if gate is not None:
            ok = (isinstance(gate, dict) and isinstance(gate.get("text"), str)
                  and gate["text"].strip() and isinstance(gate.get("threshold"), int | float)
                  and 0.0 <= gate["threshold"] <= 1.0)
            if not ok:
                raise ExpertError(f"expert {name!r}: refusal_gate in {EXPERT_METADATA} needs "
                                  "a non-empty 'text' and a 'threshold' within [0, 1]")
            gate = (gate["text"], float(gate["threshold"]))
        decoding = meta.get("decoding", {})
        try:
            if not isinstance(decoding, dict):
                raise InputError(f"decoding must be an object like {{\"num_beams\": 3}}, got "
                                 f"{decoding!r}")
            beams = check_num_beams(decoding.get("num_beams", 1)) or 1
        except InputError as exc:
            raise ExpertError(f"expert {name!r}: {EXPERT_METADATA}: {exc}") from exc
        return {"path": str(folder), "config": config, "metadata": meta,
                "dora": bool(config.get("use_dora")), "gate": gate, "num_beams": beams}

    def _attach(self, name: str, info: dict[str, Any]) -> None:
        from peft import PeftModel

        self._unmerge()
        # On a bf16/fp16 base peft keeps the adapters in fp32 and casts their input: on a CPU,
        # for the few rows of a decode step, bf16's small LoRA products cost ~2-3x fp32's
        # with the casts (fastpath's docstring), and the lean forward keeps peft's numbers.
        serve = {"is_trainable": False}
        if self._peft is None:
            with peft_deprecation_quiet():
                self._peft = PeftModel.from_pretrained(
                    self.base_model, info["path"], adapter_name=name, **serve
                )
        else:
            self._route(self._peft.active_adapter)  # a clean, enabled state to load into
            self._peft.load_adapter(info["path"], adapter_name=name, **serve)
        self._peft.eval()
        # served, never trained here: frozen weights make switching a pointer change
        self._peft.requires_grad_(False)
        self._tuner_layers = None
        install_lean_lora(self._peft)

    def remove_expert(self, name: str) -> None:
        """Detach an expert and free its weights."""
        self._check_expert(name)

        def detach() -> None:
            self._unmerge()
            self._tuner_layers = None
            if self._serving == name:
                self._serving = None
            if len(self._experts) == 1:
                self._loaded.model = self._peft.unload()  # type: ignore[union-attr]
                self._peft = None
            else:
                self._peft.delete_adapter(name)

        self._worker.run(detach)
        del self._experts[name]

    def merge(self, name: str | None) -> None:
        """Serve `name` from merged weights (full speed); None returns to unmerged serving.
        Calls that ask for another expert still work: they unmerge first (slower)."""
        if name is not None:
            self._check_expert(name)
            if self._experts[name]["dora"]:
                logger.info("expert %r is DoRA: merging is exact but slow to undo", name)
        self._serving = name
        self._worker.run(lambda: self._prepare([name]))

    def _check_expert(self, name: str | None) -> None:
        if name is None:
            return
        if self._pending_experts:
            self.load()
        if name not in self._experts:
            known = ", ".join(self._experts) or "none attached"
            raise UnknownExpertError(f"unknown expert {name!r} (attached: {known})")

    def _unmerge(self) -> None:
        if self._merged is not None:
            self._peft.base_model.unmerge_adapter()
            self._merged = None

    def _route(self, expert: str | None) -> None:
        """Make every adapter layer serve `expert` (None: the bare base).

        peft's ``set_adapter`` / ``enable_adapter_layers`` walk the whole model and toggle
        ``requires_grad`` on every adapter weight (~8 ms per switch on SmolLM2). Attached
        experts are frozen, so serving only needs each cached layer's active adapter and
        enabled flag set: ~0.05 ms. Adapters with extra trainable modules (modules_to_save)
        take peft's own path. ``test_routing_matches_peft_switching`` pins this to peft.
        """
        if any(info["config"].get("modules_to_save") for info in self._experts.values()):
            if expert is None:
                self._peft.base_model.disable_adapter_layers()
            else:
                self._peft.base_model.enable_adapter_layers()
                self._peft.set_adapter(expert, inference_mode=True)
            return
        if self._tuner_layers is None:
            from peft.tuners.tuners_utils import BaseTunerLayer

            self._tuner_layers = [m for m in self._peft.modules()
                                  if isinstance(m, BaseTunerLayer)]
        for layer in self._tuner_layers:
            layer._disable_adapters = expert is None
            if expert is not None:
                layer._active_adapter = [expert]
        if expert is not None:
            self._peft.base_model.active_adapter = expert
            self._peft.active_adapter = expert

    def _prepare(self, experts: list[str | None]) -> dict[str, Any]:
        """Put the model in the state for this set of experts (on the worker, so no other
        call sees it). Returns the extra generate kwargs.

        One expert (or the bare base) for the whole batch: the adapter layers are routed to
        it, so it runs at the speed of a single adapter. The expert kept merged (`merge`) is
        served from its merged weights. A batch that mixes experts goes through peft's
        ``adapter_names`` (per-row selection inside each layer; DoRA experts, which peft
        cannot mix, were already split into groups by ``_groups``).
        """
        if self._peft is None:
            return {}
        wanted = set(experts)
        if len(wanted) == 1:
            (expert,) = wanted
            if self._merged is not None and self._merged != expert:
                self._unmerge()
            self._route(expert)
            if expert is not None and expert == self._serving and self._merged is None:
                self._peft.base_model.merge_adapter([expert])
                self._merged = expert
            return {}
        self._unmerge()
        self._route(next(e for e in experts if e is not None))  # layers on for per-row names
        return {"adapter_names": [_BASE if e is None else e for e in experts]}

    # ------------------------------------------------------------------ requests
    def _options(self, max_new_tokens: int, temperature: float, top_p: float, seed: int | None,
                 stop: str | list[str] | None, json_schema: dict[str, Any] | None,
                 json_mode: bool, tools: list[dict[str, Any]] | None,
                 tool_choice: str | None, parallel_tool_calls: bool = True,
                 logprobs: bool = False, continue_final_message: bool = False,
                 refusal_gate: bool = True, refusal_threshold: float | None = None,
                 num_beams: int | None = None) -> _Options:
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise InputError(
                f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}"
            )
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if any(not isinstance(s, str) or not s for s in stops):
            raise InputError(f"stop sequences must be non-empty strings, got {stops!r}")
        norm_tools = [normalize_tool(t) for t in tools or []]
        choice = tool_choice or "auto"
        if choice == "required":
            choice = "any"
        if norm_tools:
            names = {t["name"] for t in norm_tools}
            if choice not in ("auto", "none", "any") and choice not in names:
                raise InputError(f"tool_choice {choice!r} names no bound tool ({sorted(names)})")
            if choice == "none":
                norm_tools = []
            elif choice not in ("auto", "any"):
                norm_tools = [t for t in norm_tools if t["name"] == choice]
        if norm_tools and (json_schema is not None or json_mode):
            raise InputError("tools and json_schema/json_mode cannot be combined in one call")
        if json_schema is not None:
            # refuse, before any token, a schema keyword that can be neither enforced by the
            # grammar nor post-checked (UnsupportedSchemaError names it)
            prepare_schema(json_schema)
        if norm_tools and continue_final_message:
            raise InputError("continue_final_message cannot be combined with tools")
        if refusal_threshold is not None and not 0.0 <= refusal_threshold <= 1.0:
            raise InputError(f"refusal_threshold must be within [0, 1], got "
                             f"{refusal_threshold!r}")
        if (check_num_beams(num_beams) or 1) > 1:
            clash = [name for name, on in (("temperature > 0", temperature > 0),
                                           ("json_schema/json_mode/tools",
                                            norm_tools or json_schema is not None or json_mode),
                                           ("logprobs", logprobs)) if on]
            if clash:
                raise InputError(f"num_beams > 1 is plain beam search: it cannot be combined "
                                 f"with {', '.join(clash)}")
        return _Options(max_new_tokens, float(temperature), float(top_p), seed, stops,
                        json_schema, bool(json_mode), norm_tools, choice,
                        bool(parallel_tool_calls), bool(logprobs),
                        bool(continue_final_message), bool(refusal_gate), refusal_threshold,
                        num_beams=num_beams)

    @staticmethod
    def _as_batch(messages: Any) -> tuple[list[Messages], bool]:
        if isinstance(messages, str):
            return [validate_messages(messages)], False
        if isinstance(messages, list) and messages and all(
            isinstance(m, list | str) for m in messages
        ):
            return [validate_messages(m) for m in messages], True
        return [validate_messages(messages)], False

    def _experts_for(self, expert: str | list[str | None] | None, n: int) -> list[str | None]:
        experts = list(expert) if isinstance(expert, list | tuple) else [expert] * n
        if len(experts) != n:
            raise InputError(f"got {len(experts)} experts for a batch of {n} conversations")
        for e in set(experts):
            self._check_expert(e)
        return experts

    def render(self, messages: Messages, tools: list[dict[str, Any]] | None = None) -> str:
        """The exact prompt string sent to the model for `messages`."""
        return render_prompt(self.tokenizer, messages, tools)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _request(self, messages: Any, expert: Any, kwargs: dict[str, Any]):
        batch, is_batch = self._as_batch(messages)
        opts = self._options(**kwargs)
        experts = self._experts_for(expert, len(batch))
        return batch, experts, opts, is_batch

    def generate(
        self,
        messages: Any,
        *,
        expert: str | list[str | None] | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | list[str] | None = None,
        json_schema: dict[str, Any] | None = None,
        json_mode: bool = False,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | None = None,
        parallel_tool_calls: bool = True,
        logprobs: bool = False,
        continue_final_message: bool = False,
        refusal_gate: bool = True,
        refusal_threshold: float | None = None,
        num_beams: int | None = None,
    ) -> Any:
        """Generate for one conversation (returns a GenerationResult) or a batch
        (a list of conversations; returns a list), in one batched forward pass.

        `expert` names the expert (None = bare base) or gives one per conversation.
        Greedy when temperature is 0. `json_schema` / `json_mode` / `tools` constrain the
        output by grammar so it always parses (the schema is also shown in the prompt);
        `parallel_tool_calls=False` allows at most one call. `logprobs=True` records each
        generated token's log-probability (``result.logprobs``, ``result.mean_logprob``).
        `continue_final_message=True` continues a final, partial assistant message (its text
        is not repeated in the result).

        Refusal gate: an expert that ships a calibrated ``refusal_gate`` (e.g. grounded-qa)
        refuses only when the probability that its answer starts as the refusal reaches the
        threshold; below it the refusal's first token is barred and the model answers. Greedy
        decoding alone refuses whenever the refusal's single first token beats every
        answer's first token, even when most of the mass is on answers. The probability is
        read from the first decoding step (no extra forward pass) and reported as
        ``result.refusal_probability``. ``refusal_gate=False`` turns it off;
        ``refusal_threshold`` sets the threshold for this call (and gates the bare base too).

        ``num_beams > 1``: beam search with length-normalised scores instead of greedy
        decoding (not with sampling, grammars or log-probabilities; streamed, the answer
        comes as one chunk when the search ends). It finds answers whose first token is not
        the single likeliest one but whose whole span is (``on the third Saturday of
        August`` over ``August``). The prompt is prefilled once and shared by the beams, so
        on a grounded prompt it costs ~1.17x a greedy answer. ``None`` (default): the
        expert's own setting (its metadata's ``decoding.num_beams``; grounded-qa ships 3)
        for plain greedy calls, greedy otherwise and for the bare base.
        """
        prompts, experts, opts, is_batch = self._request(messages, expert, dict(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
            stop=stop, json_schema=json_schema, json_mode=json_mode, tools=tools,
            tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls,
            logprobs=logprobs, continue_final_message=continue_final_message,
            refusal_gate=refusal_gate, refusal_threshold=refusal_threshold,
            num_beams=num_beams))
        results = self._worker.run(lambda: self._generate_rows(prompts, experts, opts))
        return results if is_batch else results[0]

    async def agenerate(self, messages: Any, **kwargs: Any) -> Any:
        """Async :meth:`generate`: the event loop stays free while the worker generates."""
        expert = kwargs.pop("expert", None)
        if self._loaded is None:
            await self._worker.arun(self.load)
        prompts, experts, opts, is_batch = self._request(messages, expert, _defaults(kwargs))
        results = await self._worker.arun(lambda: self._generate_rows(prompts, experts, opts))
        return results if is_batch else results[0]

    def stream(self, messages: Messages, **kwargs: Any) -> Iterator[StreamChunk]:
        """Yield text chunks as they are generated; the last chunk carries the result."""
        expert = kwargs.pop("expert", None)
        prompts, experts, opts, _ = self._request(messages, expert, _defaults(kwargs))
        tokens: queue.SimpleQueue[Any] = queue.SimpleQueue()
        future = self._worker.submit(
            lambda: self._generate_rows(prompts, experts, opts, on_tokens=tokens.put)
        )
        decoder = _StreamDecoder(self.tokenizer, opts)
        while (item := tokens.get()) is not None:
            if text := decoder.feed(item):
                yield StreamChunk(text)
        result = future.result()[0]
        yield StreamChunk(decoder.finish(result), final=result)

    async def astream(self, messages: Messages, **kwargs: Any) -> AsyncIterator[StreamChunk]:
        """Async :meth:`stream`."""
        expert = kwargs.pop("expert", None)
        if self._loaded is None:
            await self._worker.arun(self.load)
        prompts, experts, opts, _ = self._request(messages, expert, _defaults(kwargs))
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue[Any] = asyncio.Queue()

        def push(item: Any) -> None:
            loop.call_soon_threadsafe(tokens.put_nowait, item)

        future = self._worker.submit(
            lambda: self._generate_rows(prompts, experts, opts, on_tokens=push)
        )
        decoder = _StreamDecoder(self.tokenizer, opts)
        while (item := await tokens.get()) is not None:
            if text := decoder.feed(item):
                yield StreamChunk(text)
        result = (await asyncio.wrap_future(future))[0]
        yield StreamChunk(decoder.finish(result), final=result)

    def label_probabilities(
        self,
        batch: list[Messages],
        labels: tuple[str, ...] = ("yes", "no"),
        *,
        expert: str | list[str | None] | None = None,
        batch_size: int = 16,
        raw: bool = False,
        normalize: bool = True,
    ) -> list[dict[str, float]]:
        """P(label) for the first generated token of each conversation, from one forward
        pass per conversation and no generation: a calibrated score for grading/reranking.
        ``raw=True``: ``batch`` holds prompt strings sent as they are, without the chat
        template (for models with their own prompt format, e.g. Self-RAG checkpoints).
        ``normalize=False``: each label's probability under the whole vocabulary (they need
        not sum to one), e.g. how likely the answer is to start with a refusal."""
        if not labels or len(set(labels)) != len(labels):
            raise InputError(f"labels must be distinct non-empty strings, got {labels!r}")
        if raw:
            if any(not isinstance(p, str) or not p for p in batch):
                raise InputError("raw=True needs a list of non-empty prompt strings")
            prompts = list(batch)
            experts = self._experts_for(expert, len(prompts))
        else:
            convs = [validate_messages(m) for m in batch]
            experts = self._experts_for(expert, len(convs))
            prompts = [render_prompt(self.tokenizer, m) for m in convs]
        return self._worker.run(lambda: self._label_probs(prompts, experts, labels, batch_size,
                                                          normalize))

    # ------------------------------------------------------------------ worker side
    def _encode(self, prompts: list[str]) -> Any:
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        self._check_window(lengths)
        return enc.to(self.base_model.device), lengths

    def _check_window(self, lengths: list[int]) -> None:
        window = self.context_window
        for i, n in enumerate(lengths):
            if n >= window:
                which = "the prompt" if len(lengths) == 1 else f"prompts[{i}]"
                raise ContextWindowExceededError(
                    f"{which} has {n} tokens; model {self.model_name!r} has a context "
                    f"window of {window} tokens (leave room for the answer)"
                )

    def _label_probs(self, prompts: list[str], experts: list[str | None],
                     labels: tuple[str, ...], batch_size: int,
                     normalize: bool = True) -> list[dict[str, float]]:
        """Batches are planned from the token lengths (``plan_batches``): on mixed-length
        prompts that saves most of the padding a fixed batch of the longest would cost."""
        import torch

        ids = []
        for label in labels:
            toks = self.tokenizer(label, add_special_tokens=False)["input_ids"]
            if not toks:
                raise InputError(f"label {label!r} encodes to no tokens")
            ids.append(toks[0])
        if len(set(ids)) != len(ids):
            raise InputError(f"labels {labels!r} share their first token; pick distinct words")
        encoded = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        self._check_window([len(e) for e in encoded])
        device = self.base_model.device
        overhead = default_overhead(device)
        span = attention_span(self.base_model.config)
        pad = self.tokenizer.pad_token_id or 0
        out: list[dict[str, float]] = [{} for _ in prompts]
        for group in self._groups(experts):
            plan = plan_batches([len(encoded[i]) for i in group], max_rows=batch_size,
                                overhead=overhead, span=span)
            for batch in plan:
                rows = [group[k] for k in batch]
                extra = self._prepare([experts[i] for i in rows])
                inputs = _left_pad([encoded[i] for i in rows], pad, device)
                with torch.inference_mode():
                    # logits_to_keep=1: the LM head runs on the last position only
                    logits = self._model(**inputs, **extra, logits_to_keep=1).logits[:, -1, :]
                if normalize:
                    probs = torch.softmax(logits[:, ids].float(), dim=-1).tolist()
                else:
                    probs = torch.softmax(logits.float(), dim=-1)[:, ids].tolist()
                for i, row in zip(rows, probs, strict=True):
                    out[i] = dict(zip(labels, row, strict=True))
        return out

    def _generate_rows(self, convs: list[Messages], experts: list[str | None], opts: _Options,
                       on_tokens: Callable[[Any], None] | None = None) -> list[GenerationResult]:
        """Render and generate a batch. With tools bound, the model first writes a grammar-
        constrained list of calls; under tool_choice="auto" an empty list (or one that only
        repeats calls already answered in the conversation) means it answers in text,
        generated in a second pass without the tool instructions. Only that text streams."""
        tok = self.tokenizer
        try:
            if not opts.tools:
                schema = opts.json_schema if opts.json_schema is not None else (
                    {"type": "object"} if opts.json_mode else None)
                prompts = [render_prompt(tok, c, json_schema=schema,
                                         continue_final_message=opts.continue_final_message)
                           for c in convs]
                return self._grouped(prompts, experts, opts, on_tokens)
            prompts = [render_prompt(tok, c, opts.tools) for c in convs]
            decided = self._grouped(prompts, experts, opts, None)
            if opts.tool_choice != "auto":
                return decided
            text_rows = []
            for i, (conv, res) in enumerate(zip(convs, decided, strict=True)):
                seen = {call_key(c["name"], c.get("arguments") or {}) for m in conv
                        if m["role"] == "assistant" for c in m.get("tool_calls") or []}
                fresh = []
                for call in res.tool_calls:
                    key = call_key(call.name, call.arguments)
                    if key not in seen:
                        seen.add(key)
                        fresh.append(call)
                res.tool_calls = fresh
                if not fresh:
                    text_rows.append(i)
            if text_rows:
                # the text answer must not imitate a call: stop at the call marker
                text_opts = replace(opts, tools=[], tool_choice="none",
                                    stop=[*opts.stop, TOOL_CALL_OPEN])
                texts = self._grouped([render_prompt(tok, convs[i]) for i in text_rows],
                                      [experts[i] for i in text_rows], text_opts, on_tokens)
                for i, res in zip(text_rows, texts, strict=True):
                    res.prompt_tokens += decided[i].prompt_tokens
                    res.completion_tokens += decided[i].completion_tokens
                    decided[i] = res
            return decided
        finally:
            if on_tokens is not None:
                on_tokens(None)

    def _grouped(self, prompts: list[str], experts: list[str | None], opts: _Options,
                 on_tokens: Callable[[Any], None] | None) -> list[GenerationResult]:
        """Generate, then give JSON rows that fail a post-checked schema keyword (e.g.
        uniqueItems, when dropping repeats is not enough) up to SCHEMA_RETRIES more tries,
        sampled. Retries do not stream; their tokens count in the usage."""
        results = self._grouped_once(prompts, experts, opts, on_tokens)
        if opts.json_schema is None:
            return results
        for attempt in range(1, SCHEMA_RETRIES + 1):
            bad = [i for i, r in enumerate(results) if r._violation is not None]
            if not bad:
                break
            retry = replace(opts, temperature=max(opts.temperature, 0.7),
                            seed=(opts.seed or 0) + attempt, attempt=attempt)
            again = self._grouped_once([prompts[i] for i in bad], [experts[i] for i in bad],
                                       retry, None)
            for i, res in zip(bad, again, strict=True):
                res.completion_tokens += results[i].completion_tokens
                results[i] = res
        for res in results:
            if res._violation is not None:
                raise StructuredOutputError(
                    f"{res._violation} (still after {SCHEMA_RETRIES} retries)"
                ) from res._violation
        return results

    def _grouped_once(self, prompts: list[str], experts: list[str | None], opts: _Options,
                      on_tokens: Callable[[Any], None] | None) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(prompts)
        for group in self._groups(experts):
            by_beams: dict[int, list[int]] = {}
            for i in group:
                by_beams.setdefault(self._beams_for(experts[i], opts), []).append(i)
            for beams, rows in by_beams.items():
                sub = self._generate_group([prompts[i] for i in rows],
                                           [experts[i] for i in rows],
                                           replace(opts, num_beams=beams), on_tokens)
                for i, res in zip(rows, sub, strict=True):
                    results[i] = res
        return results  # type: ignore[return-value]

    def _beams_for(self, expert: str | None, opts: _Options) -> int:
        """The beam width for one row: the call's, else its expert's for a plain greedy
        call (its metadata's ``decoding``), else 1."""
        if opts.num_beams is not None:
            return opts.num_beams
        if expert is None or opts.temperature > 0 or opts.constrained or opts.logprobs:
            return 1
        return int(self._experts[expert].get("num_beams") or 1)

    def _groups(self, experts: list[str | None]) -> list[list[int]]:
        """One group for the whole batch unless it mixes experts that peft cannot serve in
        one mixed batch (DoRA); then one group per expert."""
        mixed = len(set(experts)) > 1
        if mixed and any(self._experts[e]["dora"] for e in set(experts) if e is not None):
            order: dict[str | None, list[int]] = {}
            for i, e in enumerate(experts):
                order.setdefault(e, []).append(i)
            return list(order.values())
        return [list(range(len(experts)))]

    def _generate_group(self, prompts: list[str], experts: list[str | None], opts: _Options,
                        on_tokens: Callable[[Any], None] | None) -> list[GenerationResult]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        enc, lengths = self._encode(prompts)
        width = enc["input_ids"].shape[1]
        max_new = min(opts.max_new_tokens, self.context_window - width)
        tok = self.tokenizer
        eos = _eos_ids(self.base_model, tok)
        if self._speculates(len(prompts), opts):
            return self._speculative_row(enc["input_ids"][0].tolist(), lengths[0], experts,
                                         opts, max_new, eos, on_tokens)
        config = GenerationConfig(
            max_new_tokens=max_new,
            do_sample=opts.temperature > 0,
            temperature=opts.temperature if opts.temperature > 0 else None,
            top_p=opts.top_p if opts.temperature > 0 else None,
            top_k=None,
            pad_token_id=tok.pad_token_id,
            eos_token_id=eos,
        )
        if opts.num_beams > 1:
            config.num_beams, config.length_penalty = opts.num_beams, 1.0
        if opts.logprobs:  # on the config: generate() deprecates them beside one
            config.output_scores = config.return_dict_in_generate = True
        kwargs: dict[str, Any] = {"generation_config": config}
        if opts.stop:
            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [_StopStrings(tok, opts.stop, width)]
            )
        gate = None if opts.constrained else self._gate(experts, opts, width)
        if opts.constrained:
            kwargs["logits_processor"] = LogitsProcessorList(
                [self.grammars.logits_processor([self._grammar(opts)] * len(prompts))]
            )
        elif gate is not None:
            kwargs["logits_processor"] = LogitsProcessorList([gate])
        if on_tokens is not None and opts.num_beams == 1:  # a beam answer streams whole, at the end
            kwargs["streamer"] = _TokenStreamer(on_tokens)
        if opts.seed is not None:
            torch.manual_seed(opts.seed)
        kwargs.update(self._prepare(experts))
        if opts.num_beams > 1:
            if width > 1:
                kwargs[_cache_argument()] = self._shared_prefill(enc, opts.num_beams, kwargs)
            if "adapter_names" in kwargs:  # a mixed batch: one name per hypothesis
                kwargs["adapter_names"] = [n for n in kwargs["adapter_names"]
                                           for _ in range(opts.num_beams)]
        with torch.inference_mode():
            output = self._model.generate(**enc, **kwargs)
        sequences = output.sequences if opts.logprobs else output
        new_tokens = sequences[:, width:].tolist()
        grammar = self._grammar(opts) if opts.constrained else None
        results = [self._result(row, n, e, opts, set(eos), grammar)
                   for row, n, e in zip(new_tokens, lengths, experts, strict=True)]
        if gate is not None:
            for i, res in enumerate(results):
                res.refusal_probability = gate.probabilities[i]
                if gate.refused[i]:  # the gate decided: the answer is the refusal text
                    res.text, res.finish_reason = gate.texts[i], "stop"
        if opts.logprobs:
            with torch.inference_mode():  # the chosen token's log-probability at each step
                steps = torch.stack([torch.log_softmax(sc.float(), dim=-1)
                                     for sc in output.scores], dim=1)
                chosen = sequences[:, width:width + steps.shape[1]]
                picked = steps.gather(-1, chosen.unsqueeze(-1)).squeeze(-1).tolist()
            for res, row in zip(results, picked, strict=True):
                res.logprobs = [float(v) for v in row[:res.completion_tokens]]
        return results

    def _shared_prefill(self, enc: Any, beams: int, kwargs: dict[str, Any]) -> Any:
        """The prompt's KV cache (all but its last token) computed once per row and repeated
        for each beam: ``generate`` would otherwise run the prefill ``beams`` times, which on
        a long grounded prompt costs more than the few answer tokens. Positions start at
        each row's first real token, as ``generate`` numbers them."""
        import torch

        mask = enc["attention_mask"][:, :-1]
        extra = {k: v for k, v in kwargs.items() if k == "adapter_names"}
        with torch.inference_mode():
            out = self._model(input_ids=enc["input_ids"][:, :-1], attention_mask=mask,
                              position_ids=_positions(mask), use_cache=True, logits_to_keep=1,
                              **extra)
        cache = getattr(out, "cache", None) or out.past_key_values
        cache.batch_repeat_interleave(beams)
        return cache

    def _speculates(self, rows: int, opts: _Options) -> bool:
        """Whether this request takes the speculative path (``expertrag.models.speculative``):
        one row, greedy, unconstrained, more than one new token, no log-probabilities, and
        speculation on: True, or "auto" on a CPU that computes bf16 natively with fp32
        weights (there a bf16 draft step costs ~0.6 of an fp32 one; elsewhere more)."""
        if (rows != 1 or opts.max_new_tokens < 2 or opts.temperature > 0 or opts.constrained
                or opts.logprobs or opts.num_beams > 1
                or self.speculative is False or os.environ.get(ENV_SPECULATIVE) == "0"):
            return False
        if self.speculative in (True, "bf16", "ngram"):
            return True
        import torch

        model = self.base_model
        return (model.device.type == "cpu" and model.dtype == torch.float32
                and self._load_kwargs.get("quantization") is None and cpu_has_native_bf16())

    def _speculative_row(self, prompt: list[int], prompt_tokens: int,
                         experts: list[str | None], opts: _Options, max_new: int,
                         eos: list[int], on_tokens: Callable[[Any], None] | None
                         ) -> list[GenerationResult]:
        """One greedy row, drafted by the base's bf16 copy and verified by the served model:
        the same tokens as ``generate``'s greedy loop, the same gate, stops and streaming."""
        import torch

        from expertrag.models.speculative import NgramDraft, bf16_draft, speculative_greedy

        if self.speculative == "ngram":
            draft: Any = NgramDraft()
        else:
            if self._draft is None:  # built once, from the base weights (no adapters)
                self._draft = bf16_draft(self.base_model)
            draft = self._draft
        gate = self._gate(experts, opts, len(prompt))
        stop = None
        if opts.stop:
            stopper = _StopStrings(self.tokenizer, opts.stop, 0)
            stop = lambda new: bool(stopper(torch.tensor([new]), None)[0])  # noqa: E731
        self._prepare(experts)
        ids = speculative_greedy(self._model, draft, prompt, max_new, eos,
                                 processors=[gate] if gate is not None else [], stop=stop,
                                 on_tokens=on_tokens, stats=self.last_speculation)
        result = self._result(ids, prompt_tokens, experts[0], opts, set(eos))
        if gate is not None:
            result.refusal_probability = gate.probabilities[0]
            if gate.refused[0]:
                result.text, result.finish_reason = gate.texts[0], "stop"
        return [result]

    def _gate(self, experts: list[str | None], opts: _Options, width: int) -> Any:
        """The refusal-gate processor for these rows, or None when no row has a gate."""
        from expertrag.rag import REFUSAL

        if not opts.refusal_gate:
            return None
        rows: list[tuple[str, float] | None] = []
        for e in experts:
            own = self._experts[e].get("gate") if e is not None else None
            if opts.refusal_threshold is not None:
                own = (own[0] if own else REFUSAL, opts.refusal_threshold)
            rows.append(own)
        if all(r is None for r in rows):
            return None
        eos = _eos_ids(self.base_model, self.tokenizer)
        return _RefusalGate(self.tokenizer, rows, width, eos[0], beams=opts.num_beams)

    def _grammar(self, opts: _Options) -> Any:
        if opts.tools:
            return self.grammars.tool_calls(opts.tools, required=opts.tool_choice != "auto",
                                            parallel=opts.parallel_tool_calls)
        if opts.json_schema is not None:
            return self.grammars.json_schema(opts.json_schema)
        return self.grammars.json_object()

    def _result(self, ids: list[int], prompt_tokens: int, expert: str | None, opts: _Options,
                eos: set[int], grammar: Any = None) -> GenerationResult:
        end = next((i for i, t in enumerate(ids) if t in eos), None)
        finish = "stop" if end is not None else "length"
        if end is None and grammar is not None:
            # out of tokens inside a constrained value: close it by grammar, so it parses
            ids = ids + self.grammars.complete(grammar, ids, jitter=opts.attempt)
        used = ids if end is None else ids[: end + 1]
        text = self.tokenizer.decode(ids[:end], skip_special_tokens=True)
        cut = _first_stop(text, opts.stop)
        if cut is not None:
            text, finish = text[:cut], "stop"
        result = GenerationResult(text=text, prompt_tokens=int(prompt_tokens),
                                  completion_tokens=len(used), finish_reason=finish,
                                  model_name=self.model_name, expert=expert)
        if opts.tools:
            result.text, result.tool_calls = "", parse_tool_calls(text)
            if result.tool_calls:
                result.finish_reason = "tool_calls"
        elif opts.json_schema is not None or opts.json_mode:
            try:
                result.parsed = parse_json(text, opts.json_schema)
            except SchemaViolation as exc:
                result._violation = exc  # _grouped retries the row
            else:
                if opts.json_schema is not None and result.parsed != json.loads(text,
                                                                                 strict=False):
                    # repeats dropped under uniqueItems: the text says what parsed says
                    result.text = json.dumps(result.parsed, ensure_ascii=False)
        return result

    def close(self) -> None:
        """Stop the worker thread."""
        self._worker.close()


def _cache_argument() -> str:
    """The name ``generate`` takes a prefilled KV cache by (transformers 5 renamed it)."""
    from transformers.generation import utils

    return "cache" if "cache" in getattr(utils, "ALL_CACHE_NAMES", ()) else "past_key_values"


def _defaults(kwargs: dict[str, Any]) -> dict[str, Any]:
    allowed = {"max_new_tokens": 256, "temperature": 0.0, "top_p": 1.0, "seed": None,
               "stop": None, "json_schema": None, "json_mode": False, "tools": None,
               "tool_choice": None, "parallel_tool_calls": True, "logprobs": False,
               "continue_final_message": False, "refusal_gate": True,
               "refusal_threshold": None, "num_beams": None}
    unknown = set(kwargs) - set(allowed)
    if unknown:
        raise InputError(f"unknown generation arguments: {sorted(unknown)}")
    return {**allowed, **kwargs}


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids = model.generation_config.eos_token_id
    found = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    for special in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(special)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            found.add(tid)
    return sorted(found)


def _first_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


class _RefusalGate:
    """At the first decoding step, row by row: P(the refusal's first token) >= threshold
    forces the refusal (then end of text); below it, that token is barred. Records the
    probability; rows without a gate are left alone. Under beam search the scores hold
    ``beams`` consecutive hypotheses per row (all the same prompt at the first step)."""

    def __init__(self, tokenizer: Any, rows: list[tuple[str, float] | None], width: int,
                 eos: int, beams: int = 1) -> None:
        self.width, self.eos, self.beams = width, eos, beams
        self.rows = [None if r is None else
                     (tokenizer(r[0], add_special_tokens=False)["input_ids"][0], r[1])
                     for r in rows]
        self.texts = [r[0] if r is not None else "" for r in rows]
        self.probabilities: list[float | None] = [None] * len(rows)
        self.refused = [False] * len(rows)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        step = input_ids.shape[1] - self.width
        if step == 0:
            probs = torch.softmax(scores.float(), dim=-1)
            for i, row in enumerate(self.rows):
                if row is None:
                    continue
                token, threshold = row
                hyps = slice(i * self.beams, (i + 1) * self.beams)
                p = float(probs[i * self.beams, token])
                self.probabilities[i] = p
                if p >= threshold:
                    self.refused[i] = True
                    scores[hyps, :] = -float("inf")
                    scores[hyps, token] = 0.0
                else:
                    scores[hyps, token] = -float("inf")
        elif step == 1:
            for i, refused in enumerate(self.refused):
                if refused:
                    hyps = slice(i * self.beams, (i + 1) * self.beams)
                    scores[hyps, :] = -float("inf")
                    scores[hyps, self.eos] = 0.0
        return scores


class _StopStrings:
    """Stop a row once its decoded new text contains a stop string. Decoding the tail of
    each row is exact for stop strings of any token length and any tokenizer, where
    matching token pieces is not (byte-level and whitespace merges)."""

    def __init__(self, tokenizer: Any, stops: list[str], prompt_width: int) -> None:
        self._tok = tokenizer
        self._stops = stops
        self._width = prompt_width
        self._window = max(len(s) for s in stops) + 4  # tokens: each decodes to >= 1 char

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        tails = input_ids[:, self._width:][:, -self._window:].tolist()
        texts = self._tok.batch_decode(tails, skip_special_tokens=True)
        done = [any(s in t for s in self._stops) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _TokenStreamer:
    """transformers streamer protocol: the first put() is the prompt, later ones new ids."""

    def __init__(self, callback: Callable[[Any], None]) -> None:
        self._callback = callback
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self._callback(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


class _StreamDecoder:
    """Incremental detokenisation with stop-string hold-back: never emits text that a stop
    sequence would later cut, nor a half-decoded character."""

    def __init__(self, tokenizer: Any, opts: _Options) -> None:
        self._tok = tokenizer
        self._stops = opts.stop
        self._ids: list[int] = []
        self._emitted = 0
        self._stopped = False

    def feed(self, ids: list[int]) -> str:
        if self._stopped:
            return ""
        self._ids.extend(ids)
        text = self._tok.decode(self._ids, skip_special_tokens=True)
        cut = _first_stop(text, self._stops)
        if cut is not None:
            self._stopped, text = True, text[:cut]
        else:
            hold = max((k for s in self._stops for k in range(1, len(s)) if text.endswith(s[:k])),
                       default=0)
            text = text[: len(text) - hold]
            text = text[:-1] if text.endswith("\ufffd") else text
        delta = text[self._emitted:]
        self._emitted = max(self._emitted, len(text))
        return delta

    def finish(self, result: GenerationResult) -> str:
        return result.text[self._emitted:]



def _left_pad(rows: list[list[int]], pad: int, device: Any) -> dict[str, Any]:
    """Left-pad token rows into a batch, with position ids that start at 0 at each row's first
    real token (so a row's logits do not depend on the batch it lands in)."""
    input_ids, mask = pad_rows(rows, pad, left=True)
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device),
            "position_ids": _positions(mask).to(device)}


def _positions(mask: Any) -> Any:
    """Position ids of a left-padded batch: 0 at each row's first real token."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)
