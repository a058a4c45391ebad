"""`streamd route` with real parts on loopback: a mosquitto broker, three `streamd serve --max-streams 1`
instances announcing themselves on it, and two routers (proxy and redirect mode) side by side, all subprocesses.

One fleet serves the module (starting three daemons costs most of the time); every test ends its own sessions and
waits until the fleet is empty again. The SIGKILL test runs last: it takes an instance away for good.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from multidict import CIMultiDict
from yarl import URL

from streamd.clients.send import PatternTrack
from streamd.clients.subscribe import endpoint_via
from streamd.e2e import free_port
from streamd.edges.webrtc import restrict_host_addresses

from .conftest import LOOPBACK, TEST_ENV, Daemon
from .test_mqtt import STATUS, Broker

pytestmark = pytest.mark.timeout(240)

TOKEN = "route-test-token-1234"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STATUS_INTERVAL_S = 1.0  # the instances' keep-alive in these tests (5 s by default)
MAX_AGE_S = 3.0  # the routers' bound: three keep-alives
N_INSTANCES = 3


# ------------------------------------------------------------------------------------------ the fleet
class RouterProcess:
    """`streamd route` in a subprocess on a free loopback port; the token in its environment, never in argv."""

    def __init__(self, log_path: Path, broker_port: int, root: str, *extra: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        args = [sys.executable, "-m", "streamd.cli", "route", "--http", f"{LOOPBACK}:{self.port}", "--mqtt",
                f"{LOOPBACK}:{broker_port}", "--prefix-root", root, "--status-max-age-s", str(MAX_AGE_S), *extra]
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "STREAMD_ROUTE_TOKEN": TOKEN})

    @property
    def base(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def fleet(self) -> dict[str, Any]:
        """The router's GET /api/status."""
        import urllib.request

        req = urllib.request.Request(f"{self.base}/api/status", headers=AUTH)
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    def wait(self, predicate: Any, timeout: float = 30.0, what: str = "the fleet") -> dict[str, Any]:
        """Poll the fleet until `predicate(fleet)`; the fleet then."""
        deadline = time.monotonic() + timeout
        fleet: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the router exited:\n{self.log_path.read_text()}")
            try:
                fleet = self.fleet()
                if predicate(fleet):
                    return fleet
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{what} not reached in {timeout:g} s: {json.dumps(fleet)[:2000]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Fleet:
    broker: Broker
    root: str
    instances: dict[str, Daemon]
    router: RouterProcess
    redirector: RouterProcess

    def name_of(self, url: str) -> str:
        """The instance whose base URL `url` starts with."""
        return next(n for n, d in self.instances.items() if url.startswith(d.base + "/"))

    def live(self) -> dict[str, Daemon]:
        return {n: d for n, d in self.instances.items() if d.proc.poll() is None}


def all_eligible(names: set[str]) -> Any:
    def check(fleet: dict[str, Any]) -> bool:
        inst = fleet["instances"]
        return all(n in inst and inst[n]["eligible"] and not inst[n]["streams"] and not inst[n]["pending"]
                   for n in names)
    return check


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("route")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.access(binary, os.X_OK):
        pytest.fail("the route tests need mosquitto: apt-get install -y mosquitto", pytrace=False)
    broker = Broker(binary, tmp)
    broker.start()
    root = "route-" + uuid.uuid4().hex[:6]
    env = {**TEST_ENV, "STREAMD_MQTT_STATUS_INTERVAL_S": str(STATUS_INTERVAL_S)}
    instances: dict[str, Daemon] = {}
    routers: list[RouterProcess] = []
    try:
        for i in range(N_INSTANCES):  # started together: the three model loads overlap
            name = f"i{i}"
            instances[name] = Daemon(tmp / f"{name}.log", "--max-streams", "1", "--mqtt", f"{LOOPBACK}:{broker.port}",
                                     "--mqtt-prefix", f"{root}/{name}", "--instance", name, env=env, token=TOKEN)
        for d in instances.values():
            d.wait_ready(120)
        routers = [RouterProcess(tmp / "router.log", broker.port, root),
                   RouterProcess(tmp / "redirector.log", broker.port, root, "--mode", "redirect")]
        for r in routers:
            r.wait(all_eligible(set(instances)), what="three eligible instances")
        yield Fleet(broker, root, instances, routers[0], routers[1])
    finally:
        for r in routers:
            r.stop()
        for d in instances.values():
            d.kill()
        broker.kill()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ------------------------------------------------------------------------------------------ WebRTC peers
@dataclass
class Publisher:
    """One WHIP client: its peer connection and what the POST answered."""

    pc: RTCPeerConnection
    status: int
    headers: CIMultiDict[str]
    body: str
    connected: asyncio.Event

    url: str = ""

    @property
    def location(self) -> str:
        """The session URL, absolute (an instance answers with a path, the router with the instance's URL)."""
        return str(URL(self.url).join(URL(self.headers["Location"])))


async def publish(http: aiohttp.ClientSession, url: str, connect: bool = True,
                  headers: dict[str, str] | None = None) -> Publisher:
    """POST an offer to `url`; on 201 apply the answer and (by default) wait until the peer is connected."""
    restrict_host_addresses((LOOPBACK,))
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(PatternTrack(160, 120, 15.0), direction="sendonly")
    connected = asyncio.Event()

    @pc.on("connectionstatechange")
    async def _state() -> None:
        if pc.connectionState == "connected":
            connected.set()

    await pc.setLocalDescription(await pc.createOffer())
    async with http.post(url, data=pc.localDescription.sdp,
                         headers={"Content-Type": "application/sdp", **(headers if headers is not None else AUTH)},
                         allow_redirects=False) as resp:
        pub = Publisher(pc, resp.status, CIMultiDict(resp.headers), await resp.text(), connected, url)
    if pub.status == 201:
        await pc.setRemoteDescription(RTCSessionDescription(pub.body, "answer"))
        if connect:
            await asyncio.wait_for(connected.wait(), 20)
    else:
        await pc.close()
    return pub


def end_of_candidates(offer: str) -> str:
    """A trickle PATCH body (RFC 8840) saying the client has no more candidates, with the offer's credentials."""
    lines = offer.splitlines()
    pick = {k: next(ln for ln in lines if ln.startswith(k)) for k in ("a=ice-ufrag:", "a=ice-pwd:", "a=mid:")}
    return (f"{pick['a=ice-ufrag:']}\r\n{pick['a=ice-pwd:']}\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\n"
            f"{pick['a=mid:']}\r\na=end-of-candidates\r\n")


async def end(http: aiohttp.ClientSession, pubs: list[Publisher]) -> None:
    """DELETE every session at its Location (the instance) and close the peers."""
    for pub in pubs:
        if pub.status == 201:
            async with http.delete(pub.location, headers=AUTH) as resp:
                assert resp.status == 200, (pub.location, resp.status, await resp.text())
        await pub.pc.close()


async def offer_sdp(recv: bool = False) -> str:
    """A real aiortc offer (sendonly for WHIP, recvonly for WHEP)."""
    restrict_host_addresses((LOOPBACK,))
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if recv:
        pc.addTransceiver("video", direction="recvonly")
    else:
        pc.addTransceiver(PatternTrack(160, 120, 15.0), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def settle(fleet: Fleet) -> None:
    """Wait until every live instance is empty and eligible at the proxy router (between tests)."""
    fleet.router.wait(all_eligible(set(fleet.live())), what="an empty fleet")


# ------------------------------------------------------------------------------------------ tests
def test_statuses_announce_url_endpoint_capacity_and_validate(fleet: Fleet) -> None:
    async def scenario() -> dict[str, Any]:
        async with aiomqtt.Client(LOOPBACK, fleet.broker.port) as client:
            await client.subscribe(f"{fleet.root}/i0/status", qos=1)
            async for msg in client.messages:
                return json.loads(msg.payload)
        raise AssertionError("no status")

    status = run(scenario())
    STATUS.validate(status)
    d = fleet.instances["i0"]
    assert status["url"] == d.base and status["zmq_endpoint"] == d.zmq_endpoint
    assert status["ready"] is True and status["draining"] is False
    cap = status["capacity"]
    assert cap["max_streams"] == 1 and cap["streams"] == 0 and cap["headroom_bytes"] >= cap["stream_bytes"] > 0


def test_four_clients_three_instances_then_503_patch_delete_whep_and_subscribe_via(fleet: Fleet) -> None:
    settle(fleet)

    async def scenario() -> tuple[list[Publisher], dict[str, Any]]:
        async with aiohttp.ClientSession() as http:
            pubs = await asyncio.gather(*(publish(http, f"{fleet.router.base}/whip") for _ in range(4)))
            placed = [p for p in pubs if p.status == 201]
            refused = [p for p in pubs if p.status != 201]
            try:
                assert len(placed) == 3 and len(refused) == 1, [(p.status, p.body[:200]) for p in pubs]
                full = refused[0]
                assert full.status == 503 and full.headers.get("Retry-After") == "5"
                assert full.headers["Content-Type"].startswith("application/problem+json")
                assert json.loads(full.body)["error"] == "at-capacity"
                # three different instances, and each Location is the instance's own absolute session URL
                owners = {fleet.name_of(p.location) for p in placed}
                assert owners == set(fleet.instances), [p.location for p in placed]
                for p in placed:
                    assert p.headers["Streamd-Instance"] == fleet.name_of(p.location)
                    assert p.location.split("/whip/")[0] == fleet.instances[fleet.name_of(p.location)].base

                # PATCH goes straight to the owning instance (the router holds no sessions)
                for p in placed:
                    frag = end_of_candidates(p.pc.localDescription.sdp)
                    headers = {**AUTH, "Content-Type": "application/trickle-ice-sdpfrag",
                               "If-Match": p.headers["ETag"]}
                    async with http.patch(p.location, data=frag, headers=headers) as r:
                        assert r.status == 204, await r.text()
                session = placed[0].location.rsplit("/", 1)[1]
                async with http.patch(f"{fleet.router.base}/whip/{session}", data=frag, headers={
                        **AUTH, "Content-Type": "application/trickle-ice-sdpfrag", "If-Match": "x"}) as r:
                    assert r.status == 404 and (await r.json())["error"] == "session-not-found"

                # the router's view: every stream with its instance and ZeroMQ endpoint
                streams = {p.headers["Streamd-Stream-Id"]: fleet.name_of(p.location) for p in placed}
                status = await asyncio.to_thread(fleet.router.wait, lambda f: set(f["streams"]) == set(streams),
                                                 15.0, "three streams in the fleet")
                for sid, owner in streams.items():
                    entry = status["streams"][sid]
                    assert entry["instance"] == owner
                    assert entry["zmq_endpoint"] == fleet.instances[owner].zmq_endpoint
                    assert await asyncio.to_thread(endpoint_via, fleet.router.base, sid, TOKEN) == entry["zmq_endpoint"]

                # a WHEP viewer through the router lands on the stream's instance and sees generated video
                sid, owner = next(iter(streams.items()))
                restrict_host_addresses((LOOPBACK,))
                viewer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
                viewer.addTransceiver("video", direction="recvonly")
                got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

                @viewer.on("track")
                def _track(track: Any) -> None:
                    async def first() -> None:
                        frame = await track.recv()
                        if not got.done():
                            got.set_result(frame)
                    asyncio.ensure_future(first())

                await viewer.setLocalDescription(await viewer.createOffer())
                async with http.post(f"{fleet.router.base}/whep/{sid}", data=viewer.localDescription.sdp,
                                     headers={**AUTH, "Content-Type": "application/sdp"}) as r:
                    answer = await r.text()
                    assert r.status == 201, answer
                    whep_location = r.headers["Location"]
                assert whep_location.startswith(fleet.instances[owner].base + "/whep/session/")
                await viewer.setRemoteDescription(RTCSessionDescription(answer, "answer"))
                frame = await asyncio.wait_for(got, 60)
                assert frame.width > 0 and frame.height > 0
                async with http.delete(whep_location, headers=AUTH) as r:
                    assert r.status == 200
                await viewer.close()
                return placed, status
            finally:
                await end(http, placed)

    placed, status = run(scenario())
    abridged = {"router": status["router"], "instances": {n: {k: v for k, v in i.items() if k in (
        "url", "zmq_endpoint", "eligible", "capacity", "streams")} for n, i in status["instances"].items()},
        "streams": status["streams"]}
    print("\nfleet status through the router:\n" + json.dumps(abridged, indent=1))


def test_bad_input_gets_the_same_status_and_error_at_the_router_as_at_an_instance(fleet: Fleet) -> None:
    settle(fleet)
    whip_offer, whep_offer = run(offer_sdp()), run(offer_sdp(recv=True))
    sdp = {"Content-Type": "application/sdp"}
    cases: list[tuple[str, str, str, dict[str, str], bytes]] = [
        ("no token", "POST", "/whip", sdp, whip_offer.encode()),
        ("wrong token", "POST", "/whip", {**sdp, "Authorization": "Bearer wrong-token-xyz"}, whip_offer.encode()),
        ("wrong type", "POST", "/whip", {**AUTH, "Content-Type": "text/plain"}, b"x"),
        ("too large", "POST", "/whip", {**AUTH, **sdp}, b"v=0\r\n" + b"a" * 70000),
        ("not utf-8", "POST", "/whip", {**AUTH, **sdp}, b"\xff\xfe"),
        ("not sdp", "POST", "/whip", {**AUTH, **sdp}, b"hello"),
        ("bad stream id", "POST", "/whip?stream=no%20way", {**AUTH, **sdp}, whip_offer.encode()),
        ("method", "GET", "/whip", AUTH, b""),
        ("no such path", "GET", "/nope", AUTH, b""),
        ("unknown session", "DELETE", "/whip/abcdef", AUTH, b""),
        ("unknown stream", "POST", "/whep/nostream", {**AUTH, **sdp}, whep_offer.encode()),
        ("whep offer to whip", "POST", "/whip", {**AUTH, **sdp}, whep_offer.encode()),
    ]

    async def answers(base: str) -> list[tuple[int, str, str | None, str | None]]:
        out = []
        async with aiohttp.ClientSession() as http:
            for _, method, path, headers, body in cases:
                async with http.request(method, base + path, headers=headers, data=body or None) as r:
                    text = await r.text()
                    assert r.headers["Content-Type"].startswith("application/problem+json"), (path, text)
                    error = json.loads(text)
                    assert error["status"] == r.status
                    out.append((r.status, error["error"], r.headers.get("WWW-Authenticate"),
                                r.headers.get("Allow") or r.headers.get("Accept-Post")))
        return out

    at_router, at_instance = run(answers(fleet.router.base)), run(answers(fleet.instances["i0"].base))
    for (case, *_), r, i in zip(cases, at_router, at_instance):
        assert r == i, (case, r, i)
    print("\nbad input, router == instance: " + ", ".join(f"{c[0]}: {r[0]} {r[1]}" for c, r in zip(cases, at_router)))


def test_drain_moves_new_sessions_elsewhere_while_the_drained_stream_goes_on(fleet: Fleet) -> None:
    settle(fleet)

    async def scenario() -> None:
        async with aiohttp.ClientSession() as http:
            first = await publish(http, f"{fleet.router.base}/whip")
            pubs = [first]
            try:
                assert first.status == 201, first.body
                drained = fleet.name_of(first.location)
                d = fleet.instances[drained]
                # drain over MQTT (the shared command handlers), reply on the reply topic
                async with aiomqtt.Client(LOOPBACK, fleet.broker.port) as client:
                    await client.subscribe(f"{fleet.root}/{drained}/reply/drain", qos=1)
                    await client.publish(f"{fleet.root}/{drained}/cmd/drain", json.dumps({"draining": True}), qos=1)
                    async for msg in client.messages:
                        reply = json.loads(msg.payload)
                        break
                assert reply == {"v": 1, "ok": True, "verb": "drain", "streams": {}, "draining": True}
                await asyncio.to_thread(fleet.router.wait, lambda f: f["instances"][drained]["draining"], 10.0,
                                        "the drained instance announced")
                chunks_before = (await asyncio.to_thread(_instance_status, d))["stream_stats"]
                # new sessions land on the two others; a third finds no room
                others = [await publish(http, f"{fleet.router.base}/whip") for _ in range(3)]
                pubs += others
                assert [p.status for p in others] == [201, 201, 503], [p.body[:200] for p in others]
                assert {fleet.name_of(p.location) for p in others[:2]} == set(fleet.instances) - {drained}
                # the drained instance refuses a direct POST, and its own stream goes on
                direct = await publish(http, d.whip)
                assert direct.status == 503 and direct.headers["Retry-After"] == "5"
                assert json.loads(direct.body)["error"] == "draining"
                sid = first.headers["Streamd-Stream-Id"]
                deadline = time.monotonic() + 60
                while True:
                    stats = (await asyncio.to_thread(_instance_status, d))["stream_stats"]
                    if stats[sid]["chunks"] > chunks_before[sid]["chunks"]:
                        break
                    assert time.monotonic() < deadline, "the drained instance's stream stopped generating"
                    await asyncio.sleep(0.5)
                assert first.pc.connectionState == "connected"
                # resume over HTTP (the same handlers)
                async with http.post(f"{d.base}/api/cmd/drain", json={"draining": False}, headers=AUTH) as r:
                    assert r.status == 200 and (await r.json())["draining"] is False
            finally:
                await end(http, pubs)

    run(scenario())
    # SIGUSR1 drains too
    d = fleet.instances["i0"]
    d.proc.send_signal(signal.SIGUSR1)
    fleet.router.wait(lambda f: f["instances"]["i0"]["draining"], 10.0, "SIGUSR1 drained")
    status, body = _post_json(f"{d.base}/api/cmd/drain", {"draining": False})
    assert status == 200 and body["draining"] is False
    settle(fleet)


def _instance_status(d: Daemon) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(f"{d.base}/api/status", headers=AUTH), timeout=5) as resp:
        return json.loads(resp.read())


def _post_json(url: str, body: Any) -> tuple[int, Any]:
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={**AUTH, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def test_redirect_mode_307_to_the_instance_and_a_client_that_follows_it(fleet: Fleet) -> None:
    settle(fleet)
    fleet.redirector.wait(all_eligible(set(fleet.live())), what="the redirector's fleet empty")

    async def scenario() -> None:
        async with aiohttp.ClientSession() as http:
            offer = await offer_sdp()
            headers = {**AUTH, "Content-Type": "application/sdp"}
            async with http.post(f"{fleet.redirector.base}/whip", data=offer, headers=headers,
                                 allow_redirects=False) as r:
                assert r.status == 307
                target = r.headers["Location"]
            owner = fleet.name_of(target)
            assert target == fleet.instances[owner].whip
            # aiohttp follows a 307 with the body but, cross-origin, without Authorization (as browsers do):
            # the instance answers 401. This is why proxy is the default mode.
            async with http.post(f"{fleet.redirector.base}/whip", data=offer, headers=headers) as r:
                assert r.status == 401 and str(r.url).startswith(fleet.instances[owner].base)
            # a WHIP client that follows 307 keeping its token (as RFC 9725 section 4.5 lets it) gets a session
            url = f"{fleet.redirector.base}/whip"
            for _ in range(3):
                pub = await publish(http, url)
                if pub.status != 307:
                    break
                url = pub.headers["Location"]
            try:
                assert pub.status == 201, pub.body
                assert pub.location.startswith(fleet.instances[owner].base + "/whip/")
            finally:
                await end(http, [pub])

    run(scenario())


def test_router_added_latency_on_whip_post(fleet: Fleet) -> None:
    """Median of 50 POST+DELETE through the router against 50 straight to an instance, interleaved (printed,
    not asserted: a measurement, not a test of speed)."""
    settle(fleet)
    direct_instance = fleet.instances["i0"]

    async def scenario() -> tuple[list[float], list[float]]:
        offer = await offer_sdp()
        headers = {**AUTH, "Content-Type": "application/sdp"}
        through, direct = [], []
        async with aiohttp.ClientSession() as http:
            for _ in range(50):
                for url, samples in ((f"{fleet.router.base}/whip", through), (direct_instance.whip, direct)):
                    started = time.perf_counter()
                    async with http.post(url, data=offer, headers=headers) as r:
                        await r.read()
                        assert r.status == 201, (url, r.status, await r.text())
                        location = str(r.url.join(aiohttp.client.URL(r.headers["Location"])))
                    post = time.perf_counter() - started
                    async with http.delete(location, headers=AUTH) as r:
                        assert r.status == 200
                    samples.append(post)
                    # the instance frees the slot at once; let the router see the status that says so
                    await asyncio.sleep(0.05)
        return through, direct

    through, direct = run(scenario())
    t, d = statistics.median(through) * 1000, statistics.median(direct) * 1000
    print(f"\nWHIP POST, median of 50: through the router {t:.1f} ms, direct {d:.1f} ms, added {t - d:.1f} ms")


def test_a_hung_instance_drops_out_by_the_keep_alive_bound_and_returns(fleet: Fleet) -> None:
    """SIGSTOP: the connection stays open, so no will; the missing keep-alive drops it after MAX_AGE_S."""
    settle(fleet)
    hung = fleet.instances["i0"]
    hung.proc.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        fleet.router.wait(lambda f: "i0" not in f["instances"] or not f["instances"]["i0"]["eligible"],
                          MAX_AGE_S + 5, "the hung instance dropped")
        gone_after = time.monotonic() - stopped

        async def place() -> Publisher:
            async with aiohttp.ClientSession() as http:
                pub = await publish(http, f"{fleet.router.base}/whip", connect=False)
                await end(http, [pub])
                return pub

        pub = run(place())
        assert pub.status == 201 and fleet.name_of(pub.location) != "i0"
    finally:
        hung.proc.send_signal(signal.SIGCONT)
    assert MAX_AGE_S - 1.5 < gone_after < MAX_AGE_S + 2
    settle(fleet)  # it republishes and is chosen again
    print(f"\nSIGSTOP to no longer chosen: {gone_after:.1f} s (status age bound {MAX_AGE_S:g} s, keep-alive "
          f"{STATUS_INTERVAL_S:g} s)")


def test_sigkill_an_instance_and_the_router_stops_choosing_it(fleet: Fleet) -> None:
    settle(fleet)

    async def scenario() -> float:
        async with aiohttp.ClientSession() as http:
            first = await publish(http, f"{fleet.router.base}/whip")  # takes one instance
            pubs = [first]
            try:
                assert first.status == 201, first.body
                busy = fleet.name_of(first.location)
                # the victim is one the router would choose: free, and with the most headroom of the free ones
                fleet_now = await asyncio.to_thread(fleet.router.fleet)
                free = sorted((n for n in fleet.instances if n != busy),
                              key=lambda n: -fleet_now["instances"][n]["capacity"]["headroom_bytes"])
                victim, survivor = free
                killed = time.monotonic()
                fleet.instances[victim].proc.kill()
                await asyncio.to_thread(fleet.router.wait, lambda f: victim not in f["instances"]
                                        or not f["instances"][victim]["eligible"], MAX_AGE_S + 5, "the victim dropped")
                gone_after = time.monotonic() - killed
                second = await publish(http, f"{fleet.router.base}/whip")
                pubs.append(second)
                assert second.status == 201 and fleet.name_of(second.location) == survivor, second.body
                third = await publish(http, f"{fleet.router.base}/whip")
                pubs.append(third)
                assert third.status == 503, third.body  # the busy one and the survivor full, the victim gone
                return gone_after, victim
            finally:
                await end(http, pubs)

    gone_after, victim = run(scenario())
    fleet.instances[victim].proc.wait()
    assert gone_after < MAX_AGE_S + 1
    print(f"\nSIGKILL to no longer chosen: {gone_after * 1000:.0f} ms (bound: {MAX_AGE_S:g} s status age; the "
          "broker published the last will when the connection dropped)")
