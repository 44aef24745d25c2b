"""Every notebook in notebooks/ executes top to bottom (tiny settings), so none can rot.

Each notebook's first code cell reads ``JDD_NOTEBOOK_QUICK`` and shrinks its settings; the outputs
saved in the repository come from a normal run.
"""

import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert "quickstart.ipynb" in [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("JDD_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert "JDD_NOTEBOOK_QUICK" in first_code.source, "first code cell must honour QUICK mode"
    assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "notebooks are committed with their outputs"
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
