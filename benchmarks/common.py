"""What every benchmark script does with its result: write it as JSON next to the others and say where."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(result: dict, out: str) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
