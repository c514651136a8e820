"""``import atss_tf`` is all a user needs: Keras classes registered, the notebook API on top."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import atss_tf
from atss_tf.model import build_detector
from tests.helpers.tiny import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def test_public_api_names_resolve():
    for name in atss_tf.__all__:
        assert getattr(atss_tf, name) is not None, name
    for name in ("ATSSDetector", "load_config", "build_dataset", "TargetEncoder", "detect"):
        assert name in atss_tf.__all__
    assert callable(atss_tf.draw_detections)


def test_import_atss_tf_alone_loads_a_saved_model_in_a_fresh_process(tmp_path):
    path = tmp_path / "tiny.keras"
    build_detector(tiny_config()).save(path)
    code = (
        "import atss_tf, keras, numpy as np\n"
        f"m = keras.saving.load_model({str(path)!r})\n"
        "out = m(np.zeros((1, 128, 128, 3), 'float32'))\n"
        "print(type(m).__name__, tuple(out['cls_logits'].shape))\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "ATSSDetector (1, 341, 3)"


@pytest.mark.slow  # over a minute of the default lane's ten
def test_a_wheel_install_runs_the_demo_and_finds_every_config(tmp_path):
    """``pip install .`` (not ``-e``): the package and its configs come from the
    wheel, not from this source tree, and the demo runs with its built-in config."""
    wheels, target, source = tmp_path / "wheels", tmp_path / "site", tmp_path / "source"
    # Build from a clean copy: an in-tree build would leave build/ in the checkout,
    # and files deleted since an earlier build could slip into the wheel from it.
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "runs", ".ruff_cache"
        ),
    )
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("atss_tf-*.whl")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), wheel],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    code = (
        "import sys, atss_tf\n"
        "from atss_tf.commands.common import find_config, shipped_configs_dir\n"
        "from atss_tf.config import load_config\n"
        "print(atss_tf.__file__)\n"
        "names = sorted(p.relative_to(shipped_configs_dir()).as_posix()\n"
        "               for p in shipped_configs_dir().rglob('*.yaml'))\n"
        "for n in names:\n"
        "    load_config(find_config('configs/' + n))\n"
        "print(shipped_configs_dir(), len(names))\n"
        "from atss_tf.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    demo = [
        "demo", "--out", str(tmp_path / "demo"), "--train-images", "8", "--val-images", "4",
        "--verbose", "0", "--set", "train.max_iters=2", "--set", "train.steps_per_epoch=2",
        "--set", "data.canvases=[[128, 128]]", "--set", "data.min_size=[128]",
        "--set", "data.max_size=128", "--set", "data.batch_size=4",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(target), TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run(
        [sys.executable, "-c", code, *demo], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith(str(target)), lines[0]
    folder, count = lines[1].rsplit(" ", 1)
    assert folder.startswith(str(target)) and int(count) == len(
        list((ROOT / "configs").rglob("*.yaml"))
    )
    assert (tmp_path / "demo" / "metrics.json").exists() and "COCO AP" in run.stdout
