"""The daemon at real-model chunk times (tens of seconds to minutes a chunk), through its public surface only.

A slow executor stands in for the 13.6B model: `engine.step_delay_s` adds a fixed time to every denoising step,
so a 300-step chunk takes 150 s. Meanwhile a second stream's WHIP POST, every command, /readyz and SIGTERM must
answer as fast as on an idle daemon, because nothing on those paths waits for a chunk.
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection

from streamd.clients.send import PatternTrack, send
from streamd.e2e import LOOPBACK
from streamd.edges.webrtc import restrict_host_addresses

from .conftest import Daemon, Subscriber, start_daemon

restrict_host_addresses((LOOPBACK,))

LONG_CHUNK_S = 150.0


async def _status(http: aiohttp.ClientSession, daemon: Daemon) -> dict[str, Any]:
    async with http.get(f"{daemon.base}/api/status") as resp:
        assert resp.status == 200
        return await resp.json()


async def _command(http: aiohttp.ClientSession, daemon: Daemon, verb: str, body: dict[str, Any]) -> tuple[float, dict]:
    started = time.monotonic()
    async with http.post(f"{daemon.base}/api/cmd/{verb}", data=json.dumps(body),
                         headers={"Content-Type": "application/json"}) as resp:
        reply = await resp.json()
        return time.monotonic() - started, reply


async def _ready(http: aiohttp.ClientSession, daemon: Daemon) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{daemon.base}/readyz") as resp:
        return resp.status, await resp.json()


async def _wait_for(predicate, http: aiohttp.ClientSession, daemon: Daemon, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = await _status(http, daemon)
        if predicate(status):
            return status
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out; last status: {status}")


def _in_progress(status: dict[str, Any]) -> bool:
    return any(s["chunk"] is not None and (s["step"] or 0) >= 1 for s in status["stream_stats"].values())


def test_nothing_waits_for_a_150_s_chunk(tmp_path: Path) -> None:
    """While one stream's chunk runs for 150 s: a second WHIP POST < 1 s, command replies < 100 ms, /readyz 200
    throughout while steps progress, and SIGTERM exits 0 within 10 s."""
    steps, delay = 300, LONG_CHUNK_S / 300
    d = start_daemon(tmp_path, env={"STREAMD_ENGINE_STEPS": str(steps), "STREAMD_ENGINE_STEP_DELAY_S": str(delay),
                                    "STREAMD_ENGINE_STALL_TIMEOUT_S": "8", "STREAMD_WEBRTC_MEDIA_TIMEOUT_S": "30"})
    figures: dict[str, Any] = {}

    async def scenario() -> None:
        sender = asyncio.create_task(send(d.whip, seconds=LONG_CHUNK_S + 60, ice_addresses=(LOOPBACK,)))
        async with aiohttp.ClientSession() as http:
            status = await _wait_for(_in_progress, http, d, timeout=60)
            chunk_started = time.monotonic()
            stream_a = next(iter(status["stream_stats"]))
            # a second stream's WHIP POST while A's chunk runs
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.addTransceiver(PatternTrack(), direction="sendonly")
            await pc.setLocalDescription(await pc.createOffer())
            started = time.monotonic()
            async with http.post(d.whip, data=pc.localDescription.sdp,
                                 headers={"Content-Type": "application/sdp"}) as resp:
                figures["whip_post_s"] = time.monotonic() - started
                assert resp.status == 201, await resp.text()
                location = resp.headers["Location"]
            assert figures["whip_post_s"] < 1.0
            # commands: each is answered at once and says which chunk applies it
            latencies = []
            for i in range(20):
                seconds, reply = await _command(http, d, "prompt", {"stream": stream_a, "prompt": f"p{i}"})
                assert reply["ok"], reply
                assert reply["streams"][stream_a]["applies_at_chunk"] == 1  # chunk 0 is still running
                latencies.append(seconds)
            seconds, reply = await _command(http, d, "params", {"stream": "*", "guidance": 2.0})
            assert reply["ok"] and stream_a in reply["streams"]
            latencies.append(seconds)
            figures["command_p50_s"], figures["command_max_s"] = statistics.median(latencies), max(latencies)
            assert figures["command_p50_s"] < 0.1 and figures["command_max_s"] < 0.5, latencies
            async with http.delete(f"{d.base}{location}") as resp:
                assert resp.status == 200
            await pc.close()
            # readiness through the rest of the chunk, while its steps make progress
            probes, steps_seen = [], []
            while time.monotonic() - chunk_started < LONG_CHUNK_S - 5:
                code, body = await _ready(http, d)
                probes.append((code, body))
                status = await _status(http, d)
                a = status["stream_stats"].get(stream_a)
                assert a is not None and a["chunk"] == 0 and a["params_pending"] is True
                steps_seen.append(a["step"])
                await asyncio.sleep(1.0)
            assert all(code == 200 for code, _ in probes), [p for p in probes if p[0] != 200][:3]
            assert steps_seen == sorted(steps_seen) and steps_seen[-1] - steps_seen[0] >= 0.6 * len(steps_seen) / delay
            figures["readyz_probes"] = len(probes)
            assert status["engine"]["steps"] >= steps_seen[-1] and status["stream_stats"][stream_a]["steps"] == steps
            assert d.metric("streamd_engine_steps_total") >= steps_seen[-1]
            # SIGTERM mid-chunk
            started = time.monotonic()
            code = await asyncio.to_thread(d.stop, signal.SIGTERM, 30)
            figures["sigterm_s"] = time.monotonic() - started
            assert code == 0 and figures["sigterm_s"] < 10, d.log
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        d.kill()
    print("real-model timing figures:", json.dumps(figures))


def test_a_hanging_step_turns_readiness_red_but_an_idle_engine_is_ready(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, env={"STREAMD_ENGINE_STEPS": "3", "STREAMD_ENGINE_STEP_DELAY_S": "6",
                                    "STREAMD_ENGINE_STALL_TIMEOUT_S": "2", "STREAMD_WEBRTC_MEDIA_TIMEOUT_S": "30"})

    async def scenario() -> None:
        async with aiohttp.ClientSession() as http:
            await asyncio.sleep(3)  # idle longer than the stall timeout: idle is not a stall
            assert (await _ready(http, d))[0] == 200
            sender = asyncio.create_task(send(d.whip, seconds=40, ice_addresses=(LOOPBACK,)))
            deadline = time.monotonic() + 40
            seen = None
            while time.monotonic() < deadline:
                code, body = await _ready(http, d)
                if code == 503:
                    seen = body
                    break
                await asyncio.sleep(0.2)
            assert seen == {"status": "not-ready", "reason": "engine-stalled"}
            status = await _status(http, d)
            assert status["engine"]["step_running_s"] > 2
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    try:
        asyncio.run(scenario())
        assert d.stop(signal.SIGTERM, 30) == 0  # even with a 6 s step running, shutdown ends within a step
    finally:
        d.kill()


def _fps_by_stream(messages: list[dict[str, Any]], seconds: float) -> dict[str, float]:
    counts: dict[str, int] = {}
    for m in messages:
        if "header" in m:
            counts[m["header"]["stream"]] = counts.get(m["header"]["stream"], 0) + 1
    return {sid: n / seconds for sid, n in counts.items()}


def test_one_stream_at_1000_steps_leaves_the_other_its_frame_rate(tmp_path: Path) -> None:
    """Two live streams; "*" reaches both at their next boundary; then A goes to 1000 steps a chunk and B keeps at
    least 90% of its frame rate."""
    d = start_daemon(tmp_path, "--max-streams", "2", env={"STREAMD_ENGINE_STEPS": "8", "STREAMD_ENGINE_GUIDANCE": "3",
                                                          "STREAMD_WEBRTC_MEDIA_TIMEOUT_S": "30"})
    window_s = 20.0
    figures: dict[str, Any] = {}

    async def measure() -> dict[str, float]:
        sub = Subscriber(d.zmq_endpoint, frames=10**6, timeout=window_s)
        return _fps_by_stream(await asyncio.to_thread(sub.results, window_s + 30), window_s)

    async def scenario() -> None:
        senders = [asyncio.create_task(send(d.whip, seconds=150, ice_addresses=(LOOPBACK,))) for _ in range(2)]
        async with aiohttp.ClientSession() as http:
            status = await _wait_for(lambda s: len(s["stream_stats"]) == 2 and all(
                x["chunks"] >= 2 for x in s["stream_stats"].values()), http, d, timeout=90)
            a, b = sorted(status["stream_stats"])
            # "*" is one update; each stream applies it at its own next boundary
            _, reply = await _command(http, d, "params", {"stream": "*", "cond_noise": 0.01})
            assert reply["ok"] and set(reply["streams"]) == {a, b}
            applies = {sid: r["applies_at_chunk"] for sid, r in reply["streams"].items()}
            status = await _wait_for(lambda s: all(
                s["stream_stats"][sid]["chunks"] > applies[sid] for sid in (a, b)), http, d, timeout=60)
            for sid in (a, b):
                assert status["stream_stats"][sid]["params"]["cond_noise"] == 0.01
            before = await measure()
            _, reply = await _command(http, d, "params", {"stream": a, "steps": 1000})
            assert reply["ok"]
            await _wait_for(lambda s: s["stream_stats"][a]["steps"] == 1000, http, d, timeout=60)
            after = await measure()
            figures.update(b_fps_before=before.get(b, 0.0), b_fps_after=after.get(b, 0.0),
                           a_fps_before=before.get(a, 0.0), a_fps_after=after.get(a, 0.0))
            assert figures["b_fps_before"] > 5, figures
            assert figures["b_fps_after"] >= 0.9 * figures["b_fps_before"], figures
            status = await _status(http, d)
            assert status["stream_stats"][a]["step"] is not None  # A's long chunk is on its way
        for s in senders:
            s.cancel()
        await asyncio.gather(*senders, return_exceptions=True)

    try:
        asyncio.run(scenario())
        assert d.stop(signal.SIGTERM, 30) == 0
    finally:
        d.kill()
    print("fairness figures:", json.dumps(figures))
