"""The quickstart notebook runs top to bottom (tiny settings) without a cell error."""

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("ATSS_QUICKSTART_TINY", "1")
    monkeypatch.setenv("ATSS_QUICKSTART_DIR", str(tmp_path))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(ROOT / "notebooks" / "01_quickstart.ipynb", as_version=4)
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "AP50" in outputs
    assert "'boxes': (1, 100, 4)" in outputs
    assert (tmp_path / "model.keras").exists()
    assert os.environ["ATSS_QUICKSTART_TINY"] == "1"
