"""The expert LLM over a multi-LoRA inference server with an OpenAI-compatible API (vLLM).

:class:`ServerLLM` has :class:`~expertrag.models.ExpertLLM`'s interface, so every component
that takes one (chat skins, rerankers, CRAG / Self-RAG graders and critics, GraphRAG
extraction, evaluators) runs against a server unchanged:

- experts are the server's LoRA model names (``/v1/models`` entries whose ``parent`` is the
  base); ``expert=None`` is the base; ``add_expert(name, path)`` loads an adapter at run time
  (vLLM's ``/v1/load_lora_adapter``, with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``);
- prompts are rendered here with the same chat template as in-process and sent to
  ``/v1/completions``, so the server sees exactly the prompt ``ExpertLLM`` would decode;
- ``json_schema`` / JSON mode / tool calls go through the server's structured outputs with
  the same xgrammar grammar as in-process (as EBNF), so they always parse;
- ``label_probabilities`` reads the labels' first-token log-probabilities from one
  one-token request (``logprob_token_ids``), the refusal gate from the same figure;
- a batch becomes concurrent requests (at most ``concurrency`` at a time);
- typed errors: :class:`ServerError` (down, HTTP error), :class:`ServerTimeoutError`,
  :class:`~expertrag.errors.UnknownExpertError` for an expert the server does not serve,
  :class:`ServerCapabilityError` when it returns no log-probabilities.

Configuration from code or the environment: ``EXPERTRAG_SERVER_URL``,
``EXPERTRAG_SERVER_API_KEY``, ``EXPERTRAG_SERVER_TIMEOUT``, ``EXPERTRAG_SERVER_CONCURRENCY``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from expertrag.errors import ExpertRAGError, InputError, UnknownExpertError
from expertrag.experts.card import ExpertCard
from expertrag.models import request
from expertrag.models.chat import render_prompt, validate_messages
from expertrag.models.decoding import first_stop
from expertrag.models.interface import GenerationResult, Messages, StreamChunk
from expertrag.models.request import Options
from expertrag.models.structured import parse_json, parse_tool_calls
from expertrag.models.worker import iterate_in_thread

ENV_URL = "EXPERTRAG_SERVER_URL"
ENV_KEY = "EXPERTRAG_SERVER_API_KEY"
ENV_TIMEOUT = "EXPERTRAG_SERVER_TIMEOUT"
ENV_CONCURRENCY = "EXPERTRAG_SERVER_CONCURRENCY"


class ServerError(ExpertRAGError, ConnectionError):
    """The server is down, unreachable, or answered with an error."""


class ServerTimeoutError(ServerError, TimeoutError):
    """The server did not answer within the timeout."""


class ServerCapabilityError(ServerError):
    """The server lacks something a call needs (log-probabilities, structured outputs)."""


class ServerLLM:
    """``ExpertLLM`` over an OpenAI-compatible multi-LoRA server (see the module doc).

    ``tokenizer``: a tokenizer object, a local folder, or a model alias (default: the
    embedded SmolLM2's cached tokenizer); it renders prompts and finds label tokens, so it
    must be the served base's tokenizer.
    """

    def __init__(self, base_url: str | None = None, model: str | None = None,
                 api_key: str | None = None, timeout: float | None = None,
                 concurrency: int | None = None, tokenizer: Any = None) -> None:
        url = base_url or os.environ.get(ENV_URL)
        if not url:
            raise InputError(f"ServerLLM needs a base_url (or ${ENV_URL})")
        self.base_url = url.rstrip("/").removesuffix("/v1")
        self.api_key = api_key or os.environ.get(ENV_KEY)
        self.timeout = float(timeout or os.environ.get(ENV_TIMEOUT) or 120.0)
        self.concurrency = int(concurrency or os.environ.get(ENV_CONCURRENCY) or 8)
        if self.concurrency < 1:
            raise InputError(f"concurrency must be >= 1, got {self.concurrency}")
        self._model = model
        self._tokenizer = tokenizer
        self._models: list[dict[str, Any]] | None = None
        self._grammars: Any = None
        self._client: Any = None
        self._paths: dict[str, str] = {}
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()  # tokenizer / grammar load, once across threads

    # ------------------------------------------------------------------ plumbing
    @property
    def client(self) -> Any:
        import httpx

        if self._client is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.Client(base_url=self.base_url, headers=headers,
                                        timeout=self.timeout)
        return self._client

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 client: Any = None) -> Any:
        """One JSON request to the server (or to ``client``'s, an ``httpx.Client``)."""
        import httpx

        client = client if client is not None else self.client
        base_url = str(client.base_url).rstrip("/") if client is not self._client \
            else self.base_url
        try:
            response = client.request(method, path, json=body)
        except httpx.TimeoutException as exc:
            raise ServerTimeoutError(f"{base_url}{path} did not answer within "
                                     f"{self.timeout:g} s") from exc
        except httpx.HTTPError as exc:
            raise ServerError(f"cannot reach the model server at {base_url}: "
                              f"{type(exc).__name__}: {exc}") from exc
        if response.status_code == 404 and body and "model" in body:
            raise UnknownExpertError(f"the server does not serve model {body['model']!r} "
                                     f"(it serves: {', '.join(self._names())})")
        if response.status_code >= 400:
            raise ServerError(f"{base_url}{path} answered {response.status_code}: "
                              f"{response.text[:300]}")
        try:
            return response.json()
        except ValueError as exc:
            raise ServerError(f"{base_url}{path} answered with no JSON") from exc

    def models(self, refresh: bool = False) -> list[dict[str, Any]]:
        """The server's ``/v1/models`` entries (cached; ``refresh`` asks again)."""
        with self._lock:
            if self._models is None or refresh:
                self._models = list(self._request("GET", "/v1/models").get("data") or [])
            return self._models

    def _names(self) -> list[str]:
        try:
            return [m["id"] for m in self.models()]
        except ServerError:
            return []

    @property
    def model_id(self) -> str:
        """The served base model's name (``ExpertLLM.model_id``'s counterpart)."""
        return self.model_name

    @property
    def model_name(self) -> str:
        """The served base model's name."""
        if self._model is None:
            bases = [m["id"] for m in self.models() if not m.get("parent")]
            if not bases:
                raise ServerError(f"{self.base_url} serves no base model")
            self._model = bases[0]
        return self._model

    @property
    def experts(self) -> list[str]:
        """The LoRA models the server serves on the base (sorted)."""
        base = self.model_name
        return sorted(m["id"] for m in self.models() if m.get("parent") in (base, None)
                      and m["id"] != base and m.get("parent"))

    @property
    def context_window(self) -> int:
        for m in self.models():
            if m["id"] == self.model_name and m.get("max_model_len"):
                return int(m["max_model_len"])
        return 8192

    @property
    def tokenizer(self) -> Any:
        """The base's tokenizer, loaded once; locked because the first requests of a
        concurrent batch all ask for it (a lazy ``transformers`` import is not thread-safe)."""
        if self._tokenizer is None or isinstance(self._tokenizer, str):
            with self._load_lock:
                if self._tokenizer is None or isinstance(self._tokenizer, str):
                    from expertrag.models.loading import load_tokenizer

                    self._tokenizer = load_tokenizer(self._tokenizer
                                                     or "smollm2-135m-instruct")
        return self._tokenizer

    @property
    def grammars(self) -> Any:
        if self._grammars is None:
            tok = self.tokenizer
            with self._load_lock:
                if self._grammars is None:
                    from expertrag.models.structured import GrammarFactory

                    self._grammars = GrammarFactory(tok, len(tok))
        return self._grammars

    def add_expert(self, name: str, path: str, *, check_base: bool = True) -> None:
        """Load a LoRA adapter into the server under ``name`` (vLLM dynamic LoRA); ``path``
        must be readable by the server process. A name the server already serves is kept."""
        if name not in self.experts:
            card = self._local_card(name, path)
            self._request("POST", "/v1/load_lora_adapter", {"lora_name": name,
                                                            "lora_path": str(path)})
            self.models(refresh=True)
            if card is not None:
                self._cards()[name] = card
        self._paths[name] = str(path)

    @staticmethod
    def _local_card(name: str, path: str | os.PathLike[str]) -> ExpertCard | None:
        """The card of an adapter folder this process can read, checked as the in-process
        backend checks it (a damaged card is an ExpertError before the server is asked);
        None for a path only the server can read."""
        folder = Path(path).expanduser()
        return ExpertCard.read(folder, name) if folder.is_dir() else None

    def expert_info(self, name: str) -> dict[str, Any]:
        """What is known of a served expert (its path when this client loaded it)."""
        if name not in self.experts:
            raise UnknownExpertError(f"expert {name!r} is not served by {self.base_url}")
        meta = card.to_dict() if (card := self._cards().get(name)) is not None else {}
        return {"path": self._paths.get(name), "served_by": self.base_url,
                "gate": meta.get("refusal_gate"), "metadata": meta}

    def _model_for(self, expert: str | None) -> str:
        if expert is None:
            return self.model_name
        if expert not in self.experts:
            raise UnknownExpertError(f"expert {expert!r} is not served by {self.base_url} "
                                     f"(experts: {', '.join(self.experts) or 'none'})")
        return expert

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, messages: Any, tools: list[dict[str, Any]] | None = None) -> str:
        return render_prompt(self.tokenizer, validate_messages(messages), tools)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ------------------------------------------------------------------ completions
    def _complete(self, body: dict[str, Any]) -> dict[str, Any]:
        out = self._request("POST", "/v1/completions", body)
        choices = out.get("choices") or []
        if not choices:
            raise ServerError("the server returned no completion")
        return {"choice": choices[0], "usage": out.get("usage") or {}}

    def _map(self, fn: Any, items: Sequence[Any]) -> list[Any]:
        if len(items) <= 1:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            return list(pool.map(fn, items))

    def _body(self, prompt: str, model: str, opts: Options) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "prompt": prompt,
                                "max_tokens": opts.max_new_tokens,
                                "temperature": opts.temperature, "top_p": opts.top_p,
                                "add_special_tokens": False, "skip_special_tokens": True}
        if opts.seed is not None:
            body["seed"] = opts.seed
        if opts.stop:
            body["stop"] = list(opts.stop)
        return body

    def _first_probability(self, prompt: str, model: str, token_ids: list[int]
                           ) -> list[float]:
        """Full-vocabulary probabilities of ``token_ids`` as the next token."""
        body = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0,
                "logprobs": len(token_ids), "logprob_token_ids": token_ids,
                "add_special_tokens": False, "return_tokens_as_token_ids": True}
        choice = self._complete(body)["choice"]
        top = ((choice.get("logprobs") or {}).get("top_logprobs") or [None])[0]
        if not top:
            raise ServerCapabilityError("the server returned no log-probabilities (start "
                                        "vLLM with --max-logprobs >= the number of labels)")
        by_id: dict[int, float] = {}
        for key, value in top.items():
            text = str(key)
            tid = int(text.split(":", 1)[1]) if text.startswith("token_id:") else \
                self.tokenizer.convert_tokens_to_ids(text)
            by_id[tid] = float(value)
        return [math.exp(by_id[t]) if t in by_id else 0.0 for t in token_ids]

    def label_probabilities(self, batch: list[Any], labels: tuple[str, ...] = ("yes", "no"),
                            *, expert: str | list[str | None] | None = None,
                            batch_size: int = 16, raw: bool = False,
                            normalize: bool = True) -> list[dict[str, float]]:
        """P(label) for the first generated token of each conversation, from one-token
        requests with the labels' log-probabilities (same semantics as in-process)."""
        prompts, experts = request.label_prompts(batch, labels, expert, raw, self.render,
                                         self._model_for)
        ids = request.label_token_ids(self.tokenizer, labels)
        models = [self._model_for(e) for e in experts]

        def one(i: int) -> dict[str, float]:
            probs = self._first_probability(prompts[i], models[i], ids)
            if normalize:
                total = sum(probs) or 1.0
                probs = [p / total for p in probs]
            return dict(zip(labels, probs, strict=True))

        return self._map(one, list(range(len(prompts))))

    # ------------------------------------------------------------------ generation
    def generate(self, messages: Any, *, expert: str | list[str | None] | None = None,
                 **options: Any) -> Any:
        """``ExpertLLM.generate`` against the server (the same options, checked the same
        way): one request per conversation, the batch sent concurrently (``concurrency`` at
        a time). Decoding is greedy or sampled: an expert's shipped beam width
        (``decoding`` in its card) applies in-process only, and asking for
        ``num_beams > 1`` here is a :class:`ServerCapabilityError` (vLLM's beam search
        ignores the logit bias the refusal gate needs)."""
        req = request.build_request(messages, expert, options, self._model_for)
        opts = req.options
        self._check_beams(opts)
        models = [self._model_for(e) for e in req.experts]

        def one(i: int) -> GenerationResult:
            def run(convs: list[Messages], experts: list[str | None], o: Options
                    ) -> list[GenerationResult]:
                return [self._generate_one(convs[0], models[i], experts[0], o)]

            if opts.tools:
                return request.answer_with_tools([req.convs[i]], [req.experts[i]], opts, run)[0]
            return run([req.convs[i]], [req.experts[i]], opts)[0]

        results = self._map(one, list(range(len(req.convs))))
        return results if req.is_batch else results[0]

    def _check_beams(self, opts: Options) -> None:
        """vLLM's beam search ignores the logit bias the refusal gate needs: refused here."""
        if (opts.num_beams or 1) > 1:
            raise ServerCapabilityError("beam search (num_beams > 1) runs in-process only "
                                        "(ExpertLLM); the server client decodes greedily")

    def _beams_for(self, expert: str | None, opts: Options) -> int:
        """The beam width of one plain-text request (1: greedy or sampled)."""
        return 1

    def _beam_generate(self, prompt: str, model: str, expert: str | None, opts: Options,
                       beams: int, banned: int | None) -> GenerationResult:
        raise ServerCapabilityError("this server client has no beam search")

    def _card_gate(self, expert: str | None) -> tuple[str, float] | None:
        """The refusal gate a served expert's card ships (a shipped expert, or one this
        client loaded from a folder it can read)."""
        if expert is None:
            return None
        card = self._cards().get(expert)
        return card.gate if card is not None else None

    def _cards(self) -> dict[str, ExpertCard]:
        """The cards of the shipped experts (read and checked once), and of the adapters
        this client loaded from a folder it can read, by name."""
        if not hasattr(self, "_card_cache"):
            from expertrag.experts import shipped_experts

            self._card_cache = {name: ExpertCard.read(folder, name)
                                for name, folder in shipped_experts().items()}
        return self._card_cache

    def _generate_one(self, conv: Messages, model: str, expert: str | None,
                      opts: Options) -> GenerationResult:
        """One conversation's request: a tool-call list, JSON, or text behind the expert's
        refusal gate (its probability read from a one-token request first)."""
        if opts.tools:
            return self._tool_calls(conv, model, expert, opts)
        tok = self.tokenizer
        schema = opts.schema
        prompt = render_prompt(tok, conv, json_schema=schema,
                               continue_final_message=opts.continue_final_message)
        body = self._body(prompt, model, opts)
        gate = None if schema is not None else request.gate_for(self._card_gate(expert), opts)
        refusal_p = None
        if schema is not None:
            body["structured_outputs"] = {"grammar": self.grammars.schema_ebnf(schema)}
        elif gate is not None:
            first = tok(gate[0], add_special_tokens=False)["input_ids"][0]
            (refusal_p,) = self._first_probability(prompt, model, [first])
            if refusal_p >= gate[1]:
                return GenerationResult(text=gate[0], prompt_tokens=self.count_tokens(prompt),
                                        completion_tokens=1, finish_reason="stop",
                                        model_name=self.model_name, expert=expert,
                                        refusal_probability=refusal_p)
            body["logit_bias"] = {str(first): -100}
        beams = 1 if schema is not None else self._beams_for(expert, opts)
        if beams > 1:
            banned = int(next(iter(body["logit_bias"]))) if body.get("logit_bias") else None
            result = self._beam_generate(prompt, model, expert, opts, beams, banned)
            result.refusal_probability = refusal_p
            return result
        if opts.logprobs:
            body["logprobs"] = 1
        out = self._complete(body)
        choice_ = out["choice"]
        text = str(choice_.get("text") or "")
        cut = first_stop(text, opts.stop)
        if cut is not None:
            text = text[:cut]
        finish = "length" if choice_.get("finish_reason") == "length" else "stop"
        if schema is not None and finish == "length":
            text = self._closed(text, opts)
        usage = out["usage"]
        result = GenerationResult(
            text=text, prompt_tokens=int(usage.get("prompt_tokens") or self.count_tokens(
                prompt)), completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=finish, model_name=self.model_name, expert=expert,
            refusal_probability=refusal_p)
        if opts.logprobs:
            lps = (choice_.get("logprobs") or {}).get("token_logprobs") or []
            result.logprobs = [float(v) for v in lps if v is not None]
        if schema is not None:
            result.parsed = parse_json(text, schema)
        return result

    def _closed(self, text: str, opts: Options) -> str:
        """A constrained reply cut off by the token budget, closed by its grammar (as
        in-process), so it still parses."""
        grammar = request.grammar_for(self.grammars, opts)
        return text + self.tokenizer.decode(self.grammars.complete(grammar, text))

    def _tool_calls(self, conv: Messages, model: str, expert: str | None,
                    opts: Options) -> GenerationResult:
        """The grammar-constrained list of calls (the first pass of
        :func:`~expertrag.models.request.answer_with_tools`)."""
        tok = self.tokenizer
        prompt = render_prompt(tok, conv, opts.tools)
        grammar = self.grammars.tool_calls_grammar(opts.tools,
                                                   required=opts.tool_choice != "auto",
                                                   parallel=opts.parallel_tool_calls)
        body = self._body(prompt, model, replace(opts, stop=[]))
        body["structured_outputs"] = {"grammar": str(grammar)}
        out = self._complete(body)
        text = str(out["choice"].get("text") or "")
        if out["choice"].get("finish_reason") == "length":
            text = self._closed(text, opts)
        calls = parse_tool_calls(text)
        usage = out["usage"]
        return GenerationResult(text="", prompt_tokens=int(usage.get("prompt_tokens") or 0),
                                completion_tokens=int(usage.get("completion_tokens") or 0),
                                finish_reason="tool_calls" if calls else "stop",
                                model_name=self.model_name, expert=expert, tool_calls=calls)

    async def agenerate(self, messages: Any, **kwargs: Any) -> Any:
        """Async :meth:`generate` (the requests run on worker threads)."""
        return await asyncio.to_thread(self.generate, messages, **kwargs)

    def stream(self, messages: Any, **kwargs: Any) -> Iterator[StreamChunk]:
        """Text pieces as the server streams them; the last chunk carries the result.
        Constrained calls (JSON, tools) and gated refusals arrive in one piece."""
        expert = kwargs.pop("expert", None)
        req = request.build_request(messages, expert, kwargs, self._model_for)
        opts = req.options
        if req.is_batch:
            raise InputError("stream takes one conversation, not a batch")
        plain = not (opts.constrained or opts.logprobs or (opts.num_beams or 1) > 1)
        if not plain or isinstance(expert, list | tuple) or \
                self._beams_for(req.experts[0], opts) > 1 or \
                request.gate_for(self._card_gate(req.experts[0]), opts) is not None:
            result = self.generate(messages, expert=expert, **kwargs)
            yield StreamChunk(result.text)
            yield StreamChunk("", final=result)
            return
        yield from self._stream_plain(req.convs[0], req.experts[0], opts)

    def _stream_plain(self, conv: Messages, expert: str | None, opts: Options
                      ) -> Iterator[StreamChunk]:
        model = self._model_for(expert)
        prompt = render_prompt(self.tokenizer, conv,
                               continue_final_message=opts.continue_final_message)
        body = self._body(prompt, model, opts)
        body.update(stream=True, stream_options={"include_usage": True})
        text, usage, finish = "", {}, "stop"
        try:
            with self.client.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ServerError(f"streaming answered {response.status_code}: "
                                      f"{response.text[:300]}")
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    usage = event.get("usage") or usage
                    for c in event.get("choices") or []:
                        piece = c.get("text") or ""
                        if c.get("finish_reason") == "length":
                            finish = "length"
                        if piece:
                            text += piece
                            yield StreamChunk(piece)
        except Exception as exc:
            import httpx

            if isinstance(exc, httpx.TimeoutException):
                raise ServerTimeoutError(f"streaming did not finish within "
                                         f"{self.timeout:g} s") from exc
            if isinstance(exc, httpx.HTTPError):
                raise ServerError(f"streaming from {self.base_url} failed: {exc}") from exc
            raise
        result = GenerationResult(text=text, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                                  completion_tokens=int(usage.get("completion_tokens") or 0),
                                  finish_reason=finish, model_name=self.model_name,
                                  expert=expert)
        yield StreamChunk("", final=result)

    async def astream(self, messages: Any, **kwargs: Any) -> AsyncIterator[StreamChunk]:
        """Async :meth:`stream` (a worker thread reads the server's stream)."""
        async for chunk in iterate_in_thread(lambda: self.stream(messages, **kwargs)):
            yield chunk
