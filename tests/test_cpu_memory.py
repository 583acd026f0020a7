"""`keep_freed_memory`: on a CPU, memory a tensor frees stays in the process, so the next tensor of the same size
reuses mapped pages instead of faulting fresh ones in (the page faults are what cost time, docs/benchmarks.md)."""

from __future__ import annotations

import json
import resource

import pytest
import torch
from scripts import cpu_memory
from tests.conftest import BUNDLE_ROOT

needs_glibc = pytest.mark.skipif(cpu_memory._libc() is None, reason="glibc's mallopt only")
MB = 2**20


def _page_faults_of_a_fresh_tensor(megabytes: int = 256) -> int:
    """Minor page faults while a new tensor of ``megabytes`` is allocated and written, then freed."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensor = torch.ones(megabytes * MB // 4)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del tensor
    return faults


def _resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / MB


@needs_glibc
def test_a_freed_tensor_s_pages_are_reused_instead_of_faulted_in_again():
    pages = 256 * MB // resource.getpagesize()
    cpu_memory.release_freed_memory()  # an in-process workflow test before this one may have kept it
    try:
        # glibc's default: every one is mmap'd, faulted in page by page and unmapped on free
        assert min(_page_faults_of_a_fresh_tensor() for _ in range(3)) > pages // 2
        assert cpu_memory.keep_freed_memory("cpu") is True
        _page_faults_of_a_fresh_tensor(512)  # grows the heap once
        # served from the kept heap (one may still fault where a small block split the free space)
        assert min(_page_faults_of_a_fresh_tensor() for _ in range(3)) < pages // 20
        tensor = torch.ones(256 * MB // 4)
        resident = _resident_mb()
        del tensor
        assert _resident_mb() > resident - 64, "the freed memory stays with the process"
    finally:
        cpu_memory.release_freed_memory()
    # glibc's defaults again: freed blocks are unmapped or trimmed. (Not "resident stays flat after a fresh tensor":
    # glibc may serve it from a large free chunk inside the heap and keep that chunk on free, which made this flaky.)
    tensor = torch.ones(256 * MB // 4)
    resident = _resident_mb()
    del tensor
    cpu_memory.release_freed_memory()
    assert _resident_mb() < resident - 192, "release_freed_memory gives the freed memory back to the kernel"
    assert _page_faults_of_a_fresh_tensor() > pages // 2


@pytest.mark.parametrize("device,enabled", [("cuda:0", True), ("cpu", False), ("cpu", "false")])
def test_a_gpu_run_or_the_setting_off_keeps_glibc_s_defaults(device, enabled, monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_memory, "_libc", lambda: calls.append("libc"))
    assert cpu_memory.keep_freed_memory(device, enabled) is False
    assert cpu_memory.takes_effect(device, enabled) is False
    assert not calls


def test_no_glibc_changes_nothing(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_libc", lambda: None)
    assert cpu_memory.keep_freed_memory("cpu") is False
    assert cpu_memory.takes_effect("cpu") is False


@needs_glibc
def test_it_takes_effect_on_a_cpu_with_glibc():
    """What the CPU speed preset reads to pick its layout: true exactly where keep_freed_memory sets glibc."""
    assert cpu_memory.takes_effect("cpu", True) is True
    assert cpu_memory.takes_effect(torch.device("cpu"), "true") is True


def test_a_wrong_value_is_one_line():
    with pytest.raises(ValueError, match="keep_freed_memory"):
        cpu_memory.keep_freed_memory("cpu", "maybe")


@pytest.mark.parametrize("config,setup", [("train.json", "train_setup"), ("inference.json", "inference_setup")])
def test_the_configs_set_it_before_the_run(config, setup):
    """On by default; set in the setup list that runs before the engine, with the run's device and the setting."""
    parsed = json.loads((BUNDLE_ROOT / "configs" / config).read_text())
    assert parsed["keep_freed_memory"] is True
    items = [item for item in parsed[setup] if isinstance(item, dict)]
    item = next(i for i in items if i["_target_"] == "scripts.cpu_memory.keep_freed_memory")
    assert item == {"_target_": "scripts.cpu_memory.keep_freed_memory", "device": "@device",
                    "enabled": "@keep_freed_memory"}  # fmt: skip
