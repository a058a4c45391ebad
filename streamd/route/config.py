"""The typed, frozen configuration of `streamd route`, validated once at start.

Sources, later ones winning: defaults, a TOML file (`--config`: top-level router settings and the `[http]` and
`[mqtt]` sections of `serve`'s configuration), `STREAMD_ROUTE_*` environment variables, flags. Variables:
`STREAMD_ROUTE_<KEY>` for the router's own settings (`STREAMD_ROUTE_MODE`), `STREAMD_ROUTE_HTTP_<KEY>` and
`STREAMD_ROUTE_MQTT_<KEY>` for the sections, and `STREAMD_ROUTE_TOKEN`, `..._INGEST_TOKEN`, `..._VIEW_TOKEN`,
`..._CONTROL_TOKEN` (and their `_FILE` forms) for the bearer tokens. Tokens and the MQTT password also come from
systemd credentials (`http-token`, ..., `mqtt-password`), exactly as for `serve` (streamd/config.py): the router
checks the same tokens with the same roles as the instances behind it, then forwards them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The loader's building blocks are serve's own (one set of conversion, range and secret rules for both
# commands); they are module-private there only because serve was their one user.
from ..config import (
    ROUTE_ENV_PREFIX,
    HttpSettings,
    MqttSettings,
    _check,
    _put,
    build_config,
    is_loopback_host,
    read_toml,
)
from ..errors import ConfigError
from .fleet import DEFAULT_MAX_INSTANCES

__all__ = ["DEFAULT_PORT", "MODES", "RouteConfig"]

MODES = ("proxy", "redirect")
DEFAULT_PORT = 8780
_TOKEN_ALIASES = {f"{role}token": f"http.{role}token" for role in ("", "ingest_", "view_", "control_")}
_TOKEN_ALIASES.update({f"{k}_file": f"{v}_file" for k, v in list(_TOKEN_ALIASES.items())})


@dataclass(frozen=True)
class RouteConfig:
    """Everything `streamd route` needs."""

    # The listener, tokens and connection bounds: serve's HttpSettings (public_url is not used by the router)
    http: HttpSettings = field(default_factory=lambda: HttpSettings(port=DEFAULT_PORT))
    # The broker: serve's MqttSettings (prefix and status_interval_s are not used by the router)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    prefix_root: str = "streamd"  # instances publish `<prefix_root>/<instance>/status`
    mode: str = "proxy"  # proxy: forward the offer, answer with the instance's answer; redirect: 307
    status_max_age_s: float = 15.0  # an instance whose status is older is gone (3 x the 5 s keep-alive)
    max_instances: int = DEFAULT_MAX_INSTANCES  # instances tracked at most
    upstream_timeout_s: float = 20.0  # a forwarded request must be answered within this (ICE gathering included)
    log_level: str = "info"

    def __post_init__(self) -> None:
        _check(self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        _check(bool(self.prefix_root) and not any(c in self.prefix_root for c in "#+\0")
               and not self.prefix_root.startswith("$") and not self.prefix_root.endswith("/"),
               "prefix_root must be a topic without wildcards, a leading '$' or a trailing '/'")
        _check(0 < self.status_max_age_s <= 3600, "status_max_age_s must be in more than 0..3600")
        _check(1 <= self.max_instances <= 4096, "max_instances must be in 1..4096")
        _check(0 < self.upstream_timeout_s <= 300, "upstream_timeout_s must be in more than 0..300")
        _check(self.log_level in ("debug", "info", "warning", "error"), "log_level must be debug/info/warning/error")
        _check(self.mqtt.broker is not None, "the router needs a broker: --mqtt HOST:PORT (or mqtt.broker)")
        host, sep, port = (self.mqtt.broker or "").rpartition(":")
        _check(bool(sep) and bool(host) and port.isdigit() and 1 <= int(port) <= 65535,
               f"mqtt.broker must be HOST:PORT, got {self.mqtt.broker!r}")
        for role, token in self.http.tokens().items():
            name = "http.token" if role == "all" else f"http.{role}_token"
            _check(len(token) >= 8 and token.isascii() and token.isprintable() and " " not in token,
                   f"{name} must be at least 8 printable ASCII characters without spaces")
        # the same exposure rule as serve: a router off loopback without tokens would open every instance
        if not is_loopback_host(self.http.host) and not self.http.tokens() and not self.http.allow_unauthenticated:
            raise ConfigError(
                f"config: http.host {self.http.host!r} is not a loopback address and no token is set: anyone who "
                "can reach the router could stream into every instance. Set a token (STREAMD_ROUTE_TOKEN, "
                "--token-file or the systemd credential http-token), or set http.allow_unauthenticated = true")
        m = self.mqtt
        if not is_loopback_host(host) and not m.allow_unauthenticated and (not m.tls or m.username is None):
            raise ConfigError(
                f"config: mqtt.broker {m.broker!r} is not on a loopback address and the connection has no TLS or "
                "no credentials: set mqtt.tls = true and mqtt.username with a password (mqtt.password_file or "
                "the credential mqtt-password), or mqtt.allow_unauthenticated = true")

    @classmethod
    def load(cls, file: Path | None = None, env: Mapping[str, str] | None = None,
             overrides: Mapping[str, Any] | None = None) -> RouteConfig:
        """Merge defaults, the TOML file, STREAMD_ROUTE_* variables and flag overrides ("section.key" -> value)."""
        raw: dict[str, dict[str, tuple[Any, str]]] = {"http": {"port": (DEFAULT_PORT, "default")}}
        if file is not None:
            for key, value in read_toml(file).items():
                if isinstance(value, dict):
                    if key not in ("http", "mqtt"):
                        raise ConfigError(f"config: unknown section {key} (from {file})")
                    for sub, v in value.items():
                        _put(raw, f"{key}.{sub}", v, str(file))
                else:
                    _put(raw, key, value, str(file))
        for name, value in (env or {}).items():
            if name.startswith(ROUTE_ENV_PREFIX):
                rest = name[len(ROUTE_ENV_PREFIX):].lower()
                if rest in _TOKEN_ALIASES:
                    key = _TOKEN_ALIASES[rest]
                elif rest.startswith(("http_", "mqtt_")):
                    key = f"{rest[:4]}.{rest[5:]}"
                else:
                    key = rest
                _put(raw, key, value, name)
        return build_config(cls, raw, env, overrides)
