"""The daemon's settings: one frozen object, built once at start-up from the command line, the environment,
an optional TOML file and defaults, in that order of precedence.

Each setting is declared once in ``SETTINGS`` (its option name, environment variable, TOML key, parser and
default), so the three sources cannot drift apart.  Any bad value becomes a ``ConfigError`` whose message
starts with the option's name; ``tap.py`` prints it as one line.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from ollama_proxy import schemas
from ollama_proxy.errors import ConfigError
from ollama_proxy.exchange import Family
from ollama_proxy.redact import redact_url
from ollama_proxy.translate.dialect import Dialect
from ollama_proxy.translate.models import KNOWN_CAPABILITIES, ModelOverride

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

# Twisted's default listen backlog is 50; a burst of clients (or a benchmark) overflows that and pays
# SYN retransmits of a second or more, so the endpoints this daemon derives ask for more.
BACKLOG = 1024
DEFAULT_LISTEN = f"tcp:11434:interface=127.0.0.1:backlog={BACKLOG}"
# What /api/version reports: Ollama's newest release when this was written (v0.32.15, 2026-08-19).  Clients
# gate features on it: VS Code Copilot refuses anything below 0.6.4, Codex's Responses needs 0.13.4, the
# Ollama VS Code extension asks for 0.17.6, and thinking, tool_name, think levels and tool-call ids each
# came with a release of their own.
DEFAULT_OLLAMA_VERSION = "0.32.15"


@attrs.frozen
class BackendConfig:
    """One OpenAI-compatible server and which of its models it serves here."""

    url: str
    name: str = ""
    api_key: str | None = attrs.field(default=None, repr=False)
    dialect: Dialect = Dialect.VLLM
    models: tuple[str, ...] = ()  # ids or glob patterns this backend serves (empty: all it lists)
    prefix: str = ""  # or: only ids that start with this
    # The APIs it serves itself (/v1/messages, /v1/responses): passed through, not translated.
    native_apis: frozenset[Family] = frozenset()

    @property
    def label(self) -> str:
        """How logs, metrics and /ready name it: its name, else its URL (credentials removed)."""
        if self.name:
            return self.name
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"

    def serves(self, model_id: str) -> bool:
        if self.prefix and not model_id.startswith(self.prefix):
            return False
        return not self.models or any(fnmatch.fnmatchcase(model_id, pattern) for pattern in self.models)


@attrs.frozen
class ProxyConfig:
    """Everything the daemon needs to start; never mutated (a model-map reload replaces only the map).

    ``backends`` is the one place the backends are described, however many there are: the first is where
    requests naming no known model go.  :meth:`for_backend` builds the common case of one.
    """

    backends: tuple[BackendConfig, ...] = attrs.field(validator=attrs.validators.min_len(1))
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    model_map_path: str | None = None
    model_map: Mapping[str, str] = attrs.field(factory=dict)
    models: Mapping[str, ModelOverride] = attrs.field(factory=dict)
    ollama_version: str = DEFAULT_OLLAMA_VERSION
    pool_size: int = 64
    models_ttl: float = 10.0
    models_timeout: float = 10.0
    connect_timeout: float = 10.0
    stall_timeout: float = 60.0
    client_header_timeout: float = 60.0
    client_body_timeout: float = 60.0
    keep_alive_timeout: float = 60.0
    idle_timeout: float = 300.0
    embed_batch_size: int = 256
    headers_timeout: float = 600.0
    retries: int = 2
    retry_budget: float = 15.0
    breaker_threshold: int = 5
    breaker_cooldown: float = 15.0
    max_body: int = 32 * 1024 * 1024  # docs/operations.md, "Memory per request"
    max_concurrent: int = 64
    max_queue: int = 512
    max_connections: int | None = None  # None: as many as the open-file limit leaves room for
    max_connections_per_client: int | None = None  # None: no limit per client address
    drain_timeout: float = 30.0
    client_keys_file: str | None = None
    client_keys: frozenset[str] = attrs.field(default=frozenset(), repr=False)
    origins: tuple[str, ...] = ()
    log_format: str = "text"
    log_bodies: bool = False
    workers: int = 1

    @classmethod
    def for_backend(
        cls,
        url: str,
        *,
        api_key: str | None = None,
        dialect: Dialect | None = None,
        native_apis: frozenset[Family] = frozenset(),
        **settings: Any,
    ) -> ProxyConfig:
        """A daemon in front of the one backend at ``url`` (its dialect guessed from the host, as for
        ``--backend``, unless given); ``settings`` are the other fields."""
        backend = BackendConfig(
            url=url, api_key=api_key, dialect=dialect or guess_dialect(url), native_apis=native_apis
        )
        return cls(backends=(backend,), **settings)


# -- value parsers: each raises ValueError with a reason; the caller adds the option name -------------


def parse_backend_url(value: str) -> str:
    """The OpenAI base URL exactly as the OpenAI SDK's ``base_url`` takes it, without a trailing slash."""
    text = value.strip()
    parts = urlsplit(text)
    shown = redact_url(value)  # the message is printed: not the credentials it may carry
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in text:
        raise ValueError(f"{shown!r} is not an http:// or https:// URL (e.g. http://gpu1:8000/v1)")
    try:
        parts.port  # noqa: B018 -- accessing .port validates it
    except ValueError:
        raise ValueError(f"{shown!r} has an invalid port") from None
    if parts.query or parts.fragment:
        raise ValueError(f"{shown!r} must not carry a query or fragment")
    return text.rstrip("/")


