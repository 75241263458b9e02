"""LlamaCppLLM's merged layout without llama.cpp: the turnstile that lets one server at a
time use the cores, the merge of an expert into the base's weights (fake llama.cpp tools:
the commands, the cache, the refusals) and the routing of each request to its expert's
server (fake llama-servers on loopback). The real servers run in
tests/integration/test_llamacpp_real.py."""

from __future__ import annotations

import json
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from tiny_models import tiny_tokenizer

from expertrag.errors import InputError, UnknownExpertError
from expertrag.models.llamacpp import (
    LlamaCppConversionError,
    LlamaCppLLM,
    LlamaCppSetupError,
    Turnstile,
    merge_adapter,
)

pytest.importorskip("httpx")


# ---------------------------------------------------------------------------- turnstile
def _crowd(turnstile: Turnstile, keys: list[str], hold: float = 0.03
           ) -> tuple[list[tuple[str, float, float]], list[str]]:
    """Run one thread per key through the turnstile; each holds its turn ``hold`` s.
    Returns each turn's (key, start, end) and the order the threads asked in."""
    spans: list[tuple[str, float, float]] = []
    asked: list[str] = []
    lock = threading.Lock()

    def one(key: str) -> None:
        with lock:
            asked.append(key)
        with turnstile.turn(key):
            start = time.monotonic()
            time.sleep(hold)
            with lock:
                spans.append((key, start, time.monotonic()))

    threads = []
    for key in keys:
        threads.append(threading.Thread(target=one, args=(key,)))
        threads[-1].start()
        time.sleep(0.002)  # a definite arrival order
    for t in threads:
        t.join(5)
    return spans, asked


def test_the_turnstile_never_lets_two_servers_run_at_once():
    spans, _ = _crowd(Turnstile(), ["a", "b", "a", "c", "b", "a", "c", "c"])
    assert len(spans) == 8
    for key, start, end in spans:
        for other, s2, e2 in spans:
            if other != key:
                assert end <= s2 or e2 <= start, (key, other)


def test_requests_for_one_server_go_in_together_and_servers_take_turns_in_order():
    spans, _ = _crowd(Turnstile(), ["a", "b", "b", "b", "c"], hold=0.05)
    by_key: dict[str, list[tuple[float, float]]] = {}
    for key, start, end in spans:
        by_key.setdefault(key, []).append((start, end))
    bs = by_key["b"]
    assert max(s for s, _ in bs) < min(e for _, e in bs)  # the three b's overlapped
    first = {k: min(s for s, _ in v) for k, v in by_key.items()}
    assert first["a"] < first["b"] < first["c"]  # the order they were first waited for


def test_a_request_for_the_running_server_waits_behind_another_server():
    """No starvation: once c waits, later a's queue behind it."""
    turnstile = Turnstile()
    order: list[str] = []
    release = threading.Event()

    def hold_a() -> None:
        with turnstile.turn("a"):
            order.append("a1")
            release.wait(2)

    def run(key: str, tag: str) -> None:
        with turnstile.turn(key):
            order.append(tag)

    first = threading.Thread(target=hold_a)
    first.start()
    time.sleep(0.05)
    waiting_c = threading.Thread(target=run, args=("c", "c"))
    waiting_c.start()
    time.sleep(0.05)
    late_a = threading.Thread(target=run, args=("a", "a2"))
    late_a.start()
    time.sleep(0.05)
    assert order == ["a1"]
    release.set()
    for t in (first, waiting_c, late_a):
        t.join(2)
    assert order == ["a1", "c", "a2"]


def test_an_error_inside_a_turn_gives_the_turn_back():
    turnstile = Turnstile()
    with pytest.raises(RuntimeError), turnstile.turn("a"):
        raise RuntimeError("boom")
    spans, _ = _crowd(turnstile, ["b"])
    assert [k for k, _, _ in spans] == ["b"]


