"""Builds a .ipynb (no outputs) from a percent-format script: `# %%` starts a code cell,
`# %% [markdown]` a markdown cell whose lines drop their leading `# `.

    python tools/make_notebook.py notebooks/src/01_quickstart.py notebooks/01_quickstart.ipynb

The scripts under notebooks/src/ are the source of truth; tests check the notebooks match them.
"""
from __future__ import annotations

import sys

import nbformat


def cells_from_script(text: str) -> list:
    cells, kind, lines = [], None, []

    def flush():
        if kind is None:
            return
        body = "\n".join(lines).strip("\n")
        if kind == "markdown":
            body = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#")
                             for line in body.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(body))
        elif body:
            cells.append(nbformat.v4.new_code_cell(body))

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        elif kind is not None:
            lines.append(line)
    flush()
    return cells


def build(script_text: str) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook(cells=cells_from_script(script_text))
    notebook.metadata.update({"kernelspec": {"name": "python3", "display_name": "Python 3",
                                             "language": "python"},
                              "accelerator": "GPU", "colab": {"provenance": []}})
    for i, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{i}"  # stable ids keep regenerated notebooks byte-identical
    return notebook


def main(source: str, target: str) -> None:
    with open(source, encoding="utf-8") as f:
        notebook = build(f.read())
    nbformat.write(notebook, target)


if __name__ == "__main__":
    main(*sys.argv[1:3])
