"""Check-yourself questions for the notebooks, with feedback (issue 23 item 8).

Each notebook NN has a bank module `vaelib/quiz/bank_NN.py` defining `QUESTIONS = [Question(...)]`;
the banks are found with pkgutil the first time a question is looked up (nothing runs at import).
In a notebook:

    from vaelib import quiz
    answer = None   # your answer
    quiz.check("03.2", answer)   # prints one line: not answered yet / right (and why) / a hint

`check` compares the answer with the question's answer and with each listed `Wrong` (a known
misconception, whose hint names the trap without giving the answer away); anything else gets the
question's generic hint. Kinds of answer:

    "number"      a float (numpy and torch scalars accepted), compared with rtol/atol
    "choice"      one letter of `choices`
    "expression"  a callable taking the keyword arguments of each point in `at`; compared with the
                  answer's callable at every point (rtol/atol); errors it raises are reported in one
                  line

`grade(question, answer)` does the comparison without printing (tests use it on their own
questions); `questions(notebook)` lists a notebook's bank; `show(notebook)` prints it.
"""

import importlib
import math
import pkgutil
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ["Question", "Wrong", "Result", "grade", "check", "show", "questions", "question"]

KINDS = ("number", "choice", "expression")
_ID = re.compile(r"(\d\d)\.(\d+)")
_BANK = re.compile(r"bank_(\d\d)")


@dataclass(frozen=True)
class Wrong:
    """A listed wrong answer (a number, a letter or a callable, as the question's kind) and the hint
    that names its misconception without giving the answer away."""

    value: Any
    hint: str


