"""benchmarks/gpu.py keeps working without a GPU: its smoke mode (tiny network,
tiny shapes, the CPU) writes a full entry to the file it is given, not to
benchmarks/RESULTS.md; the device peaks and the largest-batch estimate."""

from __future__ import annotations

import pytest

from benchmarks import gpu
from benchmarks.common import RESULTS


def test_smoke_run_writes_its_entry_to_the_given_file(tmp_path):
    results = tmp_path / "RESULTS.md"
    before = RESULTS.read_bytes()
    assert gpu.main(["--smoke", "--models", "r50", "--results", str(results)]) == 0
    text = results.read_text()
    assert RESULTS.read_bytes() == before
    assert "### GPU benchmark: R-50 and R-50-DCN inference, serving, training (smoke, CPU)" in text
    assert "Command: `python -m " in text
    rows = [line for line in text.splitlines() if line.startswith("| R-50 |")]
    # inference: batch 1, XLA off; training: batch 1; serving: requests of 1
    assert len(rows) == 3, text
    assert "Not run or failed" not in text
    assert "GFLOP" in text and "time budget" not in text


def test_device_peaks_by_name():
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3", "float32", tf32=True) == 494.7
    assert gpu.peak_tflops("NVIDIA H100 PCIe", "mixed_bfloat16", tf32=True) == 756.0
    assert gpu.peak_tflops("NVIDIA A100-SXM4-40GB", "float32", tf32=False) == 19.5
    assert gpu.peak_tflops("Tesla V100-SXM2-16GB", "float32", tf32=True) == 15.7  # no TF32
    assert gpu.peak_tflops("NVIDIA L40S", "mixed_float16", tf32=True) == 362.0  # not L4's
    assert gpu.peak_tflops("CPU", "float32", tf32=False) is None


def test_largest_batch_extrapolates_the_peak_per_image():
    # 1000 MiB fixed + 500 MiB an image: 90% of 8000 MiB holds 12 images
    assert gpu.largest_batch({2: 2000.0, 4: 3000.0}, 8000.0) == 12
    assert gpu.largest_batch({2: 2000.0, 4: 2000.0}, 8000.0) is None


@pytest.mark.parametrize("name", ["r50", "r50-dcn"])
def test_models_are_valid_configs(name):
    cfg = gpu._config(name, smoke=False, extra=["data.batch_size=8"])
    assert cfg.model.backbone.depth == 50
    assert bool(cfg.model.head.dcn) == (name == "r50-dcn")
