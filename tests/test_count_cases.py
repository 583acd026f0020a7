"""tools.count_cases: which tests count as a case that ends in a one-line error or refusal."""

from __future__ import annotations

from tools.count_cases import error_tests


def test_counts_refusals_not_valid_inputs_or_plain_tests(tmp_path):
    source = tmp_path / "test_x.py"
    source.write_text(
        "def test_bad_plan_is_refused():\n    with pytest.raises(BundleInputError):\n        load()\n\n"
        "def test_cli_fails():\n    assert run().returncode != 0\n\n"
        "def test_flipped_label_is_accepted():\n    assert not check_dataset(d)\n\n"
        "def test_clean_data_passes():\n    assert check_dataset(d) == []\n\n"
        "def test_output_shape():\n    assert out.shape == (2, 3)\n\n"
        "def helper():\n    with pytest.raises(ValueError):\n        pass\n"
    )
    assert error_tests(source) == {"test_bad_plan_is_refused", "test_cli_fails"}
