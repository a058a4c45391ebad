"""One typed, frozen configuration tree for `streamd serve`, validated once at start.

Sources, later ones winning: built-in defaults, a TOML file (`--config`), `STREAMD_<SECTION>_<KEY>` environment
variables (e.g. `STREAMD_HTTP_PORT=9000`, `STREAMD_MAX_STREAMS=2`), command-line flags. Every error names the
setting and where its value came from.

Secrets (the HTTP tokens, the MQTT password) never need to be on a command line, where every local user reads
them in `ps`: each comes from its setting (`http.token`, also `STREAMD_HTTP_TOKEN`), from a file
(`http.token_file`, `--token-file`), or from a systemd credential (`LoadCredential=http-token:...`, read from
`$CREDENTIALS_DIRECTORY`), in that order of preference when their sources rank equally (see `_resolve_secrets`).
The CURVE key files may come from credentials too. A listener off loopback without authentication is refused
at start unless its section sets `allow_unauthenticated = true`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .engine.params import EngineConfig
from .engine.plan import SHARD_MODES, TEXT_PLACES, WEIGHT_FORMATS, parse_bytes
from .errors import ConfigError

ENV_PREFIX = "STREAMD_"
ROUTE_ENV_PREFIX = "STREAMD_ROUTE_"  # the router's variables; `serve` ignores them
MIN_TOKEN_CHARS = 8  # a shorter bearer token is refused at start: it falls to guessing even with backoff


@dataclass(frozen=True)
class ModelSettings:
    """Which model runs where."""

    spec: str = "tiny"  # embedded preset name or checkpoint folder
    device: str | None = None  # cpu, cuda, cuda:1; None: cuda when available
    distilled: bool | None = None  # checkpoint: merge the distilled LoRA (None: when present)
    # Compiled DiT blocks (model/compiled.py): built in the warm-up, before READY. Off by default: eager runs.
    compile: bool = False
    compile_mode: str = "default"  # "default"; "reduce-overhead" = CUDA graphs (CUDA only); "max-autotune"
    compile_cache_dir: Path | None = None  # None: $STATE_DIRECTORY/compile, else ~/.cache/streamd/compile
    # The memory plan (engine/plan.py) accounts for these; `serve` refuses int8/fp8 and sharding until they exist.
    weights: str = "bf16"  # bf16 | int8 | fp8: the DiT blocks' linear weights
    text_encoder: str = "auto"  # auto | gpu | cpu: where the text encoder lives (auto: the GPU when it fits)
    shard_weights: str = "auto"  # auto | on | off: shard the DiT over the context-parallel group
    gpu_memory: str | None = None  # memory per rank the plan may use, e.g. "24GiB"; None: free memory at start

    def __post_init__(self) -> None:
        for name, allowed in (("weights", WEIGHT_FORMATS), ("text_encoder", TEXT_PLACES),
                              ("shard_weights", SHARD_MODES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"config: model.{name} must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}")
        if self.gpu_memory is not None:
            try:
                parse_bytes(self.gpu_memory)
            except ValueError as exc:
                raise ConfigError(f"config: model.gpu_memory: {exc}") from None

    @property
    def gpu_memory_bytes(self) -> int | None:
        """`gpu_memory` in bytes (validated at construction)."""
        return None if self.gpu_memory is None else parse_bytes(self.gpu_memory)


@dataclass(frozen=True)
class HttpSettings:
    """The HTTP listener (WHIP, health, metrics)."""

    host: str = "127.0.0.1"
    port: int = 8787
    # Bearer tokens. `token` opens every door; the role tokens open one each: ingest (WHIP), view (WHEP and
    # /api/status) and control (/api/cmd, and /api/status). With any token set every door needs one.
    token: str | None = None
    token_file: Path | None = None  # read instead of `token` (trailing newline ignored)
    ingest_token: str | None = None
    ingest_token_file: Path | None = None
    view_token: str | None = None
    view_token_file: Path | None = None
    control_token: str | None = None
    control_token_file: Path | None = None
    allow_unauthenticated: bool = False  # listen off loopback without any token (logged as a warning)
    max_body_bytes: int = 65536  # SDP offers and trickle fragments larger than this get 413
    cors_origin: str = "*"
    # Connection bounds (slowloris, descriptor exhaustion): see streamd/edges/connections.py
    header_timeout_s: float = 10.0  # a request's line and headers must arrive within this once started
    body_timeout_s: float = 30.0  # a request body must arrive within this (408)
    keepalive_timeout_s: float = 15.0  # an idle keep-alive connection (or one that never sends) is closed
    max_connections: int = 256  # open connections at most; more are answered 503 and closed
    max_connections_per_client: int = 32  # open connections per client address at most
    # The base URL clients and routers reach this listener at, announced in the MQTT status (a reverse proxy's
    # https://gpu0.example/ say); None: derived from host and port (edges/announce.py)
    public_url: str | None = None

    def tokens(self) -> dict[str, str]:
        """The configured tokens by role: "all" (`token`), "ingest", "view", "control"."""
        named = {"all": self.token, "ingest": self.ingest_token, "view": self.view_token,
                 "control": self.control_token}
        return {role: value for role, value in named.items() if value is not None}


@dataclass(frozen=True)
class ZmqSettings:
    """The ZeroMQ publisher."""

    endpoint: str = "tcp://127.0.0.1:5557"
    sndhwm: int = 64  # messages queued per subscriber before ZeroMQ drops for that subscriber
    curve_secret_key: Path | None = None  # server secret key file (zmq.auth format); enables CURVE
    curve_public_key: Path | None = None
    curve_allowed_clients: Path | None = None  # folder of allowed client public key files
    allow_unauthenticated: bool = False  # publish off loopback without CURVE (logged as a warning)
    public_endpoint: str | None = None  # the endpoint subscribers dial, announced in the status; None: derived


@dataclass(frozen=True)
class WebRtcSettings:
    """WHIP sessions and WHEP viewers."""

    setup_timeout_s: float = 15.0  # a session whose peer never connects is closed after this
    whep_setup_timeout_s: float = 15.0  # a WHEP viewer that never connects is dropped after this (frees its slot)
    media_timeout_s: float = 10.0  # a connected session that sends no video for this long is closed
    host_addresses: tuple[str, ...] = ()  # restrict ICE host candidates to these addresses (empty: all)


@dataclass(frozen=True)
class MqttSettings:
    """The MQTT control plane (off unless a broker is given)."""

    broker: str | None = None  # HOST:PORT; None: no MQTT
    prefix: str | None = None  # topic prefix; None: streamd/<instance>
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None  # read instead of `password`; or the credential `mqtt-password`
    tls: bool = False
    ca_file: Path | None = None
    # The status is republished at least this often: routers drop an instance whose status is older than their
    # bound (`streamd route --status-max-age-s`, default 3 intervals), so this is also the fleet's keep-alive.
    status_interval_s: float = 5.0
    allow_unauthenticated: bool = False  # a broker off loopback without TLS and credentials (logged as a warning)


def is_loopback_host(host: str) -> bool:
    """Whether `host` names only this machine: `localhost` or a loopback address. Anything else (a wildcard such
    as `0.0.0.0` or `::`, an interface address, a host name) may be reachable from other hosts."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _zmq_host(endpoint: str) -> str | None:
    """The host of a tcp:// endpoint; None for ipc:// and inproc:// (local by nature)."""
    if not endpoint.startswith("tcp://"):
        return None
    return endpoint[len("tcp://"):].rsplit(":", 1)[0]