def _whole_number(minimum: int, wording: str) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{value!r} must be {wording}") from None
        if number < minimum:
            raise ValueError(f"{value!r} must be {wording}")
        return number

    return parse


_positive_int = _whole_number(1, "a positive integer")
_non_negative_int = _whole_number(0, "a whole number, 0 or more")


_SIZE_UNITS = {"": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2}
_SIZE_UNITS |= {"g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def _byte_size(value: str) -> int:
    """``67108864``, ``64MiB``, ``100MB``: a size in bytes."""
    text = value.strip().lower().replace(" ", "")
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(digits) :]
    if not digits.isdigit() or unit not in _SIZE_UNITS or int(digits) < 1:
        raise ValueError(f"{value!r} must be a size such as 67108864, 64MiB or 100MB")
    return int(digits) * _SIZE_UNITS[unit]


def _log_format(value: str) -> str:
    if value.strip().lower() not in ("text", "json"):
        raise ValueError(f"{value!r} is not one of text, json")
    return value.strip().lower()


def _switch(value: str) -> bool:
    """A flag's value from the environment or TOML: 1/true/yes/on or 0/false/no/off."""
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{value!r} is not a yes/no value")


def _origins(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} must be a positive number of seconds") from None
    if not number > 0:
        raise ValueError(f"{value!r} must be a positive number of seconds")
    return number


def _dialect(value: str) -> Dialect:
    try:
        return Dialect(value.strip().lower())
    except ValueError:
        choices = ", ".join(d.value for d in Dialect)
        raise ValueError(f"{value!r} is not one of {choices}") from None


# The APIs a backend may serve itself, by the names the access log gives them (``api=``).
NATIVE_APIS = (Family.ANTHROPIC, Family.RESPONSES)


def _native_apis(value: str) -> frozenset[Family]:
    """``anthropic,responses``: the translated APIs a backend serves itself (empty: none)."""
    found = set()
    for name in _origins(value):
        try:
            family = Family(name.lower())
        except ValueError:
            family = None
        if family not in NATIVE_APIS:
            choices = ", ".join(f.value for f in NATIVE_APIS)
            raise ValueError(f"{name!r} is not one of {choices}")
        found.add(family)
    return frozenset(found)


def _version(value: str) -> str:
    parts = value.strip().split(".")
    if not all(p.isdigit() for p in parts) or len(parts) < 2:
        # Copilot and Open WebUI parse it as dotted integers.
        raise ValueError(f"{value!r} must be a dotted numeric version such as 0.13.5")
    return value.strip()


