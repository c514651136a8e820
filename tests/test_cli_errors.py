"""The command line with bad input: one line naming the problem, exit 2 / 1, fast help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import atss_tf
from atss_tf import cli
from atss_tf.config import save_config
from atss_tf.model import build_detector
from tests.helpers.tiny import one_step_config_file, tiny_config, with_synthetic_data

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo_shapes.yaml")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    build_detector(tiny_config()).save(path)
    return path


def test_a_misspelt_config_key_is_one_line_and_exit_2(capsys, tmp_path):
    for command in (["train", "--out", tmp_path / "r"], ["evaluate", "--weights", "w.keras"]):
        rc, out, err = run_cli(
            capsys, command[0], "--config", DEMO, *command[1:], "--set", "model.head.num_convz=2"
        )
        assert rc == 2
        assert_one_line_error(err, f"atss-tf {command[0]}: error:", "'model.head.num_convz'")
    assert not (tmp_path / "r").exists()


def test_a_missing_weights_file_is_one_line_and_exit_1(capsys, tmp_path):
    photo = tmp_path / "a.png"
    photo.write_bytes(b"")
    rc, _, err = run_cli(
        capsys, "predict", "--weights", "nope.keras", "--images", photo, "--out", tmp_path / "o"
    )
    assert rc == 1
    assert_one_line_error(err, "atss-tf predict: error: weights file not found: nope.keras")


def test_evaluate_without_validation_data_is_a_config_error(capsys, tmp_path, tiny_model):
    cfg_path = tmp_path / "c.yaml"
    save_config(tiny_config(), cfg_path)
    rc, _, err = run_cli(capsys, "evaluate", "--config", cfg_path, "--weights", tiny_model)
    assert rc == 2
    assert_one_line_error(err, "data.val_annotations nor data.val_tfrecords")


def test_debug_shows_the_traceback(capsys, tmp_path):
    args = ["predict", "--weights", "nope.keras", "--images", ROOT / "README.md", "--out", tmp_path]
    rc, _, err = run_cli(capsys, "--debug", *args)
    assert rc == 1 and "Traceback (most recent call last)" in err
    rc, _, err = run_cli(capsys, *args, "--debug")
    assert rc == 1 and "Traceback (most recent call last)" in err


def test_make_tfrecords_errors_go_to_stderr(capsys, tmp_path):
    bad = tmp_path / "a.json"
    bad.write_text("{not json")
    args = ["make-tfrecords", "--annotations", bad, "--images", tmp_path, "--out", tmp_path / "o"]
    rc, out, err = run_cli(capsys, *args)
    assert rc == 1 and out == ""
    assert_one_line_error(err, "a.json: malformed JSON at line 1")
    rc, out, err = run_cli(capsys, *args, "--shards", "0")
    assert rc == 2 and out == ""
    assert_one_line_error(err, "--shards must be >= 1")


def test_invalid_values_are_refused_before_any_work(capsys, tmp_path):
    rc, _, err = run_cli(
        capsys,
        "train",
        "--config",
        DEMO,
        "--out",
        tmp_path / "r",
        "--set",
        "data.batch_size=0",
        "--set",
        "train.steps_per_epoch=0",
        "--set",
        "train.max_iters=-1",
    )
    assert rc == 2
    assert_one_line_error(err, "3 invalid config values", "data.batch_size=0", "train.max_iters=-1")
    assert not (tmp_path / "r").exists()


def test_version():
    proc = subprocess.run(
        [sys.executable, "-m", "atss_tf.cli", "--version"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.strip() == f"atss-tf {atss_tf.__version__}"


HELP_IMPORTS = """
import runpy, sys
sys.argv = ["atss-tf", *sys.argv[1:]]
code = None
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as e:
    code = e.code
