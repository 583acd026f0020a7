"""Make the bundle root importable (configs import `scripts.*`) and keep tests on 2 threads, seeded."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
if str(BUNDLE_ROOT) not in sys.path:
    sys.path.insert(0, str(BUNDLE_ROOT))


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
