"""The command line `python -m vaelib`: train, evaluate and sample on digits, and its errors.

A subprocess that trains pays for importing torch, scikit-learn and matplotlib (5-10 s on a small,
shared machine), so one `train` runs in a subprocess per module, as do the argument errors (which
never import torch) and one corrupt-checkpoint error; `evaluate`, `sample` and the other error paths
run through `main(argv)` in-process, which is the same code behind the same argument parser.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from vaelib import checkpoints, data, evaluate
from vaelib.__main__ import main
from vaelib.models import VAE, Autoencoder

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = str(
        torch.get_num_threads()
    )  # the same threads as this process: the same float sums
    return e


def cli(*args, cwd):
    return [sys.executable, "-m", "vaelib", *map(str, args)], dict(
        cwd=cwd, env=env(), capture_output=True, text=True, timeout=300
    )


def run(*args, cwd):
    cmd, kw = cli(*args, cwd=cwd)
    return subprocess.run(cmd, **kw)


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vaelib: error: ") and "Traceback" not in result.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(autouse=True)
def in_a_temporary_folder(tmp_path, monkeypatch):
    """Run every test from a temporary folder: a command that wrongly writes into "." cannot touch
    the repository."""
    monkeypatch.chdir(tmp_path)


def in_process(argv, capsys):
    """main(argv) in this process: the exit status and what it printed."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, captured.out, captured.err)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    out = root / "run"
    result = run(
        "train",
        "--dataset",
        "digits",
        "--latent-dim",
        2,
        "--hidden",
        16,
        "--hidden",
        8,
        "--epochs",
        2,
        "--batch-size",
        64,
        "--valid-size",
        100,
        "--no-progress",
        "--out",
        out,
        cwd=root,
    )
    assert result.returncode == 0, result.stderr
    return root, out, result


def test_train_writes_checkpoint_history_and_curve(trained):
    _, out, result = trained
    ck = checkpoints.load_checkpoint(out / "model.pt", with_state=True)
    assert isinstance(ck.model, VAE)
    assert ck.model.config == {
        "data_dim": 64,
        "latent_dim": 2,
        "hidden_dims": [16, 8],
        "likelihood": "bernoulli",
        "sigma_x": 1.0,
        "learn_sigma_x": False,
    }
    assert ck.metadata["dataset"] == "digits"
    history = json.loads((out / "history.json").read_text())
    assert history == ck.history
    assert history["epoch"] == [1, 2] and len(history["valid_elbo"]) == 2
    for e, lp, kl in zip(history["elbo"], history["log_px_z"], history["kl"]):
        assert e == pytest.approx(lp - kl, abs=1e-9) and kl >= 0
    printed = re.search(r"epoch 2: train ELBO (-?\d+\.\d+) nats per example", result.stdout)
    assert printed and float(printed.group(1)) == pytest.approx(history["elbo"][-1], abs=6e-4)
    png = out / "training_curve.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    h, w, _ = matplotlib.image.imread(png).shape
    assert h > 200 and w > 400
    assert sorted(p.name for p in out.iterdir()) == [
        "history.json",
        "model.pt",
        "training_curve.png",
    ]