T = TypeVar("T")

def build_config(cls: type[T], raw: dict[str, dict[str, tuple[Any, str]]], env: Mapping[str, str] | None,
                 overrides: Mapping[str, Any] | None) -> T:
    """The last steps of every config load: flag overrides win, secrets resolve, the tree is built and checked
    (errors name each setting's source)."""
    for key, value in (overrides or {}).items():
        if value is not None:
            _put(raw, key, value, "command line")
    _resolve_secrets(raw, (env or {}).get("CREDENTIALS_DIRECTORY"))
    try:
        return _build(cls, raw.get("", {}), raw)
    except ConfigError as exc:
        raise ConfigError(_with_sources(str(exc), raw)) from None


def read_toml(file: Path) -> dict[str, Any]:
    """A config file's TOML as a dict; ConfigError (naming the file) when it is missing or not TOML."""
    try:
        return tomllib.loads(Path(file).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None


@dataclass(frozen=True)
class ServeConfig:
    """Everything `streamd serve` needs."""

    model: ModelSettings = field(default_factory=ModelSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    zmq: ZmqSettings = field(default_factory=ZmqSettings)
    webrtc: WebRtcSettings = field(default_factory=WebRtcSettings)
    engine: EngineConfig = field(default_factory=EngineConfig)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    instance: str | None = None  # instance name (MQTT prefix, status); None: the host name
    log_level: str = "info"

    def __post_init__(self) -> None:
        _check(1 <= self.http.port <= 65535, "http.port must be in 1..65535")
        _check(self.http.max_body_bytes >= 1024, "http.max_body_bytes must be at least 1024")
        for role, token in self.http.tokens().items():
            name = "http.token" if role == "all" else f"http.{role}_token"
            _check(len(token) >= MIN_TOKEN_CHARS, f"{name} must be at least {MIN_TOKEN_CHARS} characters")
            _check(token.isprintable() and token.isascii() and " " not in token,
                   f"{name} must be printable ASCII without spaces (it travels in an HTTP header)")
        _check(self.http.header_timeout_s > 0 and self.http.body_timeout_s > 0 and self.http.keepalive_timeout_s > 0,
               "http.header_timeout_s, body_timeout_s and keepalive_timeout_s must be positive")
        _check(self.http.max_connections >= 1 and self.http.max_connections_per_client >= 1,
               "http.max_connections and max_connections_per_client must be at least 1")
        _check(self.zmq.endpoint.startswith(("tcp://", "ipc://", "inproc://")),
               "zmq.endpoint must be a tcp://, ipc:// or inproc:// endpoint")
        _check(self.zmq.sndhwm >= 1, "zmq.sndhwm must be at least 1")
        _check(self.http.public_url is None or re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", self.http.public_url)
               is not None, "http.public_url must be an http:// or https:// URL without query or fragment")
        _check(self.zmq.public_endpoint is None or self.zmq.public_endpoint.startswith(("tcp://", "ipc://")),
               "zmq.public_endpoint must be a tcp:// or ipc:// endpoint")
        curve = (self.zmq.curve_secret_key, self.zmq.curve_public_key, self.zmq.curve_allowed_clients)
        _check(all(c is None for c in curve) or all(c is not None for c in curve),
               "zmq.curve_secret_key, zmq.curve_public_key and zmq.curve_allowed_clients go together")
        _check(self.webrtc.setup_timeout_s > 0 and self.webrtc.media_timeout_s > 0,
               "webrtc timeouts must be positive")
        if self.mqtt.broker is not None:
            host, sep, port = self.mqtt.broker.rpartition(":")
            _check(bool(sep) and bool(host) and port.isdigit() and 1 <= int(port) <= 65535,
                   f"mqtt.broker must be HOST:PORT, got {self.mqtt.broker!r}")
        _check(self.mqtt.prefix is None or (bool(self.mqtt.prefix) and not any(c in self.mqtt.prefix for c in "#+")),
               "mqtt.prefix must be non-empty and free of MQTT wildcards")
        _check(self.log_level in ("debug", "info", "warning", "error"), "log_level must be debug/info/warning/error")
        _check(self.model.compile_mode in ("default", "reduce-overhead", "max-autotune"),
               "model.compile_mode must be default, reduce-overhead or max-autotune")
        self._check_exposure()

    def _check_exposure(self) -> None:
        """Refuse a listener reachable from other hosts without authentication, unless opted out (mosquitto 2.0's
        rule: loopback by default, and no anonymous clients elsewhere unless `allow_anonymous` is set)."""
        if not is_loopback_host(self.http.host) and not self.http.tokens() and not self.http.allow_unauthenticated:
            raise ConfigError(
                f"config: http.host {self.http.host!r} is not a loopback address and no token is set: anyone who "
                "can reach it could stream into the GPU, watch every stream and control the daemon. Set a token "
                "(http.token_file, STREAMD_HTTP_TOKEN or the systemd credential http-token), or set "
                "http.allow_unauthenticated = true to accept that")
        host = _zmq_host(self.zmq.endpoint)
        if (host is not None and not is_loopback_host(host) and self.zmq.curve_secret_key is None
                and not self.zmq.allow_unauthenticated):
            raise ConfigError(
                f"config: zmq.endpoint {self.zmq.endpoint!r} is not on a loopback address and CURVE is off: anyone "
                "who can reach it receives every generated frame. Set zmq.curve_secret_key, curve_public_key and "
                "curve_allowed_clients, or set zmq.allow_unauthenticated = true to accept that")
        m = self.mqtt
        if m.broker is not None and not is_loopback_host(m.broker.rpartition(":")[0]) and not m.allow_unauthenticated:
            if not m.tls or m.username is None:
                raise ConfigError(
                    f"config: mqtt.broker {m.broker!r} is not on a loopback address and the connection has "
                    f"{'no TLS' if not m.tls else 'no credentials'}: commands and status would travel "
                    f"{'in clear text' if not m.tls else 'anonymously'}. Set mqtt.tls = true and mqtt.username "
                    "with a password (mqtt.password_file or the systemd credential mqtt-password), or set "
                    "mqtt.allow_unauthenticated = true to accept that")

    def unauthenticated(self) -> list[str]:
        """The listeners that run off loopback without authentication by explicit opt-out (warned at start and
        shown in /api/status and the MQTT status)."""
        out = []
        if self.http.allow_unauthenticated and not is_loopback_host(self.http.host) and not self.http.tokens():
            out.append("http")
        host = _zmq_host(self.zmq.endpoint)
        if (self.zmq.allow_unauthenticated and host is not None and not is_loopback_host(host)
                and self.zmq.curve_secret_key is None):
            out.append("zmq")
        m = self.mqtt
        if (m.allow_unauthenticated and m.broker is not None and not is_loopback_host(m.broker.rpartition(":")[0])
                and (not m.tls or m.username is None)):
            out.append("mqtt")
        return out

    def secret_file_warnings(self, credentials: str | None = None) -> list[str]:
        """A warning for every secret file (token or password file) that other local users may read (group or
        world permission bits), naming the file and the fix. Files under `credentials` (systemd's
        $CREDENTIALS_DIRECTORY) are exempt: systemd owns their permissions."""
        files = [("http.token_file", self.http.token_file), ("http.ingest_token_file", self.http.ingest_token_file),
                 ("http.view_token_file", self.http.view_token_file),
                 ("http.control_token_file", self.http.control_token_file),
                 ("mqtt.password_file", self.mqtt.password_file)]
        out = []
        for name, path in files:
            if path is None:
                continue
            if credentials and Path(path).resolve().is_relative_to(Path(credentials).resolve()):
                continue
            try:
                mode = os.stat(path).st_mode
            except OSError:
                continue  # read at load already; a file gone since is the reader's error, not this warning's
            if mode & 0o077:
                out.append(f"{name} {path} is readable by other users (mode {mode & 0o777:04o}): anyone on this "
                           f"host can read the secret; run `chmod 600 {path}` (or use a systemd credential)")
        return out

    @classmethod
    def load(
        cls,
        file: Path | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> ServeConfig:
        """Merge defaults, the TOML file, STREAMD_* variables and flag overrides ("section.key" -> value)."""
        raw: dict[str, dict[str, tuple[Any, str]]] = {}
        if file is not None:
            for key, value in read_toml(file).items():
                if isinstance(value, dict):
                    for sub, v in value.items():
                        _put(raw, f"{key}.{sub}", v, str(file))
                else:
                    _put(raw, key, value, str(file))
        for name, value in (env or {}).items():
            # STREAMD_ROUTE_* belong to `streamd route` (streamd/route/config.py): one environment may serve both
            if name.startswith(ENV_PREFIX) and not name.startswith(ROUTE_ENV_PREFIX):
                _put(raw, _env_key(name), value, name)
        return build_config(cls, raw, env, overrides)


def _with_sources(message: str, raw: Mapping[str, Mapping[str, tuple[Any, str]]]) -> str:
    """`message` with the sources of the settings it names, when it does not say where a value came from (the
    checks across settings in `__post_init__` know names, not sources)."""
    if "(from " in message:
        return message
    named = [(f"{section}.{name}" if section else name, source) for section, values in raw.items()
             for name, (_, source) in values.items()]
    found = [f"{key} from {source}" for key, source in named
             if re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message)]
    return f"{message} ({'; '.join(found)})" if found else message


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(f"config: {message}")


_SECTIONS = frozenset(f.name for f in dataclasses.fields(ServeConfig) if f.default_factory is not dataclasses.MISSING)


# (section, setting, systemd credential name): a secret's value may come from the setting, `<setting>_file`, or
# the credential file `$CREDENTIALS_DIRECTORY/<credential>` (systemd's LoadCredential=).
SECRETS: tuple[tuple[str, str, str], ...] = (
    ("http", "token", "http-token"),
    ("http", "ingest_token", "http-ingest-token"),
    ("http", "view_token", "http-view-token"),
    ("http", "control_token", "http-control-token"),
    ("mqtt", "password", "mqtt-password"),
)
# (section, setting, credential): key files that may be systemd credentials (their path is then the credential's)
KEY_FILE_CREDENTIALS: tuple[tuple[str, str, str], ...] = (
    ("zmq", "curve_secret_key", "zmq-curve-secret-key"),
    ("zmq", "curve_public_key", "zmq-curve-public-key"),
)
MAX_SECRET_FILE_BYTES = 4096  # a token file larger than this is a wrong path, not a token
_SOURCE_RANK = {"command line": 3}  # environment variables rank 2, the TOML file 1 (see _rank)


def _rank(source: str) -> int:
    return _SOURCE_RANK.get(source, 2 if source.startswith(ENV_PREFIX) else 1)


def _read_secret(path: Path, what: str, source: str) -> str:
    """The text of a secret file without surrounding whitespace; ConfigError when unreadable, huge or empty."""
    _check_value(what, path, source)  # a control character (a NUL) in the path: named, not a ValueError from open
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"config: {what}: cannot read {path}: {exc.strerror or exc} (from {source})") from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise ConfigError(f"config: {what}: {path} is larger than {MAX_SECRET_FILE_BYTES} bytes (from {source})")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"config: {what}: {path} is not UTF-8 text (from {source})") from None
    if not text:
        raise ConfigError(f"config: {what}: {path} is empty (from {source})")
    return text


