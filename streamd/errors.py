"""The one configuration error of streamd (model configs and the daemon's settings alike); imports nothing."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting or model configuration that cannot be used; the message names it and where it came from."""
