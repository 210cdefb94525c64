"""The ``twistd ollamaproxy`` plugin.  Every plugin scan imports this file, so it only names the module
that holds the options and the service (imported when the command actually runs)."""

from twisted.application.service import ServiceMaker

ollamaproxy = ServiceMaker(
    "ollama-proxy",
    "ollama_proxy.tap",
    "Serve the Ollama HTTP API from an OpenAI-compatible backend.",
    "ollamaproxy",
)
