from __future__ import annotations

import pytest

from scripts.flags import as_bool


@pytest.mark.parametrize("value", [True, "true", "True", "1", 1, "yes", " on "])
def test_true_spellings(value):
    assert as_bool(value) is True


@pytest.mark.parametrize("value", [False, "false", "FALSE", "0", 0, "no", "off"])
def test_false_spellings(value):
    assert as_bool(value) is False


def test_anything_else_is_an_error_naming_the_setting():
    with pytest.raises(ValueError, match="--resume: expected true or false, got 'maybe'"):
        as_bool("maybe", "resume")
