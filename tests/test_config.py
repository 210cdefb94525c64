"""Configuration: precedence, validation messages that name the option, OLLAMA_HOST, model maps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ollama_proxy.config import (
    DEFAULT_LISTEN,
    BackendConfig,
    ProxyConfig,
    build_config,
    listen_from_ollama_host,
    load_model_map,
)
from ollama_proxy.errors import ConfigError
from ollama_proxy.exchange import Family
from ollama_proxy.tap import Options
from ollama_proxy.translate.dialect import Dialect
from ollama_proxy.translate.models import ModelOverride

BACKEND = "http://gpu1:8000/v1"


def cli(**values: object) -> dict[str, object]:
    return {key.replace("_", "-"): value for key, value in values.items()}


def url(config: ProxyConfig) -> str:
    """The URL of the config's one backend."""
    (backend,) = config.backends
    return backend.url


def test_minimal_config_uses_defaults() -> None:
    config = build_config(cli(backend=BACKEND + "/"), {})
    assert config.backends == (BackendConfig(url=BACKEND, api_key=None, dialect=Dialect.VLLM),)
    assert config.listen == (DEFAULT_LISTEN,)


@pytest.mark.parametrize(
    ("url", "dialect"),
    [
        ("https://api.openai.com/v1", Dialect.OPENAI),
        ("https://openrouter.ai/api/v1", Dialect.OPENROUTER),
        ("http://127.0.0.1:8080/v1", Dialect.VLLM),
    ],
)
def test_dialect_is_guessed_from_the_backend_host(url: str, dialect: Dialect) -> None:
    assert build_config(cli(backend=url), {}).backends[0].dialect is dialect
    assert ProxyConfig.for_backend(url).backends[0].dialect is dialect  # what the tests build, guessed alike


def test_precedence_cli_over_env_over_toml(tmp_path: Path) -> None:
    toml = tmp_path / "proxy.toml"
    toml.write_text(
        'backend = "http://from-toml/v1"\npool_size = 3\nmodels_ttl = 7.5\nollama_version = "0.9.0"\n'
    )
    env = {"OLLAMA_PROXY_BACKEND": "http://from-env/v1", "OLLAMA_PROXY_POOL_SIZE": "5"}
    config = build_config(cli(backend="http://from-cli/v1"), env, str(toml))
    assert url(config) == "http://from-cli/v1"
    assert config.pool_size == 5
    assert config.models_ttl == 7.5
    assert config.ollama_version == "0.9.0"
    assert url(build_config({}, env, str(toml))) == "http://from-env/v1"
    assert url(build_config({}, {}, str(toml))) == "http://from-toml/v1"


def test_config_path_from_environment(tmp_path: Path) -> None:
    toml = tmp_path / "proxy.toml"
    toml.write_text('backend = "http://from-toml/v1"\n')
    assert url(build_config({}, {"OLLAMA_PROXY_CONFIG": str(toml)})) == "http://from-toml/v1"