def direct_source(entry: tuple[Any, str] | None) -> str | None:
    """The source of a setting given directly (None when it was not)."""
    return entry[1] if entry is not None else None


def _resolve_secrets(raw: dict[str, dict[str, tuple[Any, str]]], credentials: str | None) -> None:
    """Turn `<secret>_file` settings and systemd credentials into the secrets' values, in place.

    Precedence: between a secret and its `_file` the higher-ranked source wins (command line, then environment,
    then the TOML file); both from the same rank is an error. Without either, the credential file
    `$CREDENTIALS_DIRECTORY/<name>` is used when it exists. The value keeps the file's path as its source, so that
    a too-short token is reported with the file it came from.
    """
    for section, name, credential in SECRETS:
        values = raw.setdefault(section, {})
        direct, from_file = values.get(name), values.get(f"{name}_file")
        if direct is not None and from_file is not None:
            if _rank(direct[1]) == _rank(from_file[1]):
                raise ConfigError(f"config: set {section}.{name} or {section}.{name}_file, not both "
                                  f"(from {direct[1]} and {from_file[1]})")
            if _rank(direct[1]) > _rank(from_file[1]):
                from_file = None
        if from_file is not None and from_file[0] not in (None, ""):
            path = Path(str(from_file[0]))
            values[name] = (_read_secret(path, f"{section}.{name}_file", from_file[1]), f"{path} ({from_file[1]})")
        elif direct is None and credentials:
            path = Path(credentials) / credential
            if path.exists():
                values[name] = (_read_secret(path, f"systemd credential {credential}", "$CREDENTIALS_DIRECTORY"),
                                f"credential {credential}")
                values[f"{name}_file"] = (str(path), f"credential {credential}")
        secret = values.get(name)
        if secret is not None and name.endswith("token") and secret[1] != direct_source(direct):
            # a token read from a file: say which file is too short (the setting's own check cannot)
            if len(str(secret[0])) < MIN_TOKEN_CHARS:
                raise ConfigError(f"config: {section}.{name} from {secret[1]} must be at least {MIN_TOKEN_CHARS} "
                                  "characters")
        if not values:
            del raw[section]
    for section, name, credential in KEY_FILE_CREDENTIALS:
        if credentials and name not in raw.get(section, {}):
            path = Path(credentials) / credential
            if path.exists():
                raw.setdefault(section, {})[name] = (str(path), f"credential {credential}")


