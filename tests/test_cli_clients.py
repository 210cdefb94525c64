"""The real front-end clients, Claude Code (``/v1/messages``) and Codex CLI (``--oss``: ``/api/version``,
``/api/tags``, ``/v1/responses``), as their users run them, against the daemon.

They come from npm, pinned, into ``tools/npm`` (``make cli-clients``, which ``make test`` runs first).  Each
runs with a home folder of its own and every proxy variable pointing at a dead loopback port, with loopback
exempt, so that nothing they try reaches beyond this machine.

Two ways each:

- in front of the fake backend, with the whole prompt each client really sends (Claude Code about 49 KB
  with 12 tools, Codex about 40 KB with a namespace of tools and a hosted one): what the backend is asked
  is checked, and the reply it scripts is what the client prints;
- in front of llama.cpp's server with SmolLM2 (``ollama_proxy.demo``), where the client prints what the
  model wrote.  There the prompts are cut down with the clients' own options (no built-in tools, a short
  system prompt): at the 100-300 prompt tokens per second of two shared cores, the whole 12 000-token
  prompt would take a minute or more before the first token.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import pytest_twisted

from ollama_proxy.demo import free_ports, start_backend, stop_processes
from tests.fake_backend import FakeBackend
from tests.support import ROOT, Child, RunningProxy, chat_posts, child_env, in_thread, start_proxy
from tests.twistd_measured import twistd_command

TOOLS = ROOT / "tools" / "npm" / "node_modules" / ".bin"
CLAUDE = TOOLS / "claude"
CODEX = TOOLS / "codex"
pytestmark = pytest.mark.skipif(
    not (CLAUDE.exists() and CODEX.exists()),
    reason="the CLIs are not installed: `make cli-clients` (make test does it first)",
)

ALIAS = "qwen"  # an alias of Qwen/Qwen2.5-7B-Instruct in the proxy fixture
RUN_TIMEOUT = 120.0
# Codex compares -m with the /api/tags names exactly, and pulls a model it does not find there.
CODEX_MODEL = "qwen:latest"
# Claude Code's settings that keep -p mode on loopback (shared/clients-traffic.md).
CLAUDE_QUIET = {
    "DISABLE_TELEMETRY": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
}
# And Codex's.
CODEX_QUIET = [
    "--skip-git-repo-check",
    "-c",
    "analytics.enabled=false",
    "-c",
    "check_for_update_on_startup=false",
    "--disable",
    "plugins",
    "--disable",
    "remote_plugin",
    "--disable",
    "apps",
]


def offline_env(home: Path, **extra: str) -> dict[str, str]:
    """A home of the client's own, and HTTP(S) proxies at a port nothing listens on (loopback exempt)."""
    (dead,) = free_ports(1)
    proxy = f"http://127.0.0.1:{dead}"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "HTTPS_PROXY": proxy,
        "HTTP_PROXY": proxy,
        "https_proxy": proxy,
        "http_proxy": proxy,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    env.update(extra)
    return env


def run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def claude_code(
    url: str, model: str, home: Path, *options: str, prompt: str = "Say hi"
) -> subprocess.CompletedProcess[str]:
    """``claude -p PROMPT --model MODEL`` with ``ANTHROPIC_BASE_URL`` at the daemon."""
    env = offline_env(home, ANTHROPIC_BASE_URL=url, ANTHROPIC_AUTH_TOKEN="test", **CLAUDE_QUIET)
    return run([str(CLAUDE), "-p", prompt, "--model", model, *options], env, home)


def codex(
    url: str, model: str, home: Path, *options: str, prompt: str = "Say hi", **env: str
) -> subprocess.CompletedProcess[str]:
    """``codex exec --oss --local-provider ollama -m MODEL`` with its Ollama host at the daemon."""
    command = [str(CODEX), "exec", "--oss", "--local-provider", "ollama", "-m", model, *CODEX_QUIET]
    return run([*command, *options, prompt], offline_env(home, CODEX_OSS_BASE_URL=url + "/v1", **env), home)