print("TENSORFLOW_IMPORTED" if "tensorflow" in sys.modules else "NO_TENSORFLOW", code)
"""


@pytest.mark.parametrize("command", ["", *cli.COMMANDS])
def test_help_does_not_import_tensorflow(tmp_path, command):
    # The console script atss-tf, as pip writes it, run with --help.
    script = tmp_path / "atss-tf"
    script.write_text("import sys\nfrom atss_tf.cli import main\nsys.exit(main())\n")
    code = HELP_IMPORTS.format(script=str(script))
    argv = [command, "--help"] if command else ["--help"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.stdout.strip().splitlines()[-1] == "NO_TENSORFLOW 0", proc.stderr[-2000:]
    assert "usage: atss-tf" in proc.stdout


def test_every_option_has_help_text():
    for name in cli.COMMANDS:
        parser = cli.build_command_parser(name)
        for action in parser._actions:
            assert action.help, f"atss-tf {name} {action.option_strings or action.dest}"


def test_the_data_report_is_printed_once_at_the_start_of_training(capsys, tmp_path):
    cfg = with_synthetic_data(
        tiny_config(["train.max_iters=1", "train.steps_per_epoch=1"]), tmp_path
    )
    config = tmp_path / "c.yaml"
    save_config(cfg, config)
    rc, out, err = run_cli(
        capsys,
        "train",
        "--config",
        config,
        "--out",
        tmp_path / "r",
        "--set",
        "data.max_instances=2",
    )
    assert rc == 0, err
    train_lines = [line for line in err.splitlines() if "train.json:" in line]
    assert len(train_lines) == 1, err
    assert "boxes beyond max_instances dropped" in train_lines[0]
    assert train_lines[0].startswith("WARNING atss_tf.data:")
    assert sum("val.json:" in line for line in err.splitlines()) == 1
    # pycocotools' own prints do not leak into the output
    for noise in ("index created", "Loading and preparing results", "DONE (t="):
        assert noise not in out and noise not in err
    # a log file (not a terminal) gets one line per epoch, not a line per step
    assert out.count("\n") < 20


def test_fit_and_progress_bars_do_not_flood_a_log(monkeypatch, capsys):
    from atss_tf import progress

    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert progress.fit_verbosity() == 2
    bar = progress.progress_bar(1000, "Checking", "image")
    for i in range(1, 1001):
        bar.update(i)
    bar.update(1000, finalize=True)  # callers finalize too: no second last line
    out = capsys.readouterr().out
    assert out.count("\n") <= 3, out
    assert "\x1b" not in out, out  # no terminal colour or cursor codes in a log
    assert out.splitlines()[0] == "Checking"
    assert out.splitlines()[-1].startswith("  1000/1000 images, ")


def test_resuming_with_a_different_config_is_refused_and_keeps_the_run(capsys, tmp_path):
    config = one_step_config_file(tmp_path)
    run = tmp_path / "run"
    assert run_cli(capsys, "train", "--config", config, "--out", run)[0] == 0
    saved = (run / "config.yaml").read_text()
    rc, _, err = run_cli(
        capsys,
        "train",
        "--config",
        config,
        "--out",
        run,
        "--set",
        "train.base_lr=0.5",
        "--set",
        "model.head.num_convs=2",
    )
    assert rc == 2
    assert_one_line_error(
        err, "2 key(s) differ", "train.base_lr: 0.04 -> 0.5", "model.head.num_convs"
    )
    assert (run / "config.yaml").read_text() == saved
    # Running longer is a resume, not a different run.
    rc, out, err = run_cli(
        capsys, "train", "--config", config, "--out", run, "--set", "train.max_iters=2"
    )
    assert rc == 0, err
    assert "Resumed from ckpt-00000001.keras at step 1" in err  # logged (INFO, stderr)
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 2


def test_an_internal_error_keeps_its_traceback(capsys, monkeypatch):
    import atss_tf.commands.assign as assign

    def broken(args):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(assign, "run", broken)
    rc, _, err = run_cli(
        capsys, "assign", "--image-size", "8", "8", "--boxes", "b.json", "--out", "o"
    )
    assert rc == 1
    assert "Traceback" in err and "internal error (ZeroDivisionError)" in err


def test_environment_debug_switch(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("ATSS_TF_DEBUG", "1")
    rc, _, err = run_cli(
        capsys,
        "predict",
        "--weights",
        "nope.keras",
        "--images",
        ROOT / "README.md",
        "--out",
        tmp_path,
    )
    assert rc == 1 and "Traceback" in err
