"""streamd.edges.mqtt against a real mosquitto broker on loopback: status, last will, every verb round trip
(MQTT 5 response topic + correlation data, and the shared reply topics), refusals, duplicate delivery, events,
clean shutdown, a killed daemon, a broker restart and the MQTT 3.1.1 fallback.

The broker is started by the tests (nothing is installed here): `apt-get install -y mosquitto` provides it.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import pytest
from jsonschema import Draft202012Validator
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from streamd.e2e import LOOPBACK, free_port
from streamd.edges.mqtt import EVENT_QUEUE_SIZE, MqttControl

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "protocols" / "schemas"
PREFIX = "streamd/test"
T = TypeVar("T")
NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
DEFAULTS: dict[str, Any] = {
    "prompt": "", "negative_prompt": "", "guidance": None, "steps": None, "schedule": None, "seed": None,
    "policy": "auto", "chaining": "pixel", "cond_noise": 0.0,
}

pytestmark = pytest.mark.timeout(60)


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8")))


STATUS, REPLY, EVENT = validator("mqtt-status"), validator("mqtt-reply"), validator("mqtt-event")


def wait_port(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {LOOPBACK}:{port}")


# ------------------------------------------------------------------------------------------ the broker
class Broker:
    """A mosquitto process on 127.0.0.1:<port>, without persistence (a restart loses retained messages)."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.tls_port: int | None = None
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        # set_tcp_nodelay: without it mosquitto holds small packets back ~40 ms (Nagle + delayed ACK).
        # user: started as root, mosquitto would switch to its own user, which cannot read this test's files;
        # as any other user the line has no effect.
        self.config.write_text(f"per_listener_settings false\nallow_anonymous true\nset_tcp_nodelay true\n"
                               f"persistence false\nuser {getpass.getuser()}\nlistener {self.port} {LOOPBACK}\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def add_tls_listener(self, ca: Path, cert: Path, key: Path) -> None:
        """A second listener speaking TLS with `cert`; takes effect at the next start()."""
        self.tls_port = free_port()
        with self.config.open("a") as f:
            f.write(f"listener {self.tls_port} {LOOPBACK}\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n")

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=log, stderr=log)
        try:
            wait_port(self.port)
            if self.tls_port is not None:
                wait_port(self.tls_port)
        except TimeoutError:
            self.kill()
            raise RuntimeError(f"mosquitto did not start: {self.log.read_text(errors='replace')[-2000:]}") from None

    def kill(self) -> None:
        """SIGKILL, as a crash would; a restart then starts empty."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=5)
        self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    binary = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)
    if binary is None:
        pytest.fail("the MQTT tests need the mosquitto broker, which is not installed; "
                    "install it with: apt-get install -y mosquitto", pytrace=False)
    b = Broker(binary, tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.kill()


# ------------------------------------------------------------------------------------------ test doubles
class FakeController:
    """In-memory streams, as streamd.control.Controller describes."""

    def __init__(self, *stream_ids: str) -> None:
        self.params: dict[str, dict[str, Any]] = {sid: dict(DEFAULTS) for sid in stream_ids}
        self.generation: dict[str, int] = {sid: 0 for sid in stream_ids}

    def stream_ids(self) -> list[str]:
        return list(self.params)

    async def set_params(self, stream_ids: list[str], changes: dict[str, Any], skip_missing: bool) -> dict[str, Any]:
        out = {}
        for sid in stream_ids:
            if sid not in self.params and skip_missing:
                continue
            self.params[sid].update(changes)
            out[sid] = {**self.params[sid], "applies_at_chunk": 0}
        return out

    async def reset(self, stream_id: str) -> int:
        self.generation[stream_id] += 1
        return self.generation[stream_id]

    async def stop_stream(self, stream_id: str) -> None:
        del self.params[stream_id], self.generation[stream_id]

    def status(self) -> dict[str, Any]:
        return {"state": "online", "streams": list(self.params), "model": "fake-model", "version": "9.9.9"}


class Observer:
    """An independent MQTT client that records everything it receives."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[aiomqtt.Message] = []
        self._arrived = asyncio.Event()

    async def pump(self) -> None:
        async for message in self.client.messages:
            self.messages.append(message)
            self._arrived.set()

    def mark(self) -> int:
        return len(self.messages)

    async def wait_for(self, predicate: Callable[[aiomqtt.Message], bool], after: int = 0,
                       timeout: float = 5.0) -> aiomqtt.Message:
        """The first message from index `after` on that satisfies `predicate`, waiting up to `timeout`."""
        deadline = asyncio.get_running_loop().time() + timeout
        checked = after
        while True:
            for message in self.messages[checked:]:
                if predicate(message):
                    return message
            checked = len(self.messages)
            self._arrived.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                seen = [(m.topic.value, m.payload[:200]) for m in self.messages[after:]]
                raise TimeoutError(f"no matching message within {timeout} s; received since: {seen}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    async def status(self, state: str, after: int = 0, timeout: float = 5.0) -> dict[str, Any]:
        msg = await self.wait_for(lambda m: m.topic.value == f"{PREFIX}/status"
                                  and json.loads(m.payload)["state"] == state, after, timeout)
        body: dict[str, Any] = json.loads(msg.payload)
        STATUS.validate(body)
        return body

    async def request(self, verb: str, body: Any, response_topic: str | None = "me/replies",
                      correlation: bytes | None = None, timeout: float = 5.0) -> tuple[dict[str, Any], aiomqtt.Message]:
        """Send a command; return the reply (schema-checked) and its message."""
        payload = body if isinstance(body, (bytes, str)) else json.dumps(body)
        props = Properties(PacketTypes.PUBLISH)
        if response_topic is not None:
            props.ResponseTopic = response_topic
        if correlation is not None:
            props.CorrelationData = correlation
        mark = self.mark()
        await self.client.publish(f"{PREFIX}/cmd/{verb}", payload, qos=1, properties=props)
        reply_topic = response_topic or f"{PREFIX}/reply/{verb}"

        def matches(m: aiomqtt.Message) -> bool:
            return m.topic.value == reply_topic and (
                correlation is None or getattr(m.properties, "CorrelationData", None) == correlation)

        msg = await self.wait_for(matches, mark, timeout)
        reply = json.loads(msg.payload)
        REPLY.validate(reply)
        return reply, msg


@contextlib.asynccontextmanager
async def observer(port: int, *topics: str, v5: bool = True) -> AsyncIterator[Observer]:
    protocol = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
    async with aiomqtt.Client(LOOPBACK, port, protocol=protocol, socket_options=NODELAY) as client:
        obs = Observer(client)
        task = asyncio.create_task(obs.pump())
        for topic in topics:
            await client.subscribe(topic, qos=1)
        try:
            yield obs
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


@contextlib.asynccontextmanager
async def daemon(controller: Any, port: int, **kwargs: Any) -> AsyncIterator[MqttControl]:
    """An MqttControl running in this loop, connected before the block starts, closed after it."""
    kwargs.setdefault("reconnect_min_s", 0.05)
    kwargs.setdefault("reconnect_max_s", 0.5)
    ctl = MqttControl(controller, LOOPBACK, port, PREFIX, **kwargs)
    task = asyncio.create_task(ctl.run())
    try:
        await until(lambda: ctl.connected, what="the daemon to connect")
        yield ctl
    finally:
        await ctl.close()
        assert task.done()


async def until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ tests
def test_status_and_every_verb_round_trip_with_response_topic(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    async def scenario() -> list[float]:
        ctl_state = FakeController("cam1", "cam2")
        async with daemon(ctl_state, broker.port) as ctl:
            assert ctl.protocol == "5"
            async with observer(broker.port, f"{PREFIX}/status", "me/replies") as obs:
                status_msg = await obs.wait_for(lambda m: m.topic.value == f"{PREFIX}/status")
                status = json.loads(status_msg.payload)
                STATUS.validate(status)
                assert status_msg.retain  # published before we subscribed: the broker kept it
                assert status["state"] == "online" and status["streams"] == ["cam1", "cam2"]
                assert status["model"] == "fake-model" and status["version"] == "9.9.9"

                reply, msg = await obs.request("prompt", {"stream": "cam1", "prompt": "a fox", "id": "p"},
                                               correlation=b"\x00corr-1")
                assert msg.properties is not None and not msg.retain
                assert getattr(msg.properties, "CorrelationData", None) == b"\x00corr-1"
                assert getattr(msg.properties, "ContentType", None) == "application/json"
                assert reply["ok"] and reply["id"] == "p" and reply["streams"]["cam1"]["prompt"] == "a fox"

                reply, _ = await obs.request("params", {"stream": "*", "steps": 8, "policy": "self"},
                                             correlation=b"corr-2")
                assert reply["ok"] and set(reply["streams"]) == {"cam1", "cam2"}
                assert ctl_state.params["cam2"]["steps"] == 8 and ctl_state.params["cam2"]["policy"] == "self"

                reply, _ = await obs.request("reset", {"stream": "cam2"}, correlation=b"corr-3")
                assert reply["streams"] == {"cam2": {"generation": 1}}

                reply, _ = await obs.request("stop-stream", {"stream": "cam1"}, correlation=b"corr-4")
                assert reply["streams"] == {"cam1": {"stopped": True}} and ctl_state.stream_ids() == ["cam2"]

                # round-trip time: publish (QoS 1) -> daemon -> reply received
                times = []
                for i in range(30):
                    start = time.perf_counter()
                    reply, _ = await obs.request("params", {"stream": "cam2", "seed": i}, correlation=b"t%d" % i)
                    times.append(time.perf_counter() - start)
                    assert reply["ok"]
                return times

    times = run(scenario())
    ms = sorted(t * 1e3 for t in times)
    with capsys.disabled():  # reported, not asserted: timing depends on the machine
        print(f"\nMQTT command round trip over loopback mosquitto (n={len(ms)}): median "
              f"{statistics.median(ms):.2f} ms, p90 {ms[int(0.9 * len(ms))]:.2f} ms, max {ms[-1]:.2f} ms")


def test_replies_without_response_topic_and_error_replies(broker: Broker) -> None:
    async def scenario() -> None:
        fake = FakeController("cam1")
        async with daemon(fake, broker.port):
            async with observer(broker.port, f"{PREFIX}/reply/#") as obs:
                reply, msg = await obs.request("reset", {"stream": "cam1", "id": "x1"}, response_topic=None)
                assert msg.topic.value == f"{PREFIX}/reply/reset" and reply["ok"] and reply["id"] == "x1"
                cases = [
                    ("prompt", b'{"stream": "cam1", "prompt": ', "bad-json"),
                    ("prompt", b'["cam1"]', "bad-payload"),
                    ("prompt", b"null", "bad-payload"),
                    ("explode", {"stream": "cam1"}, "unknown-verb"),
                    ("reset", {"stream": "cam9"}, "unknown-stream"),
                    ("reset", {"stream": "cam 1"}, "bad-payload"),
                    ("params", {"stream": "cam1", "steps": 0}, "bad-value"),
                    ("params", {"stream": "cam1", "stepz": 4}, "unknown-parameter"),
                    ("params", {"stream": "cam1"}, "bad-payload"),
                    ("prompt", b'{"stream":"cam1","prompt":"' + b"x" * 100_000 + b'"}', "payload-too-large"),
                ]
                for verb, body, code in cases:
                    reply, msg = await obs.request(verb, body, response_topic=None)
                    assert msg.topic.value == f"{PREFIX}/reply/{verb}"
                    assert reply["ok"] is False and reply["error"] == code, (verb, body, reply)
                # an empty payload deletes retained messages in MQTT: not a command, so no reply; the next
                # reply on the topic is the next command's
                await obs.client.publish(f"{PREFIX}/cmd/reset", b"", qos=1)
                reply, _ = await obs.request("reset", {"stream": "cam1", "id": "after-empty"}, response_topic=None)
                assert reply["id"] == "after-empty"
                # a response topic inside the daemon's own namespace is refused: the reply goes to reply/<verb>
                mark = obs.mark()
                await obs.client.publish(f"{PREFIX}/cmd/reset", json.dumps({"stream": "cam1", "id": "own"}), qos=1,
                                         properties=_props(ResponseTopic=f"{PREFIX}/cmd/reset"))
                await obs.wait_for(lambda m: m.topic.value == f"{PREFIX}/reply/reset"
                                   and json.loads(m.payload).get("id") == "own", mark)
            # an MQTT 3.1.1 controller: no properties at all, replies on the shared topic
            async with observer(broker.port, f"{PREFIX}/reply/#", v5=False) as old:
                reply, msg = await old.request("prompt", {"stream": "cam1", "prompt": "p", "id": "v3"},
                                               response_topic=None)
                assert reply["ok"] and reply["id"] == "v3"
        assert fake.generation["cam1"] == 3 and fake.params["cam1"]["prompt"] == "p"

    run(scenario())


def _props(**values: Any) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(props, name, value)
    return props


def correlated(tag: bytes) -> Callable[[aiomqtt.Message], bool]:
    """A predicate: the message carries this correlation data."""
    return lambda m: getattr(m.properties, "CorrelationData", None) == tag


def test_duplicate_delivery_resets_once(broker: Broker) -> None:
    async def scenario() -> None:
        fake = FakeController("cam1")
        async with daemon(fake, broker.port):
            async with observer(broker.port, "me/replies") as obs:
                first, _ = await obs.request("reset", {"stream": "cam1", "id": "once"}, correlation=b"1")
                second, _ = await obs.request("reset", {"stream": "cam1", "id": "once"}, correlation=b"2")
                assert first["streams"] == second["streams"] == {"cam1": {"generation": 1}}
                assert second["replayed"] is True and "replayed" not in first
                # both deliveries in flight at once
                for tag in (b"a", b"b"):
                    await obs.client.publish(f"{PREFIX}/cmd/reset", json.dumps({"stream": "cam1", "id": "twice"}),
                                             qos=1, properties=_props(ResponseTopic="me/replies", CorrelationData=tag))
                for tag in (b"a", b"b"):
                    await obs.wait_for(correlated(tag))
        assert fake.generation["cam1"] == 2

    run(scenario())


def test_events_status_updates_and_retained_commands(broker: Broker) -> None:
    async def scenario() -> None:
        fake = FakeController("cam1")
        async with observer(broker.port, f"{PREFIX}/status", f"{PREFIX}/events") as obs:
            async with daemon(fake, broker.port, status_interval_s=0.2) as ctl:
                await obs.status("online")
                ctl.publish_event({"event": "stream-reset", "stream": "cam1", "generation": 3, "reason": "command"})
                msg = await obs.wait_for(lambda m: m.topic.value == f"{PREFIX}/events")
                event = json.loads(msg.payload)
                EVENT.validate(event)
                assert event["v"] == 1 and event["generation"] == 3 and isinstance(event["time_ns"], int)
                assert not msg.retain and msg.qos == 0

                fake.params["cam2"], fake.generation["cam2"] = dict(DEFAULTS), 0
                mark = obs.mark()
                ctl.notify_status()
                await obs.wait_for(lambda m: m.topic.value == f"{PREFIX}/status"
                                   and json.loads(m.payload)["streams"] == ["cam1", "cam2"], mark, timeout=1.0)
                ctl.set_state("stopping")
                await obs.status("stopping", mark)
                ctl.set_state("online")
                # the periodic republication (every 0.2 s here)
                mark = obs.mark()
                await obs.status("online", mark)
                await obs.status("online", obs.mark())

                # a retained command runs once when published (live delivery) ...
                await obs.client.publish(f"{PREFIX}/cmd/reset", json.dumps({"stream": "cam1"}), qos=1, retain=True)
                await until(lambda: fake.generation["cam1"] == 1, what="the live retained reset")
            # ... and not again when the daemon connects anew (MQTT 5 retain handling)
            async with daemon(fake, broker.port):
                await asyncio.sleep(0.3)
            assert fake.generation["cam1"] == 1
            await obs.client.publish(f"{PREFIX}/cmd/reset", b"", qos=1, retain=True)  # clear it

    run(scenario())


def test_clean_close_publishes_offline(broker: Broker) -> None:
    async def scenario() -> None:
        async with observer(broker.port, f"{PREFIX}/status") as obs:
            async with daemon(FakeController("cam1"), broker.port):
                await obs.status("online")
            body = await obs.status("offline")
            assert body["reason"] == "shutdown" and body["streams"] == []
        # retained: a newcomer learns it at once
        async with observer(broker.port, f"{PREFIX}/status") as late:
            msg = await late.wait_for(lambda m: True)
            assert msg.retain and json.loads(msg.payload)["state"] == "offline"

    run(scenario())


WILL_SCRIPT = """
import asyncio, sys
from streamd.edges.mqtt import EVENT_QUEUE_SIZE, MqttControl

class Controller:
    def stream_ids(self): return ["cam1"]
    async def set_params(self, stream_ids, changes, skip_missing): return {}
    async def reset(self, stream_id): return 1
    async def stop_stream(self, stream_id): pass
    def status(self): return {"streams": ["cam1"], "model": "m", "version": "v"}

asyncio.run(MqttControl(Controller(), "127.0.0.1", int(sys.argv[1]), sys.argv[2]).run())
"""


def test_last_will_when_the_daemon_is_killed(broker: Broker) -> None:
    async def scenario() -> None:
        async with observer(broker.port, f"{PREFIX}/status") as obs:
            proc = subprocess.Popen([sys.executable, "-c", WILL_SCRIPT, str(broker.port), PREFIX], cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            try:
                online = await obs.status("online", timeout=15.0)
                assert online["streams"] == ["cam1"]
                mark = obs.mark()
                proc.send_signal(signal.SIGKILL)  # no goodbye: only the will can say it
                proc.wait(timeout=5)
                body = await obs.status("offline", mark, timeout=5.0)
                assert body["reason"] == "connection-lost"
            finally:
                if proc.poll() is None:
                    proc.kill()
                output = proc.communicate(timeout=5)[0]
            assert b"Traceback" not in output, output.decode(errors="replace")

    run(scenario())


def test_reconnects_after_a_broker_restart(broker: Broker) -> None:
    async def scenario() -> None:
        fake = FakeController("cam1")
        async with daemon(fake, broker.port) as ctl:
            assert ctl.connections == 1
            broker.kill()
            await until(lambda: not ctl.connected, what="the daemon to notice the broker is gone")
            ctl.publish_event({"event": "drops", "stream": "cam1", "dropped": 5})  # queued while disconnected
            broker.start()  # same port, empty: no retained status, no subscriptions
            await until(lambda: ctl.connections == 2, timeout=10.0, what="the daemon to reconnect")
            # the event queued during the outage is handed to the new connection
            await until(lambda: not ctl._events, what="the queued event to go out")  # private, on purpose
            async with observer(broker.port, f"{PREFIX}/status", "me/replies", f"{PREFIX}/events") as obs:
                status = await obs.wait_for(lambda m: m.topic.value == f"{PREFIX}/status")
                assert status.retain and json.loads(status.payload)["state"] == "online"  # republished
                reply, _ = await obs.request("reset", {"stream": "cam1"}, correlation=b"after")  # re-subscribed
                assert reply["streams"] == {"cam1": {"generation": 1}}
                ctl.publish_event({"event": "drops", "stream": "cam1", "dropped": 1})
                await obs.wait_for(lambda m: m.topic.value == f"{PREFIX}/events"
                                   and json.loads(m.payload)["dropped"] == 1)

    run(scenario())


async def refuse_v5_proxy(upstream: int) -> asyncio.Server:
    """A TCP proxy to the broker that answers MQTT 5 CONNECTs like a 3.1.1-only broker (CONNACK code 1)."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            header = bytearray(await reader.readexactly(2))
            length, shift, byte = 0, 0, header[1]
            while True:  # the remaining-length varint
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
                byte = (await reader.readexactly(1))[0]
                header.append(byte)
            body = await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            writer.close()
            return
        if body[6] == 5:  # protocol level after the 2-byte length and "MQTT"
            writer.write(b"\x20\x02\x00\x01")
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(LOOPBACK, upstream)
        up_writer.write(bytes(header) + body)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return await asyncio.start_server(handle, LOOPBACK, 0)


def test_falls_back_to_mqtt_311(broker: Broker) -> None:
    async def scenario() -> None:
        proxy = await refuse_v5_proxy(broker.port)
        port = proxy.sockets[0].getsockname()[1]
        fake = FakeController("cam1")
        try:
            async with observer(broker.port, f"{PREFIX}/status", f"{PREFIX}/reply/#", "me/replies") as obs:
                # 3.1.1 cannot refuse retained messages on subscription: the daemon must skip them itself
                await obs.client.publish(f"{PREFIX}/cmd/reset", json.dumps({"stream": "cam1"}), qos=1, retain=True)
                async with daemon(fake, port) as ctl:
                    assert ctl.protocol == "3.1.1"
                    await obs.status("online")
                    await asyncio.sleep(0.2)
                    assert fake.generation["cam1"] == 0
                    await obs.client.publish(f"{PREFIX}/cmd/reset", b"", qos=1, retain=True)  # clear it
                    # the controller's MQTT 5 response topic cannot reach a 3.1.1 daemon: shared reply topic
                    mark = obs.mark()
                    await obs.client.publish(f"{PREFIX}/cmd/reset", json.dumps({"stream": "cam1", "id": "f"}),
                                             qos=1, properties=_props(ResponseTopic="me/replies"))
                    msg = await obs.wait_for(lambda m: m.topic.value.startswith(f"{PREFIX}/reply/"), mark)
                    assert msg.topic.value == f"{PREFIX}/reply/reset" and json.loads(msg.payload)["id"] == "f"
                await obs.status("offline")
        finally:
            proxy.close()
            await proxy.wait_closed()
        assert fake.generation["cam1"] == 1

    run(scenario())


def make_certificates(workdir: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the TLS test needs the openssl command; install it with: apt-get install -y openssl",
                    pytrace=False)
    ca, ca_key = workdir / "ca.crt", workdir / "ca.key"
    cert, key, csr = workdir / "server.crt", workdir / "server.key", workdir / "server.csr"
    ext = workdir / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for args in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=streamd test CA"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "1",
         "-extfile", ext],
    ):
        subprocess.run([openssl, *map(str, args)], check=True, capture_output=True, timeout=30)
    return ca, cert, key


def test_tls_with_a_private_ca(broker: Broker) -> None:
    ca, cert, key = make_certificates(broker.workdir)
    broker.kill()
    broker.add_tls_listener(ca, cert, key)
    broker.start()
    tls_port = broker.tls_port
    assert tls_port is not None

    async def scenario() -> None:
        async with observer(broker.port, f"{PREFIX}/status") as obs:
            async with daemon(FakeController("cam1"), tls_port, tls=True, ca_file=ca):
                await obs.status("online")
            # without the private CA the broker's certificate is not trusted: no connection, ever
            ctl = MqttControl(FakeController(), LOOPBACK, tls_port, PREFIX + "/untrusted", tls=True,
                              reconnect_min_s=0.05, reconnect_max_s=0.1)
            task = asyncio.create_task(ctl.run())
            await asyncio.sleep(0.5)
            assert not ctl.connected and ctl.connections == 0
            await ctl.close()
            assert task.done()

    run(scenario())


def test_event_queue_is_bounded_and_drops_the_oldest() -> None:
    ctl = MqttControl(FakeController(), LOOPBACK, 1, PREFIX)
    for i in range(EVENT_QUEUE_SIZE + 44):
        ctl.publish_event({"event": "drops", "stream": "cam1", "dropped": i})
    queued = list(ctl._events)  # private: the bound is the point of this test
    assert len(queued) == EVENT_QUEUE_SIZE == 256 and ctl.events_dropped == 44
    assert queued[0]["dropped"] == 44 and queued[-1]["dropped"] == EVENT_QUEUE_SIZE + 43
    with pytest.raises(ValueError):
        ctl.publish_event({"stream": "cam1"})
    with pytest.raises(ValueError):
        ctl.set_state("offline")


@pytest.mark.parametrize("kwargs", [{"prefix": "a/+/b"}, {"prefix": ""}, {"prefix": "$SYS/x"},
                                    {"reconnect_min_s": 0}, {"reconnect_min_s": 5, "reconnect_max_s": 1},
                                    {"status_interval_s": 0}, {"ca_file": Path("ca.crt")}])
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"prefix": PREFIX, **kwargs}
    with pytest.raises(ValueError):
        MqttControl(FakeController(), LOOPBACK, 1883, **args)


def test_unreachable_broker_is_retried_until_closed() -> None:
    async def scenario() -> None:
        ctl = MqttControl(FakeController(), LOOPBACK, free_port(), PREFIX, reconnect_min_s=0.02,
                          reconnect_max_s=0.05)
        task = asyncio.create_task(ctl.run())
        await asyncio.sleep(0.3)
        assert not task.done() and ctl.connections == 0  # still trying, not crashed
        start = time.monotonic()
        await ctl.close()
        assert task.done() and time.monotonic() - start < 1.0

    run(scenario())
