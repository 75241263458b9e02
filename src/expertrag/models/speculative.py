"""Speculative greedy decoding with the model's own bf16 copy as the draft.

On a CPU, one fp32 decoding step of a small model is bound by streaming its weights from
memory: a step costs about the same whether it feeds 1 token or 8
(``benchmarks/probe_decode.py``). A bf16 copy of the same weights streams half the bytes and
agrees with the fp32 model on most greedy tokens. So the draft proposes ``k`` tokens, the fp32
model checks them all in one forward pass, and the longest agreeing prefix plus the fp32
model's own next token are kept: every kept token is the fp32 model's greedy choice at its
position, so the output is the one eager greedy decoding gives (up to the last bits of a logit,
where a multi-token forward sums in another order than a one-token one; ``test_speculative_*``
pin the tokens). Where the draft is wrong, the step costs about one fp32 step plus the draft's.

The gain is bounded by the draft's cost: a bf16 step costs well over half an fp32 one (the
per-layer Python work does not halve), so at most 4 tokens are drafted per round (longer runs
measured slower) and the gain over eager decoding is small; it stays opt-in. Only one row,
greedy, unconstrained decoding takes this path (``ExpertLLM`` decides); the draft is the bare
base (no expert adapters): it only proposes, the served model (with its expert) decides.

:class:`NgramDraft` proposes without a model (prompt lookup). It costs nothing to draft, but
a verifying pass is not free on a CPU and chat answers repeat few n-grams, so it measured
no faster than eager decoding; it stays opt-in (``speculative="ngram"``).

Figures (acceptance, step costs, speed against eager decoding): benchmarks/RESULTS.md,
"Model speed and dtype".
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

MIN_DRAFT, START_DRAFT, MAX_DRAFT = 1, 3, 4  # drafted tokens per round (adaptive)
ENV_SPECULATIVE = "EXPERTRAG_SPECULATIVE"  # "0" turns the speculative path off
# True / "bf16": the base's bf16 copy drafts; "ngram": prompt lookup (no draft model);
# "auto": bf16 where the CPU computes it natively; False: off
SPECULATIVE_MODES = (False, True, "auto", "bf16", "ngram")


def should_speculate(mode: bool | str, rows: int, opts: Any, model: Any,
                     quantized: bool = False) -> bool:
    """Whether a request takes the speculative path: one row, greedy, unconstrained, more
    than one new token, no log-probabilities, no beams, and speculation on: True / "bf16" /
    "ngram", or "auto" on a CPU that computes bf16 natively serving unquantized fp32
    weights (where a bf16 draft step is cheap enough against an fp32 one).
    ``EXPERTRAG_SPECULATIVE=0`` turns it off."""
    import os

    if (rows != 1 or opts.max_new_tokens < 2 or opts.temperature > 0 or opts.constrained
            or opts.logprobs or opts.num_beams > 1
            or mode is False or os.environ.get(ENV_SPECULATIVE) == "0"):
        return False
    if mode in (True, "bf16", "ngram"):
        return True
    import torch

    from expertrag.models.loading import cpu_has_native_bf16

    return (model.device.type == "cpu" and model.dtype == torch.float32 and not quantized
            and cpu_has_native_bf16())


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


class ModelDraft:
    """Drafts with a small causal LM (e.g. :func:`bf16_draft`), keeping its own KV cache in
    step with the kept sequence. It drafts ``k`` tokens per round, adapted to how many the
    target accepted (longer after a full acceptance, shorter after a rejection)."""

    def __init__(self, model: Any) -> None:
        from transformers import DynamicCache

        self.model = model
        self.cache = DynamicCache()
        self.kw = _cache_arg(model)
        self.length = 0  # tokens of the kept sequence the cache holds
        self.k = START_DRAFT

    def propose(self, seq: list[int], limit: int, eos: set[int]) -> list[int]:
        import torch

        proposal: list[int] = []
        feed = seq[self.length:]
        device = self.model.device
        for _ in range(min(self.k, limit)):
            logits = self.model(torch.tensor([feed], device=device), use_cache=True,
                                **{self.kw: self.cache}).logits
            self.length += len(feed)
            proposal.append(int(logits[0, -1].argmax()))
            if proposal[-1] in eos:
                break
            feed = proposal[-1:]
        return proposal

    def update(self, proposed: int, agreed: int, valid: int) -> None:
        """After a round: adapt ``k`` and keep only the first ``valid`` cached tokens (the
        rest were rejected)."""
        if proposed:
            self.k = min(self.k + 2, MAX_DRAFT) if agreed == proposed \
                else max(self.k - 1, MIN_DRAFT)
        if self.length > valid:
            self.cache.crop(-(self.length - valid))
            self.length = valid


class NgramDraft:
    """Prompt-lookup drafting (Saxena 2023; transformers' ``prompt_lookup_num_tokens``): the
    last ``n`` tokens (``max_ngram`` down to ``min_ngram``) are looked up earlier in the
    prompt and the answer so far, and the tokens that followed the latest match are proposed.
    No model runs, so a draft costs nothing; a miss leaves an ordinary one-token step. It pays
    where answers copy their context (RAG answers, extraction, JSON echoing the input)."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 2, tokens: int = 8) -> None:
        if not 1 <= min_ngram <= max_ngram or tokens < 1:
            raise ValueError("need 1 <= min_ngram <= max_ngram and tokens >= 1")
        self.max_ngram, self.min_ngram, self.tokens = max_ngram, min_ngram, tokens

    def propose(self, seq: list[int], limit: int, eos: set[int]) -> list[int]:
        """At most ``min(tokens, limit)`` tokens, ending at the first ``eos`` one."""
        k = min(self.tokens, limit)
        for n in range(min(self.max_ngram, len(seq) - 1), self.min_ngram - 1, -1):
            tail = seq[-n:]
            for start in range(len(seq) - n - 1, -1, -1):  # latest earlier match first
                if seq[start:start + n] == tail:
                    follow = seq[start + n:start + n + k]
                    for i, token in enumerate(follow):
                        if token in eos:
                            return follow[:i + 1]
                    return follow
        return []

    def update(self, proposed: int, agreed: int, valid: int) -> None:
        """Nothing cached, nothing to adapt."""


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

    `draft`: a small causal LM (wrapped in :class:`ModelDraft`) or a drafter (an object with
    ``propose(seq, limit, eos)`` and ``update(proposed, agreed, valid)``, e.g.
    :class:`NgramDraft`).

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
    t_cache = DynamicCache()
    t_kw = _cache_arg(target)
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

    drafter = draft if callable(getattr(draft, "propose", None)) else ModelDraft(draft)
    with torch.inference_mode():
        out = target(torch.tensor([seq], device=device), use_cache=True, **{t_kw: t_cache})
        keep(pick(out.logits[0, -1:], len(seq), []))
        while not done():
            # the target's cache holds seq[:-1]
            proposal = drafter.propose(seq, max_new_tokens - len(new), eos)
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
            keep([*proposal[:agreed], picks[agreed]])
            # drop what the caches hold beyond the kept sequence
            extra = t_cache.get_seq_length() - (len(seq) - 1)
            if extra > 0:
                t_cache.crop(-extra)
            drafter.update(len(proposal), agreed, min(base + agreed, len(seq) - 1))
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
