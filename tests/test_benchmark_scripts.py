"""The pipeline and whole-volume inference benchmarks run end to end and write their JSON (no timing asserts)."""

from __future__ import annotations

import json

from benchmarks import inference, pipeline


def test_inference_benchmark_quick(tmp_path):
    out = tmp_path / "inference.json"
    result = inference.main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["written"] == ["ct_seg.nii.gz"]
    for key in ("preprocessing_s", "sliding_window_s", "postprocess_and_write_s", "peak_rss_mb"):
        assert saved[key] > 0
    assert abs(saved["total_s"] - sum(result[k] for k in ("preprocessing_s", "sliding_window_s",
                                                          "postprocess_and_write_s"))) < 1e-9  # fmt: skip


def test_pipeline_benchmark_quick(tmp_path):
    out = tmp_path / "pipeline.json"
    pipeline.main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["pure_step_s"] > 0 and saved["pipeline_step_s"] > 0 and saved["data_only_s"] > 0
    assert saved["pipeline_over_pure_rate"] == saved["pure_step_s"] / saved["pipeline_step_s"]


def test_inference_benchmark_cohort_quick(tmp_path):
    out = tmp_path / "cohort.json"
    inference.main(["--quick", "--cases", "2", "--compare", "[0,false]", "[0,true]", "--out", str(out)])
    runs = json.loads(out.read_text())["runs"]
    assert [(r["num_workers"], r["background_writes"]) for r in runs] == [(0, False), (0, True)]
    for run in runs:
        assert run["cases"] == 2 and run["written"] == 2
        assert 0 < run["network_busy_share"] <= 1 and run["peak_rss_main_mb"] > 0
