"""Every ``scripts.<module>`` that a config's ``$`` expression calls is in that config's ``imports``.

MONAI evaluates an expression with the config's imports only; ``_target_`` components are located by name, but
``$scripts.cpu_memory.takes_effect(...)`` fails with "module 'scripts' has no attribute 'cpu_memory'" unless some
other code imported the module first. In-process tests import everything and hid it; ``monai.bundle.load`` and
``onnx_export`` in a fresh process found it. Overlays (evaluate, multi_gpu_*, inference_trt) run on top of
train.json or inference.json, so their base's imports count for them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BASES = ("train.json", "inference.json")
USED = re.compile(r"\bscripts\.([a-z_]+)\.[A-Za-z_]")


def _strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) else []


def _imported(config: dict) -> set[str]:
    matches = (re.match(r"\$import scripts\.(\w+)$", line) for line in config.get("imports", []))
    return {m.group(1) for m in matches if m}


def _used(config: dict) -> set[str]:
    expressions = [s for key, value in config.items() if key != "imports" for s in _strings(value) if s.startswith("$")]
    return {m.group(1) for expression in expressions for m in USED.finditer(expression)}


def test_the_pattern_finds_an_unimported_module():
    config = {"imports": ["$import scripts.runtime"], "a": "$scripts.cpu_memory.takes_effect(@device, True)"}
    assert _used(config) - _imported(config) == {"cpu_memory"}


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.json") if p.name != "metadata.json"))
def test_expressions_only_use_imported_modules(name):
    config = json.loads((CONFIGS / name).read_text())
    available = _imported(config)
    if name not in BASES:
        base = "inference.json" if "inference" in name else "train.json"
        available |= _imported(json.loads((CONFIGS / base).read_text()))
    missing = _used(config) - available
    assert not missing, f"{name}: add '$import scripts.<module>' to its imports for {sorted(missing)}"
