"""The MQTT control edge (protocols/mqtt-control.md): commands in, replies, retained status and events out.

`MqttControl.run()` keeps one connection to the broker for the daemon's lifetime: it connects with MQTT 5
(falling back to 3.1.1 when the broker refuses 5), registers a retained "offline" last will on
`<prefix>/status`, subscribes to `<prefix>/cmd/+`, publishes a retained status, and then executes commands one
at a time, in arrival order, through `streamd.control.handle_command`. When the broker goes away it reconnects
with jittered exponential backoff and does all of that again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import socket
import ssl
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from .. import __version__
from ..control import COMMAND_VERSION, Controller, ReplyCache, handle_command
from ..lograte import Occurrences, RateLimitFilter

__all__ = ["EVENT_QUEUE_SIZE", "STATES", "MqttControl"]

log = logging.getLogger(__name__)

STATES: tuple[str, ...] = ("starting", "online", "stopping")  # what set_state accepts; "offline" is the will's
EVENT_QUEUE_SIZE = 256  # events waiting to be published (e.g. while disconnected); the oldest are dropped
INCOMING_QUEUE_SIZE = 128  # received commands waiting to be executed; the client library drops beyond it
MAX_PACKET_BYTES = 1 << 20  # MQTT 5 Maximum Packet Size we announce: the broker drops larger commands for us
PUBLISH_TIMEOUT_S = 10.0  # a QoS 1 publish (or connect) not acknowledged in this time counts as a lost connection
OFFLINE_TIMEOUT_S = 2.0  # how long close() waits for the broker to take the final "offline" status
ANNOUNCED = ("url", "zmq_endpoint", "ready", "draining", "capacity")  # status members taken from the controller
V5_REFUSED = (1, 132)  # CONNACK codes of a broker that does not speak MQTT 5 (3.1.1 code 1; MQTT 5 code 0x84)


def _json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


class MqttControl:
    """The daemon's MQTT client: executes control commands and publishes status and events.

    `prefix` is the topic prefix (default in the daemon: `streamd/<host name>`); topics are `<prefix>/status`,
    `<prefix>/cmd/<verb>`, `<prefix>/reply/<verb>` and `<prefix>/events`. `replies` de-duplicates reset ids;
    pass the daemon's shared cache when other surfaces execute commands too. Every method is meant to be called
    on the event loop `run()` runs on.
    """

    def __init__(
        self,
        controller: Controller,
        host: str,
        port: int,
        prefix: str,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        ca_file: Path | None = None,
        status_interval_s: float = 10.0,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        *,
        keepalive_s: int = 30,
        replies: ReplyCache | None = None,
    ) -> None:
        prefix = prefix.rstrip("/")
        if not prefix or any(c in prefix for c in "+#\0") or prefix.startswith("$"):
            raise ValueError(f"MQTT prefix must be a topic without wildcards or a leading '$', got {prefix!r}")
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise ValueError("reconnect delays must satisfy 0 < reconnect_min_s <= reconnect_max_s")
        if status_interval_s <= 0 or keepalive_s < 1:
            raise ValueError("status_interval_s must be positive and keepalive_s at least 1")
        if ca_file is not None and not tls:
            raise ValueError("ca_file is only used with tls=True")
        self._controller = controller
        self.host = host
        self.port = port
        self.prefix = prefix
        self._username = username
        self._password = password
        # Built now so that a bad CA file fails at start, not at the first connection.
        self._tls_context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None) if tls else None
        self.status_interval_s = status_interval_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.keepalive_s = keepalive_s
        self._replies = replies if replies is not None else ReplyCache()
        self._protocol = aiomqtt.ProtocolVersion.V5  # becomes V311 for good once a broker refuses MQTT 5
        self._state = "online"
        self._status_due = asyncio.Event()
        self._events: deque[dict[str, Any]] = deque(maxlen=EVENT_QUEUE_SIZE)
        self._events_ready = asyncio.Event()
        self._rng = random.Random()
        self._run_task: asyncio.Task[None] | None = None
        self._closing = False
        self.connected = False
        self.connections = 0  # successful connections so far (a reconnect counts again)
        self.events_dropped = 0  # events discarded because the queue was full
        self.commands_handled = 0
        # Lines a broker client can cause (a refused or retained command, a bad response topic, and the library's
        # own "Message queue is full", once per discarded command): the 1st, 2nd, 4th... of each kind only.
        self._seen = Occurrences()
        self._client_log = log.getChild("client")
        if not any(isinstance(f, RateLimitFilter) for f in self._client_log.filters):
            self._client_log.addFilter(RateLimitFilter())
        if password is not None and not tls and host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("MQTT password is sent in clear text to %s: enable TLS", host)

    # ------------------------------------------------------------------------------------------ topics
    @property
    def status_topic(self) -> str:
        """`<prefix>/status` (retained)."""
        return f"{self.prefix}/status"

    @property
    def events_topic(self) -> str:
        """`<prefix>/events`."""
        return f"{self.prefix}/events"

    @property
    def protocol(self) -> str:
        """The MQTT version used for the next (or current) connection: "5" or "3.1.1"."""
        return "5" if self._protocol == aiomqtt.ProtocolVersion.V5 else "3.1.1"

    def reply_topic(self, verb: str) -> str:
        """`<prefix>/reply/<verb>`, where replies go when a command names no response topic."""
        return f"{self.prefix}/reply/{verb}"

    # ------------------------------------------------------------------------------------------ daemon API
    def set_state(self, state: str) -> None:
        """Report the daemon's lifecycle state ("starting", "online" or "stopping") in the status."""
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, got {state!r}")
        self._state = state
        self.notify_status()

    def notify_status(self) -> None:
        """Republish the status soon (the streams or the model changed). Bursts coalesce into one publication."""
        self._status_due.set()

    def publish_event(self, event: Mapping[str, Any]) -> None:
        """Queue an event for `<prefix>/events` (QoS 0, not retained); never blocks.

        `event` is an event body as on the frames socket (zmq-frames.md §7.2); `v` and `time_ns` are filled in
        when missing. At most EVENT_QUEUE_SIZE (256) events wait, e.g. while disconnected; beyond that the
        oldest is dropped and counted in `events_dropped`.
        """
        if not isinstance(event.get("event"), str):
            raise ValueError("an event needs a string 'event' member")
        body = {"v": COMMAND_VERSION, **event}
        body.setdefault("time_ns", time.time_ns())
        if len(self._events) == self._events.maxlen:
            self.events_dropped += 1
        self._events.append(body)
        self._events_ready.set()

    async def close(self) -> None:
        """Publish the retained "offline" status, disconnect, and end `run()` (which then ends cancelled).

        A clean disconnect does not trigger the last will, so the offline status is published explicitly, by
        `run()` as it unwinds (also when `run()` is cancelled directly). A broker that has stopped answering
        costs at most OFFLINE_TIMEOUT_S (2 s) for the status and PUBLISH_TIMEOUT_S (10 s) for the disconnect.
        """
        self._closing = True
        task = self._run_task
        if task is None or task.done() or task is asyncio.current_task():
            return
        task.cancel()
        await asyncio.wait({task}, timeout=OFFLINE_TIMEOUT_S + PUBLISH_TIMEOUT_S)

    # ------------------------------------------------------------------------------------------ running
    async def run(self) -> None:
        """Stay connected and serve commands until cancelled (or closed); reconnect with backoff on loss."""
        if self._closing:
            return
        if self._run_task is not None and not self._run_task.done():
            raise RuntimeError("MqttControl.run() is already running")
        self._run_task = asyncio.current_task()
        failures = 0
        while True:
            try:
                await self._session()
                raise aiomqtt.MqttError("session ended")  # only cancellation ends a session without error
            except MqttConnectError as exc:
                if self._protocol == aiomqtt.ProtocolVersion.V5 and getattr(exc.rc, "value", exc.rc) in V5_REFUSED:
                    log.warning("MQTT broker %s:%d refuses MQTT 5; using 3.1.1 from now on", self.host, self.port)
                    self._protocol = aiomqtt.ProtocolVersion.V311
                    continue
                log.warning("MQTT broker %s:%d refused the connection: %s", self.host, self.port, exc)
            except aiomqtt.MqttError as exc:
                log.warning("MQTT connection to %s:%d lost or failed: %s", self.host, self.port, exc)
            except Exception:  # a bug must not end the control plane for good; backoff keeps it from spinning
                log.exception("MQTT session failed")
            finally:
                if self.connected:
                    failures = 0  # the last connection worked: start over from the shortest delay
                self.connected = False
            delay = min(self.reconnect_max_s, self.reconnect_min_s * 2.0**failures)
            failures = min(failures + 1, 32)  # bound the exponent; the delay is capped anyway
            # "equal jitter": half fixed, half random, so that daemons dropped together do not return together
            await asyncio.sleep(max(self.reconnect_min_s, self._rng.uniform(delay / 2, delay)))

    def _client(self) -> aiomqtt.Client:
        v5 = self._protocol == aiomqtt.ProtocolVersion.V5
        will = aiomqtt.Will(self.status_topic, self._offline_payload("connection-lost"), qos=1, retain=True)
        connect_props = None
        if v5:
            connect_props = Properties(PacketTypes.CONNECT)
            connect_props.SessionExpiryInterval = 0  # no session state survives a disconnect (no stale commands)
            connect_props.MaximumPacketSize = MAX_PACKET_BYTES
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self._username,
            password=self._password,
            logger=self._client_log,
            # random per connection: a client id shared by two daemons would make them kick each other off
            identifier="streamd" + secrets.token_hex(8),
            protocol=self._protocol,
            will=will,
            clean_session=None if v5 else True,
            # paho refuses any clean_start but its "first only" default for 3.1.1, where clean_session rules
            clean_start=True if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            timeout=PUBLISH_TIMEOUT_S,
            keepalive=self.keepalive_s,
            max_queued_incoming_messages=INCOMING_QUEUE_SIZE,
            properties=connect_props,
            tls_context=self._tls_context,
            # Commands and replies are small packets written back to back (PUBACK, then the reply); with
            # Nagle's algorithm the reply waits for the peer's delayed ACK, about 40 ms on Linux.
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )

    async def _session(self) -> None:
        client = self._client()
        async with client:
            try:
                await self._subscribe(client)
                self.connected = True
                self.connections += 1
                log.info("MQTT connected to %s:%d (MQTT %s), prefix %s", self.host, self.port, self.protocol,
                         self.prefix)
                await self._publish_status(client)
                await self._serve(client)
            except asyncio.CancelledError:
                await self._publish_offline(client)
                raise

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        topic = f"{self.prefix}/cmd/+"
        if self._protocol == aiomqtt.ProtocolVersion.V5:
            # Retained commands would run again at every (re)connection; MQTT 5 lets us not receive them at all.
            options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
            granted = await client.subscribe(topic, qos=0, options=options)
        else:
            granted = await client.subscribe(topic, qos=1)
        codes = [getattr(code, "value", code) for code in granted]
        if not codes or codes[0] >= 0x80:
            raise aiomqtt.MqttError(f"the broker refused the subscription to {topic} (code {codes})")

    async def _serve(self, client: aiomqtt.Client) -> None:
        loops = [
            asyncio.create_task(self._command_loop(client), name="mqtt-commands"),
            asyncio.create_task(self._status_loop(client), name="mqtt-status"),
            asyncio.create_task(self._event_loop(client), name="mqtt-events"),
        ]
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raises the failure (usually MqttError: the connection is gone)
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    # ------------------------------------------------------------------------------------------ commands
    async def _command_loop(self, client: aiomqtt.Client) -> None:
        cmd_prefix = f"{self.prefix}/cmd/"
        # One at a time, in arrival order: a later command must not overtake an earlier one (prompt, then reset).
        async for message in client.messages:
            topic = message.topic.value
            if not topic.startswith(cmd_prefix):
                continue
            if not message.payload:
                # a zero-length message is how MQTT deletes a retained message: not a command, no reply (spec §4.2)
                continue
            if message.retain:
                # 3.1.1 has no way to refuse retained messages on subscribe: skip them here (spec §4).
                if (n := self._seen.due("retained")) is not None:
                    log.warning("ignoring a retained command on %s; clear it with an empty retained message "
                                "(%d so far)", topic[:200], n)
                continue
            await self._handle(client, topic[len(cmd_prefix):], message)

    async def _handle(self, client: aiomqtt.Client, verb: str, message: aiomqtt.Message) -> None:
        payload = message.payload
        if not isinstance(payload, (bytes, bytearray)):
            payload = b"" if payload is None else str(payload).encode()
        reply = await handle_command(self._controller, verb, payload, replies=self._replies)
        self.commands_handled += 1
        topic = self.reply_topic(verb)
        props: Properties | None = None
        if self._protocol == aiomqtt.ProtocolVersion.V5:
            props = Properties(PacketTypes.PUBLISH)
            props.PayloadFormatIndicator = 1  # UTF-8
            props.ContentType = "application/json"
            incoming = message.properties
            response_topic = getattr(incoming, "ResponseTopic", None)
            correlation = getattr(incoming, "CorrelationData", None)
            if response_topic is not None:
                if self._response_topic_ok(response_topic):
                    topic = response_topic
                else:
                    if (n := self._seen.due("response-topic")) is not None:
                        log.warning("refusing response topic %r; replying on %s (%d so far)", response_topic[:200],
                                    topic, n)
            if correlation is not None:
                props.CorrelationData = correlation
        await client.publish(topic, _json(reply), qos=1, retain=False, properties=props)
        if not reply["ok"]:
            if (n := self._seen.due(("refused", reply.get("error")))) is not None:
                log.info("MQTT command %s refused: %s: %s (%d so far)", verb[:64], reply.get("error"),
                         str(reply.get("detail"))[:200], n)

    def _response_topic_ok(self, topic: str) -> bool:
        """Whether a command's response topic may be published to.

        Wildcards, '$' topics and over-long names are not valid publish topics (the broker would end our
        connection). Topics under our own prefix other than `<prefix>/reply/...` are refused so that a reply
        cannot be passed off as a command, status or event.
        """
        if not topic or "+" in topic or "#" in topic or "\0" in topic or topic.startswith("$"):
            return False
        if len(topic.encode("utf-8")) > 65535:
            return False
        own = self.prefix + "/"
        return not topic.startswith(own) or topic.startswith(own + "reply/")

    # ------------------------------------------------------------------------------------------ status
    def _status(self, state: str) -> dict[str, Any]:
        try:
            info = self._controller.status()
        except Exception:  # the status must still go out; the failure is the daemon's bug, logged
            log.exception("controller.status() failed")
            info = {}
        streams = info.get("streams", [])
        body: dict[str, Any] = {
            "v": COMMAND_VERSION,
            "state": state,
            "streams": sorted(streams) if state != "offline" else [],
            "model": info.get("model"),
            "version": str(info.get("version") or __version__),
            "time_ns": time.time_ns(),
            # listeners reachable off loopback without authentication by explicit opt-out
            "unauthenticated": list(info.get("unauthenticated", [])),
        }
        # What routers place sessions by (section 4.1, "Fleet members"); the last will says offline and not ready.
        for key in ANNOUNCED:
            if key in info:
                body[key] = info[key]
        if state != "online":
            body["ready"] = False
        return body

    def _offline_payload(self, reason: str) -> bytes:
        body = self._status("offline")
        body["reason"] = reason
        return _json(body)

    async def _publish_status(self, client: aiomqtt.Client) -> None:
        await client.publish(self.status_topic, _json(self._status(self._state)), qos=1, retain=True)

    async def _publish_offline(self, client: aiomqtt.Client) -> None:
        try:
            await client.publish(self.status_topic, self._offline_payload("shutdown"), qos=1, retain=True,
                                 timeout=OFFLINE_TIMEOUT_S)
        except aiomqtt.MqttError as exc:  # the broker is gone: its copy of the will says offline anyway
            log.warning("could not publish the offline status: %s", exc)

    async def _status_loop(self, client: aiomqtt.Client) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):  # the interval passed: republish anyway
                await asyncio.wait_for(self._status_due.wait(), timeout=self.status_interval_s)
            # cleared before publishing: a notify during the publication schedules one more
            self._status_due.clear()
            await self._publish_status(client)

    # ------------------------------------------------------------------------------------------ events
    async def _event_loop(self, client: aiomqtt.Client) -> None:
        while True:
            await self._events_ready.wait()
            self._events_ready.clear()
            while self._events:
                event = self._events[0]
                try:
                    payload = _json(event)
                except (TypeError, ValueError) as exc:
                    log.error("dropping an event that is not JSON-encodable: %s", exc)
                    self._events.popleft()
                    continue
                await client.publish(self.events_topic, payload, qos=0, retain=False)
                # removed only once handed over, so an event survives a lost connection (unless crowded out)
                if self._events and self._events[0] is event:
                    self._events.popleft()
