"""streamd: live, streaming video continuation with LongCat-Video.

WebRTC frames in, a rolling KV-cached conditioning window on the GPU, generated frames out over ZeroMQ, control
over MQTT. See README.md and protocols/ for the user-facing surface.
"""

__version__ = "0.1.0"