def listen_from_ollama_host(value: str) -> str:
    """The listening endpoint for an ``OLLAMA_HOST`` value, read the way Ollama reads it.

    ``0.0.0.0`` → all interfaces on 11434, ``:8080`` → all interfaces on 8080, ``http://host:port``,
    ``[::1]:11434``; a missing host means 127.0.0.1 and a missing port 11434 (80/443 for explicit schemes).
    """
    text = value.strip()
    default_port = 11434
    scheme, sep, rest = text.partition("://")
    if not sep:
        rest = text
    elif scheme == "http":
        default_port = 80
    elif scheme == "https":
        default_port = 443
    hostport = rest.split("/", 1)[0]
    host, port = _split_host_port(hostport, default_port)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"tcp:{port}:interface={host}:backlog={BACKLOG}"
    if address.version == 6:
        return f"tcp6:{port}:interface={str(address).replace(':', chr(92) + ':')}:backlog={BACKLOG}"
    return f"tcp:{port}:interface={address}:backlog={BACKLOG}"


def _split_host_port(hostport: str, default_port: int) -> tuple[str, int]:
    if hostport.startswith("["):
        host, _, tail = hostport[1:].partition("]")
        port_text = tail.removeprefix(":")
    elif hostport.count(":") == 1:
        host, _, port_text = hostport.partition(":")
        # Go listens on every interface for ":8080".
        host = host or "0.0.0.0"  # noqa: S104 -- what OLLAMA_HOST=":PORT" means in Ollama
    else:
        host, port_text = hostport, ""
    host = host or "127.0.0.1"
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"OLLAMA_HOST has an invalid port {port_text!r}")
    return host, int(port_text)


@attrs.frozen
class Setting:
    """One configuration value and where it may come from."""

    name: str  # option name, also the TOML key with - → _
    parse: Callable[[str], Any]
    help: str
    short: str | None = None
    flag: bool = False  # a command-line switch without a value (``--log-bodies``)

    @property
    def env(self) -> str:
        return "OLLAMA_PROXY_" + self.name.upper().replace("-", "_")

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "backend",
        parse_backend_url,
        "Base URL of the OpenAI-compatible backend, e.g. http://gpu1:8000/v1.",
        "b",
    ),
    Setting("dialect", _dialect, "Backend flavour for extra fields: vllm, openai, openrouter, llamacpp."),
    Setting("api-key-file", str, "File holding the backend API key (default: $OPENAI_API_KEY)."),
    Setting(
        "native-apis",
        _native_apis,
        "APIs the backend serves itself, passed through untranslated: anthropic (/v1/messages), "
        "responses (/v1/responses), comma-separated.",
    ),
    Setting("model-map", str, 'JSON file {"ollama-name": "backend-model-id"}; reloaded on SIGHUP.', "m"),
    Setting("ollama-version", _version, "Version reported by /api/version."),
    Setting(
        "pool-size",
        _positive_int,
        "Idle backend connections kept open for reuse, per backend (as many as --max-concurrent lets run).",
    ),
    Setting("models-ttl", _positive_float, "Seconds the backend's model list is cached."),
    Setting(
        "models-timeout",
        _positive_float,
        "Seconds a backend's /models answer may take, headers and body (the previous list is kept).",
    ),
    Setting("connect-timeout", _positive_float, "Seconds to wait for a backend connection."),
    Setting(
        "stall-timeout",
        _positive_float,
        "Seconds a client may leave its response unread (send buffer full) before its connection is aborted.",
    ),
    Setting(
        "client-header-timeout",
        _positive_float,
        "Seconds a client has to send a request's line and headers, from its first byte (408 beyond).",
    ),
    Setting(
        "client-body-timeout",
        _positive_float,
        "Seconds a client has to send a request's body once its headers are in (408 beyond).",
    ),
    Setting(
        "keep-alive-timeout",
        _positive_float,
        "Seconds an idle client connection stays open between requests.",
    ),
    Setting("idle-timeout", _positive_float, "Seconds a backend stream may go silent before it is ended."),
    Setting(
        "embed-batch-size", _positive_int, "Inputs per backend /embeddings request (larger lists are split)."
    ),
    Setting("headers-timeout", _positive_float, "Seconds to wait for the backend's response headers."),
    Setting("retries", _non_negative_int, "Further attempts after a refused connection or 429/502/503/504."),
    Setting("retry-budget", _positive_float, "Seconds within which all attempts of one request must start."),
    Setting(
        "breaker-threshold", _positive_int, "Consecutive backend failures that open the circuit breaker."
    ),
    Setting("breaker-cooldown", _positive_float, "Seconds the breaker stays open before one probe request."),
    Setting("max-body", _byte_size, "Largest request body accepted (413 beyond), e.g. 32MiB."),
    Setting("max-concurrent", _positive_int, "Backend requests in flight at once."),
    Setting("max-queue", _non_negative_int, "Requests that may wait for a backend slot (503 beyond)."),
    Setting(
        "max-connections",
        _positive_int,
        "Client connections open at once, per process (503 beyond; default: as the open-file limit allows).",
    ),
    Setting(
        "max-connections-per-client",
        _positive_int,
        "Client connections one address may hold open, per process (503 beyond; off when unset).",
    ),
    Setting("drain-timeout", _positive_float, "Seconds in-flight requests get to finish on SIGTERM."),
    Setting("workers", _positive_int, "Processes serving the listening sockets (1: this one alone).", "w"),
    Setting("client-keys-file", str, "Bearer tokens clients must present, one per line (off when unset)."),
    Setting("origins", _origins, "Extra CORS origins, comma-separated (added to OLLAMA_ORIGINS)."),
    Setting("log-format", _log_format, "text (twistd's lines) or json (one object per line)."),
    Setting(
        "log-bodies",
        _switch,
        "Log request bodies (debugging only: they may hold private prompts).",
        flag=True,
    ),
)


