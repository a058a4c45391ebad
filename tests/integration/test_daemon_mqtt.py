"""`streamd serve --mqtt`: the daemon steered over a real mosquitto while a real WHIP peer streams."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import uuid
from pathlib import Path

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from streamd.clients.send import send

from .conftest import LOOPBACK, start_daemon
from .test_mqtt import Broker, broker  # noqa: F401 - the fixture


async def next_json(client: aiomqtt.Client, topic_prefix: str, timeout: float = 15.0) -> dict:
    async def first() -> dict:
        async for msg in client.messages:
            if str(msg.topic).startswith(topic_prefix) and msg.payload:
                return json.loads(msg.payload)
        raise AssertionError("no message")

    return await asyncio.wait_for(first(), timeout)


def test_daemon_status_commands_and_last_will(tmp_path: Path, broker: Broker) -> None:  # noqa: F811
    prefix = "streamd/test-" + uuid.uuid4().hex[:6]
    d = start_daemon(tmp_path, "--mqtt", f"{LOOPBACK}:{broker.port}", "--mqtt-prefix", prefix)
    stop_sending = threading.Event()
    try:
        async def scenario() -> None:
            async with aiomqtt.Client(LOOPBACK, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
                await client.subscribe(f"{prefix}/#", qos=1)
                status = await next_json(client, f"{prefix}/status")
                while status["state"] != "online":
                    status = await next_json(client, f"{prefix}/status")
                assert status["model"] == "tiny" and status["streams"] == []

                sender = asyncio.ensure_future(send(d.whip, seconds=12, ice_addresses=(LOOPBACK,)))
                event = await next_json(client, f"{prefix}/events")
                while event["event"] != "session-started":
                    event = await next_json(client, f"{prefix}/events")
                stream = event["stream"]

                props = Properties(PacketTypes.PUBLISH)
                props.ResponseTopic = f"replies/{prefix}"
                props.CorrelationData = b"c1"
                await client.subscribe(f"replies/{prefix}", qos=1)
                started = time.perf_counter()
                await client.publish(f"{prefix}/cmd/prompt", json.dumps({"stream": stream, "prompt": "a fox"}),
                                     qos=1, properties=props)
                reply = await next_json(client, f"replies/{prefix}")
                rtt = time.perf_counter() - started
                assert reply["ok"] and reply["streams"][stream]["prompt"] == "a fox", reply
                print(f"MQTT command round trip through the daemon: {rtt * 1000:.1f} ms")

                await client.publish(f"{prefix}/cmd/params", json.dumps({"stream": stream, "guidance": -1}), qos=1)
                bad = await next_json(client, f"{prefix}/reply/params")
                assert not bad["ok"] and bad["error"] == "bad-value"
                await client.publish(f"{prefix}/cmd/reset", json.dumps({"stream": stream, "id": "r1"}), qos=1)
                assert (await next_json(client, f"{prefix}/reply/reset"))["ok"]
                await client.publish(f"{prefix}/cmd/reset", json.dumps({"stream": "nope"}), qos=1)
                assert (await next_json(client, f"{prefix}/reply/reset"))["error"] == "unknown-stream"
                # the HTTP API shares the handlers
                import aiohttp

                async with aiohttp.ClientSession() as http:
                    async with http.post(f"{d.base}/api/cmd/params", json={"stream": stream, "steps": 2}) as r:
                        assert r.status == 200 and (await r.json())["streams"][stream]["steps"] == 2
                    async with http.post(f"{d.base}/api/cmd/params", json={"stream": "nope", "steps": 2}) as r:
                        assert r.status == 404
                await client.publish(f"{prefix}/cmd/stop-stream", json.dumps({"stream": stream}), qos=1)
                assert (await next_json(client, f"{prefix}/reply/stop-stream"))["ok"]
                ended = await next_json(client, f"{prefix}/events")
                while ended["event"] != "session-ended":
                    ended = await next_json(client, f"{prefix}/events")
                assert ended["stream"] == stream
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)

                d.proc.send_signal(signal.SIGKILL)  # a crash: only the last will can say so
                d.proc.wait(10)
                status = await next_json(client, f"{prefix}/status", timeout=60)
                while status["state"] != "offline":
                    status = await next_json(client, f"{prefix}/status", timeout=60)

        asyncio.run(scenario())
    finally:
        stop_sending.set()
        if d.proc.poll() is None:
            d.proc.kill()
