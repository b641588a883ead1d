"""Every notebook runs top to bottom in a real Jupyter kernel, in smoke mode (JAXLAB_SMOKE=1),
stores no outputs, and matches its percent-format source in notebooks/src/."""
import os
import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from make_notebook import build  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# The quick start and the kernel check (seconds) run in every test run; the topic notebooks
# (30-60 s each on 2 cores) run in the slow pass, which CI runs as well.
QUICK = {"01_quickstart", "06_kernels"}
EXECUTIONS = [pytest.param(p, id=p.stem, marks=() if p.stem in QUICK else pytest.mark.slow)
              for p in NOTEBOOKS]


def test_every_source_has_its_notebook():
    sources = sorted(p.stem for p in (ROOT / "notebooks" / "src").glob("*.py"))
    assert sources == [p.stem for p in NOTEBOOKS] and sources


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_readme_links_the_notebook_and_its_colab_page(path):
    readme = (ROOT / "README.md").read_text()
    assert f"](notebooks/{path.name})" in readme
    assert (f"[Open in Colab](https://colab.research.google.com/github/jaxlab/jaxlab/blob/main/"
            f"notebooks/{path.name})") in readme


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_matches_source_and_has_no_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    source = (ROOT / "notebooks" / "src" / f"{path.stem}.py").read_text()
    assert [c.source for c in notebook.cells] == [c.source for c in build(source).cells], \
        f"regenerate: python tools/make_notebook.py notebooks/src/{path.stem}.py {path}"


@pytest.mark.parametrize("path", EXECUTIONS)
def test_notebook_runs_in_smoke_mode(path, monkeypatch):
    monkeypatch.setenv("JAXLAB_SMOKE", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # A notebook's reader has one device (Colab), not the suite's 8 fake CPU ones, which also
    # make the eager analysis code in the notebooks several times slower.
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    monkeypatch.setenv("XLA_FLAGS", " ".join(flags))
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
