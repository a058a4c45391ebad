"""The router's fleet registry and placement rule (streamd/route/fleet.py), with a fake clock: no network."""

from __future__ import annotations

import json

import pytest

from streamd.route.config import RouteConfig
from streamd.route.fleet import MAX_STATUS_BYTES, Fleet

MiB = 2**20


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.wall = 1_700_000_000 * 10**9

    def __call__(self) -> float:
        return self.now


def status(streams: list[str] | None = None, headroom: int = 10 * MiB, max_streams: int = 2, ready: bool = True,
           draining: bool = False, state: str = "online", url: str = "http://h:1", time_ns: int = 0) -> bytes:
    streams = streams or []
    return json.dumps({"v": 1, "state": state, "streams": streams, "model": "tiny", "version": "x",
                       "time_ns": time_ns, "url": url, "zmq_endpoint": "tcp://h:2", "ready": ready,
                       "draining": draining, "capacity": {"max_streams": max_streams, "streams": len(streams),
                                                          "headroom_bytes": headroom, "stream_bytes": MiB}}).encode()


def fleet(clock: Clock, **kw: object) -> Fleet:
    return Fleet(15.0, clock=clock, wall_ns=lambda: clock.wall, **kw)  # type: ignore[arg-type]


def test_most_headroom_wins_then_fewest_streams_then_name() -> None:
    clock = Clock()
    f = fleet(clock)
    f.update("a", status(headroom=5 * MiB))
    f.update("b", status(headroom=8 * MiB, streams=["s1"]))
    f.update("c", status(headroom=8 * MiB))
    assert f.choose().name == "c"
    f.update("c", status(headroom=8 * MiB, streams=["s2"]))
    assert f.choose().name == "b"  # equal headroom and streams: the name decides
    assert f.choose(exclude={"b", "c"}).name == "a"


def test_ineligible_instances_are_never_chosen() -> None:
    clock = Clock()
    f = fleet(clock)
    f.update("draining", status(draining=True, headroom=99 * MiB))
    f.update("unready", status(ready=False, headroom=99 * MiB))
    f.update("starting", status(state="starting", headroom=99 * MiB))
    f.update("full", status(streams=["x", "y"], max_streams=2, headroom=99 * MiB))
    f.update("no-memory", status(headroom=MiB - 1))
    f.update("no-url", status(url="nope", headroom=99 * MiB))
    assert f.choose() is None
    f.update("ok", status())
    assert f.choose().name == "ok"


def test_offline_will_and_stale_status_drop_an_instance() -> None:
    clock = Clock()
    f = fleet(clock)
    f.update("a", status())
    f.update("a", status(state="offline"))
    assert "a" not in f.instances and f.choose() is None
    f.update("b", status())
    clock.now += 15.1
    assert f.choose() is None  # stale: not chosen at once, even before expire() removes it
    assert f.expire() == ["b"] and not f.instances
    # a retained status composed long ago (a broker kept it) is not taken
    f.update("c", status(time_ns=clock.wall - 16 * 10**9), retained=True)
    assert "c" not in f.instances
    f.update("c", status(time_ns=clock.wall - 1 * 10**9), retained=True)
    assert f.choose().name == "c"


def test_placements_count_until_the_next_status_and_spread_concurrent_posts() -> None:
    clock = Clock()
    f = fleet(clock)
    f.update("a", status(max_streams=1, headroom=9 * MiB))
    f.update("b", status(max_streams=1, headroom=8 * MiB))
    first = f.choose()
    key = f.reserve(first)
    second = f.choose()
    assert (first.name, second.name) == ("a", "b")
    f.reserve(second)
    assert f.choose() is None  # both slots reserved while the POSTs are in flight
    f.confirm(first, key, "s1")
    f.update("a", status(max_streams=1, headroom=8 * MiB, streams=["s1"]))  # the status that reflects it
    assert f.instances["a"].pending == {} and f.choose() is None
    f.update("a", status(max_streams=1, headroom=9 * MiB))  # the stream ended
    assert f.choose().name == "a"
    f.refused_by(f.instances["a"])  # it answered 503 after all
    assert f.choose() is None
    f.update("a", status(max_streams=1))
    f.unreachable(f.instances["a"])
    assert f.choose() is None


def test_bounds_instances_streams_and_payloads() -> None:
    clock = Clock()
    f = fleet(clock, max_instances=2)
    f.update("a", status())
    f.update("b", status())
    f.update("c", status())
    assert set(f.instances) == {"a", "b"} and f.refused == 1
    clock.now += 20  # stale ones make room for a newcomer
    f.update("c", status())
    assert set(f.instances) == {"c"}
    f.update("d", b"x" * (MAX_STATUS_BYTES + 1))
    f.update("d", b"[1]")
    f.update("d", b"\xff")
    assert "d" not in f.instances and f.invalid == 3
    f.update("c", status(streams=[f"s{i}" for i in range(100)], max_streams=200, headroom=10**12))
    assert len(f.instances["c"].streams) == 64


def test_snapshot_lists_every_stream_with_its_instance_and_endpoint() -> None:
    clock = Clock()
    f = fleet(clock)
    f.update("a", status(streams=["s1"]))
    snap = f.snapshot()
    assert snap["streams"]["s1"] == {"instance": "a", "url": "http://h:1", "zmq_endpoint": "tcp://h:2",
                                     "whep": "http://h:1/whep/s1"}
    assert snap["instances"]["a"]["eligible"] and f.holder("s1").name == "a" and f.holder("s2") is None


def test_route_config_sources_and_checks(tmp_path) -> None:
    env = {"STREAMD_ROUTE_VIEW_TOKEN": "view-token-1", "STREAMD_ROUTE_MQTT_BROKER": "127.0.0.1:1883",
           "STREAMD_ROUTE_STATUS_MAX_AGE_S": "4"}
    cfg = RouteConfig.load(None, env, {"mode": "redirect"})
    assert cfg.http.view_token == "view-token-1" and cfg.http.port == 8780 and cfg.mode == "redirect"
    assert cfg.status_max_age_s == 4.0
    (tmp_path / "http-token").write_text("credential-token\n")
    cfg = RouteConfig.load(None, {**env, "CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert cfg.http.token == "credential-token"
    for bad in ({"mode": "bounce"}, {"max_instances": 0}, {"http.host": "0.0.0.0"}, {"mqtt.broker": None}):
        with pytest.raises(ValueError):
            RouteConfig.load(None, {"STREAMD_ROUTE_MQTT_BROKER": "127.0.0.1:1883"} if "mqtt.broker" not in bad
                             else {}, bad)