def test_evaluate_prints_what_the_library_computes(trained, capsys):
    root, out, _ = trained
    result = in_process(
        ["evaluate", out / "model.pt", "--K", 20, "--limit", 60, "--no-progress"], capsys
    )
    assert result.returncode == 0, result.stderr
    numbers = {}
    for name in ("test ELBO", r"IWAE log-likelihood \(K=20\)"):
        m = re.search(
            rf"^{name}: (-?\d+\.\d+) nats per example .*; (\d+\.\d+) bits/dim\)$",
            result.stdout,
            re.M,
        )
        assert m, result.stdout
        numbers[name] = float(m.group(1))
        assert float(m.group(2)) == pytest.approx(
            evaluate.bits_per_dim(float(m.group(1)), 64), abs=1e-4
        )
    assert "digits test split, 60 examples, binarized once with seed 0" in result.stdout
    # The same computation in-process: one fixed binarization, then ELBO and IWAE from one seeded
    # generator.
    model = checkpoints.load_checkpoint(out / "model.pt")
    x, _ = data.load("digits", "test")
    x = torch.bernoulli(x[:60], generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    elbo = evaluate.test_elbo(model, x, batch_size=100, generator=g).mean().item()
    iwae = (
        evaluate.iwae_log_likelihood(model, x, K=20, batch_size=100, chunk_size=500, generator=g)
        .mean()
        .item()
    )
    assert numbers["test ELBO"] == pytest.approx(elbo, abs=1e-3)
    assert numbers[r"IWAE log-likelihood \(K=20\)"] == pytest.approx(iwae, abs=1e-3)


def test_sample_writes_a_grid_image(trained, capsys):
    root, out, _ = trained
    result = in_process(
        ["sample", out / "model.pt", "--n", 10, "--out", root / "samples.png", "--seed", 3], capsys
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 10 samples (8x8)" in result.stdout
    image = matplotlib.image.imread(root / "samples.png")
    # 10 samples -> 4 columns x 3 rows of 8x8 tiles with 1-pixel borders: 28 x 37, scaled by
    # ceil(256/37) = 7.
    assert image.shape[:2] == (28 * 7, 37 * 7)
    assert (image[..., 0] == image[..., 1]).all()  # grey-scale
    # the first tile is the decoder mean of the first prior draw with seed 3
    model = checkpoints.load_checkpoint(out / "model.pt")
    first = model.sample(10, generator=torch.Generator().manual_seed(3))[0].reshape(8, 8).numpy()
    tile = image[7 : 7 + 8 * 7 : 7, 7 : 7 + 8 * 7 : 7, 0]  # one pixel per scaled block
    # 8-bit PNG through a 256-entry grey colormap: the value's bin (1/256) plus 8-bit rounding
    # (1/255); dark ink on white (issue 22): the grey level is 1 - the pixel probability
    assert abs((1 - tile) - first).max() < 2 / 255


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["train", "--dataset", "cifar", "--out", "x"], ["invalid choice: 'cifar'"]),
        (["train", "--hidden", "16,0", "--out", "x"], ["--hidden", "16,0"]),
        (["train", "--lr", "-1", "--out", "x"], ["--lr", "positive"]),
        (["train"], ["--out"]),
        ([], ["required"]),
        (["fly"], ["invalid choice: 'fly'"]),
        (["sample", "m.pt", "--n", "0", "--out", "s.png"], ["--n"]),
        (["train", "--seed", str(2**64), "--out", "x"], ["--seed", "[0, 2**64)"]),
        (["evaluate", "m.pt", "--seed", "-1"], ["--seed"]),
        (
            ["train", "--dataset", "digits", "--data", "d.npz", "--out", "x"],
            ["--data", "not allowed with"],
        ),
        (["train", "--image-shape", "8", "--out", "x"], ["--image-shape", "2 arguments"]),
        (["train", "--sigma-x", "0", "--out", "x"], ["--sigma-x", "positive"]),
    ],
    ids=[
        "dataset",
        "hidden",
        "lr",
        "no-out",
        "no-command",
        "command",
        "n",
        "seed-65-bits",
        "seed-negative",
        "dataset-and-data",
        "image-shape",
        "sigma-x",
    ],
)
def test_usage_errors_are_one_line(argv, fragments, tmp_path):
    result = run(*argv, cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "x").exists()