def _explain(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"


# ---------------------------------------------------------------------------------------------------------
# In front of the fake backend: the whole prompts
# ---------------------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_claude_code_through_the_daemon(proxy: RunningProxy, tmp_path: Path) -> None:
    done = await in_thread(claude_code, proxy.url, ALIAS, tmp_path)
    assert done.returncode == 0, _explain(done)
    assert done.stdout == "Hello!\n"
    # One streamed request: Claude Code took the stream as it came (a stream it cannot read makes it ask
    # again without streaming).
    (sent,) = chat_posts(proxy.backend)
    assert sent["stream"] is True
    assert sent["model"] == "Qwen/Qwen2.5-7B-Instruct"
    assert [message["role"] for message in sent["messages"]] == ["system", "user"]
    assert "x-anthropic-billing-header" not in sent["messages"][0]["content"]
    assert len(sent["tools"]) >= 10
    # Its max_tokens (32000) and a prompt of 12 000 tokens exceed the model's 8192: left to the backend.
    assert "max_tokens" not in sent


@pytest_twisted.ensureDeferred
async def test_codex_through_the_daemon(proxy: RunningProxy, tmp_path: Path) -> None:
    done = await in_thread(codex, proxy.url, CODEX_MODEL, tmp_path)
    assert done.returncode == 0, _explain(done)
    assert done.stdout == "Hello!\n"
    assert "tokens used" in done.stderr
    (sent,) = chat_posts(proxy.backend)
    assert sent["stream"] is True
    names = [tool["function"]["name"] for tool in sent["tools"]]
    assert "exec_command" in names
    assert any(name.startswith("multi_agent_v1__") for name in names)  # its namespace, expanded
    assert "web_search" not in names  # the hosted tool, left out
    assert sent["messages"][0]["role"] == "system"  # its developer messages
    # Codex asked the daemon itself for its version and models, never the backend.
    assert {r.path for r in proxy.backend.requests} <= {"/v1/models", "/v1/chat/completions"}


@pytest_twisted.ensureDeferred
async def test_codex_where_client_keys_are_on(fake_backend: FakeBackend, tmp_path: Path) -> None:
    """``--oss`` sends no key; a provider of its own, as the README shows, sends one from the environment."""
    running = await start_proxy(
        fake_backend,
        fake_backend.base_url,
        api_key="sk-test-secret",
        model_map={ALIAS: "Qwen/Qwen2.5-7B-Instruct"},
        client_keys=frozenset({"daemon-token"}),
    )
    try:
        oss = tmp_path / "oss"
        oss.mkdir()
        refused = await in_thread(codex, running.url, CODEX_MODEL, oss)
        assert refused.returncode != 0  # its probe of /v1/models got a 401: "no running Ollama server"
        assert chat_posts(fake_backend) == []
        provider = (
            f'model_providers.proxy={{name="ollama-proxy", base_url="{running.url}/v1", '
            'env_key="OLLAMA_PROXY_KEY", wire_api="responses"}'
        )
        command = [
            str(CODEX),
            "exec",
            "-m",
            ALIAS,
            "-c",
            "model_provider=proxy",
            "-c",
            provider,
            *CODEX_QUIET,
        ]
        home = tmp_path / "keyed"
        home.mkdir()
        env = offline_env(home, OLLAMA_PROXY_KEY="daemon-token")
        done = await in_thread(run, [*command, "Say hi"], env, home)
        assert done.returncode == 0, _explain(done)
        assert done.stdout == "Hello!\n"
        assert len(chat_posts(fake_backend)) == 1
    finally:
        await running.service.stopService()


# ---------------------------------------------------------------------------------------------------------
# In front of llama.cpp and SmolLM2: real replies
# ---------------------------------------------------------------------------------------------------------

CHAT = "smollm2"
# The most a reply runs to when its request leaves the length to the server: Claude Code's 32000 does not
# fit the context, so the daemon leaves it out (translate/anthropic.fit_context), and Codex sends none.
# Greedy sampling (neither client sends a temperature) makes SmolLM2 stop by itself well before: Codex
# takes a reply cut at the limit for a failure.
REPLY_TOKENS = 128


@attrs.frozen
class RealStack:
    url: str
    daemon: Child


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    workdir = tmp_path_factory.mktemp("llamacpp")
    # One slot with the whole context: the cut-down prompts are a few hundred to a thousand tokens.
    backend = start_backend(
        "llamacpp",
        workdir,
        options=["--ctx", "4096", "--parallel", "1", "--predict", str(REPLY_TOKENS), "--temp", "0"],
    )
    try:
        daemon = Child(
            twistd_command(
                "--backend", backend.url, "--dialect", "llamacpp", "--listen", "tcp:0:interface=127.0.0.1"
            ),
            child_env(),
        )
        try:
            url = daemon.wait_for(r"listening on (http://\S+)").group(1).rstrip("/")
            yield RealStack(url, daemon)
        finally:
            assert daemon.stop() == 0
    finally:
        stop_processes([backend.process])


def _access_line(stack: RealStack, path: str) -> re.Match[str]:
    """The daemon's access event for a generation on ``path``, with the backend's token counts."""
    return stack.daemon.wait_for(rf"POST {re.escape(path)} 200 .* model=\S+ .*tokens=(\d+)/(\d+)", timeout=10)


def test_claude_code_replies_from_llama_cpp(real: RealStack, tmp_path: Path) -> None:
    done = claude_code(
        real.url,
        CHAT,
        tmp_path,
        "--tools",
        "",
        "--system-prompt",
        "You are a helpful assistant.",
    )
    assert done.returncode == 0, _explain(done)
    reply = done.stdout.strip()
    assert reply
    assert "issue with the selected model" not in reply
    prompt_tokens, reply_tokens = map(int, _access_line(real, "/v1/messages").groups())
    assert prompt_tokens > 100
    assert 0 < reply_tokens <= REPLY_TOKENS


def test_codex_replies_from_llama_cpp(real: RealStack, tmp_path: Path) -> None:
    instructions = tmp_path / "instructions.md"
    instructions.write_text("You are a helpful assistant. Answer in one short sentence.\n")
    home = tmp_path / "home"
    home.mkdir()
    done = codex(
        real.url,
        f"{CHAT}:latest",
        home,
        "-c",
        f"model_instructions_file={json.dumps(str(instructions))}",
        "-c",
        "include_permissions_instructions=false",
        "-c",
        "include_environment_context=false",
        "-c",
        'web_search="disabled"',
        *[
            arg
            for feature in ("multi_agent", "goals", "view_image", "shell_tool", "unified_exec")
            for arg in ("--disable", feature)
        ],
    )
    assert done.returncode == 0, _explain(done)
    assert done.stdout.strip()
    assert "tokens used" in done.stderr
    prompt_tokens, reply_tokens = map(int, _access_line(real, "/v1/responses").groups())
    assert prompt_tokens > 100
    assert reply_tokens > 0
