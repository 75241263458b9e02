"""Speculative greedy decoding gives the tokens eager greedy decoding gives: with a good draft
(the model's own bf16 copy), a bad one (another random model: most proposals rejected), an
expert served by the target, a refusal gate, stop strings, streaming and a token budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny_lora, tiny_causal_lm, tiny_llm, tiny_tokenizer

from expertrag.errors import InputError
from expertrag.models.speculative import bf16_draft, speculative_greedy

PROMPTS = ["Hello there, expert", "Tell me a long story about the sea and a lighthouse",
           "Numbers: 1 2 3 4 5 6 7 8 9"]


def _eager(model, ids: list[int], max_new: int, eos: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos, top_k=None, top_p=None,
                             temperature=None)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("draft_kind", ["bf16-self", "other-model", "same-model"])
def test_speculative_greedy_equals_eager_greedy(draft_kind: str) -> None:
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    draft = {"bf16-self": lambda: bf16_draft(model),
             "other-model": lambda: tiny_causal_lm(tok, seed=7),
             "same-model": lambda: model}[draft_kind]()
    for prompt in PROMPTS:
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        for max_new in (1, 5, 40):
            want = _eager(model, ids, max_new, tok.eos_token_id)
            stats: dict[str, int] = {}
            got = speculative_greedy(model, draft, ids, max_new, [tok.eos_token_id],
                                     stats=stats)
            assert got == want, (draft_kind, prompt, max_new)
            if draft_kind == "same-model" and max_new == 40 and len(got) == 40:
                # a perfect draft: every proposal is accepted, far fewer target passes
                assert stats["accepted"] == stats["drafted"]
                assert stats["target_passes"] < 40 // 2


def test_bf16_draft_has_base_weights_and_no_adapters(tmp_path: Path) -> None:
    llm = tiny_llm()
    llm.add_expert("e", save_tiny_lora(llm, str(tmp_path / "e")))
    draft = bf16_draft(llm.base_model)
    assert all(p.dtype == torch.bfloat16 for p in draft.parameters())
    assert not any("lora" in name for name, _ in draft.named_modules())
    q = dict(llm.base_model.named_parameters())
    base_q = q["model.layers.0.self_attn.q_proj.base_layer.weight"]
    assert torch.equal(draft.model.layers[0].self_attn.q_proj.weight, base_q.to(torch.bfloat16))
    assert draft.lm_head.weight.data_ptr() == draft.model.embed_tokens.weight.data_ptr()


def _both(llm, messages, mode=True, **kwargs):
    llm.speculative = False
    eager = llm.generate(messages, **kwargs)
    llm.speculative = mode
    spec = llm.generate(messages, **kwargs)
    return eager, spec


@pytest.mark.parametrize("mode", [True, "ngram"])
def test_expertllm_speculative_path_matches_generate(tmp_path: Path, mode) -> None:
    llm = tiny_llm()
    llm.add_expert("e", save_tiny_lora(llm, str(tmp_path / "e")))
    for prompt in PROMPTS:
        msgs = [{"role": "user", "content": prompt}]
        for kwargs in ({"max_new_tokens": 30}, {"max_new_tokens": 30, "expert": "e"},
                       {"max_new_tokens": 3}):
            eager, spec = _both(llm, msgs, mode, **kwargs)
            assert (spec.text, spec.completion_tokens, spec.finish_reason) == \
                (eager.text, eager.completion_tokens, eager.finish_reason), kwargs
        assert llm.last_speculation["target_passes"] >= 1


@pytest.mark.parametrize("mode", [True, "ngram"])
def test_speculative_path_keeps_stops_gate_and_streaming(mode) -> None:
    llm = tiny_llm()
    msgs = [{"role": "user", "content": PROMPTS[1]}]
    llm.speculative = False
    free = llm.generate(msgs, max_new_tokens=30).text
    assert len(free) > 6
    stop = free[4:6]  # a stop string the greedy answer runs into
    eager, spec = _both(llm, msgs, mode, max_new_tokens=30, stop=stop)
    assert spec.text == eager.text and spec.finish_reason == eager.finish_reason == "stop"
    assert spec.completion_tokens == eager.completion_tokens
    for threshold in (0.0, 1.0):  # the gate forces, then bars, the refusal
        eager, spec = _both(llm, msgs, mode, max_new_tokens=12, refusal_threshold=threshold)
        assert spec.text == eager.text
        assert spec.refusal_probability == pytest.approx(eager.refusal_probability)
    llm.speculative = mode
    chunks = [c.text for c in llm.stream(msgs, max_new_tokens=30)]
    assert "".join(chunks) == free


def test_speculative_applies_only_where_it_is_exact() -> None:
    llm = tiny_llm()
    llm.speculative = True
    llm.last_speculation = {}
    msgs = [{"role": "user", "content": PROMPTS[0]}]
    llm.generate([msgs, msgs], max_new_tokens=5)  # a batch: generate's own loop
    llm.generate(msgs, max_new_tokens=5, temperature=0.8, seed=1)  # sampling
    llm.generate(msgs, max_new_tokens=5, logprobs=True)
    assert llm.last_speculation == {}
    llm.generate(msgs, max_new_tokens=5)
    assert llm.last_speculation


def test_speculative_option_is_checked() -> None:
    from expertrag.models import ExpertLLM

    with pytest.raises(InputError, match="speculative"):
        ExpertLLM(speculative="always")


def test_bf16_draft_takes_original_modules_of_saved_copies() -> None:
    """A peft ``modules_to_save`` wrapper contributes its original weights, not the copy."""
    from peft import LoraConfig, get_peft_model

    model = tiny_causal_lm(tiny_tokenizer(), seed=0)
    before = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"],
                                            modules_to_save=["down_proj"]))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "modules_to_save" in name:
                param.add_(1.0)  # the trained copy differs from the original
    draft = bf16_draft(peft.get_base_model())
    assert torch.equal(draft.model.layers[0].mlp.down_proj.weight, before.to(torch.bfloat16))


def test_ngram_draft_proposes_what_followed_the_latest_match() -> None:
    from expertrag.models.speculative import NgramDraft

    draft = NgramDraft(max_ngram=3, min_ngram=2, tokens=4)
    #          0  1  2  3  4  5  6  7  8  9
    seq = [5, 6, 7, 8, 9, 1, 6, 7, 2, 3, 6, 7]
    # the tail (6, 7) last occurred at 6..7 and was followed by 2, 3, 6, 7
    assert draft.propose(seq, 4, set()) == [2, 3, 6, 7]
    assert draft.propose(seq, 2, set()) == [2, 3]
    # a longer match wins over a later shorter one: (1, 6, 7) only at 5..7
    assert draft.propose([*seq[:-2], 1, 6, 7], 3, set()) == [2, 3, 1]
    # the proposal stops at an end-of-sequence token, which it includes
    assert draft.propose(seq, 4, {3}) == [2, 3]
    # no repeated n-gram: nothing to propose (an ordinary one-token step)
    assert draft.propose([1, 2, 3, 4], 4, set()) == []
    with pytest.raises(ValueError):
        NgramDraft(max_ngram=1, min_ngram=2)


def test_ngram_speculative_greedy_equals_eager_greedy() -> None:
    from expertrag.models.speculative import NgramDraft

    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    accepted = 0
    for prompt in [*PROMPTS, "a b c a b c a b c a b c a b"]:
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        for max_new in (1, 5, 40):
            want = _eager(model, ids, max_new, tok.eos_token_id)
            stats: dict[str, int] = {}
            got = speculative_greedy(model, NgramDraft(), ids, max_new, [tok.eos_token_id],
                                     stats=stats)
            assert got == want, (prompt, max_new)
            accepted += stats["accepted"]
    assert accepted > 0  # a random tiny model repeats itself: some drafts were taken
