"""Who may talk to the daemon: client bearer tokens (off by default, like Ollama) and Ollama's CORS rules.

Both are decided per request in ``site.py`` before any handler runs.
"""

from __future__ import annotations

import base64
import fnmatch
import hmac
import re
from collections.abc import Iterable

# Ollama's default allowed origins: local hosts on any port, and the desktop/editor webview schemes.
_DEFAULT_ORIGINS = (
    "http://localhost",
    "https://localhost",
    "http://localhost:*",
    "https://localhost:*",
    "http://127.0.0.1",
    "https://127.0.0.1",
    "http://127.0.0.1:*",
    "https://127.0.0.1:*",
    "http://0.0.0.0",
    "https://0.0.0.0",
    "http://0.0.0.0:*",
    "https://0.0.0.0:*",
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
)
ALLOWED_HEADERS = (
    b"Authorization, Content-Type, User-Agent, Accept, X-Requested-With, X-Request-ID, "
    b"OpenAI-Beta, X-Stainless-*, X-Api-Key, Anthropic-Version, Anthropic-Beta, "
    b"Anthropic-Dangerous-Direct-Browser-Access"
)
ALLOWED_METHODS = b"GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"


class ClientKeys:
    """The tokens clients may present.  Every comparison runs over all tokens in constant time, so the
    time taken says nothing about how close a guess was."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = tuple(token.encode() for token in tokens)

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def allows(self, authorization: bytes | None, api_key: bytes | None = None) -> bool:
        """Whether the ``Authorization`` header or an ``x-api-key`` header (the Anthropic SDKs' way; they
        send both when given both an API key and an auth token) presents one of the tokens."""
        presented = [presented_token(authorization), api_key.strip() if api_key else None]
        found = False
        for candidate in presented:
            if candidate:
                for token in self._tokens:
                    found |= hmac.compare_digest(candidate, token)
        return found


def presented_token(authorization: bytes | None) -> bytes | None:
    """The token in ``Bearer TOKEN`` (the ollama SDK, Open WebUI) or in Basic credentials (LangChain's
    ``http://user:TOKEN@host``; a token given as the user name alone also counts)."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(b" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == b"bearer" and value:
        return value
    if scheme == b"basic" and value:
        try:
            user, _, password = base64.b64decode(value, validate=True).partition(b":")
        except ValueError:
            return None
        return password or user or None
    return None


class CorsPolicy:
    """Ollama's CORS: its default origins plus ``OLLAMA_ORIGINS`` (``*`` patterns allowed)."""

    def __init__(self, extra: Iterable[str]) -> None:
        patterns = [*_DEFAULT_ORIGINS, *extra]
        self.any_origin = "*" in patterns
        self._match = re.compile("|".join(fnmatch.translate(p.lower()) for p in patterns))

    def allows(self, origin: str) -> bool:
        return self.any_origin or self._match.match(origin.lower()) is not None

    def allow_origin_header(self, origin: str) -> bytes:
        """``*`` only when every origin is allowed (never with credentials); otherwise the origin itself."""
        return b"*" if self.any_origin else origin.encode("latin-1", "replace")