def test_corrupt_checkpoint_is_one_line_in_a_subprocess(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    result = run(
        "evaluate", bad, "--k", 5, cwd=tmp_path
    )  # --k: the former name of --K still parses
    assert_one_line_error(result, str(bad), "not a readable vaelib checkpoint")


def test_errors_after_parsing_are_one_line(tmp_path, capsys, trained):
    _, out, _ = trained
    missing = tmp_path / "missing.pt"
    assert_one_line_error(
        in_process(["evaluate", missing], capsys), "checkpoint not found", str(missing)
    )
    assert_one_line_error(
        in_process(["sample", missing, "--out", tmp_path / "s.png"], capsys), "checkpoint not found"
    )
    assert_one_line_error(
        in_process(["sample", out / "model.pt", "--out", tmp_path / "s.jpg"], capsys), ".png"
    )
    assert_one_line_error(
        in_process(["sample", out / "model.pt", "--out", tmp_path / "no" / "s.png"], capsys),
        "does not exist",
    )
    assert_one_line_error(
        in_process(["train", "--valid-size", 5000, "--out", tmp_path / "r"], capsys),
        "--valid-size 5000",
    )
    ae = tmp_path / "ae.pt"
    checkpoints.save_checkpoint(
        ae, Autoencoder(64, 2, (4,))
    )  # no dataset recorded, no prior to sample
    assert_one_line_error(
        in_process(["sample", ae, "--out", tmp_path / "s.png"], capsys), "Autoencoder", "no prior"
    )
    assert_one_line_error(
        in_process(["evaluate", ae], capsys), "does not record its dataset", "--dataset"
    )
    if not torch.cuda.is_available():
        assert_one_line_error(
            in_process(["evaluate", out / "model.pt", "--device", "cuda"], capsys),
            "CUDA is not available",
        )
    assert not (tmp_path / "r").exists()


def _raise(error):
    def broken(*args, **kwargs):
        raise error

    return broken


@pytest.mark.parametrize(
    "error",
    [TypeError("unsupported operand type(s)"), RuntimeError("a bug in vaelib")],
    ids=["TypeError", "RuntimeError"],
)
def test_a_bug_keeps_its_traceback(error, tmp_path, capsys, monkeypatch):
    """A TypeError or RuntimeError from inside a command is a bug, not a user error: main does not
    turn it into `vaelib: error: ...` (which would hide where it happened) but lets it propagate."""
    monkeypatch.setattr(checkpoints, "load_checkpoint", _raise(error))
    with pytest.raises(type(error), match=re.escape(str(error))):
        main(["sample", str(tmp_path / "m.pt"), "--out", str(tmp_path / "s.png")])
    assert "vaelib: error" not in capsys.readouterr().err


def test_a_bug_in_a_subprocess_prints_the_traceback(tmp_path):
    """`python -m vaelib` with a bug planted in a library function it calls: Python's traceback on
    stderr, naming the function where it happened, and exit status 1, not the one-line message of an
    expected error."""
    plant = (
        "import runpy, sys, vaelib.train\n"
        "def load_checkpoint(*args, **kwargs):\n"
        "    raise RuntimeError('planted bug')\n"
        "vaelib.checkpoints.load_checkpoint = load_checkpoint\n"
        "sys.argv = ['vaelib', 'sample', 'm.pt', '--out', 's.png']\n"
        "runpy.run_module('vaelib', run_name='__main__')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", plant],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("Traceback (most recent call last):"), result.stderr
    assert "in load_checkpoint" in result.stderr and result.stderr.endswith(
        "RuntimeError: planted bug\n"
    )
    assert "vaelib: error" not in result.stderr


def test_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch):
    """Running out of memory is not a bug: one line that says what to lower (for sample, --n: issue
    26, item 6)."""
    monkeypatch.setattr(
        checkpoints,
        "load_checkpoint",
        _raise(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate")),
    )
    assert_one_line_error(
        in_process(["sample", tmp_path / "m.pt", "--out", tmp_path / "s.png"], capsys),
        "out of memory",
        "--n",
    )


def test_evaluate_takes_K_and_its_former_name_k():
    from vaelib.__main__ import build_parser

    parser = build_parser()
    assert parser.parse_args(["evaluate", "m.pt", "--K", "7"]).K == 7
    assert parser.parse_args(["evaluate", "m.pt", "--k", "7"]).K == 7
    assert parser.parse_args(["evaluate", "m.pt"]).K == 5000


def test_help_and_import_have_no_side_effects(capsys):
    assert main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    assert main(["train", "--help"]) == 0
    assert "--latent-dim" in capsys.readouterr().out


# -- training that survives interruption (issue 14, item 3)
# ------------------------------------------

# an epoch of this tiny model takes about 10 ms on an idle machine: long enough to be stopped
# mid-run
EPOCHS = 200
RUN = [
    "--latent-dim",
    2,
    "--hidden",
    16,
    "--batch-size",
    128,
    "--valid-size",
    100,
    "--epochs",
    EPOCHS,
    "--seed",
    3,
    "--no-progress",
]


def with_epochs(n):
    """RUN with --epochs n."""
    i = RUN.index("--epochs")
    return [*RUN[: i + 1], n, *RUN[i + 2 :]]


def wait_for(condition, proc, what, timeout=600):
    # generous: importing torch, scikit-learn and matplotlib in three subprocesses at once took over
    # 120 s on a loaded 2-core machine; a run that ends early is caught at once by the poll below
    start = time.monotonic()
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()}"
        assert time.monotonic() - start < timeout, f"no {what} after {timeout} s"
        time.sleep(0.01)


