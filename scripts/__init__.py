"""MNet bundle: the network and the components its configs import.

Every config imports this package first, so installing the one-line error hook here makes any bad input (data,
plan, checkpoint, setting) end the console output with ``ERROR: <file>: <problem>`` (scripts/errors.py), and
MONAI's per-loader notice about its optional GPU DICOM decoder is dropped here (scripts/dicom.py).
"""

from scripts.dicom import quiet_decoder_notices
from scripts.errors import install_excepthook

install_excepthook()
quiet_decoder_notices()
