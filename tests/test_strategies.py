"""train.strategy beyond one machine: TF_CONFIG checks, the TPU path up to the TPU."""

from __future__ import annotations

import json
import types

import pytest
import tensorflow as tf

from atss_tf import cli
from atss_tf.config import load_config
from atss_tf.errors import ConfigError
from atss_tf.training.strategy import make_strategy, read_tf_config
from tests.helpers.tiny import one_step_config_file, tiny_config

TWO_WORKERS = {"worker": ["localhost:20001", "localhost:20002"]}


def test_a_valid_tf_config_is_read():
    text = json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker", "index": 1}})
    assert read_tf_config(text)["task"]["index"] == 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the environment variable TF_CONFIG is not set"),
        ("{cluster: 1}", "TF_CONFIG is not valid JSON"),
        (json.dumps({"task": {"type": "worker", "index": 0}}), "no 'cluster' with a 'worker'"),
        (json.dumps({"cluster": {"worker": []}}), "lists no worker"),
        (json.dumps({"cluster": TWO_WORKERS}), "no 'task' with 'type' and 'index'"),
        (
            json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker", "index": 2}}),
            "names no machine of its cluster",
        ),
        (
            json.dumps({"cluster": TWO_WORKERS, "task": {"type": "ps", "index": 0}}),
            "task.type must be one of ['worker']",
        ),
    ],
)
def test_a_malformed_tf_config_is_one_clear_error(text, message):
    with pytest.raises(ConfigError) as info:
        read_tf_config(text)
    assert message in str(info.value) and "TF_CONFIG" in str(info.value)


def test_the_tpu_path_runs_until_a_tpu_is_required(monkeypatch):
    """The resolver, the cluster connection and the TPU system initialisation
    are what the TPU path runs; without a TPU the first of them stops it."""
    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(ConfigError, match=r"train.strategy=tpu: no TPU found on this machine"):
        make_strategy("tpu")
    monkeypatch.setenv("TPU_NAME", "grpc://127.0.0.1:1")  # nothing listens there
    with pytest.raises(ConfigError, match=r"no TPU found on TPU_NAME='grpc://127.0.0.1:1'"):
        make_strategy("tpu")


@pytest.mark.parametrize(
    "strategy, message",
    [
        ("tpu", "train.strategy=tpu: no TPU found"),
        ("multi_worker", "train.strategy=multi_worker needs TF_CONFIG"),
        ("horovod", "train.strategy='horovod'"),
    ],
)
def test_train_refuses_a_strategy_it_cannot_start_before_any_work(
    strategy, message, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("TPU_NAME", raising=False)
    config = one_step_config_file(tmp_path)
    out = tmp_path / "run"
    argv = ["train", "--config", str(config), "--out", str(out)]
    assert cli.main([*argv, "--set", f"train.strategy={strategy}"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_16_bit_precision_on_a_cpu_without_native_support_warns():
    from atss_tf.training.strategy import cpu_flags, emulated_precision_warning

    cpu = tf.distribute.get_strategy()  # this machine's CPU
    plain = {"avx512f", "avx512_vnni"}
    message = emulated_precision_warning("mixed_bfloat16", cpu, flags=plain)
    assert "train.precision=mixed_bfloat16" in message and "avx512_bf16" in message
    assert "avx512_fp16" in emulated_precision_warning("mixed_float16", cpu, flags=plain)
    assert emulated_precision_warning("mixed_bfloat16", cpu, flags=plain | {"amx_bf16"}) is None
    assert emulated_precision_warning("float32", cpu, flags=plain) is None
    assert cpu_flags("/nonexistent/cpuinfo") is None  # not Linux: no warning, no guess
    assert isinstance(cpu_flags(), (set, type(None)))


def _strategy_on(*devices: str):
    """A stand-in strategy whose replicas sit on ``devices``."""
    return types.SimpleNamespace(extended=types.SimpleNamespace(worker_devices=devices))


def test_jit_compile_auto_is_xla_on_accelerators_and_not_on_cpus():
    from atss_tf.training.strategy import device_kind, resolve_jit_compile

    cpu = tf.distribute.get_strategy()
    gpus = _strategy_on("/job:localhost/replica:0/task:0/device:GPU:0", "/device:GPU:1")
    tpus = _strategy_on("/job:worker/replica:0/task:0/device:TPU:0")
    assert device_kind(_strategy_on("/device:CPU:0", "/device:CPU:1")) == "CPU"
    assert (device_kind(gpus), device_kind(tpus)) == ("GPU", "TPU")
    if not tf.config.list_logical_devices("GPU"):
        assert device_kind(cpu) == "CPU"
        assert resolve_jit_compile("auto", cpu) is False
    assert resolve_jit_compile("auto", gpus) is True
    assert resolve_jit_compile("auto", tpus) is True
    assert resolve_jit_compile(True, cpu) is True and resolve_jit_compile(False, gpus) is False


def test_a_default_config_compiles_with_xla_only_off_the_cpu_and_refuses_other_values():
    from atss_tf.training.fit import build_training_model
    from atss_tf.training.strategy import device_kind

    on_accelerator = device_kind(tf.distribute.get_strategy()) != "CPU"
    assert load_config(None).train.jit_compile == "auto"
    assert build_training_model(tiny_config()).jit_compile is on_accelerator
    assert build_training_model(tiny_config(["train.jit_compile=true"])).jit_compile is True
    assert build_training_model(tiny_config(["train.jit_compile=false"])).jit_compile is False
    with pytest.raises(ConfigError, match=r"train.jit_compile.*true \| false \| auto"):
        load_config(None, ["train.jit_compile=sometimes"])
