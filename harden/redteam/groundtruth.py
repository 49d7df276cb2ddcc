"""Read a zoo folder's ground truth (attack.json + trigger.npz) as a trigger config.

For evaluation only: the benchmark and the tests use it to measure ASR. No hardening stage may import this module
(tests/test_no_peeking.py enforces that)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from harden.config.evaluate import TriggerConfig
from harden.core.errors import DataError

_TRIGGER = TypeAdapter(TriggerConfig)
# The shared zoo's attack.json names some kinds and array keys differently from harden's trigger kinds.
_KIND_ALIASES = {"sig": "sine"}
_ARRAY_KEYS = {"blend": {"pattern": "pattern"}, "warp": {"grid": "noise_grid"}}
_GENERATION_ONLY = {"warp": {"k"}}


def read_attack(folder: Path) -> dict[str, Any] | None:
    path = folder / "attack.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def trigger_from_attack(folder: Path, attack: dict[str, Any]) -> TriggerConfig | None:
    """The attack's trigger (array references resolved against ``folder``); None for a clean model."""
    raw = dict(attack.get("trigger") or {})
    if not raw:
        return None
    kind = _KIND_ALIASES.get(raw.get("kind"), raw.get("kind"))
    raw["kind"] = kind
    for key in _GENERATION_ONLY.get(kind, ()):
        raw.pop(key, None)
    for field, npz_key in _ARRAY_KEYS.get(kind, {}).items():
        raw.setdefault(field, {"path": "trigger.npz", "key": npz_key})
    for value in raw.values():
        if isinstance(value, dict) and "path" in value:
            value["path"] = str(folder / value["path"])
    if raw.get("mode", "all-to-one") == "all-to-one":
        raw.setdefault("target", attack.get("target"))
    try:
        return _TRIGGER.validate_python(raw)
    except ValidationError as exc:
        raise DataError(f"{folder / 'attack.json'}: trigger not understood: {exc}") from None
