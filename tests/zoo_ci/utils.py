"""Helpers with the semantics of model-zoo `ci/unit_tests/utils.py`, so the tests here run unchanged in the zoo.

`check_workflow` runs a ConfigWorkflow the way the zoo does (initialize, check_properties() must be empty, run,
finalize); `export_config_and_run_mgpu_cmd` merges the overrides into one exported config (the zoo's dist tests pass
no overrides on the command line) and launches it with `torchrun --standalone`, with the bundle root on PYTHONPATH.
"""

from __future__ import annotations

import os
import subprocess
import sys

from monai.bundle import ConfigParser, ConfigWorkflow


def check_workflow(workflow: ConfigWorkflow, check_properties: bool = False) -> None:
    workflow.initialize()
    if check_properties:
        missing = workflow.check_properties()
        if missing:
            raise ValueError(f"check properties for workflow failed: {missing}")
    workflow.run()
    workflow.finalize()


def export_overrided_config(config_file, override_dict: dict, output_path: str) -> None:
    parser = ConfigParser()
    parser.read_config(config_file)
    parser.update(pairs=override_dict)
    ConfigParser.export_config_file(parser.config, output_path, indent=4)


def export_config_and_run_mgpu_cmd(
    config_file,
    meta_file: str,
    override_dict: dict,
    output_path: str,
    custom_workflow: str | None = None,
    logging_file: str | None = None,
    workflow_type: str = "train",
    nnode: int = 1,
    ngpu: int = 2,
    check_config: bool = False,
) -> None:
    """The zoo's signature; `ngpu` is the number of processes (gloo on the CPU when there is no GPU)."""
    export_overrided_config(config_file, override_dict, output_path)
    if check_config:
        workflow = ConfigWorkflow(
            workflow_type=workflow_type, config_file=output_path, logging_file=logging_file, meta_file=meta_file
        )
        workflow.initialize()
        missing = workflow.check_properties()
        if missing:
            raise ValueError(f"check properties for overrided mgpu configs failed: {missing}")
    # `python -m torch.distributed.run` is the `torchrun` entry point of the interpreter running the tests
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nnodes={nnode}"]
    cmd += [f"--nproc_per_node={ngpu}", "-m", "monai.bundle"]
    cmd += ["run"] if custom_workflow is None else ["run_workflow", custom_workflow]
    cmd += ["--config_file", output_path, "--meta_file", meta_file]
    if logging_file is not None:
        cmd += ["--logging_file", logging_file]
    env = os.environ.copy()
    env["PYTHONPATH"] = override_dict.get("bundle_root", ".")  # the configs import `scripts` from the bundle root
    subprocess.check_call(cmd, env=env)
