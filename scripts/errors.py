"""One exception type for problems with the user's inputs, and a console hook that shows it as one line.

`python -m monai.bundle run` wraps every exception raised in a config expression into "Failed to evaluate
ConfigExpression" tracebacks several screens long. Raising `BundleInputError` instead, and installing `excepthook`,
makes the last line on stderr the message that names the file and the problem. Standard library only: the bundle
configs import it at run time.
"""

from __future__ import annotations

import os
import sys

TRACEBACK_ENV = "MNET_TRACEBACK"  # set to 1 to see the full traceback above the one-line message


class BundleInputError(ValueError):
    """A bad input (data, datalist, plan, checkpoint, setting); the message is the whole story, no traceback needed.

    A ValueError subclass so existing ``except ValueError`` callers keep working.
    """


def find_input_error(exc: BaseException | None) -> BundleInputError | None:
    """The innermost-first BundleInputError in the ``__cause__``/``__context__`` chain that MONAI wraps around it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, BundleInputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _hook(exc_type, exc, tb) -> None:
    """Print only 'ERROR: <message>' for input errors (full traceback on request), defer to the default otherwise."""
    error = find_input_error(exc)
    if error is None or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        _previous_hook(exc_type, exc, tb)
    if error is not None:
        sys.stderr.write(f"ERROR: {error}\n")
        sys.stderr.flush()


_previous_hook = sys.excepthook
_installed = False


def install_excepthook() -> None:
    """Install the one-line hook once per process, chaining to the hook that was there first.

    Once only: torch.distributed's ``init_process_group`` wraps whatever hook is installed (to prefix ``[rankN]``),
    and re-installing over that wrapper would chain ours -> the wrapper -> ours ... (a RecursionError under
    torchrun instead of the message)."""
    global _previous_hook, _installed
    if not _installed:
        _installed = True
        _previous_hook = sys.excepthook
        sys.excepthook = _hook
