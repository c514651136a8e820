"""Training callbacks: stop on NaN with a clear message, periodic COCO evaluation, checkpoints."""

import json
import math

import keras
import numpy as np
import pytest

from atss_tf.training.callbacks import (
    CocoEvalCallback,
    ResumableCheckpoint,
    StopOnNaN,
    TimeEstimate,
)


def _toy_model(lr: float) -> keras.Model:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    return model


def test_nan_loss_stops_training_with_a_clear_message():
    model = _toy_model(1e30)  # diverges to inf/NaN within a few steps
    x = np.ones((64, 2), np.float32) * 1e3
    with pytest.raises(FloatingPointError, match=r"training stopped: loss became .* at step \d+"):
        model.fit(x, x[:, :1], batch_size=4, epochs=5, verbose=0, callbacks=[StopOnNaN()])


def test_finite_losses_pass():
    cb = StopOnNaN()
    cb.set_model(_toy_model(0.1))
    cb.on_train_batch_end(0, {"loss": 1.0, "cls_loss": 0.5})
    with pytest.raises(FloatingPointError, match="cls_loss became nan"):
        cb.on_train_batch_end(1, {"loss": 1.0, "cls_loss": math.nan})


def test_time_estimate_logs_the_median_step_after_the_compiled_first(caplog):
    """One line after ``skip_steps`` and ``measure_steps`` more: the median
    step (a second canvas' compile does not inflate it) times the steps left
    from the optimizer's count (a resumed run counts from its checkpoint)."""
    now = [0.0]
    cb = TimeEstimate(max_iters=1000, measure_steps=5, skip_steps=1, clock=lambda: now[0])
    model = _toy_model(0.1)
    model.optimizer.iterations.assign(200)  # resumed at step 200
    cb.set_model(model)
    durations = [30.0, 0.5, 0.5, 9.0, 0.5, 0.5, 0.5, 0.5]  # compile, steps, a 2nd canvas
    with caplog.at_level("INFO", logger="atss_tf"):
        for batch, seconds in enumerate(durations):
            cb.on_train_batch_begin(batch)
            now[0] += seconds
            model.optimizer.iterations.assign_add(1)
            cb.on_train_batch_end(batch)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    # logged after step 206: 794 steps left at 0.5 s
    assert lines[0].startswith("0.50 s/step: the remaining 794 steps take about 6.6 min (until ")


def test_coco_eval_callback_runs_every_n_epochs_and_logs_metrics():
    calls = []

    def evaluate_fn():
        calls.append(1)
        return {"AP": 0.5, "AP50": 0.75}

    cb = CocoEvalCallback(evaluate_fn, every_n_epochs=2)
    logs_per_epoch = []
    for epoch in range(4):
        logs = {"loss": 1.0}
        cb.on_epoch_end(epoch, logs)
        logs_per_epoch.append(logs)
    assert len(calls) == 2
    assert "val_AP50" not in logs_per_epoch[0]
    assert logs_per_epoch[1]["val_AP50"] == 0.75 and logs_per_epoch[3]["val_AP"] == 0.5


def test_checkpoint_keeps_the_newest_and_restores_optimizer_state(tmp_path):
    model = _toy_model(0.1)
    x = np.ones((8, 2), np.float32)
    ckpt = ResumableCheckpoint(tmp_path, keep=2)
    model.fit(x, x[:, :1], batch_size=4, epochs=3, verbose=0, callbacks=[ckpt])
    files = sorted(p.name for p in tmp_path.glob("ckpt-*.keras"))
    assert files == ["ckpt-00000004.keras", "ckpt-00000006.keras"]
    assert json.loads((tmp_path / "latest.json").read_text()) == {
        "step": 6,
        "epoch": 3,
        "path": "ckpt-00000006.keras",
    }
    fresh = _toy_model(0.1)
    info = ResumableCheckpoint(tmp_path).restore(fresh)
    assert info["step"] == 6 and int(fresh.optimizer.iterations.numpy()) == 6
    np.testing.assert_array_equal(fresh.get_weights()[0], model.get_weights()[0])
    (tmp_path / "ckpt-00000006.keras").unlink()
    with pytest.raises(FileNotFoundError, match="ckpt-00000006"):
        ResumableCheckpoint(tmp_path).restore(_toy_model(0.1))


def test_a_weights_h5_checkpoint_of_an_earlier_run_still_restores(tmp_path):
    model = _toy_model(0.1)
    x = np.ones((8, 2), np.float32)
    model.fit(x, x[:, :1], batch_size=4, epochs=1, verbose=0)
    model.save_weights(tmp_path / "ckpt-00000002.weights.h5")
    (tmp_path / "latest.json").write_text(
        json.dumps({"step": 2, "epoch": 1, "path": "ckpt-00000002.weights.h5"})
    )
    fresh = _toy_model(0.1)
    assert ResumableCheckpoint(tmp_path).restore(fresh)["step"] == 2
    assert int(fresh.optimizer.iterations.numpy()) == 2
    np.testing.assert_array_equal(fresh.get_weights()[0], model.get_weights()[0])
