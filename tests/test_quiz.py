"""vaelib.quiz: the engine on a small test-only bank, then every notebook's bank and every
notebook's Check yourself cells."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelib import quiz
from vaelib.quiz import Question, Result, Wrong, grade

REPO = Path(__file__).resolve().parent.parent

# ---- the engine, on questions that exist only here -------------------------------------------

NUMBER = Question(
    id="99.1",
    prompt="KL(N(1, 1) || N(0, 1)) in nats?",
    kind="number",
    answer=0.5,
    reason="½ μ² with μ = 1.",
    wrong=[Wrong(-0.5, "the sign of the KL"), Wrong(1.0, "forgot the ½")],
    hint="re-read the Gaussian KL",
)
CHOICE = Question(
    id="99.2",
    prompt="Which is a lower bound on log p(x)?",
    kind="choice",
    choices={"a": "the ELBO", "b": "the KL", "c": "the prior"},
    answer="a",
    reason="log p(x) = ELBO + KL(q || p(z|x)) and the KL is >= 0.",
    wrong=[Wrong("b", "the KL is the gap, not the bound")],
    hint="re-read the KL identity",
)
EXPRESSION = Question(
    id="99.3",
    prompt="KL(N(mu, sigma^2) || N(0, 1))?",
    kind="expression",
    answer=lambda mu, sigma: 0.5 * (mu**2 + sigma**2 - 1 - math.log(sigma**2)),
    at=[{"mu": 0.3, "sigma": 1.2}, {"mu": -1.0, "sigma": 0.5}],
    reason="½(μ² + σ² − 1 − log σ²).",
    wrong=[Wrong(lambda mu, sigma: 0.5 * (mu**2 + sigma**2 - 1 - math.log(sigma)), "log σ²")],
    hint="test it at mu = 0, sigma = 1",
)


@pytest.mark.parametrize(
    "answer",
    [0.5, 0.5 + 1e-8, 1 / 2, np.float64(0.5), np.float32(0.5), np.array(0.5), torch.tensor(0.5)],
    ids=["float", "within-rtol", "fraction", "np64", "np32", "np0d", "torch0d"],
)
def test_a_right_number_is_confirmed_with_its_reason(answer):
    assert grade(NUMBER, answer) == Result(True, "99.1 ✓ right: ½ μ² with μ = 1.")


def test_each_listed_wrong_number_gets_its_own_hint_and_others_the_generic_one():
    assert grade(NUMBER, -0.5) == Result(False, "99.1 ✗ not quite: the sign of the KL")
    assert grade(NUMBER, 1) == Result(False, "99.1 ✗ not quite: forgot the ½")
    assert grade(NUMBER, 0.6) == Result(False, "99.1 ✗ not quite: re-read the Gaussian KL")
    assert grade(NUMBER, 0.5 * (1 + 1e-5)).correct is False  # outside rtol = 1e-6


def test_not_answered_yet():
    for q in (NUMBER, CHOICE, EXPRESSION):
        assert grade(q, None) == Result(
            False, f"{q.id}: not answered yet — replace None with your answer"
        )


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("0.5", "expected a finite number"),
        (True, "expected a finite number"),
        (float("nan"), "expected a finite number"),
        (torch.ones(2), "expected a finite number"),
        ([0.5], "expected a finite number"),
    ],
    ids=["string", "bool", "nan", "vector", "list"],
)
def test_a_number_question_says_what_it_expects(answer, expected):
    result = grade(NUMBER, answer)
    assert result.correct is False and result.message.startswith(f"99.1: {expected}")


def test_choice_letters_hints_and_bad_letters():
    assert grade(CHOICE, "a").correct and grade(CHOICE, " (A) ").correct
    assert grade(CHOICE, "b") == Result(False, "99.2 ✗ not quite: the KL is the gap, not the bound")
    assert grade(CHOICE, "c") == Result(False, "99.2 ✗ not quite: re-read the KL identity")
    for bad in ("d", 1, "ab"):
        assert grade(CHOICE, bad).message == (
            f"99.2: expected one of the letters a, b, c, got {bad!r}"
        )


def test_expression_compared_at_every_point():
    right = lambda mu, sigma: (mu * mu + sigma * sigma - 1) / 2 - math.log(sigma)
    assert grade(EXPRESSION, right).correct
    assert grade(EXPRESSION, lambda mu, sigma: torch.tensor(right(mu, sigma))).correct
    assert grade(EXPRESSION, EXPRESSION.wrong[0].value).message == "99.3 ✗ not quite: log σ²"
    # right at the first point only: still wrong
    first_only = lambda mu, sigma: right(mu, sigma) if mu > 0 else 0.0
    assert grade(EXPRESSION, first_only).message == "99.3 ✗ not quite: test it at mu = 0, sigma = 1"


def test_expression_errors_are_reported_in_one_line():
    assert grade(EXPRESSION, 0.5).message == (
        "99.3: expected a function of mu, sigma, e.g. `lambda mu, sigma: ...`, got float 0.5"
    )
    msg = grade(EXPRESSION, lambda mu, sigma: 1 / 0).message
    assert (
        msg
        == "99.3: your expression raised ZeroDivisionError at mu=0.3, sigma=1.2: division by zero"
    )
    msg = grade(EXPRESSION, lambda mu: mu).message
    assert msg.startswith("99.3: your expression raised TypeError at mu=0.3, sigma=1.2")
    assert "\n" not in msg
    msg = grade(EXPRESSION, lambda mu, sigma: "x").message
    assert msg == "99.3: your expression returned 'x' at mu=0.3, sigma=1.2, not a finite number"


def test_check_prints_the_line_and_does_not_display_a_second_copy(capsys):
    result = quiz.check("00.1", None)
    assert capsys.readouterr().out == result.message + "\n"
    assert result.message == "00.1: not answered yet — replace None with your answer"
    assert result._ipython_display_() is None  # IPython shows nothing under the printed line


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(id="3.1"), "id must look like"),
        (dict(kind="text"), "kind must be one of"),
        (dict(reason=""), "reason must be a non-empty string"),
        (dict(hint=""), "hint must be a non-empty string"),
        (dict(answer="0.5"), "answer must be a finite number"),
        (dict(wrong=[Wrong(0.5, "same")]), "equals the answer"),
        (dict(wrong=[(1.0, "a tuple")]), "Wrong(value, hint)"),
        (dict(choices={"a": "x"}), "choices are for kind='choice' only"),
        (dict(kind="choice", answer="a", choices={"a": "x", "b": "y"}, wrong=[]), None),
        (dict(kind="choice", answer="z", choices={"a": "x"}, wrong=[]), "letters of choices"),
        (dict(kind="expression", answer=lambda mu: mu, wrong=[]), "at must list the points"),
        (dict(kind="expression", answer=0.5, wrong=[], at=[{"mu": 1.0}]), "must be callables"),
    ],
    ids=[
        "id",
        "kind",
        "reason",
        "hint",
        "answer-type",
        "wrong-equals-answer",
        "wrong-type",
        "stray-choices",
        "valid-choice",
        "choice-letter",
        "no-points",
        "not-callable",
    ],
)
def test_a_malformed_question_is_refused_when_written(kwargs, message):
    base = dict(
        id="99.9",
        prompt="p",
        kind="number",
        answer=0.5,
        reason="r",
        wrong=[Wrong(1.0, "h")],
        hint="g",
    )
    if message is None:
        Question(**{**base, **kwargs})
        return
    with pytest.raises(ValueError, match=re.escape(message)):
        Question(**{**base, **kwargs})


def test_lookup_errors_name_the_problem(capsys):
    with pytest.raises(ValueError, match=r"no question '00\.99'; this notebook has 00\.1"):
        quiz.check("00.99", 1.0)
    with pytest.raises(ValueError, match="looks like '03.2'"):
        quiz.check("0.1", 1.0)
    with pytest.raises(ValueError, match="no questions for notebook 98"):
        quiz.questions("98")
    quiz.show(0)
    shown = capsys.readouterr().out
    assert shown.startswith("00.1  ") and "(a) " in shown


# ---- every bank ---------------------------------------------------------------------------

BANK = quiz.questions()
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _right(q):
    """The question's own answer, as a reader would type it."""
    return q.answer