def final_state(out):
    ck = checkpoints.load_checkpoint(out / "model.pt", with_state=True)
    return ck.model, {k: v for k, v in ck.history.items() if k != "seconds"}


def test_runs_stopped_by_sigint_sigterm_or_sigkill_resume_to_the_same_weights(tmp_path, capsys):
    """Three CLI runs, stopped mid-run: SIGINT (saves the last complete epoch on the way out,
    between the checkpoints of --checkpoint-every 4), SIGTERM (the same with no periodic checkpoint;
    exit status 143) and SIGKILL (nothing
    runs: the last checkpoint of --checkpoint-every 1 is what is left). `train --resume DIR --epochs
        N` then finishes
    each, N = 2 epochs past the latest stop, and each ends with exactly the weights and history of
    one uninterrupted run of N epochs (bit for bit: same seeds, same generator state, same Adam
    moments).

    The runs ask for 100,000 epochs, so they are mid-run when stopped however fast the machine is,
    and the work is what they did before the signal plus 2 N epochs (it was 200 epochs per run and
    200 more straight: 19 minutes on a loaded machine)."""
    runs = {
        "sigint": (signal.SIGINT, 4),
        "sigterm": (signal.SIGTERM, 0),
        "sigkill": (signal.SIGKILL, 1),
    }
    procs = {}
    for name, (_, every) in runs.items():  # started together: the imports overlap
        cmd, kw = cli(
            "train",
            *with_epochs(100_000),
            "--checkpoint-every",
            every,
            "--out",
            tmp_path / name,
            cwd=tmp_path,
        )
        kw = {k: v for k, v in kw.items() if k not in ("capture_output", "timeout")}
        # SIGINT at its default in the child: a test runner started in the background by a
        # non-interactive shell ignores SIGINT, and a child inherits the ignoring
        procs[name] = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            **kw,
        )
    for name, (sig, every) in runs.items():
        proc, out = procs[name], tmp_path / name
        if every:
            wait_for(lambda: (out / "model.pt").exists(), proc, "a first checkpoint")
            time.sleep(0.15)  # into a later epoch
        else:  # no periodic checkpoint: everything rests on the save on the way out
            assert proc.stdout.readline().startswith("training VAE 64-16-2"), proc.communicate()
            time.sleep(
                0.3
                # well inside the run (stopped before the first epoch ends is fine too: it saves
                # epoch 0)
            )
        assert proc.poll() is None, f"{name}: the run finished before it could be stopped"
        proc.send_signal(sig)
    results = {name: (proc.wait(timeout=120), proc.communicate()) for name, proc in procs.items()}

    code, (_, err) = results["sigint"]
    assert code == 130, err
    assert re.search(
        r"^vaelib: interrupted; saved the state after epoch \d+ to .*model\.pt; continue with: "
        r"python -m vaelib train --resume ",
        err,
        re.M,
    ), err
    code, (_, err) = results["sigterm"]
    assert code == 128 + 15, err
    assert re.search(
        r"^vaelib: terminated \(SIGTERM\); saved the state after epoch \d+", err, re.M
    ), err
    assert results["sigkill"][0] == -signal.SIGKILL

    stopped_at = {
        name: len(
            checkpoints.load_checkpoint(tmp_path / name / "model.pt", with_state=True).history[
                "epoch"
            ]
        )
        for name in runs
    }
    total = max(stopped_at.values()) + 2  # every run resumes for at least 2 epochs
    for name in runs:
        out = tmp_path / name
        if (
            name != "sigkill"
        ):  # SIGKILL can land inside a save and leave its .tmp: the next run must clean it (below)
            assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
        result = in_process(["train", "--resume", out, "--epochs", total, "--no-progress"], capsys)
        assert result.returncode == 0, result.stderr
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")], name
        assert f"resuming VAE 64-16-2 (bernoulli) at epoch {stopped_at[name]}" in result.stdout

    assert main(["train", *map(str, with_epochs(total)), "--out", str(tmp_path / "straight")]) == 0
    straight, straight_history = final_state(tmp_path / "straight")
    for name in runs:
        model, history = final_state(tmp_path / name)
        sa, sb = model.state_dict(), straight.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sb), (
            f"{name} (stopped after epoch {stopped_at[name]})"
        )
        assert history == straight_history, name
        assert json.loads((tmp_path / name / "history.json").read_text())["epoch"] == list(
            range(1, total + 1)
        )


