"""ExpertLLM: the in-process backend, one base causal LM carrying named LoRA experts.

All model work runs on one dedicated worker thread (see ``worker.py``), which makes the
per-call expert choice safe under concurrency: peft's active adapter is global state, and the
worker sets it for each call before that call runs. A batch may mix experts (peft's
``adapter_names``), generation is truly batched (left padding, one ``generate``), and
structured output / tool calls are constrained by a grammar so they always parse.

What is shared with the other backends lives beside it: the interface and result types
(``interface.py``), request checks (``request.py``); what is its own, too: the attached
adapters (``adapters.py``) and the decoding helpers (``decoding.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from expertrag.errors import (
    ContextWindowExceededError,
    ExpertError,
    ExpertRAGError,
    InputError,
    StructuredOutputError,
)
from expertrag.experts.card import EXPERT_METADATA
from expertrag.models.adapters import (
    DEFAULT_MERGE_TOKENS,
    AdapterState,
    check_name,
    inspect_adapter,
    peft_deprecation_quiet,
)
from expertrag.models.batching import attention_span, default_overhead, plan_batches
from expertrag.models.chat import render_prompt
from expertrag.models.decoding import (
    LabelHead,
    RefusalGate,
    StopStrings,
    StreamDecoder,
    TokenStreamer,
    cache_argument,
    chosen_logprobs,
    eos_ids,
    first_stop,
    generation_config,
    left_pad,
    shared_prefill,
)
from expertrag.models.fastpath import install_fast_head
from expertrag.models.interface import GenerationResult, Messages, StreamChunk
from expertrag.models.loading import (
    DEFAULT_MODEL,
    LoadedModel,
    load_base_model,
    model_fingerprint,
)
from expertrag.models.request import (
    Options,
    Request,
    answer_with_tools,
    build_request,
    gate_for,
    grammar_for,
    label_prompts,
    label_token_ids,
)
from expertrag.models.speculative import ENV_SPECULATIVE, SPECULATIVE_MODES, should_speculate
from expertrag.models.structured import (
    GrammarFactory,
    SchemaViolation,
    ToolCall,
    parse_json,
    parse_tool_calls,
)
from expertrag.models.worker import ModelWorker

logger = logging.getLogger(__name__)

#: how many times a row whose JSON fails a post-checked keyword (uniqueItems) is generated
#: again, sampling; bounded, so a call never loops
SCHEMA_RETRIES = 2

__all__ = ["ENV_SPECULATIVE", "EXPERT_METADATA", "SPECULATIVE_MODES", "ExpertLLM",
           "GenerationResult", "StreamChunk", "ToolCall", "peft_deprecation_quiet",
           "render_prompt"]

_SHARED: dict[str, ExpertLLM] = {}
_SHARED_LOCK = threading.Lock()


class ExpertLLM:
    """A local causal LM with named LoRA experts; weights load lazily on first use. It
    implements :class:`~expertrag.models.interface.ExpertModel`.

    >>> llm = ExpertLLM()                        # embedded SmolLM2-135M-Instruct
    >>> llm.add_expert("grounded-qa", "path/to/adapter")
    >>> llm.generate([{"role": "user", "content": "Hi"}], expert="grounded-qa").text

    ``dtype`` None / "auto" loads bf16 on a GPU and on a CPU that computes bf16 natively
    (AVX512-BF16, AMX), fp32 on any other CPU (``loading.resolve_dtype``): a CPU decode step
    streams every weight, so bf16 decodes faster, and the shipped experts score and answer
    held-out questions as well as in fp32 (benchmarks/RESULTS.md). ``dtype="float32"``
    keeps fp32.

    ``speculative`` (opt-in, for fp32 weights): one greedy, unconstrained row is drafted by a
    bf16 copy of the base and verified by the served fp32 model
    (``expertrag.models.speculative``): the same tokens, fewer weight-bound fp32 steps.
    "auto" uses it only on CPUs with native bf16 and fp32 weights. It costs a bf16 copy of
    the base weights, built on first use, and did not pay off reliably on the CPUs measured
    (benchmarks/RESULTS.md), so it is off by default. "ngram" drafts by prompt lookup
    instead (no draft model). ``EXPERTRAG_SPECULATIVE=0`` turns it off everywhere.

    ``merge_tokens``: a call for one expert with at least this many tokens (prompt plus
    generated, all rows) runs on that expert merged into the weights, which skips the
    adapter products (faster prompt processing and decoding; the base weights come back
    exactly afterwards). In fp32 the numbers match the unmerged expert to rounding; in bf16
    the merged sum is rounded once more, which moves label probabilities by about as much as
    bf16 itself does (benchmarks/RESULTS.md). None keeps every call unmerged, as peft serves;
    ``EXPERTRAG_MERGE=0`` does so everywhere.
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
        merge_tokens: int | None = DEFAULT_MERGE_TOKENS,
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
        self._adapters = AdapterState()
        self.merge_tokens = merge_tokens
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
    def from_model(cls, hf_model: Any, tokenizer: Any, name: str = "custom",
                   **kwargs: Any) -> ExpertLLM:
        """Wrap an already-loaded transformers model and tokenizer (tests, custom set-ups);
        ``kwargs`` are the constructor's (``merge_tokens``, ``speculative``)."""
        from expertrag.models.loading import ModelSource

        llm = cls(name, **kwargs)
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
    def _peft(self) -> Any:
        """The peft wrapper (None until an expert is attached)."""
        return self._adapters.peft

    @property
    def _model(self) -> Any:
        """What runs a forward pass: the peft wrapper, or the base model."""
        return self._adapters.model(self.base_model)

    @property
    def merge_tokens(self) -> int | None:
        """Tokens of work from which a one-expert call runs merged (None: never); settable
        between calls, e.g. to compare merged and unmerged serving on one loaded model."""
        return self._adapters.merge_tokens

    @merge_tokens.setter
    def merge_tokens(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise InputError(f"merge_tokens must be a positive integer or None, got "
                             f"{value!r}")
        self._adapters.merge_tokens = value

    def _prepare(self, experts: list[str | None], work: int = 0) -> dict[str, Any]:
        """Route (or merge) the adapters for these rows, ``work`` tokens in all (on the
        worker); the extra forward kwargs."""
        return self._adapters.prepare(experts, work)

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
        return list(self._adapters.infos) + list(self._pending_experts)

    def expert_info(self, name: str) -> dict[str, Any]:
        """The adapter's path, peft config and expertrag metadata."""
        self._check_expert(name)
        return dict(self._adapters.infos[name])

    def add_expert(self, name: str, path: str | Path, *, check_base: bool = True) -> None:
        """Attach the PEFT LoRA/DoRA adapter at `path` under `name`.

        Fails with ExpertError when files are missing, the adapter is not LoRA, it uses
        pickle weights, or it was trained for another base (recorded fingerprint or tensor
        shapes). `check_base=False` skips the fingerprint comparison (shapes are always
        checked), e.g. for an adapter trained on a differently quantized copy of the base.
        """
        check_name(name)
        if name in self._adapters.infos:
            raise ExpertError(f"an expert named {name!r} is already attached; remove it first")
        if not isinstance(path, str | Path):
            raise ExpertError(f"expert {name!r}: path must be a folder path, got "
                              f"{type(path).__name__}")
        info = inspect_adapter(name, Path(path), self.base_model, self.model_name,
                               (lambda: self.fingerprint) if check_base else None)
        try:
            self._worker.run(lambda: self._adapters.attach(self.base_model, name, info))
        except ExpertRAGError:
            raise
        except Exception as exc:  # peft refused the adapter's files
            raise ExpertError(f"expert {name!r}: peft cannot load the adapter in {path} "
                              f"({type(exc).__name__}: {exc})") from exc
        self._adapters.infos[name] = info

    def remove_expert(self, name: str) -> None:
        """Detach an expert and free its weights."""
        self._check_expert(name)

        def detach() -> None:
            base = self._adapters.detach(name)
            if base is not None:
                self.loaded.model = base

        self._worker.run(detach)

    def merge(self, name: str | None) -> None:
        """Serve `name` from merged weights (full speed); None returns to unmerged serving.
        Calls that ask for another expert still work: they unmerge first (slower)."""
        if name is not None:
            self._check_expert(name)
            if self._adapters.infos[name]["dora"]:
                logger.info("expert %r is DoRA: merging is exact but slow to undo", name)
        self._adapters.serving = name
        self._worker.run(lambda: self._adapters.prepare([name]))

    def _check_expert(self, name: str | None) -> None:
        if name is None:
            return
        if self._pending_experts:
            self.load()
        self._adapters.check(name)

    # ------------------------------------------------------------------ requests
    def render(self, messages: Messages, tools: list[dict[str, Any]] | None = None) -> str:
        """The exact prompt string sent to the model for `messages`."""
        return render_prompt(self.tokenizer, messages, tools)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _request(self, messages: Any, expert: Any, options: dict[str, Any]) -> Request:
        return build_request(messages, expert, options, self._check_expert)

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
        **unknown: Any,
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
        it costs little more than a greedy answer on a grounded prompt. ``None`` (default):
        the expert's own setting (its card's ``decoding.num_beams``) for plain greedy calls,
        greedy otherwise and for the bare base.
        """
        req = self._request(messages, expert, dict(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
            stop=stop, json_schema=json_schema, json_mode=json_mode, tools=tools,
            tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls,
            logprobs=logprobs, continue_final_message=continue_final_message,
            refusal_gate=refusal_gate, refusal_threshold=refusal_threshold,
            num_beams=num_beams, **unknown))  # an unknown name is an InputError
        results = self._worker.run(lambda: self._generate_rows(req))
        return results if req.is_batch else results[0]

    async def agenerate(self, messages: Any, **kwargs: Any) -> Any:
        """Async :meth:`generate`: the event loop stays free while the worker generates."""
        expert = kwargs.pop("expert", None)
        if self._loaded is None:
            await self._worker.arun(self.load)
        req = self._request(messages, expert, kwargs)
        results = await self._worker.arun(lambda: self._generate_rows(req))
        return results if req.is_batch else results[0]

    def stream(self, messages: Messages, **kwargs: Any) -> Iterator[StreamChunk]:
        """Yield text chunks as they are generated; the last chunk carries the result."""
        req = self._request(messages, kwargs.pop("expert", None), kwargs)
        tokens: queue.SimpleQueue[Any] = queue.SimpleQueue()
        future = self._worker.submit(lambda: self._generate_rows(req, on_tokens=tokens.put))
        decoder = StreamDecoder(self.tokenizer, req.options.stop)
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
        req = self._request(messages, expert, kwargs)
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue[Any] = asyncio.Queue()

        def push(item: Any) -> None:
            loop.call_soon_threadsafe(tokens.put_nowait, item)

        future = self._worker.submit(lambda: self._generate_rows(req, on_tokens=push))
        decoder = StreamDecoder(self.tokenizer, req.options.stop)
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
        prompts, experts = label_prompts(batch, labels, expert, raw,
                                         lambda m: render_prompt(self.tokenizer, m),
                                         self._check_expert)
        ids = label_token_ids(self.tokenizer, labels)
        return self._worker.run(lambda: self._label_probs(prompts, experts, labels, ids,
                                                          batch_size, normalize))

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
                     labels: tuple[str, ...], ids: list[int], batch_size: int,
                     normalize: bool = True) -> list[dict[str, float]]:
        """Batches are planned from the token lengths (``plan_batches``): on mixed-length
        prompts that saves most of the padding a fixed batch of the longest would cost."""
        import torch

        encoded = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        self._check_window([len(e) for e in encoded])
        device = self.base_model.device
        overhead = default_overhead(device)
        span = attention_span(self.base_model.config)
        pad = self.tokenizer.pad_token_id or 0
        out: list[dict[str, float]] = [{} for _ in prompts]
        with LabelHead(self.base_model) as head:
            for group in self._adapters.groups(experts):
                plan = plan_batches([len(encoded[i]) for i in group], max_rows=batch_size,
                                    overhead=overhead, span=span)
                work = sum(len(encoded[i]) for i in group)
                for batch in plan:
                    rows = [group[k] for k in batch]
                    extra = self._prepare([experts[i] for i in rows], work)
                    inputs = left_pad([encoded[i] for i in rows], pad, device)
                    with torch.inference_mode():
                        # logits_to_keep=1: the LM head runs on the last position only
                        logits = self._model(**inputs, **extra, logits_to_keep=1).logits
                        if normalize:
                            probs = torch.softmax(head.logits(logits, ids), dim=-1).tolist()
                        else:
                            probs = torch.softmax(head.logits(logits), dim=-1)[:, ids].tolist()
                    for i, row in zip(rows, probs, strict=True):
                        out[i] = dict(zip(labels, row, strict=True))
        return out

    def _generate_rows(self, req: Request, on_tokens: Callable[[Any], None] | None = None
                       ) -> list[GenerationResult]:
        """Render and generate a batch. With tools bound, the model first writes a grammar-
        constrained list of calls; under tool_choice="auto" an empty list (or one that only
        repeats calls already answered in the conversation) means it answers in text,
        generated in a second pass without the tool instructions. Only that text streams."""
        tok = self.tokenizer

        def run(convs: list[Messages], experts: list[str | None], opts: Options
                ) -> list[GenerationResult]:
            prompts = [render_prompt(tok, c, opts.tools or None, json_schema=opts.schema,
                                     continue_final_message=opts.continue_final_message)
                       for c in convs]
            return self._grouped(prompts, experts, opts, None if opts.tools else on_tokens)

        try:
            if req.options.tools:
                return answer_with_tools(req.convs, req.experts, req.options, run)
            return run(req.convs, req.experts, req.options)
        finally:
            if on_tokens is not None:
                on_tokens(None)

    def _grouped(self, prompts: list[str], experts: list[str | None], opts: Options,
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

    def _grouped_once(self, prompts: list[str], experts: list[str | None], opts: Options,
                      on_tokens: Callable[[Any], None] | None) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(prompts)
        for group in self._adapters.groups(experts):
            by_beams: dict[int, list[int]] = {}
            for i in group:
                by_beams.setdefault(self._adapters.beams_for(experts[i], opts), []).append(i)
            for beams, rows in by_beams.items():
                sub = self._generate_group([prompts[i] for i in rows],
                                           [experts[i] for i in rows],
                                           replace(opts, num_beams=beams), on_tokens)
                for i, res in zip(rows, sub, strict=True):
                    results[i] = res
        return results  # type: ignore[return-value]

    def _generate_group(self, prompts: list[str], experts: list[str | None], opts: Options,
                        on_tokens: Callable[[Any], None] | None) -> list[GenerationResult]:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        enc, lengths = self._encode(prompts)
        width = enc["input_ids"].shape[1]
        max_new = min(opts.max_new_tokens, self.context_window - width)
        tok = self.tokenizer
        eos = eos_ids(self.base_model, tok)
        if should_speculate(self.speculative, len(prompts), opts, self.base_model,
                            self._load_kwargs.get("quantization") is not None):
            return self._speculative_row(enc["input_ids"][0].tolist(), lengths[0], experts,
                                         opts, max_new, eos, on_tokens)
        config = generation_config(opts, max_new, tok.pad_token_id, eos)
        kwargs: dict[str, Any] = {"generation_config": config}
        if opts.stop:
            kwargs["stopping_criteria"] = StoppingCriteriaList([StopStrings(tok, opts.stop,
                                                                            width)])
        gate = None if opts.constrained else self._gate(experts, opts, width)
        if opts.constrained:
            kwargs["logits_processor"] = LogitsProcessorList(
                [self.grammars.logits_processor([self._grammar(opts)] * len(prompts))]
            )
        elif gate is not None:
            kwargs["logits_processor"] = LogitsProcessorList([gate])
        if on_tokens is not None and opts.num_beams == 1:  # a beam answer streams whole, at the end
            kwargs["streamer"] = TokenStreamer(on_tokens)
        if opts.seed is not None:
            torch.manual_seed(opts.seed)
        kwargs.update(self._prepare(experts, sum(lengths) + len(prompts) * max_new
                                    * opts.num_beams))
        if opts.num_beams > 1:
            if width > 1:
                kwargs[cache_argument()] = shared_prefill(self._model, enc, opts.num_beams,
                                                          kwargs)
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
            gate.apply(results)
        if opts.logprobs:
            picked = chosen_logprobs(output, width)
            for res, row in zip(results, picked, strict=True):
                res.logprobs = [float(v) for v in row[:res.completion_tokens]]
        return results

    def _speculative_row(self, prompt: list[int], prompt_tokens: int,
                         experts: list[str | None], opts: Options, max_new: int,
                         eos: list[int], on_tokens: Callable[[Any], None] | None
                         ) -> list[GenerationResult]:
        """One greedy row, drafted (the base's bf16 copy, or prompt lookup) and verified by
        the served model: the same tokens as ``generate``'s greedy loop, the same gate,
        stops and streaming."""
        import torch

        from expertrag.models.speculative import NgramDraft, bf16_draft, speculative_greedy

        if self.speculative == "ngram":
            draft: Any = NgramDraft()
        else:
            if self._draft is None:  # built once, from the base weights (no adapters)
                self._adapters.unmerge()
                self._draft = bf16_draft(self.base_model)
            draft = self._draft
        gate = self._gate(experts, opts, len(prompt))
        stop = None
        if opts.stop:
            stopper = StopStrings(self.tokenizer, opts.stop, 0)
            stop = lambda new: bool(stopper(torch.tensor([new]), None)[0])  # noqa: E731
        self._prepare(experts, len(prompt) + max_new)
        ids = speculative_greedy(self._model, draft, prompt, max_new, eos,
                                 processors=[gate] if gate is not None else [], stop=stop,
                                 on_tokens=on_tokens, stats=self.last_speculation)
        results = [self._result(ids, prompt_tokens, experts[0], opts, set(eos))]
        if gate is not None:
            gate.apply(results)
        return results

    def _gate(self, experts: list[str | None], opts: Options, width: int) -> Any:
        """The refusal-gate processor for these rows, or None when no row has a gate."""
        rows = [gate_for(self._adapters.gate(e), opts) for e in experts]
        if all(r is None for r in rows):
            return None
        eos = eos_ids(self.base_model, self.tokenizer)
        return RefusalGate(self.tokenizer, rows, width, eos[0], beams=opts.num_beams)

    def _grammar(self, opts: Options) -> Any:
        return grammar_for(self.grammars, opts)

    def _result(self, ids: list[int], prompt_tokens: int, expert: str | None, opts: Options,
                eos: set[int], grammar: Any = None) -> GenerationResult:
        end = next((i for i, t in enumerate(ids) if t in eos), None)
        finish = "stop" if end is not None else "length"
        if end is None and grammar is not None:
            # out of tokens inside a constrained value: close it by grammar, so it parses
            ids = ids + self.grammars.complete(grammar, ids, jitter=opts.attempt)
        used = ids if end is None else ids[: end + 1]
        text = self.tokenizer.decode(ids[:end], skip_special_tokens=True)
        cut = first_stop(text, opts.stop)
        if cut is not None:
            text, finish = text[:cut], "stop"
        result = GenerationResult(text=text, prompt_tokens=int(prompt_tokens),
                                  completion_tokens=len(used), finish_reason=finish,
                                  model_name=self.model_name, expert=expert)
        if opts.tools:
            result.text, result.tool_calls = "", parse_tool_calls(text)
            if result.tool_calls:
                result.finish_reason = "tool_calls"
        elif opts.schema is not None:
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