def guess_dialect(backend: str) -> Dialect:
    host = (urlsplit(backend).hostname or "").lower()
    if host == "api.openai.com":
        return Dialect.OPENAI
    if host.endswith("openrouter.ai"):
        return Dialect.OPENROUTER
    return Dialect.VLLM


def _read_text(path: str, option: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError(f"--{option}: cannot read {path}: {exc.strerror or exc}") from None


def load_model_map(path: str) -> dict[str, str]:
    """Read and check a model-map file; ConfigError names ``--model-map`` and what is wrong."""
    text = _read_text(path, "model-map")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--model-map: {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and v for k, v in data.items()
    ):
        raise ConfigError(
            f'--model-map: {path} must be a JSON object of {{"ollama-name": "backend-model-id"}}'
        )
    return dict(data)


def load_client_keys(path: str) -> frozenset[str]:
    """Client bearer tokens: one per line; blank lines and ``#`` comments are skipped."""
    tokens = frozenset(
        line.strip()
        for line in _read_text(path, "client-keys-file").splitlines()
        if line.strip() and not line.strip().startswith("#")
    )
    if not tokens:
        raise ConfigError(f"--client-keys-file: {path} lists no tokens")
    return tokens


def _read_api_key(path: str) -> str:
    key = _read_text(path, "api-key-file").strip()
    if not key:
        raise ConfigError(f"--api-key-file: {path} is empty")
    return key


def _count(value: Any, _type: Any) -> int:
    """Every integer of a ``[models."id"]`` table is a length or a size: a whole number, 0 or more."""
    if isinstance(value, bool):
        raise TypeError("expected a non-negative integer, got a boolean")
    if not isinstance(value, int):
        raise TypeError(f"expected a non-negative integer, got {type(value).__name__}")
    if value < 0:
        raise TypeError(f"expected a non-negative integer, got {value}")
    return value


def _capabilities(value: Any, _type: Any) -> tuple[str, ...]:
    if (
        isinstance(value, list)
        and all(isinstance(c, str) for c in value)
        and set(value) <= KNOWN_CAPABILITIES
    ):
        return tuple(value)
    raise TypeError(f"expected a list drawn from {', '.join(sorted(KNOWN_CAPABILITIES))}")


def _options(value: Any, _type: Any) -> dict[str, Any]:
    """Ollama options as the model's ``parameters`` show them: names to numbers, strings, booleans or
    lists of them (``stop``)."""
    scalar = (str, int, float, bool)
    if isinstance(value, dict) and all(
        isinstance(v, scalar) or (isinstance(v, list) and all(isinstance(i, scalar) for i in v))
        for v in value.values()
    ):
        return dict(value)
    raise TypeError("expected a table of option names to numbers, strings, booleans or lists of them")


def _build_converter() -> cattrs.Converter:
    """The request converter's strict hooks (a number where a string belongs is refused, not turned into
    ``"3"``), except that an unknown key is refused too: in a config file it is a typo, where in a request
    body it is some client's extension.  Every field ``ModelOverride`` has, now or later, is checked."""
    converter = schemas.converter.copy(forbid_extra_keys=True)
    converter.register_structure_hook(int, _count)
    converter.register_structure_hook(
        ModelOverride,
        make_dict_structure_fn(
            ModelOverride,
            converter,
            capabilities=override(struct_hook=_capabilities),
            options=override(struct_hook=_options),
        ),
    )
    return converter


_converter = _build_converter()


def _problems(exc: Exception) -> str:
    """A converter's complaints on one line: ``family: expected a string, got int; has unknown keys: x``."""
    if not isinstance(exc, cattrs.BaseValidationError):
        return str(exc)

    def reason(error: BaseException, _type: Any) -> str:
        if isinstance(error, cattrs.ForbiddenExtraKeysError):
            return f"has unknown keys: {', '.join(sorted(error.extra_fields))}"
        return str(error)

    found = []
    for message in cattrs.transform_error(exc, path="", format_exception=reason):
        text, _, where = message.rpartition(" @ ")
        found.append(f"{where.removeprefix('.')}: {text}" if where else text)
    return "; ".join(found)


def _overrides(table: Any) -> dict[str, ModelOverride]:
    """``[models."id"]`` tables, each structured by the strict converter into a ``ModelOverride``."""
    if not isinstance(table, dict):
        raise ConfigError("--config: [models] must be a table of per-model tables")
    result: dict[str, ModelOverride] = {}
    for name, values in table.items():
        where = f'--config: [models."{name}"]'
        if not isinstance(values, dict):
            raise ConfigError(f"{where} must be a table")
        try:
            result[name] = _converter.structure(values, ModelOverride)
        except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where} {_problems(exc)}") from None
    return result


