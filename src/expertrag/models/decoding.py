"""Decoding helpers of the in-process backend: the refusal gate, stop strings, streaming.

These plug into transformers' ``generate`` (a logits processor, a stopping criterion, a
streamer) and into the speculative path; :func:`first_stop` is also what the server client
cuts its text with. torch is imported inside the functions that need it, so importing this
module stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from expertrag.models.batching import pad_rows


def first_stop(text: str, stops: list[str]) -> int | None:
    """Where the first stop string starts in ``text`` (None when none occurs)."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a turn for this model: the generation config's, the
    tokenizer's and the usual chat-template end markers it knows."""
    ids = model.generation_config.eos_token_id
    found = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    for special in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(special)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            found.add(tid)
    return sorted(found)


class RefusalGate:
    """At the first decoding step, row by row: P(the refusal's first token) >= threshold
    forces the refusal (then end of text); below it, that token is barred. Records the
    probability; rows without a gate are left alone. Under beam search the scores hold
    ``beams`` consecutive hypotheses per row (all the same prompt at the first step)."""

    def __init__(self, tokenizer: Any, rows: list[tuple[str, float] | None], width: int,
                 eos: int, beams: int = 1) -> None:
        self.width, self.eos, self.beams = width, eos, beams
        self.rows = [None if r is None else
                     (tokenizer(r[0], add_special_tokens=False)["input_ids"][0], r[1])
                     for r in rows]
        self.texts = [r[0] if r is not None else "" for r in rows]
        self.probabilities: list[float | None] = [None] * len(rows)
        self.refused = [False] * len(rows)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        step = input_ids.shape[1] - self.width
        if step == 0:
            probs = torch.softmax(scores.float(), dim=-1)
            for i, row in enumerate(self.rows):
                if row is None:
                    continue
                token, threshold = row
                hyps = slice(i * self.beams, (i + 1) * self.beams)
                p = float(probs[i * self.beams, token])
                self.probabilities[i] = p
                if p >= threshold:
                    self.refused[i] = True
                    scores[hyps, :] = -float("inf")
                    scores[hyps, token] = 0.0
                else:
                    scores[hyps, token] = -float("inf")
        elif step == 1:
            for i, refused in enumerate(self.refused):
                if refused:
                    hyps = slice(i * self.beams, (i + 1) * self.beams)
                    scores[hyps, :] = -float("inf")
                    scores[hyps, self.eos] = 0.0
        return scores

    def apply(self, results: list[Any]) -> None:
        """Record each row's refusal probability on its result; a row the gate refused
        answers with the refusal text."""
        for i, res in enumerate(results):
            res.refusal_probability = self.probabilities[i]
            if self.refused[i]:
                res.text, res.finish_reason = self.texts[i], "stop"


class StopStrings:
    """Stop a row once its decoded new text contains a stop string. Decoding the tail of
    each row is exact for stop strings of any token length and any tokenizer, where
    matching token pieces is not (byte-level and whitespace merges)."""

    def __init__(self, tokenizer: Any, stops: list[str], prompt_width: int) -> None:
        self._tok = tokenizer
        self._stops = stops
        self._width = prompt_width
        self._window = max(len(s) for s in stops) + 4  # tokens: each decodes to >= 1 char

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        tails = input_ids[:, self._width:][:, -self._window:].tolist()
        texts = self._tok.batch_decode(tails, skip_special_tokens=True)
        done = [any(s in t for s in self._stops) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class TokenStreamer:
    """transformers streamer protocol: the first put() is the prompt, later ones new ids."""

    def __init__(self, callback: Callable[[Any], None]) -> None:
        self._callback = callback
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self._callback(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


class StreamDecoder:
    """Incremental detokenisation with stop-string hold-back: never emits text that a stop
    sequence would later cut, nor a half-decoded character."""

    def __init__(self, tokenizer: Any, stops: list[str]) -> None:
        self._tok = tokenizer
        self._stops = stops
        self._ids: list[int] = []
        self._emitted = 0
        self._stopped = False

    def feed(self, ids: list[int]) -> str:
        if self._stopped:
            return ""
        self._ids.extend(ids)
        text = self._tok.decode(self._ids, skip_special_tokens=True)
        cut = first_stop(text, self._stops)
        if cut is not None:
            self._stopped, text = True, text[:cut]
        else:
            hold = max((k for s in self._stops for k in range(1, len(s)) if text.endswith(s[:k])),
                       default=0)
            text = text[: len(text) - hold]
            text = text[:-1] if text.endswith("\ufffd") else text
        delta = text[self._emitted:]
        self._emitted = max(self._emitted, len(text))
        return delta

    def finish(self, result: Any) -> str:
        """The rest of the final text, once the result is known."""
        return result.text[self._emitted:]


class LabelHead:
    """Label logits in fp32 from the LM head's input, for a bf16 / fp16 model.

    A bf16 head rounds its logits to bf16: at the size of a label logit (10-30) that is a
    step of 0.06-0.125, so P(yes) of a yes / no pair moves in steps of up to 0.03 and many
    passages tie. Used as a context manager around the forward passes, it keeps the last
    position's hidden state (the head's input) and :meth:`logits` redoes the head's product
    for the wanted tokens in fp32; the model's own numbers up to the head are unchanged.
    A float32 head (or a quantized one) passes its logits through."""

    def __init__(self, model: Any) -> None:
        import torch

        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") \
            else None
        exact = isinstance(head, torch.nn.Linear) and head.weight.dtype in (torch.bfloat16,
                                                                             torch.float16)
        self.head = head if exact else None
        self._inputs: list[Any] = []
        self._handle: Any = None

    def __enter__(self) -> LabelHead:
        if self.head is not None:
            self._handle = self.head.register_forward_pre_hook(
                lambda _module, args: self._inputs.append(args[0][:, -1, :]))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle = None
        self._inputs.clear()

    def logits(self, logits: Any, ids: list[int] | None = None) -> Any:
        """fp32 logits at the last position of the forward pass that gave ``logits``: of
        the tokens ``ids``, or of the whole vocabulary (None)."""
        if self.head is None:
            last = logits[:, -1, :]
            return (last if ids is None else last[:, ids]).float()
        hidden = self._inputs.pop().float()
        weight = self.head.weight if ids is None else self.head.weight[ids]
        out = hidden @ weight.float().t()
        if self.head.bias is not None:
            bias = self.head.bias if ids is None else self.head.bias[ids]
            out = out + bias.float()
        return out


def left_pad(rows: list[list[int]], pad: int, device: Any) -> dict[str, Any]:
    """Left-pad token rows into a batch, with position ids that start at 0 at each row's first
    real token (so a row's logits do not depend on the batch it lands in)."""
    input_ids, mask = pad_rows(rows, pad, left=True)
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device),
            "position_ids": positions(mask).to(device)}


