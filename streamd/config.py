"""One typed, frozen configuration tree for `streamd serve`, validated once at start.

Sources, later ones winning: built-in defaults, a TOML file (`--config`), `STREAMD_<SECTION>_<KEY>` environment
variables (e.g. `STREAMD_HTTP_PORT=9000`, `STREAMD_MAX_STREAMS=2`), command-line flags. Every error names the
setting and where its value came from.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .engine.params import EngineConfig
from .errors import ConfigError

ENV_PREFIX = "STREAMD_"


@dataclass(frozen=True)
class ModelSettings:
    """Which model runs where."""

    spec: str = "tiny"  # embedded preset name or checkpoint folder
    device: str | None = None  # cpu, cuda, cuda:1; None: cuda when available
    distilled: bool | None = None  # checkpoint: merge the distilled LoRA (None: when present)


@dataclass(frozen=True)
class HttpSettings:
    """The HTTP listener (WHIP, health, metrics)."""

    host: str = "127.0.0.1"
    port: int = 8787
    token: str | None = None  # bearer token required on WHIP requests when set
    max_body_bytes: int = 65536  # SDP offers and trickle fragments larger than this get 413
    cors_origin: str = "*"


@dataclass(frozen=True)
class ZmqSettings:
    """The ZeroMQ publisher."""

    endpoint: str = "tcp://127.0.0.1:5557"
    sndhwm: int = 64  # messages queued per subscriber before ZeroMQ drops for that subscriber
    curve_secret_key: Path | None = None  # server secret key file (zmq.auth format); enables CURVE
    curve_public_key: Path | None = None
    curve_allowed_clients: Path | None = None  # folder of allowed client public key files


@dataclass(frozen=True)
class WebRtcSettings:
    """WHIP sessions."""

    setup_timeout_s: float = 15.0  # a session whose peer never connects is closed after this
    media_timeout_s: float = 10.0  # a connected session that sends no video for this long is closed
    host_addresses: tuple[str, ...] = ()  # restrict ICE host candidates to these addresses (empty: all)


@dataclass(frozen=True)
class MqttSettings:
    """The MQTT control plane (off unless a broker is given)."""

    broker: str | None = None  # HOST:PORT; None: no MQTT
    prefix: str | None = None  # topic prefix; None: streamd/<instance>
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    status_interval_s: float = 10.0


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
        _check(self.http.token is None or len(self.http.token) >= 8, "http.token must be at least 8 characters")
        _check(self.zmq.endpoint.startswith(("tcp://", "ipc://", "inproc://")),
               "zmq.endpoint must be a tcp://, ipc:// or inproc:// endpoint")
        _check(self.zmq.sndhwm >= 1, "zmq.sndhwm must be at least 1")
        curve = (self.zmq.curve_secret_key, self.zmq.curve_public_key, self.zmq.curve_allowed_clients)
        _check(all(c is None for c in curve) or all(c is not None for c in curve),
               "zmq.curve_secret_key, curve_public_key and curve_allowed_clients go together")
        _check(self.webrtc.setup_timeout_s > 0 and self.webrtc.media_timeout_s > 0,
               "webrtc timeouts must be positive")
        if self.mqtt.broker is not None:
            host, sep, port = self.mqtt.broker.rpartition(":")
            _check(bool(sep) and bool(host) and port.isdigit() and 1 <= int(port) <= 65535,
                   f"mqtt.broker must be HOST:PORT, got {self.mqtt.broker!r}")
        _check(self.mqtt.prefix is None or (bool(self.mqtt.prefix) and not any(c in self.mqtt.prefix for c in "#+")),
               "mqtt.prefix must be non-empty and free of MQTT wildcards")
        _check(self.log_level in ("debug", "info", "warning", "error"), "log_level must be debug/info/warning/error")

    @classmethod
    def load(
        cls,
        file: Path | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> "ServeConfig":
        """Merge defaults, the TOML file, STREAMD_* variables and flag overrides ("section.key" -> value)."""
        raw: dict[str, dict[str, tuple[Any, str]]] = {}
        if file is not None:
            try:
                data = tomllib.loads(Path(file).read_text())
            except FileNotFoundError:
                raise ConfigError(f"config file {file} does not exist") from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
            for key, value in data.items():
                if isinstance(value, dict):
                    for sub, v in value.items():
                        _put(raw, f"{key}.{sub}", v, str(file))
                else:
                    _put(raw, key, value, str(file))
        for name, value in (env or {}).items():
            if name.startswith(ENV_PREFIX):
                _put(raw, _env_key(name), value, name)
        for key, value in (overrides or {}).items():
            if value is not None:
                _put(raw, key, value, "command line")
        return _build(cls, raw.get("", {}), raw)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(f"config: {message}")


_SECTIONS = frozenset(f.name for f in dataclasses.fields(ServeConfig) if f.default_factory is not dataclasses.MISSING)


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


def _build(cls: type, values: dict[str, tuple[Any, str]], raw: dict[str, dict[str, tuple[Any, str]]],
           prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    known = {f.name for f in dataclasses.fields(cls)}
    for name, (value, source) in values.items():
        if name not in known:
            raise ConfigError(f"config: unknown setting {prefix}{name} (from {source})")
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, raw.get(f.name, {}), raw, prefix=f"{f.name}.")
        elif f.name in values:
            value, source = values[f.name]
            kwargs[f.name] = _convert(value, hint, prefix + f.name, source)
    unknown_sections = set(raw) - {""} - _SECTIONS
    if not prefix and unknown_sections:
        raise ConfigError(f"config: unknown section(s) {', '.join(sorted(unknown_sections))}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config: {exc}") from None
