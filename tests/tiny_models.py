"""Tiny, randomly initialised models built offline in about a second, for fast tests.

``tiny_tokenizer()`` trains a byte-level BPE tokenizer on a few sentences (so any text,
unicode included, encodes) and gives it a ChatML chat template with ``<|im_end|>`` as EOS.
``tiny_causal_lm()`` is a 2-layer Llama with hidden size 32 over that vocabulary, and
``tiny_llm()`` wraps both in an :class:`~expertrag.models.ExpertLLM`. Outputs are random text,
which is the point: wrappers must cope with whatever a model emits, and constrained decoding
(JSON schema, tool calls) must still parse.
"""

from __future__ import annotations

import hashlib
import math
import re
from functools import lru_cache
from typing import Any

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Hello, how are you today?",
    '{"name": "add", "arguments": {"a": 1, "b": 2}} <tool_call> </tool_call> true false null',
    "system user assistant tool You can call these tools: reply with only JSON 0123456789",
    "Retrieval augmented generation answers questions from documents with citations [1].",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer() -> Any:
    """A fresh byte-level BPE ``PreTrainedTokenizerFast`` with a ChatML template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_causal_lm(tokenizer: Any | None = None, seed: int = 0,
                   max_positions: int = 1024) -> Any:
    """A 2-layer random Llama over the tiny tokenizer's vocabulary (deterministic per seed)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model.eval()


def tiny_llm(name: str = "tiny", seed: int = 0, max_positions: int = 1024) -> Any:
    """An :class:`~expertrag.models.ExpertLLM` over a fresh tiny random model."""
    from expertrag.models import ExpertLLM

    tokenizer = tiny_tokenizer()
    return ExpertLLM.from_model(tiny_causal_lm(tokenizer, seed=seed, max_positions=max_positions),
                                tokenizer, name=name)


def save_tiny_lora(llm: Any, path: str, seed: int = 1) -> str:
    """Save a random LoRA adapter (q_proj/v_proj, r=4) for `llm`'s base model at `path`.

    The adapter is built on a fresh model of the same config (LoRA weights depend only on
    the shapes), so the shared base is not touched. Its ``lora_B`` weights are made non-zero
    so the expert really changes the output.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from expertrag.models.llm import peft_deprecation_quiet

    base = AutoModelForCausalLM.from_config(llm.base_model.config)
    with peft_deprecation_quiet():  # peft reads a property transformers deprecated
        peft_model = get_peft_model(
            base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        )
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    peft_model.save_pretrained(path)
    return path


class HashEmbedder:
    """Bag-of-words hashed into 64 dims and L2-normalized: shared words mean closeness."""

    dim = 64

    def __init__(self) -> None:
        self.calls = 0

    def _vec(self, text: str) -> list[float]:
        v = [0.0] * self.dim
        for word in re.findall(r"\w+", text.lower()):
            v[int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        norm = math.sqrt(sum(x * x for x in v))
        if norm == 0:
            v[0], norm = 1.0, 1.0
        return [x / norm for x in v]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        return [self._vec(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vec(text)


def store_docs() -> list[Any]:
    """Three short documents for vector-store tests (two with metadata)."""
    from expertrag.types import Document

    return [
        Document("The lighthouse was built in 1862 from granite.", id="a", metadata={"src": "x"}),
        Document("Membership costs 45 euros per year for adults.", id="b", metadata={"src": "y"}),
        Document("Lantern Night is held on the third Saturday of August.", id="c"),
    ]


def save_tiny_model(path: str, seed: int = 0, max_positions: int = 1024) -> str:
    """Save the tiny random Llama and its tokenizer as a transformers folder at ``path``
    (what ``--model DIR`` / ``ExpertLLM(DIR)`` loads)."""
    tokenizer = tiny_tokenizer()
    tiny_causal_lm(tokenizer, seed=seed, max_positions=max_positions).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_embedder(path: str, seed: int = 0) -> str:
    """Save a tiny random sentence-transformers model (a 1-layer BERT over the tiny
    tokenizer, mean pooling, 16 dimensions) at ``path``: a local ``--embedding-model``."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    body = models.Transformer(path, max_seq_length=128)
    dim = (body.get_embedding_dimension() if hasattr(body, "get_embedding_dimension")
           else body.get_word_embedding_dimension())
    pooling = models.Pooling(dim, pooling_mode="mean")
    SentenceTransformer(modules=[body, pooling], device="cpu").save(path)
    return path
