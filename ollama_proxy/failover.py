"""Moving a request to another replica when its backend fails before anything reached the client.

A model several backends serve is tried on each in the order the catalog prefers (healthy first, then
least busy).  While another replica remains, a failing one is not retried in place: handing over is
faster than a backoff, and the breaker of the dead one opens all the same.  The last replica gets the
full retry policy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from twisted.logger import Logger

from ollama_proxy.catalog import Resolved
from ollama_proxy.errors import BackendError, BackendRejected, Overloaded, ProxyError
from ollama_proxy.logs import untrusted
from ollama_proxy.site import ProxyRequest

log = Logger(namespace="ollama_proxy.failover")

T = TypeVar("T")


def worth_another(error: ProxyError) -> bool:
    """Failures that say the backend, not the request, is the problem."""
    if isinstance(error, BackendRejected):
        return error.backend_status >= 500 or error.backend_status == 429
    return isinstance(error, (BackendError, Overloaded))


async def on_replicas(
    request: ProxyRequest, resolved: Resolved, attempt: Callable[[Resolved, bool], Awaitable[T]]
) -> T:
    """``attempt(resolved_on_one_replica, last)`` on each replica until one succeeds; ``last`` says
    whether this is the final replica (the one that should retry in place)."""
    replicas = resolved.replicas or (resolved.client,)
    for index, client in enumerate(replicas):
        last = index == len(replicas) - 1
        try:
            return await attempt(resolved.on(client), last)
        except (BackendError, Overloaded) as error:
            if last or request.startedWriting or not worth_another(error):
                raise
            log.info(
                "{request_id} {backend} failed ({why}); trying {next}",
                request_id=request.exchange.request_id,
                backend=client.name,
                why=untrusted(request.proxy_site.scrubber.scrub(error.message)),
                next=replicas[index + 1].name,
            )
    raise AssertionError("unreachable: the last replica's failure is raised")  # pragma: no cover
