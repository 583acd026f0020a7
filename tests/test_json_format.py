"""configs/*.json are already in the form the zoo's pre-commit hook writes, so a zoo PR does not reformat them.

The zoo (and .pre-commit-config.yaml here) runs pre-commit-hooks' `pretty-format-json --autofix --no-sort-keys
--indent=4`: `json.dumps(json.loads(text), indent=4)` with ASCII escapes, keys in file order, one item per line,
and a final newline. CI cannot download pre-commit hooks, so this test checks the same result with the standard library.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BUNDLE = Path(__file__).resolve().parents[1]
CONFIGS = sorted((BUNDLE / "configs").glob("*.json"))


def zoo_pretty_json(text: str) -> str:
    """What `pretty-format-json --no-sort-keys --indent=4` turns `text` into."""
    return json.dumps(json.loads(text), indent=4, ensure_ascii=True) + "\n"


def test_zoo_pretty_json_puts_one_item_per_line():
    expected = '{\n    "b": [\n        1,\n        2\n    ],\n    "a": "\\u00e9"\n}\n'
    assert zoo_pretty_json('{"b": [1, 2], "a": "\\u00e9"}') == expected


def test_there_are_configs_to_check():
    assert {"train.json", "inference.json", "metadata.json"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_in_the_zoo_json_format(path):
    text = path.read_text()
    expected = zoo_pretty_json(text)
    if text != expected:
        got_lines, want_lines = text.splitlines(), expected.splitlines()
        pairs = enumerate(zip(got_lines, want_lines))
        first = next((i for i, (got, want) in pairs if got != want), min(len(got_lines), len(want_lines)))
        pytest.fail(
            f"{path.relative_to(BUNDLE)}: not in the zoo's JSON format from line {first + 1} "
            "(4-space indent, one item per line); run `pre-commit run pretty-format-json --all-files`"
        )