# ---------------------------------------------------------------------------- merging
def _script(path: Path, text: str) -> Path:
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.fixture
def tools(tmp_path, monkeypatch):
    """Fake llama.cpp tools: export-lora writes 'base+lora', quantize appends the type;
    each call is logged."""
    bin_dir = tmp_path / "home" / "0.3.36" / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "calls.log"
    _script(bin_dir / "llama-server", "exit 0\n")
    _script(bin_dir / "llama-export-lora",
            f'echo "export $*" >> {log}\n'
            'while [ $# -gt 0 ]; do case "$1" in -o) out=$2; shift;; esac; shift; done\n'
            'printf "merged" > "$out"\n')
    _script(bin_dir / "llama-quantize",
            f'echo "quantize $*" >> {log}\n'
            'cat "$1" > "$2"; printf " %s" "$3" >> "$2"\n')
    monkeypatch.setenv("EXPERTRAG_LLAMACPP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EXPERTRAG_LLAMA_SERVER", raising=False)
    base, lora = tmp_path / "base.gguf", tmp_path / "qa.gguf"
    base.write_bytes(b"BASE")
    lora.write_bytes(b"LORA")
    return {"base": base, "lora": lora, "log": log, "bin": bin_dir, "cache": tmp_path / "c"}


def test_an_expert_is_merged_then_quantized_once_and_cached_by_content(tools):
    out = merge_adapter(tools["base"], tools["lora"], cache_dir=tools["cache"])
    assert out.name == "qa.q8_0.gguf" and out.read_text() == "merged Q8_0"
    calls = tools["log"].read_text().splitlines()
    assert calls[0].startswith("export -m ") and f"--lora {tools['lora']}" in calls[0]
    assert calls[1].startswith("quantize ") and calls[1].endswith("Q8_0 " + calls[1].split()[-1])
    assert merge_adapter(tools["base"], tools["lora"], cache_dir=tools["cache"]) == out
    assert len(tools["log"].read_text().splitlines()) == 2  # the second call used the cache
    tools["lora"].write_bytes(b"RETRAINED")
    assert merge_adapter(tools["base"], tools["lora"], cache_dir=tools["cache"]) != out
    f16 = merge_adapter(tools["base"], tools["lora"], "f16", cache_dir=tools["cache"])
    assert f16.read_text() == "merged F16"
    assert not list(tools["cache"].rglob("*.part*"))  # no scratch file left behind


def test_four_bit_merges_and_missing_files_are_refused(tools):
    with pytest.raises(InputError, match="4-bit"):
        merge_adapter(tools["base"], tools["lora"], "q4_1")
    with pytest.raises(LlamaCppConversionError, match="no GGUF file"):
        merge_adapter(tools["base"], tools["base"].parent / "none.gguf")
    with pytest.raises(InputError, match="layout must be one of"):
        LlamaCppLLM.start(layout="stacked")
    with pytest.raises(InputError, match="merge_type must be one of"):
        LlamaCppLLM.start(layout="merged", merge_type="q4_0")


def test_a_failed_merge_names_the_reason_and_leaves_nothing(tools):
    _script(tools["bin"] / "llama-quantize", "echo 'invalid output file type' >&2\nexit 1\n")
    with pytest.raises(LlamaCppConversionError, match="invalid output file type"):
        merge_adapter(tools["base"], tools["lora"], cache_dir=tools["cache"])
    assert not list(tools["cache"].rglob("*.gguf*"))


def test_a_missing_merge_tool_says_how_to_build_it(tools):
    (tools["bin"] / "llama-export-lora").unlink()
    with pytest.raises(LlamaCppSetupError, match=r"setup_llamacpp\.sh"):
        merge_adapter(tools["base"], tools["lora"], cache_dir=tools["cache"])


