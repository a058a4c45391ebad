"""`streamd route`: place WHIP/WHEP sessions across many `streamd serve` instances through their MQTT status.

fleet.py (the registry and the placement rule, transport-free), config.py (the typed config), server.py (the
MQTT watcher and the HTTP front). README "Many hosts" says how to run it.
"""
