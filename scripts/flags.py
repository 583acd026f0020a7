"""Command-line booleans: ``--resume true`` reaches the config as the *string* "true" (fire only turns ``True`` into
a bool), and any non-empty string is truthy, so ``--resume false`` would silently resume. Configs wrap their boolean
settings in ``as_bool`` to accept both spellings and reject anything else with one clear line."""

from __future__ import annotations

TRUE = {"true", "1", "yes", "on"}
FALSE = {"false", "0", "no", "off", "none", ""}


def as_bool(value: object, name: str = "setting") -> bool:
    """True/False for bools, 0/1 and the usual strings (any case); ValueError naming the setting otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
        return value.strip().lower() in TRUE
    raise ValueError(f"--{name}: expected true or false, got {value!r}")
