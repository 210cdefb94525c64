"""The one error hierarchy of the daemon, each kind carrying the HTTP status it maps to.

Every failure a client can see is one of these; the resource layer turns it into Ollama's
``{"error": "<string>"}`` body with ``status``.  Messages are written for the client: they never
carry the backend key, a client token, or a traceback.
"""

from __future__ import annotations


class ProxyError(Exception):
    """Anything the daemon answers with an error body.  Subclasses fix the status."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ProxyError):
    status = 400


class NotFound(ProxyError):
    status = 404


class ModelNotFound(NotFound):
    """Ollama's wording, which clients match on before offering to pull the model."""

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found")
        self.name = name


class MethodNotAllowed(ProxyError):
    status = 405

    def __init__(self, method: str, allowed: tuple[str, ...]) -> None:
        super().__init__(f"method {method} not allowed")
        self.allowed = allowed


class ManagedByBackend(ProxyError):
    """Model management that this daemon cannot do: the backend owns its models."""

    status = 501


class BackendError(ProxyError):
    """The backend failed or could not be reached; 502 unless a subclass says otherwise.

    ``reason`` is a short fixed word for metrics (``refused``, ``timeout``, ``reset`` ...).
    """

    status = 502
    reason = "error"


class BackendUnreachable(BackendError):
    """``retryable``: the request cannot have reached the backend's model (refused, reset before a reply)."""

    status = 502

    def __init__(self, message: str, *, retryable: bool = False, reason: str = "unreachable") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.reason = reason


class BackendTimeout(BackendError):
    status = 504
    reason = "timeout"


class BackendRejected(BackendError):
    """The backend answered with an HTTP error; its status is kept where it means the same to the client."""

    def __init__(self, message: str, status: int, *, backend_status: int) -> None:
        super().__init__(message)
        self.status = status
        self.backend_status = backend_status


class Overloaded(ProxyError):
    status = 503


class ConfigError(Exception):
    """A bad start-up setting; the message names the option and is printed as one line."""
