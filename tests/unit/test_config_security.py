"""Secure defaults of the serve configuration: refusals off loopback, opt-outs, and where secrets come from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamd.config import ConfigError, ServeConfig, is_loopback_host

TOKEN = "a-long-enough-token"


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("192.0.2.7", False), ("example.org", False),
])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(("overrides", "message"), [
    ({"http.host": "0.0.0.0"},
     r"http\.host '0\.0\.0\.0' is not a loopback address and no token is set.*http\.allow_unauthenticated = true"),
    ({"http.host": "192.0.2.7"}, r"Set a token \(http\.token_file, STREAMD_HTTP_TOKEN or the systemd credential"),
    ({"zmq.endpoint": "tcp://0.0.0.0:5557"},
     r"zmq\.endpoint 'tcp://0\.0\.0\.0:5557' is not on a loopback address and CURVE is off.*"
     r"zmq\.allow_unauthenticated = true"),
    ({"zmq.endpoint": "tcp://*:5557"}, r"CURVE is off"),
    ({"mqtt.broker": "broker.example:1883"},
     r"mqtt\.broker 'broker\.example:1883' is not on a loopback address and the connection has no TLS.*"
     r"mqtt\.allow_unauthenticated = true"),
    ({"mqtt.broker": "192.0.2.9:8883", "mqtt.tls": True}, r"has no credentials: commands and status would travel "
                                                          r"anonymously"),
])
def test_every_refusal_at_start_names_the_setting_and_the_fix(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServeConfig.load(overrides=overrides)


def test_what_is_accepted_off_loopback() -> None:
    config = ServeConfig.load(env={"STREAMD_HTTP_TOKEN": TOKEN}, overrides={"http.host": "0.0.0.0"})
    assert config.unauthenticated() == []
    # any one role token is authentication (every door then needs a token)
    assert ServeConfig.load(overrides={"http.host": "::", "http.view_token": TOKEN}).unauthenticated() == []
    c = ServeConfig.load(overrides={"mqtt.broker": "192.0.2.9:8883", "mqtt.tls": True, "mqtt.username": "u",
                                    "mqtt.password": "p"})
    assert c.unauthenticated() == []
    for endpoint in ("ipc:///run/streamd/frames", "inproc://x", "tcp://127.0.0.1:5557", "tcp://[::1]:5557"):
        assert ServeConfig.load(overrides={"zmq.endpoint": endpoint}).unauthenticated() == []


def test_opt_outs_are_listed() -> None:
    c = ServeConfig.load(env={"STREAMD_HTTP_ALLOW_UNAUTHENTICATED": "true"}, overrides={
        "http.host": "0.0.0.0", "zmq.endpoint": "tcp://0.0.0.0:1", "zmq.allow_unauthenticated": True,
        "mqtt.broker": "broker.example:1883", "mqtt.allow_unauthenticated": True})
    assert c.unauthenticated() == ["http", "zmq", "mqtt"]
    # an opt-out on loopback (or with a token) opens nothing, so nothing is listed
    assert ServeConfig.load(overrides={"http.allow_unauthenticated": True}).unauthenticated() == []


def test_token_sources_and_precedence(tmp_path: Path) -> None:
    file = tmp_path / "token"
    file.write_text("from-the-file-token\n")  # a trailing newline is not part of the token
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "http-token").write_text("from-the-credential")
    (creds / "http-view-token").write_text("view-from-credential")
    (creds / "mqtt-password").write_text("broker-password")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    c = ServeConfig.load(env=env)
    assert c.http.token == "from-the-credential" and c.http.view_token == "view-from-credential"
    assert c.mqtt.password == "broker-password"
    assert c.http.token_file == creds / "http-token"
    # a file beats the credential; the variable beats a file named in the TOML file; the command line beats all
    assert ServeConfig.load(env=env, overrides={"http.token_file": str(file)}).http.token == "from-the-file-token"
    toml = tmp_path / "streamd.toml"
    toml.write_text(f'[http]\ntoken_file = "{file}"\n')
    assert ServeConfig.load(toml, env={**env, "STREAMD_HTTP_TOKEN": "from-the-variable"}).http.token == \
        "from-the-variable"
    assert ServeConfig.load(toml, env={"STREAMD_HTTP_TOKEN": "from-the-variable"},
                            overrides={"http.token_file": str(file)}).http.token == "from-the-file-token"
    assert ServeConfig.load(env={"STREAMD_HTTP_TOKEN_FILE": str(file)},
                            overrides={"http.token": "from-the-command-line"}).http.token == "from-the-command-line"
    with pytest.raises(ConfigError, match=r"set http\.token or http\.token_file, not both"):
        ServeConfig.load(env={"STREAMD_HTTP_TOKEN": "from-the-variable", "STREAMD_HTTP_TOKEN_FILE": str(file)})
    # the MQTT password and the CURVE key files come the same ways
    pw = tmp_path / "pw"
    pw.write_text("secret-pw\n")
    assert ServeConfig.load(overrides={"mqtt.password_file": str(pw)}).mqtt.password == "secret-pw"
    (creds / "zmq-curve-secret-key").write_text("x")
    (creds / "zmq-curve-public-key").write_text("y")
    z = ServeConfig.load(env=env, overrides={"zmq.curve_allowed_clients": str(tmp_path)}).zmq
    assert z.curve_secret_key == creds / "zmq-curve-secret-key" and z.curve_public_key == creds / "zmq-curve-public-key"


def test_secret_file_errors(tmp_path: Path) -> None:
    empty, short, unreadable = tmp_path / "empty", tmp_path / "short", tmp_path / "unreadable"
    empty.write_text("\n")
    short.write_text("abc\n")
    unreadable.write_text(TOKEN)
    unreadable.chmod(0)
    with pytest.raises(ConfigError, match=rf"http\.token_file: {empty} is empty \(from command line\)"):
        ServeConfig.load(overrides={"http.token_file": str(empty)})
    with pytest.raises(ConfigError, match=rf"http\.token from {short} .* must be at least 8 characters"):
        ServeConfig.load(overrides={"http.token_file": str(short)})
    with pytest.raises(ConfigError, match=rf"http\.token_file: cannot read {tmp_path / 'absent'}: No such file"):
        ServeConfig.load(env={"STREAMD_HTTP_TOKEN_FILE": str(tmp_path / "absent")})
    if os.geteuid() != 0:  # root reads a mode-0 file; the folder case below covers "unreadable" for root too
        with pytest.raises(ConfigError, match=r"cannot read .*Permission denied"):
            ServeConfig.load(overrides={"http.token_file": str(unreadable)})
    with pytest.raises(ConfigError, match=r"cannot read .*Is a directory"):
        ServeConfig.load(overrides={"http.token_file": str(tmp_path)})
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "http-control-token").write_text("short")
    with pytest.raises(ConfigError, match=r"http\.control_token from credential http-control-token must be at "
                                          r"least 8 characters"):
        ServeConfig.load(env={"CREDENTIALS_DIRECTORY": str(creds)})
    with pytest.raises(ConfigError, match=r"http\.token must be at least 8 characters"):
        ServeConfig.load(env={"STREAMD_HTTP_TOKEN": "short"})
    with pytest.raises(ConfigError, match=r"printable ASCII without spaces"):
        ServeConfig.load(env={"STREAMD_HTTP_TOKEN": "caf\xe9-token-here"})


def test_serve_help_says_token_is_for_local_use_and_offers_a_file() -> None:
    from streamd.cli import build_parser

    parser = build_parser()
    serve = next(a for a in parser._subparsers._group_actions[0].choices.values()  # noqa: SLF001
                 if "--token-file" in a.format_help())
    text = " ".join(serve.format_help().split())
    assert "quick local use only" in text and "ps" in text and "--token-file" in text
    args = parser.parse_args(["serve", "--token-file", "/run/t"])
    assert args.token_file == Path("/run/t")


def test_issue18_11_a_secret_file_others_can_read_is_a_start_warning(tmp_path: Path) -> None:
    token = tmp_path / "http-token"
    token.write_text("a-long-enough-token\n")
    token.chmod(0o644)
    cfg = ServeConfig.load(env={"STREAMD_HTTP_TOKEN_FILE": str(token)})
    (warning,) = cfg.secret_file_warnings()
    assert str(token) in warning and "chmod 600" in warning and "http.token_file" in warning
    token.chmod(0o600)
    assert cfg.secret_file_warnings() == []
    # a systemd credential is exempt: systemd owns its permissions
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "http-token").write_text("a-long-enough-token\n")
    (creds / "http-token").chmod(0o644)
    cfg = ServeConfig.load(env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.http.token == "a-long-enough-token" and cfg.secret_file_warnings(str(creds)) == []