def test_nan_in_training_saves_the_last_finite_state(tmp_path, capsys):
    out = tmp_path / "run"
    result = in_process(
        [
            "train",
            "--latent-dim",
            2,
            "--hidden",
            16,
            "--epochs",
            3,
            "--lr",
            "1e30",
            "--no-progress",
            "--out",
            out,
        ],
        capsys,
    )
    assert_one_line_error(
        result,
        "the training loss is nan at epoch 1",
        "saved the last finite state (after epoch 0)",
        "--resume",
        "--lr 1e+29",
    )
    ck = checkpoints.load_checkpoint(out / "model.pt", with_state=True)
    assert all(torch.isfinite(p).all() for p in ck.model.parameters()) and ck.history["epoch"] == []


def test_out_is_checked_before_training(tmp_path, capsys):
    assert_one_line_error(
        in_process(["train", "--out", ""], capsys), "--out must name a directory, got ''"
    )
    assert_one_line_error(
        in_process(["train", "--out", " "], capsys), "--out must name a directory, got ' '"
    )
    assert list(tmp_path.iterdir()) == []  # nothing written into the current folder
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert_one_line_error(
        in_process(["train", "--out", a_file], capsys), "exists and is not a directory"
    )
    assert_one_line_error(
        in_process(["train", "--out", a_file / "sub"], capsys), "is not a writable directory"
    )
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert_one_line_error(
            in_process(["train", "--out", locked], capsys), "is not a writable directory"
        )


def test_resume_continues_only_a_cli_run_with_its_own_settings(tmp_path, capsys, trained):
    _, out, _ = trained
    assert_one_line_error(
        in_process(["train", *RUN, "--out", out], capsys),
        "model.pt exists",
        "--resume",
        "--overwrite",
    )
    assert_one_line_error(
        in_process(["train", "--resume", out, "--latent-dim", 3], capsys),
        "--latent-dim 3 differs from the run's 2",
    )
    assert_one_line_error(
        in_process(["train", "--resume", out, "--seed", 1], capsys),
        "--seed 1 differs from the run's 0",
    )
    assert_one_line_error(
        in_process(["train", "--resume", tmp_path], capsys), "no model.pt there to continue"
    )
    assert_one_line_error(
        in_process(["train", "--resume", out, "--out", tmp_path], capsys), "leave out --out"
    )
    lib = tmp_path / "lib"
    lib.mkdir()
    checkpoints.save_checkpoint(lib / "model.pt", VAE(64, 2, (4,)))
    assert_one_line_error(
        in_process(["train", "--resume", lib], capsys), "does not record the settings"
    )
    done = in_process(
        ["train", "--resume", out, "--no-progress"], capsys
    )  # already at its 2 epochs
    assert (
        done.returncode == 0
        and "resuming VAE 64-16-8-2 (bernoulli) at epoch 2 on digits: 1400 examples, 0 epochs"
        in done.stdout
    )


# -- Gaussian likelihood: sigma_x (issue 9, item 3)
# --------------------------------------------------