@dataclass(frozen=True)
class Question:
    """One exam-style question; see the module docstring for the kinds of answer."""

    id: str
    prompt: str
    kind: str
    answer: Any
    reason: str
    wrong: Sequence[Wrong] = ()
    choices: Mapping[str, str] | None = None
    at: Sequence[Mapping[str, float]] | None = None
    rtol: float = 1e-6
    atol: float = 1e-9
    hint: str = ""

    def __post_init__(self):
        where = f"Question {self.id!r}"
        if not isinstance(self.id, str) or not _ID.fullmatch(self.id):
            raise ValueError(f"{where}: id must look like 'NN.k' (notebook, question number)")
        if self.kind not in KINDS:
            raise ValueError(f"{where}: kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("prompt", "reason", "hint"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(f"{where}: {name} must be a non-empty string")
        if not (self.rtol >= 0 and self.atol >= 0):
            raise ValueError(f"{where}: rtol and atol must be >= 0, got {self.rtol}, {self.atol}")
        object.__setattr__(self, "wrong", tuple(self.wrong))
        for w in self.wrong:
            if not isinstance(w, Wrong) or not isinstance(w.hint, str) or not w.hint.strip():
                raise ValueError(f"{where}: each entry of wrong must be Wrong(value, hint)")
        if self.kind == "number":
            for value, name in [(self.answer, "answer")] + [
                (w.value, "a Wrong") for w in self.wrong
            ]:
                if _number(value) is None:
                    raise ValueError(f"{where}: {name} must be a finite number, got {value!r}")
            for w in self.wrong:
                if self._close(_number(w.value), _number(self.answer)):
                    raise ValueError(f"{where}: the Wrong {w.value!r} equals the answer")
        if self.kind == "choice":
            if not self.choices or not all(
                isinstance(k, str) and re.fullmatch(r"[a-z]", k) for k in self.choices
            ):
                raise ValueError(f"{where}: choices must map single letters 'a', 'b', ... to text")
            letters = [self.answer] + [w.value for w in self.wrong]
            if any(v not in self.choices for v in letters):
                raise ValueError(f"{where}: answer and Wrong values must be letters of choices")
            if self.answer in [w.value for w in self.wrong]:
                raise ValueError(f"{where}: a Wrong repeats the answer {self.answer!r}")
        elif self.choices is not None:
            raise ValueError(f"{where}: choices are for kind='choice' only")
        if self.kind == "expression":
            if not callable(self.answer) or not all(callable(w.value) for w in self.wrong):
                raise ValueError(f"{where}: answer and Wrong values must be callables")
            if not self.at or not all(isinstance(p, Mapping) and p for p in self.at):
                raise ValueError(f"{where}: at must list the points (keyword dicts) to compare at")
        elif self.at is not None:
            raise ValueError(f"{where}: at is for kind='expression' only")

    @property
    def notebook(self) -> str:
        """The notebook number, "NN"."""
        return self.id.split(".")[0]

    def _close(self, value, reference):
        return abs(value - reference) <= self.atol + self.rtol * abs(reference)


class Result(NamedTuple):
    """What `check` and `grade` return: whether the answer is right, and the line shown."""

    correct: bool
    message: str

    def _ipython_display_(self):
        """Nothing: `check` has printed the message already (no second copy under the cell)."""


def _number(value):
    """A finite float from an int, float, numpy or one-element torch scalar; None otherwise."""
    if isinstance(value, bool | str | bytes) or value is None:
        return None
    if hasattr(value, "numel") and callable(value.numel):  # a torch tensor
        if value.numel() != 1:
            return None
        value = value.item()
    elif hasattr(value, "size") and hasattr(value, "item"):  # a numpy scalar or array
        if value.size != 1:
            return None
        value = value.item()
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _evaluate(question, fn, label):
    """fn at every point of question.at, as floats; raises _AnswerError naming the point."""
    values = []
    for point in question.at:
        args = ", ".join(f"{k}={v}" for k, v in point.items())
        try:
            out = fn(**point)
        except Exception as err:  # the reader's code: report it in one line, no traceback
            raise _AnswerError(
                f"{label} raised {type(err).__name__} at {args}: {err}".rstrip(": ")
            ) from None
        number = _number(out)
        if number is None:
            raise _AnswerError(f"{label} returned {out!r} at {args}, not a finite number")
        values.append(number)
    return values


class _AnswerError(Exception):
    pass


def _matches(question, answer, reference):
    """Whether the reader's answer (already normalised by kind) matches a reference answer."""
    if question.kind == "number":
        return question._close(answer, _number(reference))
    if question.kind == "choice":
        return answer == reference
    expected = _evaluate(question, reference, f"the reference for {question.id}")
    return all(question._close(a, e) for a, e in zip(answer, expected))


def grade(question, answer):
    """Compare `answer` with `question` and return a Result(correct, message); prints nothing.

    None means not answered yet; an answer of the wrong kind (a string for a number, a letter not
    among the choices, something not callable for an expression) gets a message saying what kind of
    answer is expected."""
    qid = question.id
    if answer is None:
        return Result(False, f"{qid}: not answered yet — replace None with your answer")
    if question.kind == "number":
        value = _number(answer)
        if value is None:
            return Result(
                False,
                f"{qid}: expected a finite number (e.g. 0.5), got {type(answer).__name__} "
                f"{answer!r}",
            )
    elif question.kind == "choice":
        letters = ", ".join(sorted(question.choices))
        value = answer.strip().strip("()").lower() if isinstance(answer, str) else None
        if value not in question.choices:
            return Result(False, f"{qid}: expected one of the letters {letters}, got {answer!r}")
    else:
        if not callable(answer):
            names = ", ".join(question.at[0])
            return Result(
                False,
                f"{qid}: expected a function of {names}, e.g. `lambda {names}: ...`, got "
                f"{type(answer).__name__} {answer!r}",
            )
        try:
            value = _evaluate(question, answer, "your expression")
        except _AnswerError as err:
            return Result(False, f"{qid}: {err}")
    if _matches(question, value, question.answer):
        return Result(True, f"{qid} ✓ right: {question.reason}")
    for w in question.wrong:
        if _matches(question, value, w.value):
            return Result(False, f"{qid} ✗ not quite: {w.hint}")
    return Result(False, f"{qid} ✗ not quite: {question.hint}")


_CACHE: dict[str, list[Question]] = {}


def _banks():
    """{"NN": [Question, ...]} from every vaelib/quiz/bank_NN.py, loaded once and validated."""
    if not _CACHE:
        banks, seen = {}, set()
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            found = _BANK.fullmatch(info.name)
            if not found:
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            bank = list(getattr(module, "QUESTIONS", None) or [])
            if not bank or not all(isinstance(q, Question) for q in bank):
                raise ValueError(
                    f"{module.__name__}.QUESTIONS must be a non-empty list of Question"
                )
            for q in bank:
                if q.notebook != found.group(1):
                    raise ValueError(
                        f"{module.__name__}: question {q.id} belongs to another notebook"
                    )
                if q.id in seen:
                    raise ValueError(f"{module.__name__}: question id {q.id} is used twice")
                seen.add(q.id)
            banks[found.group(1)] = bank
        _CACHE.update(banks)
    return _CACHE


def _notebook(notebook):
    if isinstance(notebook, int) and not isinstance(notebook, bool):
        notebook = f"{notebook:02d}"
    if not isinstance(notebook, str) or not re.fullmatch(r"\d\d", notebook):
        raise ValueError(f"notebook must be a two-digit string such as '03', got {notebook!r}")
    return notebook


def questions(notebook=None):
    """The questions of one notebook ("03" or 3), or of every notebook, in bank order."""
    banks = _banks()
    if notebook is None:
        return [q for nn in sorted(banks) for q in banks[nn]]
    notebook = _notebook(notebook)
    if notebook not in banks:
        raise ValueError(
            f"no questions for notebook {notebook} (banks: {', '.join(sorted(banks)) or 'none'})"
        )
    return list(banks[notebook])


def question(qid):
    """The Question with id "NN.k"; a ValueError lists the notebook's ids when there is none."""
    if not isinstance(qid, str) or not _ID.fullmatch(qid):
        raise ValueError(f"a question id looks like '03.2', got {qid!r}")
    bank = questions(qid.split(".")[0])
    for q in bank:
        if q.id == qid:
            return q
    raise ValueError(f"no question {qid!r}; this notebook has {', '.join(q.id for q in bank)}")


def check(qid, answer):
    """Grade `answer` to question `qid`, print the one-line result and return it (a Result)."""
    result = grade(question(qid), answer)
    print(result.message)
    return result


def show(notebook):
    """Print a notebook's questions: id, prompt and any choices."""
    for q in questions(notebook):
        print(f"{q.id}  {q.prompt}")
        for letter, text in (q.choices or {}).items():
            print(f"      ({letter}) {text}")
