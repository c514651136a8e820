"""``train.strategy=multi_worker``: two worker processes on localhost
(``TF_CONFIG``), same global batch, give the losses and weights of one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.tiny import tiny_config, with_synthetic_data

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "multi_worker_script.py"
TIME_LIMIT_S = 420


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start(data_dir: Path, out_dir: Path, mode: str, tf_config: dict | None = None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    log = open(out_dir / f"{mode}-{len(list(out_dir.glob('*.log')))}.log", "w")
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(data_dir), str(out_dir), mode],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_all(procs: list, deadline: float) -> None:
    """Wait for every process; on a failure or the deadline, kill them all (a
    worker whose peer died waits for it forever)."""
    try:
        while any(p.poll() is None for p in procs):
            failed = [p for p in procs if p.poll() not in (None, 0)]
            if failed:
                pytest.fail(f"a process exited with code {failed[0].returncode}")
            if time.time() > deadline:
                pytest.fail(f"not finished within {TIME_LIMIT_S} s")
            time.sleep(0.5)
        assert [p.returncode for p in procs] == [0] * len(procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


@pytest.mark.slow
def test_two_workers_equal_one_process(tmp_path):
    data_dir, single, cluster = tmp_path / "data", tmp_path / "single", tmp_path / "cluster"
    for d in (single, cluster):
        d.mkdir()
    with_synthetic_data(tiny_config(), data_dir)  # generated once, read by every process
    deadline = time.time() + TIME_LIMIT_S
    try:
        wait_all([start(data_dir, single, "single")], deadline)
        workers = [f"localhost:{port}" for port in free_ports(2)]
        procs = [
            start(
                data_dir,
                cluster,
                "worker",
                {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}},
            )
            for i in range(2)
        ]
        wait_all(procs, deadline)
    except BaseException:
        for log in sorted(tmp_path.rglob("*.log")):
            print(f"--- {log}\n{log.read_text()[-3000:]}")
        raise

    one = json.loads((single / "losses-single.json").read_text())
    assert one["replicas"] == 1 and one["step"] == 3
    assert one["image_batches"] == [[4]]
    w_one = np.load(single / "weights-single.npz")
    for index in range(2):
        two = json.loads((cluster / f"losses-worker{index}.json").read_text())
        assert two["replicas"] == 2 and two["step"] == 3
        assert two["image_batches"] == [[2]]  # each worker trains on its half of the batch
        for a, b in zip(one["losses"], two["losses"], strict=True):
            for key in ("loss", "cls_loss", "reg_loss", "centerness_loss"):
                assert b[key] == pytest.approx(a[key], rel=1e-4), (index, key)
        w_two = np.load(cluster / f"weights-worker{index}.npz")
        for key in w_one.files:
            np.testing.assert_allclose(w_two[key], w_one[key], rtol=1e-4, atol=1e-6)
    # The chief (worker 0) wrote the run; worker 1 wrote nothing beside it.
    run = cluster / "run"
    assert (run / "model.keras").exists() and (run / "checkpoints" / "latest.json").exists()
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 3
    assert not list(run.glob("tmp-*")) and not list((run / "checkpoints").glob("tmp-*"))
