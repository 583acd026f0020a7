"""The demo (`make demo`): synthetic data, the end-to-end pipeline and its report.

Not part of the released bundle (tools/package.py ships only the modules the configs import), so the demo's
plotting libraries are not runtime requirements of the bundle.
"""