def test_default_gaussian_run_learns_sigma_x_and_uses_its_latent_code(tmp_path, capsys):
    """The default Gaussian run (64-400-20, 10 epochs on digits) sets sigma_x to its closed-form
    optimum per batch (issue 22: the Python default too; the config records the data's pixel
    standard deviation as the start), and keeps active units (Burda et al.: Cov_x E_q[u] > 0.01).
    With sigma_x fixed at 1 on [0, 1] pixels, the old default, the KL wins: no active unit (notebook
    07). Measured: 20 of 20 active units with sigma_x 0.2705 -> 0.267, against 0 (largest Cov_x
    E_q[u] = 0.003)."""
    x, _ = data.load("digits", "train")
    x_test, _ = data.load("digits", "test")
    result = in_process(
        ["train", "--likelihood", "gaussian", "--no-progress", "--out", tmp_path / "learned"],
        capsys,
    )
    assert result.returncode == 0, result.stderr
    spread = x.double().var(0, correction=0).mean().sqrt().item()  # sqrt(mean_d Var(x_d)) = 0.2705
    assert "(gaussian, sigma_x shared at its closed-form optimum per batch, floor 0.003906)" in (
        result.stdout
    )
    model = checkpoints.load_checkpoint(tmp_path / "learned" / "model.pt")
    assert model.config["learn_sigma_x"] == "optimal" and model.config["sigma_x"] == float(
        f"{spread:.4g}"
    )
    assert model.sigma_x != model.config["sigma_x"]  # it moved: learned
    active, _ = evaluate.active_units(model, x_test)
    assert active > 0
    with (
        warnings.catch_warnings()
    ):  # a fixed sigma_x = 1 on [0, 1] data may warn; that is the point
        warnings.simplefilter("ignore")
        result = in_process(
            [
                "train",
                "--likelihood",
                "gaussian",
                "--sigma-x",
                1,
                "--no-learn-sigma-x",
                "--no-progress",
                "--out",
                tmp_path / "fixed",
            ],
            capsys,
        )
    assert result.returncode == 0, result.stderr
    fixed = checkpoints.load_checkpoint(tmp_path / "fixed" / "model.pt")
    assert fixed.sigma_x == 1.0 and evaluate.active_units(fixed, x_test)[0] == 0
    result = in_process(["train", "--sigma-x", "0.3", "--out", tmp_path / "b"], capsys)
    assert_one_line_error(result, "--sigma-x and --learn-sigma-x need --likelihood gaussian")


# -- your own data (issue 13, item 4)
# ----------------------------------------------------------------


@pytest.fixture(scope="module")
def npz_file(tmp_path_factory):
    """Digits as (N, 4, 16) uint8 images: non-square, integer pixels, train and test arrays."""
    x, _ = data.load("digits", "train")
    xt, _ = data.load("digits", "test")
    path = tmp_path_factory.mktemp("npz") / "mine.npz"
    to_u8 = lambda a: np.round(a.numpy() * 255).astype(np.uint8).reshape(-1, 4, 16)  # noqa: E731
    np.savez(path, x_train=to_u8(x), x_test=to_u8(xt))
    return path


