"""The environment the tests run in is the one the bundle declares, and the version is written in one place.

configs/metadata.json is the source: the zoo CI installs exactly its pins (`ci/get_bundle_requirements.py`) and takes
the bundle version from it. requirements.txt must equal it (tests/test_zoo.py checks that); this module checks that
the running interpreter has exactly those versions installed, so each Python that `make test` or `make test-py310`
runs on really tested the pins, and that pyproject.toml repeats the metadata's version.
"""

from __future__ import annotations

import json
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

BUNDLE = Path(__file__).resolve().parents[1]


def _metadata() -> dict:
    return json.loads((BUNDLE / "configs" / "metadata.json").read_text())


def _declared_pins() -> dict[str, str]:
    """What `ci/get_bundle_requirements.py` would pin: monai, torch, numpy and required_packages_version."""
    meta = _metadata()
    pins = {"monai": meta["monai_version"], "torch": meta["pytorch_version"], "numpy": meta["numpy_version"]}
    pins.update(meta["required_packages_version"])
    return pins


@pytest.mark.parametrize("name", sorted(_declared_pins()))
def test_installed_version_is_the_declared_pin(name):
    pinned = _declared_pins()[name]
    try:
        installed = version(name)
    except PackageNotFoundError:
        pytest.fail(f"{name}=={pinned} is declared in configs/metadata.json but not installed")
    # a local build label (torch 2.13.0+cpu from the CPU wheel) is the same release as the pin
    assert installed.split("+", 1)[0] == pinned, f"{name}: installed {installed}, metadata.json pins {pinned}"


def test_pyproject_version_is_the_metadata_version():
    """The bundle version lives in configs/metadata.json (the zoo reads it there); pyproject.toml must not drift."""
    project = (BUNDLE / "pyproject.toml").read_text().split("[project]", 1)[1].split("\n[", 1)[0]
    match = re.search(r'^version\s*=\s*"([^"]+)"', project, flags=re.MULTILINE)
    assert match, "pyproject.toml: [project] has no version"
    assert match.group(1) == _metadata()["version"]


def test_docs_name_the_current_release_zip():
    """Docs spell the release zip `<bundle>_v<version>.zip`; a version bump must not leave stale names behind."""
    current = _metadata()["version"]
    stale = []
    for doc in [BUNDLE / "README.md", *sorted((BUNDLE / "docs").glob("*.md"))]:
        for found in re.findall(r"mnet_anisotropic_segmentation_v(\d+\.\d+\.\d+)\.zip", doc.read_text()):
            if found != current:
                stale.append(f"{doc.relative_to(BUNDLE)}: v{found}")
    assert not stale, f"metadata.json version is {current}; docs name {stale}"


def _requirement_file_pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (BUNDLE / name).read_text().splitlines():
        package, sep, pinned = line.split("#")[0].strip().partition("==")
        if sep:
            pins[package.strip().lower()] = pinned.strip()
    return pins


def test_optional_packages_are_pinned_alike_and_installed_at_their_pin():
    """metadata.json's optional_packages_version (what the zoo CI and MONAI deploy tools install beside the required
    pins) equals requirements-optional.txt; requirements-dev.txt installs the same versions for `make test`, and
    where one is installed (not in the py310 venv, which has the runtime pins only) it is that version."""
    optional = {k.lower(): v for k, v in _metadata().get("optional_packages_version", {}).items()}
    assert optional, "pydicom and highdicom (DICOM in, DICOM SEG out) are declared"
    listed, dev = _requirement_file_pins("requirements-optional.txt"), _requirement_file_pins("requirements-dev.txt")
    for name, pinned in optional.items():
        assert listed.get(name) == pinned, f"requirements-optional.txt: {name}=={listed.get(name)}, metadata {pinned}"
        assert dev.get(name) == pinned, f"requirements-dev.txt: {name}=={dev.get(name)}, metadata {pinned}"
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue
        assert installed.split("+", 1)[0] == pinned, f"{name}: installed {installed}, metadata.json pins {pinned}"
