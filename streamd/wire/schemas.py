"""The JSON Schemas of the wire formats (protocols/schemas/*.json), for tests and tools.

The schema files live in the repository's `protocols/schemas/` folder, next to the specifications they
formalise, not inside the `streamd` package, and the package build does not ship them: they are read from the
source tree, found relative to this file (`<repo>/streamd/wire/schemas.py` -> `<repo>/protocols/schemas`). That
works in a checkout and in an editable install (`pip install -e .`), which is where tests and tooling run. An
installed wheel has no source tree, and `load_schema` then raises FileNotFoundError saying so. Nothing at run
time needs the schemas: the codecs in this package check messages themselves, and the tests check that the
two agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA_NAMES", "load_schema", "schema_dir"]

SCHEMA_NAMES: tuple[str, ...] = (
    "frame-header", "event", "error", "health",
    "mqtt-status", "mqtt-reply", "mqtt-event",
    "mqtt-command-prompt", "mqtt-command-params", "mqtt-command-reset", "mqtt-command-stop-stream",
    "mqtt-command-drain",
)


def schema_dir() -> Path:
    """The folder the schema files are read from: <repository root>/protocols/schemas."""
    return Path(__file__).parents[2] / "protocols" / "schemas"


def load_schema(name: str) -> dict[str, Any]:
    """Parse and return protocols/schemas/<name>.json; `name` is one of SCHEMA_NAMES (without '.json').

    Each call reads the file afresh and returns a new dict, so callers may modify what they get.
    """
    # A closed list of names rather than any path segment: the name never reaches the filesystem unchecked.
    if name not in SCHEMA_NAMES:
        raise ValueError(f"unknown schema {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    path = schema_dir() / f"{name}.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"schema file {path} not found: schemas are read from the streamd source tree "
            "(a checkout or an editable install), not from an installed wheel"
        ) from None
    schema = json.loads(text)
    if not isinstance(schema, dict):
        raise ValueError(f"schema file {path} does not hold a JSON object")
    return schema
