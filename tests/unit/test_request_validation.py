"""The same request-validation cases against every backend: the in-process ExpertLLM (tiny
random model), the ServerLLM client (fake OpenAI-compatible server on loopback) and the
LlamaCppLLM client (fake llama-server). All build their requests with
``expertrag.models.request``, so all refuse the same bad arguments with the same typed
error, and the server clients refuse them before they send any completion request."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pytest
from test_llamacpp import Fake as FakeLlamaCpp
from test_server_llm import Fake
from tiny_models import tiny_llm, tiny_tokenizer

from expertrag.errors import InputError, UnknownExpertError, UnsupportedSchemaError
from expertrag.models import ExpertModel

pytest.importorskip("httpx")

HELLO = [{"role": "user", "content": "Where is the Eiffel tower?"}]
TOOL = {"name": "search", "description": "Search", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}

# (case id, keyword arguments of generate, error type, message fragment)
GENERATE_CASES: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("max_new_tokens 0", {"max_new_tokens": 0}, InputError, "max_new_tokens"),
    ("max_new_tokens a string", {"max_new_tokens": "8"}, InputError, "max_new_tokens"),
    ("negative temperature", {"temperature": -0.1}, InputError, "temperature"),
    ("top_p 0", {"top_p": 0.0}, InputError, "top_p"),
    ("top_p above 1", {"top_p": 1.5}, InputError, "top_p"),
    ("temperature a string", {"temperature": "hot"}, InputError, "temperature"),
    ("empty stop string", {"stop": [""]}, InputError, "stop sequences"),
    ("stop not a string", {"stop": ["\n", 3]}, InputError, "stop sequences"),
    ("tools with a schema", {"tools": [TOOL], "json_schema": {"type": "object"}}, InputError,
     "cannot be combined"),
    ("tools with JSON mode", {"tools": [TOOL], "json_mode": True}, InputError,
     "cannot be combined"),
    ("tool_choice names no tool", {"tools": [TOOL], "tool_choice": "nope"}, InputError,
     "names no bound tool"),
    ("a tool without a name", {"tools": [{"description": "x"}]}, InputError, "no name"),
    ("tools while continuing", {"tools": [TOOL], "continue_final_message": True}, InputError,
     "continue_final_message"),
    ("refusal_threshold above 1", {"refusal_threshold": 1.5}, InputError,
     "refusal_threshold"),
    ("refusal_threshold below 0", {"refusal_threshold": -0.5}, InputError,
     "refusal_threshold"),
    ("num_beams 0", {"num_beams": 0}, InputError, "num_beams"),
    ("num_beams a float", {"num_beams": 2.0}, InputError, "num_beams"),
    ("beams with sampling", {"num_beams": 2, "temperature": 0.5}, InputError,
     "plain beam search"),
    ("beams with logprobs", {"num_beams": 2, "logprobs": True}, InputError,
     "plain beam search"),
    ("beams with JSON", {"num_beams": 2, "json_mode": True}, InputError,
     "plain beam search"),
    ("unsupported schema keyword", {"json_schema": {
        "type": "object", "properties": {"x": {"not": {"type": "string"}}}}},
     UnsupportedSchemaError, "'not'"),
    ("unknown option", {"colour": "blue"}, InputError, "unknown generation arguments"),
]

MESSAGE_CASES: list[tuple[str, Any, dict[str, Any], type[Exception], str]] = [
    ("messages a number", 42, {}, InputError, "messages"),
    ("empty message list", [], {}, InputError, "messages"),
    ("unknown role", [{"role": "wizard", "content": "x"}], {}, InputError, "unknown role"),
    ("content not a string", [{"role": "user", "content": 3}], {}, InputError, "content"),
    ("experts for another batch size", [HELLO, HELLO], {"expert": [None]}, InputError,
     "experts for a batch of 2"),
    ("unknown expert", HELLO, {"expert": "nobody"}, UnknownExpertError, "nobody"),
]


@pytest.fixture(scope="module")
def in_process() -> Any:
    llm = tiny_llm(name="validation")
    yield llm
    llm.close()


def _served(handler: Any, client: Any, path: str = "") -> Iterator[Any]:
    """``client`` on a fake server (``handler``) on a free loopback port, then both closed."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    llm = client(f"http://127.0.0.1:{httpd.server_address[1]}{path}",
                 tokenizer=tiny_tokenizer())
    yield llm
    llm.close()
    httpd.shutdown()


