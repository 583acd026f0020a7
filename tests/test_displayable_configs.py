"""`displayable_configs` in inference.json: the options MONAI Label shows to its clients and passes to inference."""

from __future__ import annotations

from pathlib import Path

import pytest
from monai.bundle import ConfigParser

BUNDLE = Path(__file__).resolve().parents[1]


def _parser(**override) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "device": "cpu", **override})
    return parser


def test_displayable_configs_are_plain_values():
    shown = _parser()["displayable_configs"]
    assert set(shown) == {"sw_overlap", "volume_on_cpu"}
    # a client shows a list as a choice and a string as text: keep them plain numbers and booleans
    assert all(isinstance(v, (bool, int, float)) for v in shown.values()), shown


@pytest.mark.parametrize("overlap,on_cpu", [(0.5, False), (0.25, True)])
def test_what_a_client_sets_reaches_the_inferer(overlap, on_cpu):
    parser = _parser(**{"displayable_configs#sw_overlap": overlap, "displayable_configs#volume_on_cpu": on_cpu})
    inferer = parser.get_parsed_content("inferer")
    assert inferer.overlap == overlap
    assert inferer.device == ("cpu" if on_cpu else None)


def test_command_line_override_still_wins():
    assert _parser(sw_overlap=0.125).get_parsed_content("inferer").overlap == 0.125