def _toml(path: str) -> dict[str, Any]:
    text = _read_text(path, "config")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path} is not valid TOML: {exc}") from None


def build_config(
    cli: Mapping[str, Any],
    environ: Mapping[str, str],
    config_path: str | None = None,
    listen: tuple[str, ...] = (),
    backends: tuple[str, ...] = (),
) -> ProxyConfig:
    """Merge command line > environment > TOML file > defaults into a validated ProxyConfig.

    ``cli`` holds option values as parsed (None when not given); ``listen`` and ``backends`` the
    repeated ``--listen`` and ``--backend``.
    """
    config_path = config_path or environ.get("OLLAMA_PROXY_CONFIG") or None
    toml = _toml(config_path) if config_path else {}
    from_env = environ.get("OLLAMA_PROXY_BACKEND", "").split()
    if not backends and len(from_env) > 1:
        backends = tuple(from_env)  # several URLs in the variable, separated by spaces
    if len(backends) == 1:
        cli = {**cli, "backend": backends[0]}
    backend_tables = toml.pop("backend") if isinstance(toml.get("backend"), list) else []
    known_keys = {s.key for s in SETTINGS} | {"listen", "models"}
    unknown = set(toml) - known_keys
    if unknown:
        raise ConfigError(f"--config: unknown settings: {', '.join(sorted(unknown))}")

    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw: Any = cli.get(setting.name)
        if setting.flag and not raw:
            raw = None  # a switch left off on the command line says nothing: the environment may set it
        source = f"--{setting.name}"
        if raw is None and setting.env in environ:
            raw, source = environ[setting.env], f"--{setting.name} (from {setting.env})"
        if raw is None and setting.key in toml:
            raw, source = toml[setting.key], f"--{setting.name} (from {config_path})"
        if raw is None:
            continue
        try:
            values[setting.key] = setting.parse(str(raw))
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    if "backend" not in values and not backends and not backend_tables:
        raise ConfigError("--backend: required (or set OLLAMA_PROXY_BACKEND)")
    endpoints = _listen(listen, environ, toml)
    client_keys_file = values.get("client_keys_file")
    if client_keys_file:
        values["client_keys"] = load_client_keys(client_keys_file)
    values["origins"] = _origins(environ.get("OLLAMA_ORIGINS", "")) + values.get("origins", ())
    api_key_file = values.pop("api_key_file", None)
    api_key = _read_api_key(api_key_file) if api_key_file else (environ.get("OPENAI_API_KEY") or None)
    model_map_path = values.pop("model_map", None)
    dialect = values.pop("dialect", None)
    native = values.pop("native_apis", frozenset())
    url = values.pop("backend", None)
    if len(backends) > 1 or backend_tables:
        chosen = _backends(backends, backend_tables, api_key, dialect, native, environ, config_path)
    else:
        chosen = (
            BackendConfig(
                url=url, api_key=api_key, dialect=dialect or guess_dialect(url), native_apis=native
            ),
        )
    return ProxyConfig(
        backends=chosen,
        listen=endpoints,
        model_map_path=model_map_path,
        model_map=load_model_map(model_map_path) if model_map_path else {},
        models=_overrides(toml.get("models", {})),
        **values,
    )