@pytest.fixture(scope="module")
def on_server() -> Any:
    from expertrag.models.server import ServerLLM

    yield from _served(Fake, ServerLLM, "/v1")


@pytest.fixture(scope="module")
def on_llamacpp() -> Any:
    from expertrag.models.llamacpp import LlamaCppLLM

    yield from _served(FakeLlamaCpp, LlamaCppLLM)


BACKENDS = {"in-process": "in_process", "server": "on_server", "llamacpp": "on_llamacpp"}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Any:
    for fake in (Fake, FakeLlamaCpp):
        fake.requests.clear()
        fake.script.clear()
    return request.getfixturevalue(BACKENDS[request.param])


def _sent() -> list[str]:
    """The completion requests the fake servers received (none may follow a refusal)."""
    return [r["path"] for r in Fake.requests + FakeLlamaCpp.requests
            if r["path"] in ("/v1/completions", "/completion")]


def test_every_backend_implements_the_model_interface(in_process, on_server,
                                                      on_llamacpp) -> None:
    assert all(isinstance(b, ExpertModel) for b in (in_process, on_server, on_llamacpp))


@pytest.mark.parametrize(("kwargs", "error", "fragment"),
                         [c[1:] for c in GENERATE_CASES], ids=[c[0] for c in GENERATE_CASES])
def test_generate_refuses_the_same_options(backend, kwargs, error, fragment) -> None:
    with pytest.raises(error, match=fragment):
        backend.generate(HELLO, **{"max_new_tokens": 4, **kwargs})
    assert _sent() == []


@pytest.mark.parametrize(("messages", "kwargs", "error", "fragment"),
                         [c[1:] for c in MESSAGE_CASES], ids=[c[0] for c in MESSAGE_CASES])
def test_generate_refuses_the_same_messages_and_experts(backend, messages, kwargs, error,
                                                        fragment) -> None:
    with pytest.raises(error, match=fragment):
        backend.generate(messages, max_new_tokens=4, **kwargs)
    assert _sent() == []


@pytest.mark.parametrize(("kwargs", "error", "fragment"),
                         [c[1:] for c in GENERATE_CASES if c[2] is InputError][:8],
                         ids=[c[0] for c in GENERATE_CASES if c[2] is InputError][:8])
def test_stream_refuses_the_same_options(backend, kwargs, error, fragment) -> None:
    with pytest.raises(error, match=fragment):
        list(backend.stream(HELLO, **{"max_new_tokens": 4, **kwargs}))
    assert _sent() == []


def test_label_probabilities_refuses_the_same_labels(backend) -> None:
    tok = backend.tokenizer
    first = {w: tok(w, add_special_tokens=False)["input_ids"][0] for w in ("The quick",
                                                                        "The lazy")}
    assert len(set(first.values())) == 1  # the two labels start with the same token
    cases = [
        ({"labels": ("yes", "yes")}, "distinct"),
        ({"labels": ()}, "distinct"),
        ({"labels": ("", "no")}, "encodes to no tokens"),
        ({"labels": ("The quick", "The lazy")}, "share their first token"),
        ({"raw": True, "batch": [HELLO]}, "raw=True"),
        ({"raw": True, "batch": [""]}, "raw=True"),
        ({"expert": [None, None]}, "experts for a batch of 1"),
    ]
    for kwargs, fragment in cases:
        options = {k: v for k, v in kwargs.items() if k != "batch"}
        with pytest.raises(InputError, match=fragment):
            backend.label_probabilities(kwargs.get("batch", [HELLO]), **options)
    with pytest.raises(UnknownExpertError):
        backend.label_probabilities([HELLO], expert="nobody")
    assert _sent() == []


def test_valid_requests_pass_on_every_backend(backend) -> None:
    """The same options that are refused above in a bad form are taken in a good one."""
    res = backend.generate(HELLO, max_new_tokens=4, stop="\n", temperature=0.0, top_p=1.0,
                           refusal_threshold=0.0, num_beams=1)
    assert res.finish_reason in ("stop", "length") and res.refusal_probability is not None
    batch = backend.generate([HELLO, "Hi"], max_new_tokens=4, expert=[None, None],
                             refusal_gate=False)
    assert len(batch) == 2
    (row,) = backend.label_probabilities([HELLO], labels=("yes", "no"))
    assert set(row) == {"yes", "no"}
