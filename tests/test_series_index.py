"""scripts/series_index.py: README's notebook table and 00_start_here's reading path come from the
notebooks' first cells, and go stale (this test fails) when a notebook is added or retitled until
`series_index.py --write` runs."""

import importlib.util
import json
import math
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
    monkeypatch.setenv("VAELIB_QUICK", "1")  # 00 trains its one-screen VAE for seconds, not minutes
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


# ---- the reading-time model -----------------------------------------------------------------


def _md(text):
    return {"cell_type": "markdown", "metadata": {}, "source": [text]}


def _code(text, figures=0, hidden=False):
    return {
        "cell_type": "code",
        "metadata": {"jupyter": {"source_hidden": True}} if hidden else {},
        "source": [text],
        "outputs": [{"output_type": "display_data", "data": {"image/png": "", "text/plain": ""}}]
        * figures,
    }


def test_core_counts_words_equations_code_lines_and_figures():
    nb = notebook(
        FIRST,
        [
            _md("Two displays: $$a = b$$ and\n$$\nc = d\\\\\ne = f\n$$ and inline $x$."),
            _code("a = 1\n\nb = 2", figures=1),
            _code("hidden = 1", figures=2, hidden=True),  # its figures show, its code does not
            _code("# NBVAL_CHECK_OUTPUT\nassert True", figures=1),  # the check cell: nothing
            _md("![a figure](x.png) one"),
            _md("## Check yourself\n$$y$$ ![b](y.png)"),
            _code("c = 3", figures=1),
        ],
    )
    first = len(FIRST.split())
    # 17 + 3 words split by spaces, two $$ blocks, 2 code lines, 1 + 2 + 1 figures
    assert series_index.core_counts(nb) == (first + 20, 2, 2, 4)
    assert series_index.core_path(nb) == (first + 20, 2)


def test_reading_minutes_is_the_stated_model():
    c = series_index.Counts(words=1440, equations=2, lines=96, figures=3)
    # 1440 / 150 + 2 + 96 / 20 + 3 = 19.4 minutes at s = 1
    assert series_index.reading_minutes(c, scale=1) == pytest.approx(19.4, rel=1e-12)
    rates = (
        c.words / series_index.WORDS_PER_MINUTE
        + c.equations * series_index.MINUTES_PER_EQUATION
        + c.lines / series_index.LINES_PER_MINUTE
        + c.figures * series_index.MINUTES_PER_FIGURE
    )
    assert series_index.reading_minutes(c) == pytest.approx(rates, rel=1e-12)
    assert series_index.reading_minutes(c) == pytest.approx(1.04 * 19.4, rel=1e-12)


def _core_counts_at(commit):
    """{notebook number: core_counts} of the notebooks at a commit, read with git; skips the test
    when the history is not there."""
    import subprocess

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
        ).stdout

    try:
        names = git("ls-tree", "--name-only", commit, "notebooks/").split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"no git history with commit {commit}")
    return {
        Path(n).name[:2]: series_index.core_counts(json.loads(git("show", f"{commit}:{n}")))
        for n in names
        if n.endswith(".ipynb")
    }


def test_the_calibration_is_refitted_from_the_timed_notebooks():
    """The counts in TIMED_READS are those of the notebooks the readers timed (commit 3aaeb51, read
    with git when the history is there), and the stated scale is their least-squares fit."""
    at = _core_counts_at("3aaeb51")
    for number, counts in series_index.TIMED_READS.items():
        assert at[number] == counts, number
    low, high = series_index.TIMED_MINUTES
    observed = {k: (c, (low + high) / 2) for k, c in series_index.TIMED_READS.items() if k != "00"}
    scale = series_index.fit_reading_scale(observed)
    assert scale == pytest.approx(1.036, abs=5e-4)
    assert series_index.READING_SCALE == round(scale, 2)
    minutes = [series_index.reading_minutes(c) for c, _ in observed.values()]
    assert low <= min(minutes) and max(minutes) <= high  # the model fits every timed core path
    assert round(min(minutes)) == 27 and round(max(minutes)) == 37  # as the docstring says
    first_six = sum(
        series_index.reading_minutes(series_index.TIMED_READS[f"0{i}"]) for i in range(6)
    )
    assert round(first_six, -1) == 180  # the docstring's 180 minutes for 00-05
    # the old model's 18-23 minutes, for the record
    old = [round(c.words / 150 + c.lines / 20) for c, _ in observed.values()]
    assert (min(old), max(old)) == (18, 23)


def test_the_close_reads_are_refitted_from_the_notebooks_they_read():
    """CLOSE_READS holds the counts of the notebooks at the commit the second readers read, and
    CLOSE_READING_SCALE is the least-squares fit to their minutes, with the miss the docstring
    states."""
    at = _core_counts_at(series_index.CLOSE_READS_COMMIT)
    for number, (counts, _) in series_index.CLOSE_READS.items():
        assert at[number] == counts, number
    scale = series_index.fit_reading_scale(series_index.CLOSE_READS)
    assert scale == pytest.approx(2.560, abs=5e-4)
    assert series_index.CLOSE_READING_SCALE == round(scale, 2)
    miss = [
        series_index.reading_minutes(c, scale=series_index.CLOSE_READING_SCALE) - m
        for c, m in series_index.CLOSE_READS.values()
    ]
    assert round(math.sqrt(sum(d * d for d in miss) / len(miss)), 1) == 7.7  # the docstring's
    minutes = [m for _, m in series_index.CLOSE_READS.values()]
    assert (min(minutes), max(minutes)) == (40, 65)


def test_fit_reading_scale_is_least_squares():
    a, b = series_index.Counts(150, 0, 0, 0), series_index.Counts(300, 0, 0, 0)  # t = 1 and 2
    # minimise (s - 2)^2 + (2 s - 3)^2: s = (2 + 6) / (1 + 4) = 1.6
    assert series_index.fit_reading_scale({"a": (a, 2), "b": (b, 3)}) == pytest.approx(1.6)


def test_a_cut_core_path_makes_the_saved_reading_times_stale(copy_of_repo):
    """00 prints each core path's counts and minutes: cutting a core path makes them stale."""
    repo = copy_of_repo
    assert series_index.start_here_is_stale(repo) is None
    path = repo / "notebooks" / "03_jensen_and_the_elbo.ipynb"
    nb = json.loads(path.read_text())
    nb["cells"].insert(1, _md("Twelve more words of prose on the core path, to be cut later."))
    path.write_text(json.dumps(nb))
    assert "other core-path counts or reading times" in series_index.start_here_is_stale(repo)