def positions(mask: Any) -> Any:
    """Position ids of a left-padded batch: 0 at each row's first real token."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def cache_argument() -> str:
    """The name ``generate`` takes a prefilled KV cache by (transformers 5 renamed it)."""
    from transformers.generation import utils

    return "cache" if "cache" in getattr(utils, "ALL_CACHE_NAMES", ()) else "past_key_values"


def shared_prefill(model: Any, enc: Any, beams: int, kwargs: dict[str, Any]) -> Any:
    """The prompt's KV cache (all but its last token) computed once per row and repeated
    for each beam: ``generate`` would otherwise run the prefill ``beams`` times, which on
    a long grounded prompt costs more than the few answer tokens. Positions start at
    each row's first real token, as ``generate`` numbers them."""
    import torch

    mask = enc["attention_mask"][:, :-1]
    extra = {k: v for k, v in kwargs.items() if k == "adapter_names"}
    with torch.inference_mode():
        out = model(input_ids=enc["input_ids"][:, :-1], attention_mask=mask,
                    position_ids=positions(mask), use_cache=True, logits_to_keep=1, **extra)
    cache = getattr(out, "cache", None) or out.past_key_values
    cache.batch_repeat_interleave(beams)
    return cache


def generation_config(opts: Any, max_new: int, pad: int | None, eos: list[int]) -> Any:
    """transformers' GenerationConfig for one call's options: greedy at temperature 0,
    else sampled; beam search with length-normalised scores for ``num_beams > 1``; the
    scores kept when log-probabilities are asked for."""
    from transformers import GenerationConfig

    sampled = opts.temperature > 0
    config = GenerationConfig(max_new_tokens=max_new, do_sample=sampled,
                              temperature=opts.temperature if sampled else None,
                              top_p=opts.top_p if sampled else None, top_k=None,
                              pad_token_id=pad, eos_token_id=eos)
    if opts.num_beams > 1:
        config.num_beams, config.length_penalty = opts.num_beams, 1.0
    if opts.logprobs:  # on the config: generate() deprecates them beside one
        config.output_scores = config.return_dict_in_generate = True
    return config


def chosen_logprobs(output: Any, width: int) -> list[list[float]]:
    """Per row, the log-probability of the token chosen at each step (``output`` from
    ``generate`` with scores; ``width`` the padded prompt length)."""
    import torch

    with torch.inference_mode():
        steps = torch.stack([torch.log_softmax(sc.float(), dim=-1) for sc in output.scores],
                            dim=1)
        chosen = output.sequences[:, width:width + steps.shape[1]]
        return steps.gather(-1, chosen.unsqueeze(-1)).squeeze(-1).tolist()


def beam_search(step: Any, width: int, max_new: int, eos: set[int],
                banned_first: set[int] | None = None) -> tuple[list[int], float]:
    """Beam search over a next-token oracle, for backends that return top-k log-probabilities
    but have no beam search of their own (llama-server). ``step(prefixes)`` gives, for each
    prefix of generated tokens, ``{token: log-probability}`` of at least ``2 * width`` likely
    next tokens. Scores are length-normalised sums (length penalty 1, as in-process); a
    hypothesis ends at an ``eos`` token; the search stops when no running beam can beat the
    ``width`` finished ones, or at ``max_new`` tokens. ``banned_first``: tokens the first step
    may not take (the refusal gate's). Returns the best tokens (without the end token) and
    their normalised score."""
    running: list[tuple[list[int], float]] = [([], 0.0)]
    finished: list[tuple[float, list[int]]] = []
    for length in range(max_new):
        candidates = []
        for (tokens, total), options in zip(running, step([t for t, _ in running]),
                                            strict=True):
            for token, logprob in options.items():
                if length == 0 and banned_first and token in banned_first:
                    continue
                candidates.append((total + logprob, tokens, token))
        candidates.sort(key=lambda c: -c[0])
        running = []
        for rank, (total, tokens, token) in enumerate(candidates[:2 * width]):
            if token in eos:
                if rank < width:  # an end token counts only among the best `width`
                    finished.append((total / max(1, len(tokens)), tokens))
            else:
                running.append(([*tokens, token], total))
            if len(running) == width:
                break
        finished = sorted(finished, key=lambda f: -f[0])[:width]
        if not running:
            break
        best_running = max(total for _, total in running) / (length + 1)
        if len(finished) == width and best_running <= finished[-1][0]:
            break
    else:
        finished += [(total / max(1, len(tokens)), tokens) for tokens, total in running]
    if not finished:  # every candidate ended at once beyond the best `width`: end here
        return [], 0.0
    score, tokens = max(finished, key=lambda f: f[0])
    return tokens, score