@pytest.mark.parametrize("q", BANK, ids=[q.id for q in BANK])
def test_every_right_answer_passes(q):
    result = grade(q, _right(q))
    assert result == Result(True, f"{q.id} ✓ right: {q.reason}")
    if q.kind == "number":  # a torch scalar and a value just inside the tolerance pass too
        assert grade(q, torch.tensor(float(q.answer), dtype=torch.float64)).correct
        assert grade(q, q.answer + 0.5 * (q.atol + q.rtol * abs(q.answer))).correct


@pytest.mark.parametrize("q", BANK, ids=[q.id for q in BANK])
def test_each_listed_wrong_answer_gets_its_own_hint(q):
    assert q.wrong, f"{q.id} lists no misconception"
    hints = [w.hint for w in q.wrong]
    assert len(set(hints)) == len(hints), f"{q.id}: two Wrongs share a hint"
    for w in q.wrong:
        result = grade(q, w.value)
        assert result == Result(False, f"{q.id} ✗ not quite: {w.hint}")
        assert w.hint != q.hint
    if q.kind == "choice":
        assert 2 <= len(q.choices) <= 6


def test_ids_are_unique_and_every_bank_has_three_to_five_questions():
    ids = [q.id for q in BANK]
    assert len(ids) == len(set(ids))
    banks = {}
    for q in BANK:
        banks.setdefault(q.notebook, []).append(q)
    for nn, bank in banks.items():
        assert 3 <= len(bank) <= 5, f"bank_{nn} has {len(bank)} questions"
        assert any(p.name.startswith(f"{nn}_") for p in NOTEBOOKS), f"bank_{nn}: no notebook {nn}"


