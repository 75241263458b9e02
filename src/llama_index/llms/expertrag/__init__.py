"""LlamaIndex LLM integration: expertrag's local LoRA-expert LLM (embedded
SmolLM2-135M-Instruct by default) as a ``FunctionCallingLLM``.

A re-export of :class:`expertrag.llama_index.llms.ExpertLlamaLLM` (same object).
"""

from expertrag.llama_index.llms import ExpertLlamaLLM

__all__ = ["ExpertLlamaLLM"]
