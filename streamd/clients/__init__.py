"""Reference clients of the daemon's edges: `send` (a WHIP publisher) and `subscribe` (a ZeroMQ subscriber).

Submodules are imported on demand: `send` needs aiortc, `subscribe` only pyzmq and numpy (plus PyAV/Pillow
when it writes MP4/PNG), so neither drags in the other's dependencies.
"""
