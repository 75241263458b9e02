"""ServerLLM against a real vLLM server (the CPU wheel in its own venv, made by
scripts/setup_vllm.sh) serving the embedded base with the shipped experts as LoRA models:
the LLM contract, agreement with in-process decoding, failure modes, and the LangChain
standard chat-model suite on the server backend.

The server fixture builds ``.venv-vllm`` when it is missing and starts
``scripts/serve_vllm.sh`` on a free port. Set ``EXPERTRAG_SERVER_URL`` to test a server of
your own instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration
pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
           [{"role": "user", "content": "Name a colour of the sky."}],
           [{"role": "user", "content": "Count from 1 to 5."}]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server_url() -> Any:
    if os.environ.get("EXPERTRAG_SERVER_URL"):
        yield os.environ["EXPERTRAG_SERVER_URL"]
        return
    import httpx

    venv = ROOT / ".venv-vllm"
    if not (venv / "bin" / "python").exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "setup_vllm.sh")], check=True,
                       timeout=1800)
    port = _free_port()
    log = open(ROOT / ".pytest-vllm.log", "w")
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "serve_vllm.sh")],
                            env={**os.environ, "PORT": str(port)}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                log.flush()
                raise RuntimeError("vLLM exited: " + (ROOT / ".pytest-vllm.log").read_text()[
                    -3000:])
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > 600:
                raise RuntimeError("vLLM did not come up within 600 s")
            time.sleep(2)
        print(f"vLLM ready after {time.monotonic() - started:.0f} s", file=sys.stderr)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()


@pytest.fixture(scope="module")
def server(server_url: str) -> Any:
    from expertrag.models.server import ServerLLM

    llm = ServerLLM(server_url, concurrency=8)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def local() -> Any:
    from expertrag.experts import attach_shipped
    from expertrag.models import ExpertLLM

    llm = ExpertLLM.shared()
    attach_shipped(llm)
    return llm


def test_the_server_lists_the_shipped_experts(server: Any) -> None:
    from expertrag.experts import shipped_experts

    assert set(shipped_experts()) <= set(server.experts)


def test_greedy_answers_agree_with_in_process(server: Any, local: Any) -> None:
    """Same prompt string, greedy: token-for-token the same in most cases; kernels differ
    (vLLM's CPU attention vs eager), so we allow one of three to diverge after a shared
    prefix of at least a few characters."""
    same = 0
    for expert in (None, "grounded-qa"):
        mine = local.generate(PROMPTS, expert=expert, max_new_tokens=16, refusal_gate=False)
        theirs = server.generate(PROMPTS, expert=expert, max_new_tokens=16,
                                 refusal_gate=False)
        for a, b in zip(mine, theirs, strict=True):
            same += a.text == b.text
            assert a.text[:4] == b.text[:4], (a.text, b.text)
    assert same >= 4


def test_mixed_experts_in_concurrent_requests_do_not_mix_up(server: Any, local: Any) -> None:
    experts = ["grounded-qa", None, "critic", "relevance"] * 3
    convs = [PROMPTS[i % 3] for i in range(len(experts))]
    together = server.generate(convs, expert=experts, max_new_tokens=8, refusal_gate=False)
    for conv, expert, res in zip(convs, experts, together, strict=True):
        alone = server.generate(conv, expert=expert, max_new_tokens=8, refusal_gate=False)
        assert res.text == alone.text and res.expert == expert


def test_structured_output_validates(server: Any) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "population": {"type": "integer"}},
              "required": ["city", "population"]}
    res = server.generate(PROMPTS[0], json_schema=schema, max_new_tokens=40)
    assert set(res.parsed) == {"city", "population"}
    assert isinstance(res.parsed["population"], int)


def test_label_probabilities_agree_with_in_process(server: Any, local: Any) -> None:
    from expertrag.rerank.llm import RELEVANCE_PROMPT

    convs = [[{"role": "user", "content": RELEVANCE_PROMPT.format(
        passage=p, query="What is the capital of France?")}] for p in (
        "Paris is the capital of France.", "Bread is made from flour.")]
    mine = local.label_probabilities(convs, expert="relevance")
    theirs = server.label_probabilities(convs, expert="relevance")
    for a, b in zip(mine, theirs, strict=True):
        assert a["yes"] == pytest.approx(b["yes"], abs=0.05)
    assert theirs[0]["yes"] > theirs[1]["yes"]


def test_failure_modes(server: Any, server_url: str) -> None:
    from expertrag.errors import UnknownExpertError
    from expertrag.models.server import ServerError, ServerLLM, ServerTimeoutError

    with pytest.raises(UnknownExpertError):
        server.generate(PROMPTS[0], expert="no-such-expert")
    down = ServerLLM(f"http://127.0.0.1:{_free_port()}", tokenizer=server.tokenizer,
                     timeout=2)
    with pytest.raises(ServerError, match="cannot reach"):
        down.generate(PROMPTS[0])
    slow = ServerLLM(server_url, tokenizer=server.tokenizer, timeout=0.001)
    with pytest.raises(ServerTimeoutError):
        slow.generate(PROMPTS[2], max_new_tokens=64)


pytest.importorskip("langchain_tests")

from langchain_capabilities import ServedChatSuite  # noqa: E402
from langchain_tests.integration_tests import ChatModelIntegrationTests  # noqa: E402


class TestChatExpertLLMOnTheServer(ServedChatSuite, ChatModelIntegrationTests):
    """The standard chat-model suite with this module's server as the client."""