def test_train_evaluate_and_sample_on_an_npz_file(npz_file, tmp_path, capsys):
    out = tmp_path / "run"
    result = in_process(
        [
            "train",
            "--data",
            npz_file,
            "--latent-dim",
            2,
            "--hidden",
            16,
            "--epochs",
            2,
            "--no-progress",
            "--out",
            out,
        ],
        capsys,
    )
    assert result.returncode == 0, result.stderr
    assert "on mine.npz: 1500 examples" in result.stdout
    ck = checkpoints.load_checkpoint(out / "model.pt", with_state=True)
    assert ck.metadata["data"] == str(npz_file.resolve()) and ck.metadata["image_shape"] == [4, 16]
    # evaluate reads the data (x_test) from the checkpoint
    result = in_process(
        ["evaluate", out / "model.pt", "--K", 5, "--limit", 30, "--no-progress"], capsys
    )
    assert result.returncode == 0, result.stderr
    assert "data: mine.npz test split, 30 examples" in result.stdout
    x = torch.from_numpy(np.load(npz_file)["x_test"][:30].reshape(30, 64).astype(np.float32) / 255)
    x = torch.bernoulli(x, generator=torch.Generator().manual_seed(0))
    elbo = (
        evaluate.test_elbo(ck.model, x, batch_size=100, generator=torch.Generator().manual_seed(0))
        .mean()
        .item()
    )
    assert f"test ELBO: {elbo:.3f} nats" in result.stdout
    # sample draws 4 x 16 tiles, the shape recorded in the checkpoint
    result = in_process(["sample", out / "model.pt", "--n", 3, "--out", tmp_path / "s.png"], capsys)
    assert result.returncode == 0 and "wrote 3 samples (4x16)" in result.stdout
    image = matplotlib.image.imread(tmp_path / "s.png")
    scale = -(
        -256 // (2 * 17 + 1)
    )  # 2 columns of 16-pixel tiles with borders, scaled to >= 256 px wide
    assert image.shape[:2] == ((2 * 5 + 1) * scale, (2 * 17 + 1) * scale)
    result = in_process(
        ["sample", out / "model.pt", "--n", 3, "--image-shape", 8, 8, "--out", tmp_path / "t.png"],
        capsys,
    )
    assert result.returncode == 0 and "(8x8)" in result.stdout
    assert_one_line_error(
        in_process(
            ["sample", out / "model.pt", "--image-shape", 3, 3, "--out", tmp_path / "u.png"], capsys
        ),
        "--image-shape 3 3 has 9 pixels but the data have 64",
    )
    moved = tmp_path / "moved.npz"
    npz_file.rename(moved)
    try:
        assert_one_line_error(
            in_process(["evaluate", out / "model.pt"], capsys),
            "which is not there any more",
            "--data",
        )
        result = in_process(
            [
                "evaluate",
                out / "model.pt",
                "--data",
                moved,
                "--split",
                "train",
                "--K",
                2,
                "--limit",
                5,
                "--no-progress",
            ],
            capsys,
        )
        assert result.returncode == 0 and "moved.npz train split, 5 examples" in result.stdout
    finally:
        moved.rename(npz_file)


