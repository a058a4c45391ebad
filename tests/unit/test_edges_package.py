"""`streamd.edges` names its public objects without importing (or starting) any door until one is used."""

from __future__ import annotations

import json
import subprocess
import sys

import streamd.edges as edges

HEAVY = ("aiortc", "aiohttp", "zmq", "aiomqtt", "prometheus_client", "torch")


def test_importing_the_package_imports_no_door() -> None:
    code = ("import json, sys, threading; import streamd.edges; "
            f"print(json.dumps([[m for m in {HEAVY!r} if m in sys.modules], threading.active_count()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded, threads = json.loads(out)
    assert loaded == [] and threads == 1


def test_every_public_name_resolves_to_its_module() -> None:
    for name in edges.__all__:
        value = getattr(edges, name)
        assert value.__module__.startswith("streamd.edges."), name
    assert {"WhipEndpoint", "WhepEndpoint", "StreamHooks", "RequestChecks", "frame_to_rgb"} <= set(dir(edges))
    assert edges.WhipEndpoint.__module__ == "streamd.edges.whip"
    assert edges.WhepEndpoint.__module__ == "streamd.edges.whep"


def test_unknown_names_raise_attribute_error() -> None:
    try:
        edges.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("an unknown name resolved")
