"""The model layer on the real embedded SmolLM2-135M-Instruct."""

from __future__ import annotations

import pytest

from expertrag.models import ExpertLLM, load_base_model

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def llm() -> ExpertLLM:
    return ExpertLLM.shared()


def test_gguf_is_cached_as_safetensors(llm: ExpertLLM) -> None:
    llm.load()  # the first load in a fresh environment de-quantizes and writes the cache
    again = load_base_model("smollm2-135m-instruct")
    assert again.from_cache
    assert again.load_seconds < 30
    assert again.source.kind == "gguf"


def test_answers_a_simple_question(llm: ExpertLLM) -> None:
    res = llm.generate(QUESTION, max_new_tokens=20)
    assert "Paris" in res.text
    assert res.finish_reason == "stop"


def test_batch_of_prompts(llm: ExpertLLM) -> None:
    batch = llm.generate([QUESTION, [{"role": "user", "content": "Say hello."}]],
                         max_new_tokens=16)
    assert len(batch) == 2 and "Paris" in batch[0].text


def test_structured_output_and_tool_call(llm: ExpertLLM) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "country": {"type": "string"}},
              "required": ["city", "country"]}
    res = llm.generate(QUESTION, json_schema=schema, max_new_tokens=40)
    assert set(res.parsed) == {"city", "country"}
    weather = {"name": "get_weather", "description": "Get the weather at a location.",
               "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                              "required": ["location"]}}
    call = llm.generate([{"role": "user", "content": "What is the weather in Paris?"}],
                        tools=[weather], max_new_tokens=60)
    assert call.tool_calls and call.tool_calls[0].name == "get_weather"


def test_four_bit_loading_generates() -> None:
    pytest.importorskip("bitsandbytes")
    small = ExpertLLM(quantization="4bit").load()
    try:
        assert "Linear4bit" in type(small.base_model.model.layers[0].self_attn.q_proj).__name__
        assert small.generate(QUESTION, max_new_tokens=8).completion_tokens > 0
    finally:
        small.close()


def test_fast_paths_keep_greedy_tokens(llm: ExpertLLM) -> None:
    """The lean LoRA forward and the fast LM head give the same greedy answers as the stock
    forwards: single stream and a batch of 8, bare base, a shipped expert, mixed experts."""
    from expertrag.experts import attach_shipped
    from expertrag.models import fastpath

    experts = attach_shipped(llm)
    prompts = [[{"role": "user", "content": p}] for p in (
        "Explain in three sentences why the sky is blue.",
        "Write a short paragraph about the history of bread.",
        "Give three tips for learning a new language.", "Describe how a bicycle works.",
        "What are the main causes of ocean tides?", "Summarise the water cycle for a child.",
        "List some benefits of regular exercise.", "Why do leaves change colour in autumn?")]
    mixed = [([*experts, None] * 3)[i] for i in range(len(prompts))]

    def answers() -> list[list[str]]:
        out = [[llm.generate(prompts[0], max_new_tokens=40).text]]
        for expert in (None, "grounded-qa", mixed):
            rows = llm.generate(prompts, expert=expert, max_new_tokens=40, refusal_gate=False)
            out.append([r.text for r in rows])
        return out

    fast = answers()
    llm._worker.run(lambda: fastpath.remove_fast_paths(llm._model))
    try:
        assert fast == answers()
    finally:
        llm._worker.run(lambda: (fastpath.install_lean_lora(llm._model),
                                 fastpath.install_fast_head(llm.base_model)))


def test_default_dtype_greedy_answers_are_transformers_own(llm: ExpertLLM) -> None:
    """In the dtype ExpertLLM picks by default (bf16 on a CPU with native bf16), its
    single-stream greedy answers through the fast paths are token for token those of
    transformers' ``generate`` with the stock forwards on the same weights."""
    from contextlib import nullcontext

    import torch

    from expertrag.models import fastpath
    from expertrag.models.loading import resolve_dtype

    assert llm.base_model.dtype == resolve_dtype(None, "cpu")
    prompts = [[{"role": "user", "content": p}] for p in (
        "Explain in three sentences why the sky is blue.",
        "Give three tips for learning a new language.", "Describe how a bicycle works.")]
    ours = [llm.generate(m, max_new_tokens=40) for m in prompts]

    def stock() -> list[list[int]]:
        fastpath.remove_fast_paths(llm._model)
        try:
            out = []
            for m in prompts:
                enc = llm.tokenizer(llm.render(m), return_tensors="pt",
                                    add_special_tokens=False)
                bare = llm._peft.disable_adapter() if llm._peft is not None else nullcontext()
                with torch.inference_mode(), bare:
                    ids = llm.base_model.generate(**enc, max_new_tokens=40, do_sample=False,
                                                  pad_token_id=llm.tokenizer.pad_token_id)
                out.append(ids[0, enc["input_ids"].shape[1]:].tolist())
            return out
        finally:
            fastpath.install_lean_lora(llm._model)
            fastpath.install_fast_head(llm.base_model)

    for res, ids in zip(ours, llm._worker.run(stock), strict=True):
        assert res.text == llm.tokenizer.decode(ids, skip_special_tokens=True).strip()


@pytest.fixture(scope="module")
def fp32() -> ExpertLLM:
    """The speculative path drafts in bf16 for an fp32 model (the opt-in exact route)."""
    model = ExpertLLM(dtype="float32").load()
    yield model
    model.close()


def test_speculative_decoding_keeps_greedy_tokens(fp32: ExpertLLM) -> None:
    """The bf16-drafted speculative path gives the fp32 greedy answers of transformers' own
    loop: free text from the bare base and a grounded-qa answer with its refusal gate."""
    from expertrag.experts import attach_shipped
    from expertrag.rag import build_messages
    from expertrag.types import Document

    llm = fp32
    attach_shipped(llm, ["grounded-qa"])
    passages = [Document(text="The lighthouse was built in 1862 and first lit in 1863.",
                         id="a"),
                Document(text="Lantern Night is held on the third Saturday of August.",
                         id="b")]
    cases = [([{"role": "user", "content": p}], None) for p in (
        "Explain in three sentences why the sky is blue.",
        "Write a short paragraph about the history of bread.",
        "Give three tips for learning a new language.")]
    cases.append((build_messages("When is Lantern Night held?", passages), "grounded-qa"))
    before = llm.speculative
    try:
        for messages, expert in cases:
            llm.speculative = False
            eager = llm.generate(messages, expert=expert, max_new_tokens=48)
            llm.speculative = True
            spec = llm.generate(messages, expert=expert, max_new_tokens=48)
            assert (spec.text, spec.completion_tokens) == (eager.text, eager.completion_tokens)
            assert llm.last_speculation["accepted"] > 0
    finally:
        llm.speculative = before
