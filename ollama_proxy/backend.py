"""The one client of the OpenAI-compatible backend: a treq ``HTTPClient`` over one persistent connection pool
for the life of the process.

Every way a backend call can fail becomes a typed ``BackendError`` here, so handlers never see a Twisted
connection exception and clients never see the backend's key or address credentials.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import treq
from treq.client import HTTPClient
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from ollama_proxy.errors import BackendError, BackendRejected, BackendTimeout, BackendUnreachable

# Error bodies are read only this far: enough for any real message, bounded against a hostile backend.
MAX_ERROR_BODY = 64 * 1024
# JSON replies (model lists, non-stream completions) are bounded too.
MAX_JSON_BODY = 64 * 1024 * 1024


def redact_url(url: str) -> str:
    """The URL without ``user:password@``, for logs and messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def backend_status(status: int) -> int:
    """The status a client sees for a backend HTTP error.

    The backend's own auth failures are the operator's problem, not the client's (a 401 would make
    Ollama clients think *they* need a key), so they become 502; server faults become 502 as a gateway
    reports them; the rest keep their meaning.
    """
    if status in (401, 403, 407):
        return 502
    if status == 422:
        return 400
    if status == 408:
        return 504
    if status in (400, 404, 409, 413, 429, 502, 503, 504):
        return status
    if status >= 500:
        return 502
    return 400 if 400 <= status < 500 else 502


def error_message(body: bytes, status: int) -> str:
    """The human message inside a backend error body (OpenAI, vLLM, llama.cpp, FastAPI shapes)."""
    text = body[:MAX_ERROR_BODY].decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("error", "message", "detail"):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value.get("msg") or json.dumps(value)
            if isinstance(value, list) and value and isinstance(value[0], dict):
                value = value[0].get("msg") or json.dumps(value)
            if isinstance(value, str) and value:
                return value
    if text and not text.startswith("<"):
        return text[:500]
    return f"backend returned HTTP {status}"


class BackendClient:
    """Calls the backend under ``base_url`` (e.g. ``http://gpu1:8000/v1``) through one pool."""

    def __init__(
        self,
        reactor: IReactorTime,
        base_url: str,
        *,
        api_key: str | None,
        pool_size: int,
        connect_timeout: float,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = pool_size
        # Below the usual backend keep-alive (uvicorn: 5 s) so a reused connection is rarely a closed one.
        self.pool.cachedConnectionTimeout = 4
        agent = Agent(reactor, pool=self.pool, connectTimeout=connect_timeout)
        self.http = HTTPClient(agent)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def _headers(self, request_id: str | None, extra: dict[bytes, list[bytes]] | None) -> Headers:
        headers = Headers({b"accept": [b"application/json"]})
        if self._api_key:
            headers.setRawHeaders(b"authorization", [b"Bearer " + self._api_key.encode()])
        if request_id:
            headers.setRawHeaders(b"x-request-id", [request_id.encode()])
        for name, values in (extra or {}).items():
            headers.setRawHeaders(name, values)
        return headers

    def scrub(self, message: str) -> str:
        """Remove the backend key from a message the backend wrote (some echo the key they rejected)."""
        if self._api_key and self._api_key in message:
            message = message.replace(self._api_key, "[redacted]")
        return message

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        request_id: str | None = None,
        headers: dict[bytes, list[bytes]] | None = None,
    ) -> IResponse:
        """Send a request and return the response as soon as its headers arrive (body unread, unbuffered).

        Connection failures raise BackendUnreachable / BackendTimeout; HTTP error statuses are the
        caller's to inspect (``raise_for_status``), since a pass-through relays them as they are.
        """
        all_headers = self._headers(request_id, headers)
        if body is not None:
            all_headers.setRawHeaders(b"content-type", [b"application/json"])
        try:
            response: IResponse = await self.http.request(
                method, self.url(path), data=body, headers=all_headers, unbuffered=True
            )
        except CancelledError:
            raise
        except Exception as exc:  # each failure kind is mapped below; nothing else escapes
            raise _connection_error(exc) from None
        return response

    async def raise_for_status(self, response: IResponse) -> None:
        """Turn a backend HTTP error into BackendRejected with the backend's own message."""
        if response.code < 400:
            return
        body = await self.read_body(response, MAX_ERROR_BODY)
        message = self.scrub(error_message(body, response.code))
        raise BackendRejected(message, backend_status(response.code), backend_status=response.code)

    async def read_body(self, response: IResponse, limit: int) -> bytes:
        """The whole body, up to ``limit`` bytes (the connection is dropped beyond that)."""
        parts: list[bytes] = []
        size = 0

        def collect(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > limit:
                raise BackendError(f"backend reply larger than {limit} bytes")
            parts.append(data)

        try:
            await treq.collect(response, collect)
        except BackendError:
            raise
        except CancelledError:
            raise
        except Exception as exc:
            raise _connection_error(exc) from None
        return b"".join(parts)

    async def get_json(self, path: str, *, request_id: str | None = None) -> Any:
        response = await self.request("GET", path, request_id=request_id)
        return await self.json_body(response)

    async def post_json(self, path: str, payload: Any, *, request_id: str | None = None) -> Any:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        response = await self.request("POST", path, body=body, request_id=request_id)
        return await self.json_body(response)

    async def json_body(self, response: IResponse) -> Any:
        await self.raise_for_status(response)
        body = await self.read_body(response, MAX_JSON_BODY)
        try:
            return json.loads(body)
        except ValueError:
            raise BackendError("backend sent a reply that is not JSON") from None

    async def close(self) -> None:
        await self.pool.closeCachedConnections()


def _connection_error(exc: BaseException) -> BackendError:
    """Name the failure without the backend's address details a client has no use for."""
    reasons: list[BaseException] = [exc]
    if isinstance(exc, (ResponseNeverReceived, RequestTransmissionFailed, ResponseFailed)):
        reasons = [f.value for f in exc.reasons] or reasons
    first = reasons[0]
    if isinstance(first, (net_error.TimeoutError, net_error.ConnectingCancelledError)):
        return BackendTimeout("timed out connecting to the backend")
    if isinstance(first, net_error.ConnectionRefusedError):
        return BackendUnreachable("cannot reach the backend: connection refused")
    if isinstance(first, net_error.DNSLookupError):
        return BackendUnreachable("cannot reach the backend: its host name does not resolve")
    if isinstance(first, (net_error.ConnectionLost, net_error.ConnectionDone)):
        return BackendUnreachable("the backend closed the connection")
    if isinstance(first, net_error.ConnectError):
        return BackendUnreachable(f"cannot reach the backend: {type(first).__name__}")
    return BackendUnreachable(f"backend request failed: {type(first).__name__}")