@pytest.mark.parametrize(
    ("values", "env", "starts"),
    [
        ({}, {}, "--backend: required"),
        ({"backend": "not a url"}, {}, "--backend: 'not a url' is not an http"),
        ({"backend": "ftp://x/v1"}, {}, "--backend: 'ftp://x/v1' is not an http"),
        ({"backend": "http://x:99999/v1"}, {}, "--backend: 'http://x:99999/v1' has an invalid port"),
        ({"backend": "http://x/v1?a=b"}, {}, "--backend: 'http://x/v1?a=b' must not carry"),
        ({}, {"OLLAMA_PROXY_BACKEND": "nope"}, "--backend (from OLLAMA_PROXY_BACKEND): 'nope'"),
        ({"backend": BACKEND, "pool-size": "0"}, {}, "--pool-size: '0' must be a positive integer"),
        ({"backend": BACKEND, "pool-size": "many"}, {}, "--pool-size: 'many'"),
        ({"backend": BACKEND, "models-ttl": "-1"}, {}, "--models-ttl: '-1' must be a positive"),
        ({"backend": BACKEND, "dialect": "tgi"}, {}, "--dialect: 'tgi' is not one of vllm"),
        ({"backend": BACKEND, "ollama-version": "latest"}, {}, "--ollama-version: 'latest' must be a dotted"),
        ({"backend": BACKEND}, {"OLLAMA_HOST": "host:notaport"}, "--listen (from OLLAMA_HOST)"),
        (
            {"backend": BACKEND, "native-apis": "openai"},
            {},
            "--native-apis: 'openai' is not one of anthropic",
        ),
    ],
)
def test_bad_values_name_the_option(values: dict[str, str], env: dict[str, str], starts: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(values, env)
    assert str(caught.value).startswith(starts), str(caught.value)
    assert "\n" not in str(caught.value)


def test_api_key_from_environment_or_file_and_never_in_repr(tmp_path: Path) -> None:
    config = build_config(cli(backend=BACKEND), {"OPENAI_API_KEY": "sk-env-secret"})
    assert config.backends[0].api_key == "sk-env-secret"
    assert "sk-env-secret" not in repr(config)
    key_file = tmp_path / "key"
    key_file.write_text("sk-file-secret\n")
    config = build_config(cli(backend=BACKEND, api_key_file=str(key_file)), {"OPENAI_API_KEY": "sk-env"})
    assert config.backends[0].api_key == "sk-file-secret"
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(ConfigError, match=r"^--api-key-file: .* is empty"):
        build_config(cli(backend=BACKEND, api_key_file=str(empty)), {})
    with pytest.raises(ConfigError, match=r"^--api-key-file: cannot read"):
        build_config(cli(backend=BACKEND, api_key_file=str(tmp_path / "missing")), {})


def test_there_is_no_command_line_option_for_the_key_itself() -> None:
    names = {row[0] for row in Options.optParameters}
    assert "api-key-file" in names
    assert not any(name in names for name in ("api-key", "key", "openai-api-key"))


@pytest.mark.parametrize(
    ("ollama_host", "endpoint"),
    [
        ("0.0.0.0", "tcp:11434:interface=0.0.0.0:backlog=1024"),
        ("127.0.0.1:8080", "tcp:8080:interface=127.0.0.1:backlog=1024"),
        (":8080", "tcp:8080:interface=0.0.0.0:backlog=1024"),
        ("http://10.1.2.3", "tcp:80:interface=10.1.2.3:backlog=1024"),
        ("https://10.1.2.3", "tcp:443:interface=10.1.2.3:backlog=1024"),
        ("http://10.1.2.3:9000/prefix", "tcp:9000:interface=10.1.2.3:backlog=1024"),
        ("[::1]:11434", "tcp6:11434:interface=\\:\\:1:backlog=1024"),
        ("::", "tcp6:11434:interface=\\:\\::backlog=1024"),
        ("localhost", "tcp:11434:interface=localhost:backlog=1024"),
    ],
)
def test_listen_follows_ollama_host(ollama_host: str, endpoint: str) -> None:
    assert listen_from_ollama_host(ollama_host) == endpoint
    assert build_config(cli(backend=BACKEND), {"OLLAMA_HOST": ollama_host}).listen == (endpoint,)


def test_listen_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "proxy.toml"
    toml.write_text('backend = "http://b/v1"\nlisten = ["tcp:1:interface=127.0.0.1", "unix:/tmp/x.sock"]\n')
    assert build_config({}, {}, str(toml)).listen == ("tcp:1:interface=127.0.0.1", "unix:/tmp/x.sock")
    env = {"OLLAMA_PROXY_LISTEN": "tcp:2 tcp:3", "OLLAMA_HOST": "0.0.0.0"}
    assert build_config({}, env, str(toml)).listen == ("tcp:2", "tcp:3")
    assert build_config({}, env, str(toml), ("tcp:4",)).listen == ("tcp:4",)


def test_model_map_file(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"llama3": "meta-llama/Llama-3.1-8B-Instruct"}))
    config = build_config(cli(backend=BACKEND, model_map=str(path)), {})
    assert config.model_map == {"llama3": "meta-llama/Llama-3.1-8B-Instruct"}
    assert config.model_map_path == str(path)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"^--model-map: .* must be a JSON object"):
        load_model_map(str(path))
    path.write_text("{nope")
    with pytest.raises(ConfigError, match=r"^--model-map: .* is not valid JSON"):
        load_model_map(str(path))