def _env_key(name: str) -> str:
    rest = name[len(ENV_PREFIX):].lower()
    for section in _SECTIONS:
        if rest.startswith(section + "_"):
            return f"{section}.{rest[len(section) + 1:]}"
    return rest


def _put(raw: dict[str, dict[str, tuple[Any, str]]], key: str, value: Any, source: str) -> None:
    section, _, name = key.rpartition(".")
    raw.setdefault(section, {})[name] = (value, source)


def _convert(value: Any, hint: Any, key: str, source: str) -> Any:
    """Turn a TOML/env/flag value into the field's type, or raise ConfigError naming key and source."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key, source)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
        if hint is Path:
            return Path(str(value))
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(i).strip() for i in items if str(i).strip())
    except (TypeError, ValueError):
        pass
    else:
        raise ConfigError(f"config: {key}: unsupported type {hint}")  # pragma: no cover
    kind = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"config: {key} must be {kind}, got {value!r} (from {source})")


# The range of every numeric setting, (lowest, highest, lowest excluded): a value outside it, or not finite (TOML
# allows nan and inf), is refused at start with the setting's name and source. Every int and float setting has an
# entry (tests/unit/test_config_properties.py checks it); the sections' own checks may narrow them further.
HOUR_S, DAY_S = 3600.0, 86400.0
RANGES: Mapping[str, tuple[float, float, bool]] = {
    "http.port": (1, 65535, False),
    "http.max_body_bytes": (1024, 16 * 1024 * 1024, False),
    "http.header_timeout_s": (0, HOUR_S, True),
    "http.body_timeout_s": (0, HOUR_S, True),
    "http.keepalive_timeout_s": (0, HOUR_S, True),
    "http.max_connections": (1, 65536, False),
    "http.max_connections_per_client": (1, 65536, False),
    "zmq.sndhwm": (1, 1_000_000, False),
    "webrtc.setup_timeout_s": (0, HOUR_S, True),
    "webrtc.whep_setup_timeout_s": (0, HOUR_S, True),
    "webrtc.media_timeout_s": (0, HOUR_S, True),
    "mqtt.status_interval_s": (0, DAY_S, True),
    "engine.cond_latents": (1, 16, False),
    "engine.chunk_latents": (1, 64, False),
    "engine.fps": (0, 240, True),
    "engine.min_fresh": (1, 1024, False),
    "engine.memory_budget_bytes": (1, 2**50, False),
    "engine.max_streams": (1, 64, False),
    "engine.max_lead_s": (0, HOUR_S, False),
    "engine.lateness_cap_s": (0, HOUR_S, False),
    "engine.output_queue": (1, 1024, False),
    "engine.stall_timeout_s": (0, DAY_S, True),
    "engine.step_delay_s": (0, HOUR_S, False),
    "engine.steps": (1, 1000, False),
    "engine.guidance": (0, 50, False),
    "engine.context_parallel": (1, 64, False),
    "engine.collective_timeout_s": (0, HOUR_S, True),
}


def _control_char(text: str) -> str | None:
    """The first control character in `text` (C0, DEL, C1, line and paragraph separators), or None."""
    return next((c for c in text if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029"), None)


def _check_value(key: str, value: Any, source: str) -> None:
    """Refuse a converted value that is not finite, out of `RANGES`, or a string with a control character (a CR or
    LF in `http.cors_origin` would break every response; in a path or a name it is never meant). The error names
    the setting and where its value came from."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config: {key} must be a finite number, got {value!r} (from {source})")
        bounds = RANGES.get(key)
        if bounds is not None:
            low, high, open_low = bounds
            if not (low < value <= high if open_low else low <= value <= high):
                span = f"{'more than ' + format(low, 'g') if open_low else format(low, 'g')}..{high:g}"
                raise ConfigError(f"config: {key} must be in {span}, got {value!r} (from {source})")
    texts = [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value] if isinstance(
        value, tuple) else []
    for text in texts:
        bad = _control_char(text)
        if bad is not None:
            raise ConfigError(f"config: {key} must not contain control characters, got {ascii(bad)} "
                              f"(from {source})")


def _build(cls: type, values: dict[str, tuple[Any, str]], raw: dict[str, dict[str, tuple[Any, str]]],
           prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    known = {f.name for f in dataclasses.fields(cls)}
    for name, (_value, source) in values.items():
        if name not in known:
            raise ConfigError(f"config: unknown setting {prefix}{name} (from {source})")
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, raw.get(f.name, {}), raw, prefix=f"{f.name}.")
        elif f.name in values:
            value, source = values[f.name]
            kwargs[f.name] = _convert(value, hint, prefix + f.name, source)
            if kwargs[f.name] is not None:
                _check_value(prefix + f.name, kwargs[f.name], source)
    unknown_sections = set(raw) - {""} - _SECTIONS
    if not prefix and unknown_sections:
        raise ConfigError(f"config: unknown section(s) {', '.join(sorted(unknown_sections))}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config: {exc}") from None
