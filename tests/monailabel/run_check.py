"""End-to-end check that the bundle works as-is in MONAI Label's `monaibundle` sample app (`make test-monailabel`).

Not part of the default suite: it needs the separate `.venv-monailabel` (monailabel 0.8.5, torch 2.14.1, see
requirements.txt beside this file) and takes a few minutes. Steps:

1. `monailabel apps --download --name monaibundle` into a work dir; copy the bundle to
   `apps/monaibundle/model/mnet_anisotropic_segmentation` with a tiny-width plan (kn [4,4,6,6,8], patch [64,64,8]),
   a short epoch, no loader workers, and test weights `models/model.pt` (a fresh `network_def` state dict);
2. studies: 3 synthetic thick-slice CT volumes from scripts/demo/data.py, 2 of them labelled (labels/final);
3. `monailabel start_server ... --conf models mnet_anisotropic_segmentation --conf zoo_source github --conf sam2 false`
   on 127.0.0.1 and a free port;
4. GET /info/ (model listed, labels organ and lesion); POST /infer/<bundle>?image=<id>&output=image (label volume with
   the input's shape and affine, values within the classes); POST /train/<bundle> with 1 epoch (asynchronous, polled
   with GET /train/ until DONE; it must rewrite models/model.pt with a state dict that loads into network_def);
   then stop the server.

Run with the MONAI Label venv's python and its bin first on PATH (the Makefile does that):
    PATH=$PWD/.venv-monailabel/bin:$PATH .venv-monailabel/bin/python tests/monailabel/run_check.py [--work_dir DIR]
Prints one JSON summary (also written to <work_dir>/result.json) and exits non-zero on the first failed check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUNDLE_ROOT = Path(__file__).resolve().parents[2]
BUNDLE_NAME = "mnet_anisotropic_segmentation"
TINY_PLAN = {"kn": [4, 4, 6, 6, 8], "patch_size": [64, 64, 8], "batch_size": 1}
CLASSES = {0, 1, 2}


def log(msg: str) -> None:
    print(f"[monailabel-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_app(work: Path) -> Path:
    """The sample app shipped in the wheel, with our bundle (tiny plan, quick epoch, test weights) in model/."""
    apps = work / "apps"
    cmd = ["monailabel", "apps", "--download", "--name", "monaibundle", "--output", str(apps)]
    subprocess.run(cmd, check=True, cwd=work)
    bundle = apps / "monaibundle" / "model" / BUNDLE_NAME
    sys.path.insert(0, str(BUNDLE_ROOT))
    from tools.package import bundle_files  # the exact file list of a release

    for rel in bundle_files(BUNDLE_ROOT):
        if rel.startswith("models/"):
            continue  # the check brings its own weights
        (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUNDLE_ROOT / rel, bundle / rel)
    (bundle / "models").mkdir(exist_ok=True)

    plan_path = bundle / "configs" / "plan.json"
    plan = json.loads(plan_path.read_text())
    plan.update(TINY_PLAN)
    plan_path.write_text(json.dumps(plan, indent=2))
    train_path = bundle / "configs" / "train.json"
    train = json.loads(train_path.read_text())
    train.update({"iterations_per_epoch": 4, "num_workers": 0, "cache_rate": 0.0})
    train_path.write_text(json.dumps(train, indent=4))
    inference_path = bundle / "configs" / "inference.json"
    inference = json.loads(inference_path.read_text())
    inference.update({"num_workers": 0})
    inference_path.write_text(json.dumps(inference, indent=4))

    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(inference_path))
    parser.update({"bundle_root": str(bundle)})
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    return bundle


def prepare_studies(work: Path) -> tuple[Path, list[str], str]:
    """3 synthetic cases: 2 labelled (for training) and 1 unlabelled (for inference)."""
    from scripts.demo.data import write_dataset

    data = work / "demo_data"
    datalist = json.loads(write_dataset(data, num_cases=3, num_test=1, inplane_range=(64, 80), slices_range=(8, 12))
                          .read_text())  # fmt: skip
    studies = work / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    labelled = []
    for i, case in enumerate(datalist["training"]):
        image_id = f"case{i}"
        shutil.copy(data / case["image"], studies / f"{image_id}.nii.gz")
        shutil.copy(data / case["label"], studies / "labels" / "final" / f"{image_id}.nii.gz")
        labelled.append(image_id)
    shutil.copy(data / datalist["test"][0]["image"], studies / "unlabelled.nii.gz")
    return studies, labelled, "unlabelled"


class Server:
    def __init__(self, app: Path, studies: Path, work: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = work / "server.log"
        cmd = [
            "monailabel", "start_server", "--app", str(app), "--studies", str(studies),
            "--conf", "models", BUNDLE_NAME, "--conf", "zoo_source", "github", "--conf", "sam2", "false",
            "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        log(" ".join(cmd))
        env = {**os.environ, "MONAI_LABEL_TRACKING_ENABLED": "false"}
        self._log = open(self.log_path, "w")  # closed in stop()
        # cwd = the work dir: the `monailabel` wrapper puts its cwd on PYTHONPATH, and `scripts` must come from the copy
        self.proc = subprocess.Popen(
            cmd, cwd=work, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )

    def wait_ready(self, timeout: float = 300.0) -> float:
        import requests

        start = time.time()
        while time.time() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if requests.get(f"{self.url}/info/", timeout=5).status_code == 200:
                    return time.time() - start
            except requests.RequestException:
                pass
            time.sleep(2)
        raise TimeoutError(f"server not ready after {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # our own process group only (start_new_session)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._log.close()

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def run_checks(server: Server, bundle: Path, studies: Path, labelled: list[str], unlabelled: str) -> dict:
    import nibabel as nib
    import numpy as np
    import requests
    import torch

    result: dict = {}
    info = requests.get(f"{server.url}/info/", timeout=30).json()
    model_info = info["models"][BUNDLE_NAME]
    labels = model_info["labels"]
    label_names = set(labels) if isinstance(labels, dict) else set(labels)
    check({"organ", "lesion"} <= label_names, f"/info/ labels {labels}")
    check(BUNDLE_NAME in info.get("trainers", {}), f"/info/ trainers {list(info.get('trainers', {}))}")
    result["info"] = {"labels": labels, "type": model_info.get("type"), "dimension": model_info.get("dimension")}
    log(f"/info/ ok: labels {labels}")

    start = time.time()
    response = requests.post(
        f"{server.url}/infer/{BUNDLE_NAME}", params={"image": unlabelled, "output": "image"}, timeout=600
    )
    check(response.status_code == 200, f"/infer/ HTTP {response.status_code}: {response.text[:2000]}")
    seg_path = server.log_path.parent / "infer_result.nii.gz"
    seg_path.write_bytes(response.content)
    seg, image = nib.load(seg_path), nib.load(studies / f"{unlabelled}.nii.gz")
    values = {int(v) for v in np.unique(np.asarray(seg.dataobj))}
    check(seg.shape == image.shape, f"/infer/ label shape {seg.shape} != image shape {image.shape}")
    check(values <= CLASSES, f"/infer/ label values {values}")
    check(np.allclose(seg.affine, image.affine, atol=1e-3), f"/infer/ affine {seg.affine} != {image.affine}")
    result["infer"] = {"seconds": round(time.time() - start, 1), "shape": list(seg.shape), "values": sorted(values)}
    log(f"/infer/ ok: {result['infer']}")

    ckpt = bundle / "models" / "model.pt"
    before = (sha1(ckpt), ckpt.stat().st_mtime)
    params = {"max_epochs": 1, "val_split": 0.5, "device": "cpu", "multi_gpu": False, "pretrained": True}
    params["tracking"] = "none"
    start = time.time()
    # asynchronous, as the 3D Slicer and OHIF clients do it: MONAI Label runs the training in a subprocess
    response = requests.post(f"{server.url}/train/{BUNDLE_NAME}", json=params, timeout=60)
    check(response.status_code == 200, f"/train/ HTTP {response.status_code}: {response.text[:2000]}")
    task_id = response.json().get("id")
    status: dict = {}
    while time.time() - start < 1800:
        time.sleep(3)
        status = requests.get(f"{server.url}/train/", timeout=30).json()
        if status.get("id") == task_id and status.get("status") in ("DONE", "ERROR"):
            break
    check(status.get("status") == "DONE", f"/train/ status {json.dumps(status)[:3000]}")
    after = (sha1(ckpt), ckpt.stat().st_mtime)
    check(after[0] != before[0] and after[1] > before[1], "models/model.pt was not rewritten by training")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle)})
    parser.get_parsed_content("network_def").load_state_dict(state)  # strict: a plain network_def state dict
    result["train"] = {
        "seconds": round(time.time() - start, 1),
        "status": status.get("status"),
        "labelled_studies": labelled,
        "model_pt_rewritten": True,
    }
    log(f"/train/ ok: {result['train']}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default=None, help="kept afterwards; default: a temporary dir, removed")
    args = parser.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="mnet_monailabel_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    import monai
    import monailabel
    import torch

    summary = {
        "versions": {"monailabel": monailabel.__version__, "monai": monai.__version__, "torch": torch.__version__},
        "work_dir": str(work),
    }
    start = time.time()
    server = None
    try:
        bundle = prepare_app(work)
        studies, labelled, unlabelled = prepare_studies(work)
        server = Server(work / "apps" / "monaibundle", studies, work)
        summary["startup_seconds"] = round(server.wait_ready(), 1)
        summary.update(run_checks(server, bundle, studies, labelled, unlabelled))
        summary["result"] = "PASS"
    except Exception as err:  # report, then fail
        summary["result"] = "FAIL"
        summary["error"] = f"{type(err).__name__}: {err}"[:4000]
        if server is not None:
            summary["server_log_tail"] = server.tail()
    finally:
        if server is not None:
            server.stop()
    summary["total_seconds"] = round(time.time() - start, 1)
    (work / "result.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    if args.work_dir is None and summary["result"] == "PASS":
        shutil.rmtree(work, ignore_errors=True)
    return 0 if summary["result"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
