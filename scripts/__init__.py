"""MNet bundle: the network and the components its configs import.

Every config imports this package first, so installing the one-line error hook here makes any bad input (data,
plan, checkpoint, setting) end the console output with ``ERROR: <file>: <problem>`` (scripts/errors.py).
"""

from scripts.errors import install_excepthook

install_excepthook()