_BACKEND_KEYS = frozenset(
    {"url", "name", "api_key_file", "api_key_env", "models", "prefix", "dialect", "native_apis"}
)


def _backends(
    urls: tuple[str, ...],
    tables: list[Any],
    api_key: str | None,
    dialect: Dialect | None,
    native: frozenset[Family],
    environ: Mapping[str, str],
    config_path: str | None,
) -> tuple[BackendConfig, ...]:
    """Several backends: repeated ``--backend`` (sharing the key, dialect and native-API settings), else
    the TOML file's ``[[backend]]`` tables, each with its own name, key, model filter, dialect and native
    APIs (the top-level settings are their defaults)."""
    found: list[BackendConfig] = []
    for url in urls:
        try:
            parsed = parse_backend_url(url)
        except ValueError as exc:
            raise ConfigError(f"--backend: {exc}") from None
        found.append(
            BackendConfig(
                url=parsed, api_key=api_key, dialect=dialect or guess_dialect(parsed), native_apis=native
            )
        )
    if found:
        return tuple(found)
    for index, table in enumerate(tables):
        where = f"--config: [[backend]] #{index + 1} in {config_path}"
        if not isinstance(table, dict) or not isinstance(table.get("url"), str):
            raise ConfigError(f"{where} needs a url")
        unknown = set(table) - _BACKEND_KEYS
        if unknown:
            raise ConfigError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
        try:
            url = parse_backend_url(table["url"])
            chosen = _dialect(table["dialect"]) if "dialect" in table else (dialect or guess_dialect(url))
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        try:
            apis = _table_native_apis(table["native_apis"]) if "native_apis" in table else native
        except ValueError as exc:
            raise ConfigError(f"{where} native_apis: {exc}") from None
        key = api_key
        if "api_key_file" in table:
            key = _read_api_key(str(table["api_key_file"]))
        elif "api_key_env" in table:
            key = environ.get(str(table["api_key_env"])) or None
        models = table.get("models", [])
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ConfigError(f"{where} models must be a list of ids or glob patterns")
        found.append(
            BackendConfig(
                url=url,
                name=str(table.get("name", "")),
                api_key=key,
                dialect=chosen,
                models=tuple(models),
                prefix=str(table.get("prefix", "")),
                native_apis=apis,
            )
        )
    names = [b.label for b in found]
    if len(set(names)) != len(names):
        raise ConfigError(f"--config: two [[backend]] tables share the name {names!r}")
    return tuple(found)


def _table_native_apis(value: Any) -> frozenset[Family]:
    """A ``[[backend]]`` table's ``native_apis``: a list of names (or one comma-separated string)."""
    if isinstance(value, list) and all(isinstance(name, str) for name in value):
        value = ",".join(value)
    if not isinstance(value, str):
        raise ValueError('must be a list of API names such as ["anthropic", "responses"]')
    return _native_apis(value)


def _listen(cli: tuple[str, ...], environ: Mapping[str, str], toml: Mapping[str, Any]) -> tuple[str, ...]:
    if cli:
        return cli
    if environ.get("OLLAMA_PROXY_LISTEN"):
        return tuple(environ["OLLAMA_PROXY_LISTEN"].split())
    if "listen" in toml:
        found = toml["listen"]
        found = [found] if isinstance(found, str) else found
        if not isinstance(found, list) or not found or not all(isinstance(e, str) for e in found):
            raise ConfigError("--listen (from --config): must be an endpoint string or a list of them")
        return tuple(found)
    if environ.get("OLLAMA_HOST"):
        try:
            return (listen_from_ollama_host(environ["OLLAMA_HOST"]),)
        except ValueError as exc:
            raise ConfigError(f"--listen (from OLLAMA_HOST): {exc}") from None
    return (DEFAULT_LISTEN,)
