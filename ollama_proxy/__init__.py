"""ollama-proxy: the Ollama HTTP API served from any OpenAI-compatible backend, on Twisted."""

__version__ = "0.1.0"
