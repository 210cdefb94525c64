"""The one streaming bridge: a backend response body copied into a client response, transformed on the way,
with backpressure both ways and the backend request aborted the moment the client is gone.

One object plays two roles.  As the ``IProtocol`` that receives the backend body it writes each upstream
read to the client as one HTTP chunk; as the ``IPushProducer`` registered on the client request it pauses
and resumes reading from the backend socket when the client's buffer fills and drains, so a slow client
slows the backend through TCP flow control instead of filling the daemon's memory.  Twisted turns off its
own idle timeout while a request is in flight, so the relay keeps a timer of its own: a backend that sends
nothing for ``idle_timeout`` ends the stream with an error instead of holding a backend slot forever.  A
client that stops reading is the connection's business (``site.ProxyChannel``, ``--stall-timeout``): it
aborts the connection, and the relay, told the client is gone, stops the backend request.

A stream's error carries the backend's words, which may quote the credentials it was sent, so what is
written once the stream has failed, or holds an ``"error"`` key, passes the scrubber first.  A healthy
chunk is only tested for that key (one substring search); it is never scrubbed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from ollama_proxy.errors import BackendError, BackendTimeout, Overloaded, ProxyError
from ollama_proxy.site import ProxyRequest

# The ending that adds nothing to the response: the client is gone, or the stream carried its own error.
_QUIET = ProxyError("")
# What every family's error event or line holds (``{"error": ...}``, ``"type":"error"``), and a healthy
# chunk almost never: a quoted ``error`` in generated text is escaped (``\"error\"``).
_ERROR_MARK = b'"error"'


class StreamTransform(Protocol):
    """What the relay asks of an endpoint: bytes in, bytes out, and how a stream ends.

    ``start`` returns what to write as soon as the backend's body begins (an event stream's opening
    events; often ``b""``); ``feed`` what to write for one upstream read (often ``b""``); ``end`` the
    closing bytes when the backend body ends normally; ``fail`` the closing bytes when it breaks after
    output has started (the API family's broken-stream ending, never a fake ``done``).  ``failed`` turns
    true when the stream itself carried an error event: the relay then stops reading and ends the response.
    """

    @property
    def failed(self) -> bool: ...

    def start(self) -> bytes: ...

    def feed(self, data: bytes) -> bytes: ...

    def end(self) -> bytes: ...

    def fail(self, message: str) -> bytes: ...


@implementer(IPushProducer)
class StreamRelay(TwistedProtocol):
    def __init__(
        self,
        request: ProxyRequest,
        transform: StreamTransform,
        clock: IReactorTime,
        *,
        idle_timeout: float,
        before_finish: Callable[[], None] | None = None,
    ) -> None:
        self._request = request
        self._transform = transform
        self._scrubber = request.proxy_site.scrubber
        self._clock = clock
        self._before_finish = before_finish
        self._idle_timeout = idle_timeout
        self._idle: IDelayedCall | None = None
        self._paused = False
        # How the stream is being ended early: _QUIET (client gone, or the stream carried its own error)
        # or the error to end the response with.  None while the stream runs.
        self._ending: ProxyError | None = None
        # Fires when the relay is finished with the request, whichever way the stream ended.
        # Cancelling it (the handler's Deferred is cancelled on disconnect) drops the backend connection.
        self.done: Deferred[None] = Deferred(lambda _: self._abort(_QUIET))

    # -- the backend body (IProtocol) ------------------------------------------------------------------

    def connectionMade(self) -> None:
        self._request.exchange.relay = self  # found by a graceful shutdown
        if self._request.gone:
            self._abort(_QUIET)
            return
        self._request.registerProducer(self, True)
        self._arm_idle()
        opening = self._transform.start()
        if opening:
            self._write(opening)

    def dataReceived(self, data: bytes) -> None:
        if self._ending is not None:
            return
        self._arm_idle()
        if not self._request.startedWriting:
            data = self._first_output(data)
        out = self._transform.feed(data) if data else b""
        if out:
            self._write(out)
        if self._transform.failed:
            self._request.exchange.stream_failed = True
            self._abort(_QUIET)

    def _first_output(self, data: bytes) -> bytes:
        """Until the client has its first bytes, one backend read is fed an event at a time and the first
        output written at once: a backend that sends a whole answer in one read (or a burst of tokens)
        must not keep the client's first token waiting for the translation of the rest.  Returns what is
        left of the read.  Any cut is safe: the transform decodes a stream cut anywhere."""
        position = 0
        while position < len(data) and not self._request.startedWriting and not self._transform.failed:
            end = data.find(b"\n\n", position)
            if end < 0:
                break
            out = self._transform.feed(data[position : end + 2])
            position = end + 2
            if out:
                self._write(out)
                self._flush_to_client()
        return data[position:]

    def _flush_to_client(self) -> None:
        """Send what was written now, not when the reactor next polls: the rest of this read is
        translated before that, and the first token should not wait for it."""
        channel: Any = self._request.channel
        send_now = getattr(getattr(channel, "transport", None), "doWrite", None)
        if send_now is not None and getattr(channel.transport, "connected", False):
            send_now()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timers()
        self._last_word()
        if not self._request.gone:
            if self._ending is None and reason.check(ResponseDone, PotentialDataLoss):
                tail = self._transform.end()
                if self._transform.failed:  # the body ended, but not as a complete stream does
                    self._request.exchange.stream_failed = True
                self._close(tail)
            elif self._ending is None:
                self._fail(BackendError("the backend connection broke mid-stream"))
            elif self._ending is _QUIET:
                self._close(b"")
            else:
                self._fail(self._ending)
        if not self.done.called:
            self.done.callback(None)

    # -- the client side (IPushProducer, called by the HTTP channel) -----------------------------------

    def pauseProducing(self) -> None:
        # Called on every write while the channel's buffer is full: idempotent.
        if self._paused:
            return
        self._paused = True
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        if not self._paused:
            return
        self._paused = False
        if self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def shutdown(self, message: str) -> None:
        """End the stream now with ``message`` as its error (the daemon is stopping)."""
        self._abort(Overloaded(message))

    def stopProducing(self) -> None:
        """The client connection went away: stop the backend's work now."""
        self._last_word()  # before the request logs its end, which follows this call
        self._abort(_QUIET)

    def _last_word(self) -> None:
        """The handler's last word (token counts, timings) before the request ends and is logged; once."""
        note, self._before_finish = self._before_finish, None
        if note is not None:
            note()

    # -- endings ---------------------------------------------------------------------------------------

    def _backend_idle(self) -> None:
        self._idle = None
        self._abort(BackendTimeout(f"the backend sent nothing for {self._idle_timeout:g} seconds"))

    def _abort(self, why: ProxyError) -> None:
        """Stop reading from the backend; the response ends with ``why`` (nothing more for _QUIET)."""
        if self._ending is None:
            self._ending = why
        self._cancel_timers()
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()

    def _write(self, data: bytes) -> None:
        if self._request.gone:
            return
        if self._transform.failed or _ERROR_MARK in data:
            data = self._scrubber.scrub_bytes(data)
        self._request.write(data)

    def _fail(self, error: ProxyError) -> None:
        self._request.exchange.stream_failed = True  # the access log's outcome
        if not self._request.startedWriting:
            # Nothing sent yet: a real status, as Ollama does before the stream starts.
            self._unregister()
            self._request.send_error(error)
            return
        self._close(self._transform.fail(self._scrubber.scrub(error.message)))

    def _close(self, tail: bytes) -> None:
        if tail:
            self._write(tail)
        self._unregister()
        self._request.finish_response()

    def _unregister(self) -> None:
        if not self._request.gone and self._request.producer is not None:
            self._request.unregisterProducer()

    def _arm_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(self._idle_timeout)
        else:
            self._idle = self._clock.callLater(self._idle_timeout, self._backend_idle)

    def _cancel_timers(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
