"""Which OpenAI-compatible server is behind the daemon, for the few fields where they differ."""

from __future__ import annotations

import enum


class Dialect(enum.Enum):
    """Backends accept different extras: vLLM and OpenRouter take ``top_k``/``min_p``/``repetition_penalty``,
    llama.cpp takes ``repeat_penalty``, OpenAI takes none of them, and each asks for reasoning its own way."""

    VLLM = "vllm"
    OPENAI = "openai"
    OPENROUTER = "openrouter"
    LLAMACPP = "llamacpp"
