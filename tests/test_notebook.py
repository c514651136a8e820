"""The notebooks run top to bottom (tiny settings, this CPU) without a cell error."""

import uuid
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def run_notebook(name: str, monkeypatch, env: dict[str, str]) -> str:
    """Execute ``notebooks/<name>``; the text of its outputs."""
    return notebook_text(execute_notebook(name, monkeypatch, env))


def notebook_text(nb) -> str:
    return "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )


def execute_notebook(name: str, monkeypatch, env: dict[str, str]):
    """Execute ``notebooks/<name>``; the executed notebook."""
    for key, value in {"TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg", **env}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    return nb


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    outputs = run_notebook(
        "01_quickstart.ipynb",
        monkeypatch,
        {"ATSS_QUICKSTART_TINY": "1", "ATSS_QUICKSTART_DIR": str(tmp_path)},
    )
    assert "AP50" in outputs
    assert "'boxes': (1, 100, 4)" in outputs
    assert (tmp_path / "model.keras").exists()


def test_colab_tpu_notebook_falls_back_and_reads_a_remote_path(tmp_path, monkeypatch):
    """No TPU here: the notebook says so, trains on the CPU, reads its data from
    and writes its model to TF's in-memory filesystem (as it would gs://)."""
    root = f"ram://colab-{uuid.uuid4().hex[:8]}"
    monkeypatch.delenv("TPU_NAME", raising=False)
    outputs = run_notebook(
        "02_colab_tpu.ipynb",
        monkeypatch,
        {
            "ATSS_NOTEBOOK_TINY": "1",
            "ATSS_DATA_DIR": f"{root}/data",
            "ATSS_OUT_DIR": f"{root}/run",
        },
    )
    assert "No TPU: train.strategy=tpu: no TPU found" in outputs
    assert "Falling back to train.strategy=default (1 replica(s)) in float32." in outputs
    assert f"{root}/data/train.json" in outputs
    assert "AP50" in outputs
    assert f"{root}/run/model.keras" in outputs  # listed by the kernel, in its own ram://


def test_sample_selection_notebook_shows_its_pictures(tmp_path, monkeypatch):
    nb = execute_notebook(
        "03_sample_selection.ipynb",
        monkeypatch,
        {
            "ATSS_NOTEBOOK_TINY": "1",
            "ATSS_NOTEBOOK_DIR": str(tmp_path),
            # Jupyter's own inline backend, as a notebook user has it.
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        },
    )
    text = notebook_text(nb)
    assert "0.2 * k * L = " in text
    assert "atss: " in text and "positives per object" in text
    assert "k = 15:" in text
    shown = [
        c
        for c in nb.cells
        if c.cell_type == "code" and any("image/png" in o.get("data", {}) for o in c.outputs)
    ]
    assert len(shown) == 6  # every picture cell displayed its figure inline


@pytest.mark.slow
def test_finetune_notebook_converts_fine_tunes_resumes_and_predicts(tmp_path, monkeypatch):
    """The authors' R-50 checkpoint format (the fixture's random weights) converted,
    fine-tuned on 3 classes with background images kept, resumed, evaluated, predicted."""
    from tests.helpers.fixtures import OFFICIAL_CHECKPOINTS, fixture_path

    outputs = run_notebook(
        "04_finetune.ipynb",
        monkeypatch,
        {
            "ATSS_NOTEBOOK_TINY": "1",
            "ATSS_NOTEBOOK_DIR": str(tmp_path),
            "ATSS_CHECKPOINT": str(fixture_path(OFFICIAL_CHECKPOINTS["zip"])),
        },
    )
    assert "324 tensors" in outputs
    assert "Initialised from " in outputs and "loaded 322 of 324 tensors" in outputs
    assert "new classes: 80 -> 3 (circle, square, triangle)" in outputs
    assert "2 images without a box kept as negatives" in outputs
    assert "AP50" in outputs
    assert "not read: the run resumes" in outputs
    assert "step 4" in outputs
    assert "category ids: [2, 5, 9]" in outputs
    assert (tmp_path / "run" / "model.keras").exists()