# ---------------------------------------------------------------------------- routing
def _server(name: str, loras: list[dict[str, Any]], seen: list[dict[str, Any]],
            busy: dict[str, int], overlaps: list[tuple[str, str]]) -> ThreadingHTTPServer:
    """A fake llama-server named ``name``: records each /completion body, answers with its
    name, and notes when another fake server was busy at the same time."""

    class Handler(BaseHTTPRequestHandler):
        adapters: ClassVar[list[dict[str, Any]]] = loras

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                return self._send({"data": [{"id": "/m/SmolLM2-135M.gguf"}]})
            if self.path == "/props":
                return self._send({"default_generation_settings": {"n_ctx": 1024}})
            return self._send(self.adapters)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"server": name, **body})
            busy[name] = busy.get(name, 0) + 1
            overlaps.extend((name, o) for o, n in busy.items() if o != name and n > 0)
            time.sleep(0.02)
            busy[name] -= 1
            if body.get("n_probs", 0) > 1:
                return self._send({"content": "x", "completion_probabilities": [
                    {"id": 1, "logprob": -0.1, "top_logprobs": [{"id": 1, "logprob": -0.1}]}]})
            if body.get("stream"):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for piece in (name, "."):
                    self.wfile.write(f"data: {json.dumps({'content': piece})}\n\n".encode())
                self.wfile.write(b'data: {"content": "", "stop": true}\n\n')
                return None
            return self._send({"content": f"from {name}", "stop_type": "eos",
                               "tokens_evaluated": 3, "tokens_predicted": 2})

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture
def routed():
    seen: list[dict[str, Any]] = []
    busy: dict[str, int] = {}
    overlaps: list[tuple[str, str]] = []
    servers = {n: _server(n, [], seen, busy, overlaps) for n in ("base", "qa", "critic")}
    url = {n: f"http://127.0.0.1:{s.server_address[1]}" for n, s in servers.items()}
    llm = LlamaCppLLM(url["base"], tokenizer=tiny_tokenizer(), concurrency=8,
                      routes={"qa": url["qa"], "check": url["critic"] + "/v1"})
    yield llm, seen, overlaps, url
    llm.close()
    for s in servers.values():
        s.shutdown()


HELLO = [{"role": "user", "content": "Where is the Eiffel tower?"}]


def test_each_expert_is_served_by_its_own_merged_server(routed):
    llm, seen, _, url = routed
    assert llm.layout == "merged" and llm.experts == ["check", "qa"]
    assert [m["id"] for m in llm.models()] == ["SmolLM2-135M", "check", "qa"]
    assert llm.generate(HELLO, expert="qa").text == "from qa"
    assert llm.generate(HELLO).text == "from base"
    assert llm.generate(HELLO, expert="check").text == "from critic"
    assert [(r["server"], r["lora"]) for r in seen] == [("qa", []), ("base", []),
                                                       ("critic", [])]
    assert llm.expert_info("qa")["served_by"] == url["qa"]
    with pytest.raises(UnknownExpertError, match="relevance"):
        llm.generate(HELLO, expert="relevance")


def test_probabilities_beams_and_streams_go_to_the_experts_server(routed):
    llm, seen, _, _ = routed
    llm.label_probabilities([HELLO], labels=("yes", "no"), expert="qa")
    assert {r["server"] for r in seen} == {"qa"}
    seen.clear()
    llm.generate(HELLO, expert="check", num_beams=2, max_new_tokens=2)
    assert seen and {r["server"] for r in seen} == {"critic"}
    text = "".join(c.text for c in llm.stream(HELLO, expert="qa"))
    assert text == "qa."


def test_a_mixed_batch_runs_one_server_at_a_time(routed):
    llm, seen, overlaps, _ = routed
    experts = ["qa", None, "check", "qa", None, "check", None, "check"]
    out = llm.generate([HELLO] * 8, expert=experts)
    server = {"qa": "qa", None: "base", "check": "critic"}
    assert [r.text for r in out] == [f"from {server[e]}" for e in experts]
    assert len(seen) == 8 and overlaps == []