def test_per_model_overrides_from_toml(tmp_path: Path) -> None:
    toml = tmp_path / "proxy.toml"
    toml.write_text(
        'backend = "http://b/v1"\n'
        '[models."gpt-4o"]\ncontext_length = 128000\ncapabilities = ["completion", "tools", "vision"]\n'
        '[models."*embed*"]\ncapabilities = ["embedding"]\nembedding_length = 1536\n'
    )
    config = build_config({}, {}, str(toml))
    assert config.models["gpt-4o"] == ModelOverride(
        context_length=128000, capabilities=("completion", "tools", "vision")
    )
    assert config.models["*embed*"].embedding_length == 1536


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[models."m"]\ncapabilities = ["flying"]\n', "capabilities: expected a list drawn from audio, "),
        ('[models."m"]\ncapabilities = "tools"\n', "capabilities: expected a list drawn from"),
        (
            '[models."m"]\ncontext_length = "big"\n',
            "context_length: expected a non-negative integer, got str",
        ),
        ('[models."m"]\nsize = -1\n', "size: expected a non-negative integer, got -1"),
        (
            '[models."m"]\nembedding_length = true\n',
            "embedding_length: expected a non-negative integer, got a",
        ),
        ('[models."m"]\ncolour = "red"\n', '[models."m"] has unknown keys: colour'),
        ('[models."m"]\noptions = 3\n', "options: expected a table of option names"),
        ('[models."m"]\noptions = { stop = [{ a = 1 }] }\n', "options: expected a table of option names"),
        ('[models."m"]\nfamily = 3\n', "family: expected a string, got int"),
        ('[models."m"]\nfamily = 3\nhue = 1\n', "family: expected a string, got int; has unknown keys: hue"),
        ("models = 3\n", "[models] must be a table"),
        ("[models]\nm = 3\n", "must be a table"),
        ("bogus = 1\n", "unknown settings: bogus"),
        ("listen = 3\n", "must be an endpoint string"),
        ("this is not toml\n", "is not valid TOML"),
    ],
)
def test_bad_toml_is_reported(tmp_path: Path, text: str, message: str) -> None:
    toml = tmp_path / "proxy.toml"
    toml.write_text('backend = "http://b/v1"\n' + text if "backend" not in text else text)
    with pytest.raises(ConfigError, match=r"^--") as caught:
        build_config({}, {}, str(toml))
    assert message in str(caught.value)


def test_options_print_one_line_and_exit_nonzero() -> None:
    """What `twistd ollamaproxy --backend 'not a url'` prints, without a traceback or usage dump."""
    script = "from ollama_proxy.tap import Options; Options().parseOptions(['--backend', 'not a url'])"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "ollamaproxy: --backend: 'not a url' is not an http:// or https:// URL (e.g. http://gpu1:8000/v1)"
    ]


def test_bad_listen_endpoint_is_a_config_error() -> None:
    options = Options()
    with pytest.raises(SystemExit) as caught:
        options.parseOptions(["--backend", BACKEND, "--listen", "bogus:1234"])
    assert caught.value.code == 2


def test_options_build_the_config() -> None:
    options = Options()
    options.parseOptions(["--backend", BACKEND, "-l", "tcp:0", "--listen", "tcp:1", "--pool-size", "4"])
    assert options.config is not None
    assert options.config.listen == ("tcp:0", "tcp:1")
    assert options.config.pool_size == 4


def test_native_apis_for_one_backend_and_per_table(tmp_path: Path) -> None:
    """Default: both APIs translated.  For ``--backend``: the option or its variable; in ``[[backend]]``
    tables, each table's own list, else the top-level setting."""
    assert build_config(cli(backend=BACKEND), {}).backends[0].native_apis == frozenset()
    both = frozenset({Family.ANTHROPIC, Family.RESPONSES})
    config = build_config(cli(backend=BACKEND, native_apis="anthropic, Responses"), {})
    assert config.backends[0].native_apis == both
    config = build_config(cli(backend=BACKEND), {"OLLAMA_PROXY_NATIVE_APIS": "responses"})
    assert config.backends[0].native_apis == {Family.RESPONSES}
    toml = tmp_path / "c.toml"
    toml.write_text(
        'native_apis = "responses"\n'
        '[[backend]]\nurl = "http://vllm:8000/v1"\nnative_apis = ["anthropic"]\n'
        '[[backend]]\nurl = "https://api.openai.com/v1"\n'
        '[[backend]]\nurl = "http://llama:8080/v1"\nnative_apis = []\n'
    )
    vllm, openai, llama = build_config({}, {}, str(toml)).backends
    assert (vllm.native_apis, openai.native_apis, llama.native_apis) == (
        frozenset({Family.ANTHROPIC}),
        frozenset({Family.RESPONSES}),
        frozenset(),
    )
    toml.write_text('[[backend]]\nurl = "http://vllm:8000/v1"\nnative_apis = ["messages"]\n')
    with pytest.raises(ConfigError, match=r"\[\[backend\]\] #1 .* native_apis: 'messages' is not one of"):
        build_config({}, {}, str(toml))
    toml.write_text('[[backend]]\nurl = "http://vllm:8000/v1"\nnative_apis = 1\n')
    with pytest.raises(ConfigError, match="native_apis: must be a list of API names"):
        build_config({}, {}, str(toml))
