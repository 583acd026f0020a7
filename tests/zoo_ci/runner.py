"""Run a zoo-format unit test the way model-zoo `ci/unit_tests/runner.py` does.

    python tests/zoo_ci/runner.py --b mnet_anisotropic_segmentation [--dist True] [--stage .]

Semantics of the zoo's runner: the file `test_<b>.py` (`test_<b>_dist.py` with `--dist True`) next to this script is
imported as a module, its `test_order` (if any) orders the test methods, unittest runs it, and the exit status is
non-zero on any failure; a missing file is skipped. The zoo runs from its repository root, where the bundle is
`models/<b>`. `--stage DIR` reproduces that layout: it copies the bundle files of DIR (what a zoo checkout holds, no
weights) to `<tmp>/models/<b>` and runs there, so the tests never write into DIR.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import unittest

BUNDLE_PARTS = ("configs", "scripts", "docs", "LICENSE")


def stage(bundle_dir: str, bundle: str, work_dir: str) -> str:
    target = os.path.join(work_dir, "models", bundle)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in BUNDLE_PARTS:
        src = os.path.join(bundle_dir, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(target, name), ignore=ignore)
        else:
            os.makedirs(target, exist_ok=True)
            shutil.copy2(src, target)
    os.makedirs(os.path.join(target, "models"), exist_ok=True)
    return target


def run(bundle: str, dist: bool, verbosity: int = 2) -> bool:
    name = f"test_{bundle}_dist" if dist else f"test_{bundle}"
    here = os.path.dirname(os.path.abspath(__file__))
    if not os.path.exists(os.path.join(here, f"{name}.py")):
        print(f"unit test file: {name}.py does not exist, skip test.")
        return True
    sys.path.append(here)
    module = importlib.import_module(name)
    loader = unittest.TestLoader()
    if hasattr(module, "test_order"):
        loader.sortTestMethodsUsing = module.test_order
    result = unittest.TextTestRunner(verbosity=verbosity).run(loader.loadTestsFromModule(module))
    return result.wasSuccessful()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-b", "--b", dest="bundle", required=True, help="bundle name")
    # the zoo parses `--dist` with type=bool, so any non-empty value means True; keep that
    parser.add_argument("-dist", "--dist", default=False, type=bool, help="run test_<b>_dist.py")
    parser.add_argument("--stage", default=None, help="bundle directory to copy into <tmp>/models/<b> and run there")
    args = parser.parse_args()
    if args.stage is None:
        sys.exit(not run(args.bundle, args.dist))
    bundle_dir = os.path.abspath(args.stage)
    with tempfile.TemporaryDirectory(prefix="zoo_ci_") as work_dir:
        stage(bundle_dir, args.bundle, work_dir)
        os.chdir(work_dir)
        ok = run(args.bundle, args.dist)
    sys.exit(not ok)


if __name__ == "__main__":
    main()
