"""scripts/series_index.py: README's notebook table and 00_start_here's reading path come from the
notebooks' first cells, and go stale (this test fails) when a notebook is added or retitled until
`series_index.py --write` runs."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("series_index", REPO / "scripts" / "series_index.py")
series_index = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(series_index)


def notebook(first_cell, cells=()):
    return {
        "cells": [{"cell_type": "markdown", "metadata": {}, "source": [first_cell]}, *cells],
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


FIRST = (
    "# 11 · Learned priors\n\n*A subtitle.*\n\n**In one minute.** *Question:* can the prior $p(z)$ "
    "be learned,\n"
    "and what | does it buy? *Answer:* yes.\n\n**What you will learn**\n- one thing\n"
)


def test_committed_readme_and_start_here_match_the_notebooks():
    assert series_index.stale(REPO) == [], "run `.venv/bin/python scripts/series_index.py --write`"


def test_every_notebook_has_an_index_entry_in_order():
    index = series_index.entries(REPO / "notebooks")
    assert [e.number for e in index] == [
        p.name[:2] for p in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    ]
    assert index[0].name == "00_start_here.ipynb" and all(e.question.endswith("?") for e in index)


def test_entry_reads_title_and_question_from_the_first_cell(tmp_path):
    path = tmp_path / "11_learned_priors.ipynb"
    path.write_text(json.dumps(notebook(FIRST)))
    e = series_index.entry(path)
    assert e == (
        "11",
        "11_learned_priors.ipynb",
        "Learned priors",
        "can the prior $p(z)$ be learned, and what | does it buy?",
    )
    table = series_index.readme_table([e])
    row = (
        "| 11 | [Learned priors](notebooks/11_learned_priors.ipynb) "
        "| Can the prior $p(z)$ be learned, and what \\| does it buy? |"
    )
    assert row in table  # capitalised, and the pipe escaped so that it does not end the cell


@pytest.mark.parametrize(
    "first, message",
    [
        ("# Learned priors\n*Question:* a? *Answer:* b", "title line"),
        ("# 12 · Learned priors\n*Question:* a? *Answer:* b", "the title says notebook 12"),
        ("# 11 · Learned priors\nno question here", "*Question:*"),
    ],
    ids=["no-number", "wrong-number", "no-question"],
)
def test_entry_names_the_notebook_and_what_is_missing(tmp_path, first, message):
    path = tmp_path / "11_learned_priors.ipynb"
    path.write_text(json.dumps(notebook(first)))
    with pytest.raises(ValueError, match="11_learned_priors.ipynb") as err:
        series_index.entry(path)
    assert message in str(err.value)


@pytest.fixture
def copy_of_repo(tmp_path):
    """README, scripts and notebooks in a scratch folder (the figures go there too)."""
    for name in ("README.md",):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "scripts", tmp_path / "scripts")
    shutil.copytree(
        REPO / "notebooks",
        tmp_path / "notebooks",
        ignore=shutil.ignore_patterns(".ipynb_checkpoints"),
    )
    return tmp_path


def test_a_new_notebook_is_stale_everywhere_until_written(copy_of_repo, monkeypatch):
    repo = copy_of_repo
    (repo / "notebooks" / "11_learned_priors.ipynb").write_text(json.dumps(notebook(FIRST)))
    problems = series_index.stale(repo)
    assert len(problems) == 2 and "README.md" in problems[0] and "00_start_here" in problems[1]

    series_index.write_readme(repo)  # the README part needs no kernel
    assert series_index.readme_is_stale(repo, series_index.entries(repo / "notebooks")) is None
    assert "Learned priors](notebooks/11_learned_priors.ipynb)" in (repo / "README.md").read_text()
    assert series_index.start_here_is_stale(repo), "00's saved output still lists ten notebooks"

    monkeypatch.setenv(
        "VAELIB_FIGURES", str(repo / "figures")
    )  # 00 saves its figures here, not in the repository
    series_index.write(repo)  # re-executes the copy of 00_start_here
    assert series_index.stale(repo) == []
    saved = series_index._saved_reading_path(
        json.loads((repo / "notebooks" / "00_start_here.ipynb").read_text())
    )
    assert "[11 · Learned priors](11_learned_priors.ipynb)" in saved


def test_a_retitled_notebook_or_changed_question_is_stale(copy_of_repo):
    repo = copy_of_repo
    path = repo / "notebooks" / "07_from_elbo_to_training_loss.ipynb"
    nb = json.loads(path.read_text())
    nb["cells"][0]["source"] = [
        "".join(nb["cells"][0]["source"]).replace("what exactly does", "what does")
    ]
    path.write_text(json.dumps(nb))
    problems = series_index.stale(repo)
    assert len(problems) == 2, problems
