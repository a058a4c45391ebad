"""The serve configuration: defaults, TOML, STREAMD_* variables, flags, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamd.config import ConfigError, ServeConfig


def test_defaults() -> None:
    c = ServeConfig.load()
    assert (c.model.spec, c.http.host, c.http.port, c.zmq.endpoint) == ("tiny", "127.0.0.1", 8787,
                                                                        "tcp://127.0.0.1:5557")
    assert c.http.token is None and c.engine.max_streams == 4


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    f = tmp_path / "streamd.toml"
    f.write_text('[http]\nport = 9000\nhost = "::1"\n[engine]\nprompt = "a fox"\nmax_streams = 3\n')
    c = ServeConfig.load(f, env={"STREAMD_HTTP_PORT": "9100", "STREAMD_ENGINE_STEPS": "2", "OTHER": "x"},
                         overrides={"http.port": 9200, "engine.max_streams": None})
    assert c.http.port == 9200 and c.http.host == "::1" and c.engine.max_streams == 3
    assert c.engine.steps == 2 and c.engine.prompt == "a fox"
    c = ServeConfig.load(env={"STREAMD_WEBRTC_HOST_ADDRESSES": "127.0.0.1, ::1", "STREAMD_ENGINE_MAX_STREAMS": "2"})
    assert c.webrtc.host_addresses == ("127.0.0.1", "::1") and c.engine.max_streams == 2


@pytest.mark.parametrize(("env", "message"), [
    ({"STREAMD_HTTP_PORT": "abc"}, r"http\.port must be int, got 'abc' \(from STREAMD_HTTP_PORT\)"),
    ({"STREAMD_HTTP_PORT": "70000"}, r"http\.port must be in 1\.\.65535"),
    ({"STREAMD_HTTP_NOPE": "1"}, r"unknown setting http\.nope"),
    ({"STREAMD_ZMQ_ENDPOINT": "udp://x"}, r"zmq\.endpoint"),
    ({"STREAMD_HTTP_TOKEN": "short"}, r"token must be at least 8"),
    ({"STREAMD_ENGINE_STEPS": "1.5"}, r"engine\.steps must be int"),
    ({"STREAMD_ZMQ_CURVE_SECRET_KEY": "/k"}, r"go together"),
    ({"STREAMD_ENGINE_MAX_STREAMS": "0"}, r"engine\.max_streams must be in 1\.\.64"),
    ({"STREAMD_ENGINE_STALL_TIMEOUT_S": "0"},
     r"engine\.stall_timeout_s must be in more than 0\.\.86400, got 0\.0 \(from STREAMD_ENGINE_STALL_TIMEOUT_S\)"),
    ({"STREAMD_ENGINE_STEPS": "0"}, r"engine\.steps must be in 1\.\.1000, got 0 \(from STREAMD_ENGINE_STEPS\)"),
])
def test_bad_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServeConfig.load(env=env)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        ServeConfig.load(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[http\nport = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        ServeConfig.load(bad)
    bad.write_text("[nosuchsection]\nx = 1\n")
    with pytest.raises(ConfigError, match="unknown section"):
        ServeConfig.load(bad)


def test_compile_settings(tmp_path: Path) -> None:
    default = ServeConfig.load()
    assert default.model.compile is False and default.model.compile_mode == "default"  # eager by default
    cfg = ServeConfig.load(env={"STREAMD_MODEL_COMPILE": "1", "STREAMD_MODEL_COMPILE_CACHE_DIR": str(tmp_path)},
                           overrides={"model.compile_mode": "reduce-overhead"})
    assert cfg.model.compile and cfg.model.compile_mode == "reduce-overhead" and cfg.model.compile_cache_dir == tmp_path
    with pytest.raises(ConfigError, match="model.compile_mode"):
        ServeConfig.load(env={"STREAMD_MODEL_COMPILE_MODE": "fastest"})