def _npz(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_bad_npz_files_are_one_line_errors(tmp_path, capsys):
    good = np.random.default_rng(0).random((20, 6), dtype=np.float32)
    nan = good.copy()
    nan[3, 2] = np.nan
    cases = [
        (_npz(tmp_path, "no_train.npz", x=good), ["has no array 'x_train'", "['x']"]),
        (
            _npz(tmp_path, "flat.npz", x_train=good[0]),
            ["x_train has shape (6,)", "(N, D) or (N, H, W)"],
        ),
        (_npz(tmp_path, "empty.npz", x_train=good[:0]), ["x_train has shape (0, 6)"]),
        (_npz(tmp_path, "nan.npz", x_train=nan), ["x_train contains NaN"]),
        (
            _npz(tmp_path, "range.npz", x_train=good * 3),
            ["values in [", "needs [0, 1]", "--likelihood gaussian"],
        ),
        (_npz(tmp_path, "int.npz", x_train=(good * 9).astype(np.int64)), ["dtype int64", "uint8"]),
        (
            _npz(tmp_path, "test.npz", x_train=good, x_test=good[:, :5]),
            ["x_test examples have shape (5,), x_train's (6,)"],
        ),
        (
            _npz(tmp_path, "object.npz", x_train=np.array([good, None], dtype=object)),
            ["Object arrays", "allow_pickle"],
        ),
    ]
    text = tmp_path / "text.npz"
    text.write_text("not a zip\n")
    cases.append((text, ["not a readable .npz file"]))
    cases.append((tmp_path / "missing.npz", ["no such file"]))
    for path, fragments in cases:
        result = in_process(
            ["train", "--data", path, "--epochs", 1, "--no-progress", "--out", tmp_path / "out"],
            capsys,
        )
        assert_one_line_error(result, str(path.name), *fragments)
    assert not (tmp_path / "out").exists()  # every check runs before the output directory is made
    result = in_process(
        [
            "train",
            "--data",
            _npz(tmp_path, "wide.npz", x_train=good * 3),
            "--likelihood",
            "gaussian",
            "--epochs",
            1,
            "--latent-dim",
            2,
            "--hidden",
            4,
            "--no-progress",
            "--out",
            tmp_path / "out",
        ],
        capsys,
    )
    assert result.returncode == 0, result.stderr  # any finite range for a Gaussian likelihood


def test_checkpoint_with_string_metadata_is_one_line(tmp_path, capsys):
    path = checkpoints.save_checkpoint(tmp_path / "m.pt", VAE(64, 2, (4,)))
    payload = torch.load(path, weights_only=True)
    payload["metadata"] = "digits"
    payload["digest"] = checkpoints._digest({k: v for k, v in payload.items() if k != "digest"})
    torch.save(payload, path)
    assert_one_line_error(
        in_process(["evaluate", path], capsys), "m.pt: broken checkpoint: metadata is a str"
    )


def test_train_with_the_iwae_objective_resumes_it(tmp_path, capsys):
    """--objective iwae --K 3 reaches fit and the checkpoint's settings: --resume continues IWAE_3,
    and 2 + 1 epochs equal 3 in one go, bit for bit; an IWAE objective without --K is an error."""
    common = ["--dataset", "digits", "--latent-dim", 2, "--hidden", 8, "--batch-size", 256]
    common += ["--objective", "iwae", "--K", 3, "--no-progress"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert in_process(["train", *common, "--epochs", 3, "--out", whole], capsys).returncode == 0
    assert in_process(["train", *common, "--epochs", 2, "--out", part], capsys).returncode == 0
    result = in_process(["train", "--resume", part, "--epochs", 3, "--no-progress"], capsys)
    assert result.returncode == 0, result.stderr
    a = checkpoints.load_checkpoint(whole / "model.pt", with_state=True)
    b = checkpoints.load_checkpoint(part / "model.pt", with_state=True)
    assert b.history["objective"] == ["iwae"] * 3 and b.history["K"] == [3] * 3
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    assert_one_line_error(
        in_process(
            ["train", "--objective", "iwae", "--epochs", 1, "--out", tmp_path / "x"], capsys
        ),
        "needs K",
    )


def test_train_with_a_learned_prior_resumes_it_and_evaluates(tmp_path, capsys):
    """--prior vamp --prior-components 5 reaches the model and the checkpoint: --resume continues
    it, 2 + 1 epochs equal 3 in one go bit for bit, and evaluate and sample use the learned prior;
    a learned prior with an autoencoder, components without a learned prior and another prior on
    --resume are one-line errors."""
    common = ["--dataset", "digits", "--latent-dim", 2, "--hidden", 8, "--batch-size", 256]
    common += ["--prior", "vamp", "--prior-components", 5, "--no-progress"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    result = in_process(["train", *common, "--epochs", 3, "--out", whole], capsys)
    assert result.returncode == 0 and "prior vamp (5 components)" in result.stdout
    assert in_process(["train", *common, "--epochs", 2, "--out", part], capsys).returncode == 0
    result = in_process(["train", "--resume", part, "--epochs", 3, "--no-progress"], capsys)
    assert result.returncode == 0, result.stderr
    a = checkpoints.load_checkpoint(whole / "model.pt", with_state=True)
    b = checkpoints.load_checkpoint(part / "model.pt", with_state=True)
    assert b.model.config["prior"] == "vamp" and b.model.prior.pseudo_inputs.shape == (5, 64)
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    result = in_process(["evaluate", whole / "model.pt", "--K", 20], capsys)
    assert result.returncode == 0 and "IWAE log-likelihood (K=20)" in result.stdout
    png = tmp_path / "s.png"
    assert (
        in_process(["sample", whole / "model.pt", "--n", 4, "--out", png], capsys).returncode == 0
    )
    assert png.stat().st_size > 0
    errors = [
        (["--model", "autoencoder", "--prior", "mog"], "needs --model vae"),
        (["--prior-components", 3], "--prior-components needs a learned --prior"),
        (["--prior", "flow"], "invalid choice: 'flow'"),
    ]
    for extra, message in errors:
        args = ["train", "--epochs", 1, "--out", tmp_path / "x", *extra]
        assert_one_line_error(in_process(args, capsys), message)
    assert_one_line_error(
        in_process(["train", "--resume", part, "--prior", "mog", "--epochs", 4], capsys),
        "--prior mog differs from the run's vamp",
    )