CALL = re.compile(r"quiz\.check\(\s*[\"'](\d\d\.\d+)[\"']")


def _quiz_cells(nb):
    return [
        (i, c)
        for i, c in enumerate(nb["cells"])
        if c["cell_type"] == "code" and CALL.search("".join(c["source"]))
    ]


def _heading_index(nb, start):
    for i, c in enumerate(nb["cells"]):
        if c["cell_type"] == "markdown" and any(
            line.startswith("#") and line.lstrip("#").strip().lower().startswith(start)
            for line in "".join(c["source"]).splitlines()
        ):
            return i
    return None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_check_yourself_cells_ask_the_notebooks_own_questions(path):
    nb = json.loads(path.read_text())
    nn = path.name[:2]
    cells = _quiz_cells(nb)
    check = _heading_index(nb, "check yourself")
    try:
        bank = {q.id for q in quiz.questions(nn)}
    except ValueError:
        bank = set()
    if not cells and check is None:
        assert not bank, f"bank_{nn} exists but {path.name} has no Check yourself section"
        return
    assert check is not None, f"{path.name} calls quiz.check but has no '## Check yourself' heading"
    deeper = _heading_index(nb, "going deeper")
    assert deeper is None or check < deeper, "Check yourself comes before the first Going deeper"
    asked = []
    for i, cell in cells:
        src = "".join(cell["source"])
        asked += CALL.findall(src)
        assert i > check, f"{path.name}: a quiz cell before the Check yourself heading"
        out = "".join("".join(o.get("text", "")) for o in cell.get("outputs", []))
        assert "not answered yet" in out, f"{path.name}: committed quiz cell is answered: {src!r}"
    assert set(asked) <= bank, f"{path.name} asks {sorted(set(asked) - bank)}, not in bank_{nn}"
    assert set(asked) == bank, f"{path.name} does not ask {sorted(bank - set(asked))}"
    code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert re.search(r"^from vaelib import [\w, ]*\bquiz\b", code, re.M), (
        f"{path.name}: import quiz in the import cell (from vaelib import quiz)"
    )
