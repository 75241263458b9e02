"""Speculative greedy decoding with the model's own bf16 copy as the draft.

On a CPU, one fp32 decoding step of a small model is bound by streaming its weights from
memory: SmolLM2-135M (530 MB) takes ~55 ms per step on 2 Zen 5 cores whether the step feeds
1 token or 8 (``benchmarks/probe_decode.py``). A bf16 copy of the same weights streams half
the bytes (~28 ms per step where the CPU computes bf16 natively) and agrees with the fp32
model on ~85-90% of greedy tokens. So the draft proposes ``k`` tokens, the fp32 model checks
them all in one forward pass, and the longest agreeing prefix plus the fp32 model's own next
token are kept: every kept token is the fp32 model's greedy choice at its position, so the
output is the one eager greedy decoding gives (up to the last bits of a logit, where a
multi-token forward sums in another order than a one-token one; ``test_speculative_*`` pin
the tokens). Where the draft is wrong, the step costs about one fp32 step plus the draft's.

The gain is bounded by the draft's cost: a bf16 step is ~0.6 of an fp32 one here (the
per-layer Python work does not halve), so at most 4 tokens are drafted per round (longer runs
measured slower) and the loop measured ~1.15x eager on 8 chat prompts; transformers' own
assisted generation (same draft) measured 0.9-1.2x. Only one row,
greedy, unconstrained decoding takes this path (``ExpertLLM`` decides); the draft is the bare
base (no expert adapters): it only proposes, the served model (with its expert) decides.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

MIN_DRAFT, START_DRAFT, MAX_DRAFT = 1, 3, 4  # drafted tokens per round (adaptive)


def bf16_draft(model: Any) -> Any:
    """A bf16 copy of `model`'s base weights, without anything peft injected into it: an
    adapted layer gives its ``base_layer`` weight, a ``modules_to_save`` wrapper its
    ``original_module``; ``lora_*`` and the saved copies are left out. Loaded strictly, so
    a weight that does not map raises instead of staying random."""
    import torch
    from transformers import AutoModelForCausalLM

    weights = {}
    for key, value in model.state_dict().items():
        if "lora_" in key or ".modules_to_save." in key:
            continue
        key = key.replace(".base_layer.", ".").replace(".original_module.", ".")
        weights[key] = value.detach().to(torch.bfloat16)
    draft = AutoModelForCausalLM.from_config(copy.deepcopy(model.config), dtype=torch.bfloat16)
    draft.load_state_dict(weights, strict=True)
    return draft.to(model.device).eval()


def speculative_greedy(
    target: Any,
    draft: Any,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    eos_ids: Sequence[int],
    *,
    processors: Sequence[Callable[[Any, Any], Any]] = (),
    stop: Callable[[list[int]], bool] | None = None,
    on_tokens: Callable[[list[int]], None] | None = None,
    stats: dict[str, int] | None = None,
) -> list[int]:
    """Greedy new tokens for one prompt, drafted by `draft` and verified by `target`.

    `processors` are transformers-style logits processors ``(input_ids, scores) -> scores``
    applied to the target's logits at every position with that position's prefix (what
    ``generate`` does one step at a time). `stop(new_ids)` is checked after every kept token,
    like a stopping criterion; `on_tokens` receives the kept tokens of each round. The result
    ends at the first eos token (included), a stop, or `max_new_tokens`. `stats`, if given,
    gets the counts of target passes, drafted and accepted tokens.
    """
    import torch
    from transformers import DynamicCache

    if max_new_tokens < 1:
        return []
    device = target.device
    eos = set(eos_ids)
    seq = list(prompt_ids)
    new: list[int] = []
    t_cache, d_cache = DynamicCache(), DynamicCache()
    t_kw, d_kw = _cache_arg(target), _cache_arg(draft)
    counts = {"target_passes": 1, "drafted": 0, "accepted": 0}

    def pick(logits: Any, start: int, tail: list[int]) -> list[int]:
        """The target's greedy token after each position: row i follows seq[:start] + tail[:i]."""
        if not processors:
            return logits.float().argmax(dim=-1).tolist()
        picks = []
        for i in range(logits.shape[0]):
            scores = logits[i:i + 1].float()
            prefix = torch.tensor([seq[:start] + tail[:i]], device=device)
            for proc in processors:
                scores = proc(prefix, scores)
            picks.append(int(scores.argmax(dim=-1)))
        return picks

    def done() -> bool:
        return bool(new) and (len(new) >= max_new_tokens or new[-1] in eos
                              or (stop is not None and stop(new)))

    def keep(tokens: list[int]) -> None:
        kept = []
        for token in tokens:
            if done():
                break
            new.append(token)
            kept.append(token)
        seq.extend(kept)
        if kept and on_tokens is not None:
            on_tokens(kept)

    k, d_len = START_DRAFT, 0
    with torch.inference_mode():
        out = target(torch.tensor([seq], device=device), use_cache=True, **{t_kw: t_cache})
        keep(pick(out.logits[0, -1:], len(seq), []))
        while not done():
            # the target's cache holds seq[:-1]; the draft's holds seq[:d_len]
            proposal: list[int] = []
            feed = seq[d_len:]
            for _ in range(min(k, max_new_tokens - len(new))):
                logits = draft(torch.tensor([feed], device=device), use_cache=True,
                               **{d_kw: d_cache}).logits
                d_len += len(feed)
                proposal.append(int(logits[0, -1].argmax()))
                if proposal[-1] in eos:
                    break
                feed = proposal[-1:]
            base = len(seq)
            out = target(torch.tensor([[seq[-1], *proposal]], device=device), use_cache=True,
                         **{t_kw: t_cache})
            picks = pick(out.logits[0], base, proposal)
            agreed = 0
            while agreed < len(proposal) and proposal[agreed] == picks[agreed]:
                agreed += 1
            counts["target_passes"] += 1
            counts["drafted"] += len(proposal)
            counts["accepted"] += agreed
            k = min(k + 2, MAX_DRAFT) if agreed == len(proposal) else max(k - 1, MIN_DRAFT)
            keep([*proposal[:agreed], picks[agreed]])
            # drop what the caches hold beyond the kept sequence
            extra = t_cache.get_seq_length() - (len(seq) - 1)
            if extra > 0:
                t_cache.crop(-extra)
            valid = min(d_len, base + agreed, len(seq) - 1)
            if d_len > valid:
                d_cache.crop(-(d_len - valid))
                d_len = valid
    if stats is not None:
        stats.update(counts)
    return new


def _cache_arg(model: Any) -> str:
    """The name the model's forward takes its KV cache under (transformers renamed it)."""
    import inspect

    inner = getattr(model, "get_base_model", lambda: model)()
    params = inspect.signature(inner.forward).parameters
    return "cache" if "cache" in params and "past_key_values" not in params else \
        "past_key_values"
