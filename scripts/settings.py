"""The command-line boundary: booleans as users type them, and overrides that the running workflow never reads.

``--resume true`` reaches the config as the *string* "true" (fire turns only ``True``/``False`` into bools), and any
non-empty string is truthy, so the components that take a boolean setting read it through ``as_bool``: both
spellings work, anything else is one clear line. MONAI also accepts any ``--key value`` and silently adds it to the
config, so ``--epoch 3`` (for ``--epochs``) or ``--ckpt_path`` given to training would be ignored without a word;
``check_overrides`` refuses ids that none of the running workflow's config files defines. Standard library only at
import time: every config imports this module.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from scripts.errors import BundleInputError

TRUE = {"true", "1", "yes", "on"}
FALSE = {"false", "0", "no", "off", "none", ""}


def as_bool(value: object, name: str = "setting") -> bool:
    """True/False for bools, 0/1 and the usual strings (any case); a BundleInputError naming the setting otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
        return value.strip().lower() in TRUE
    raise BundleInputError(f"--{name}: expected true or false, got {value!r}")


def _known_run_args() -> set[str]:
    """Arguments of ``monai.bundle run`` itself (config_file, logging_file, tracking, ...), not config ids."""
    from monai.bundle import ConfigWorkflow
    from monai.bundle.scripts import create_workflow, run
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    names = set(DEFAULT_MLFLOW_SETTINGS["configs"])  # --tracking mlflow adds these ids (tracking_uri, run_name ...)
    for fn in (run, create_workflow, ConfigWorkflow.__init__):
        names |= {p.name for p in inspect.signature(fn).parameters.values() if p.kind != p.VAR_KEYWORD}
    return names - {"self"}


def _parse_cli(argv: list[str]) -> dict[str, str | None]:
    """``--key value`` / ``--key=value`` pairs as fire sees them (a bare ``--flag`` maps to None)."""
    pairs: dict[str, str | None] = {}
    tokens = [t for t in argv if t != "--"]
    for i, tok in enumerate(tokens):
        if tok.startswith("--") and len(tok) > 2:
            name, eq, value = tok[2:].partition("=")
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            pairs[name] = value if eq else (nxt if nxt is not None and not nxt.startswith("--") else None)
    return pairs


def _as_files(value: Any) -> list[str]:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            value = value.split(",")
    return [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def _config_ids(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    content = json.loads(path.read_text()) if path.suffix == ".json" else {}
    return content if isinstance(content, dict) else {}


def _check(pairs: dict[str, Any], defaults: dict[str, Any], known: set[str]) -> None:
    """One line for the first setting no config of this run defines, or a boolean that is neither true nor false."""
    for name, value in pairs.items():
        top = name.split("#", 1)[0]
        if top not in known:
            hint = difflib.get_close_matches(top, sorted(known), n=1)
            guess = f" (did you mean --{hint[0]}?)" if hint else ""
            raise BundleInputError(
                f"--{name}: unknown setting, this workflow's configs define no '{top}'{guess}; MONAI would "
                "silently ignore it"
            )
        if isinstance(defaults.get(name), bool) and value is not None:  # a bare --flag is True
            as_bool(value, name)


def _running_workflow() -> Any:
    """The ``ConfigWorkflow`` whose ``initialize``/``run`` is evaluating this call, found on the call stack (its
    parser holds the merged config and the keyword overrides); None when called otherwise (MONAI Label's parser)."""
    from monai.bundle import ConfigWorkflow

    frame = inspect.currentframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, ConfigWorkflow):
            return candidate
        frame = frame.f_back
    return None


def _check_keyword_overrides(workflow: Any) -> None:
    """``ConfigWorkflow(config_file=..., epoch=3)`` / ``monai.bundle.run(..., epoch=3)``: MONAI keeps neither the
    file names nor the overrides apart from the merged config, so the loaded files are the bundle's configs (next to
    the first one) all of whose ids are present; ids that none of them defines came from a keyword override."""
    present = workflow.parser.config
    if not isinstance(present, dict):
        return
    defaults: dict[str, Any] = {"_meta_": {}}
    for path in sorted(Path(workflow.config_root_path).glob("*.json")):
        ids = _config_ids(path)
        if ids and {name.split("#", 1)[0] for name in ids} <= set(present):
            defaults.update(ids)
    known = {name.split("#", 1)[0] for name in defaults}
    extra = {name: present[name] for name in present if name not in known}
    _check(extra, defaults, _known_run_args() | known)
    typed = {
        name: present[name]
        for name in defaults
        if name in present and not (isinstance(present[name], str) and present[name][:1] in "$@%")
    }
    _check(typed, defaults, set(present))  # a keyword ``resume="ture"`` is one line too


def check_overrides(argv: list[str] | None = None) -> None:
    """Refuse overrides that no config file of this run defines, and booleans that are neither true nor false.
    Runs first in every workflow's set-up: from ``python -m monai.bundle`` it reads the command line; from Python it
    finds the running ``ConfigWorkflow`` and checks its keyword overrides."""
    argv = sys.argv if argv is None else argv
    if not argv or not Path(argv[0]).as_posix().endswith("monai/bundle/__main__.py"):
        workflow = _running_workflow()
        if workflow is not None:
            _check_keyword_overrides(workflow)
        return
    pairs = _parse_cli(argv[1:])
    if pairs.get("args_file"):
        from monai.bundle import ConfigParser

        pairs.update(ConfigParser.load_config_file(pairs["args_file"]))
    defaults: dict[str, Any] = {"_meta_": {}}
    for config in _as_files(pairs.get("config_file") or []):
        defaults.update(_config_ids(Path(config)))
    _check(pairs, defaults, _known_run_args() | set(defaults))
