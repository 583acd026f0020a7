"""Count the bad-input and fault cases the default test suite covers, for docs/troubleshooting.md ("Cases handled").

A case is one collected test item (each parametrization counts) of the default suite (``-m "not slow"``) in the
fault-handling test files whose test function asserts a refusal or an error: it expects an exception
(``pytest.raises``), checks a run's exit status or its ``ERROR:`` line, or the one-line problems of the data checks
(directly or through the files' helpers ``assert_clean_failure``, ``in_process``, ``last_line``, ``one_line``,
``_first_error``, ``_problems``, ``check_dataset``); tests named ``..._pass...`` or ``...accepted...`` (valid input
that must not be refused) are left out. A heuristic over the test sources, not a proof: ``--verbose true`` lists the
items counted. Collection only; nothing runs.

Usage: ``python -m tools.count_cases [--verbose true]`` (prints the count per file and the total).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import fire

BUNDLE = Path(__file__).resolve().parents[1]
FILES = (
    "test_bad_inputs.py", "test_check_data.py", "test_checkpoints.py", "test_resume.py", "test_datalist.py",
    "test_inference_outputs.py", "test_ensemble.py", "test_settings.py", "test_schedule.py", "test_plan.py",
    "test_plan_check.py", "test_handlers.py", "test_inputs.py", "test_dicom.py", "test_convert_reference.py",
    "test_workflows.py", "test_run_records.py",
)  # fmt: skip
ASSERTS_ERROR = re.compile(
    r"pytest\.raises\(|assert_clean_failure\(|in_process\(|last_line\(|one_line\(|_first_error\(|_problems\(|"
    r"check_dataset\(|find_input_error|\bERROR\b|returncode != 0|returncode == [1-9]"
)
VALID_INPUT = re.compile(r"_pass|accepted")  # tests that valid (if unusual) input is not refused


def collected(files: list[str]) -> list[str]:
    """Node ids of the default suite's items in ``files`` (``pytest --collect-only -q``)."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not slow", "-p", "no:cacheprovider", *files],
        cwd=BUNDLE, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [line for line in done.stdout.splitlines() if "::" in line]


def error_tests(path: Path) -> set[str]:
    """Names of the test functions in ``path`` whose body asserts an error or a refusal."""
    source = path.read_text()
    return {
        node.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef)
        and node.name.startswith("test")
        and not VALID_INPUT.search(node.name)
        and ASSERTS_ERROR.search(ast.get_source_segment(source, node) or "")
    }


def count(verbose: bool = False) -> int:
    files = [f"tests/{name}" for name in FILES if (BUNDLE / "tests" / name).is_file()]
    marked = {f: error_tests(BUNDLE / f) for f in files}
    per_file: Counter = Counter()
    for node in collected(files):
        file, name = node.split("::")[0], node.split("::")[-1].split("[")[0]
        if name in marked.get(file, ()):
            per_file[file] += 1
            if verbose:
                print(node)
    for file in files:
        print(f"{per_file[file]:4d}  {file}")
    total = sum(per_file.values())
    print(f"{total:4d}  cases that end in a one-line error or refusal")
    return total


def main(verbose: bool = False) -> None:
    count(verbose)


if __name__ == "__main__":
    fire.Fire(main)
