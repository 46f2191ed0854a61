"""The command line `python -m vaelib`: train, evaluate and sample on digits, and its errors.

A subprocess that trains pays for importing torch, scikit-learn and matplotlib (5-10 s on a small,
shared machine), so one `train` runs in a subprocess per module, as do the argument errors (which
never import torch) and one corrupt-checkpoint error; `evaluate`, `sample` and the other error paths
run through `main(argv)` in-process, which is the same code behind the same argument parser.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch

from vaelib import data, evaluate, train
from vaelib.__main__ import main
from vaelib.models import VAE, Autoencoder

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def cli(*args, cwd):
    return [sys.executable, "-m", "vaelib", *map(str, args)], dict(cwd=cwd, env=env(), capture_output=True, text=True, timeout=300)


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
    result = run("train", "--dataset", "digits", "--latent-dim", 2, "--hidden", 16, "--hidden", 8, "--epochs", 2,
                 "--batch-size", 64, "--valid-size", 100, "--no-progress", "--out", out, cwd=root)
    assert result.returncode == 0, result.stderr
    return root, out, result


def test_train_writes_checkpoint_history_and_curve(trained):
    _, out, result = trained
    ck = train.load_checkpoint(out / "model.pt", with_state=True)
    assert isinstance(ck.model, VAE)
    assert ck.model.config == {"data_dim": 64, "latent_dim": 2, "hidden_dims": [16, 8], "likelihood": "bernoulli",
                               "sigma_x": 1.0, "learn_sigma_x": False}
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
    assert sorted(p.name for p in out.iterdir()) == ["history.json", "model.pt", "training_curve.png"]


def test_evaluate_prints_what_the_library_computes(trained, capsys):
    root, out, _ = trained
    result = in_process(["evaluate", out / "model.pt", "--k", 20, "--limit", 60, "--no-progress"], capsys)
    assert result.returncode == 0, result.stderr
    numbers = {}
    for name in ("test ELBO", r"IWAE log-likelihood \(k=20\)"):
        m = re.search(rf"^{name}: (-?\d+\.\d+) nats per example .*; (\d+\.\d+) bits/dim\)$", result.stdout, re.M)
        assert m, result.stdout
        numbers[name] = float(m.group(1))
        assert float(m.group(2)) == pytest.approx(evaluate.bits_per_dim(float(m.group(1)), 64), abs=1e-4)
    assert "digits test split, 60 examples, binarized once with seed 0" in result.stdout
    # The same computation in-process: one fixed binarization, then ELBO and IWAE from one seeded generator.
    model = train.load_checkpoint(out / "model.pt")
    x, _ = data.load("digits", "test")
    x = torch.bernoulli(x[:60], generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    elbo = evaluate.test_elbo(model, x, batch_size=100, generator=g).mean().item()
    iwae = evaluate.iwae_log_likelihood(model, x, k=20, batch_size=100, chunk_size=500, generator=g).mean().item()
    assert numbers["test ELBO"] == pytest.approx(elbo, abs=1e-3)
    assert numbers[r"IWAE log-likelihood \(k=20\)"] == pytest.approx(iwae, abs=1e-3)


def test_sample_writes_a_grid_image(trained, capsys):
    root, out, _ = trained
    result = in_process(["sample", out / "model.pt", "--n", 10, "--out", root / "samples.png", "--seed", 3], capsys)
    assert result.returncode == 0, result.stderr
    assert "wrote 10 samples (8x8)" in result.stdout
    image = matplotlib.image.imread(root / "samples.png")
    # 10 samples -> 4 columns x 3 rows of 8x8 tiles with 1-pixel borders: 28 x 37, scaled by ceil(256/37) = 7.
    assert image.shape[:2] == (28 * 7, 37 * 7)
    assert (image[..., 0] == image[..., 1]).all()  # grey-scale
    # the first tile is the decoder mean of the first prior draw with seed 3
    model = train.load_checkpoint(out / "model.pt")
    first = model.sample(10, generator=torch.Generator().manual_seed(3))[0].reshape(8, 8).numpy()
    tile = image[7:7 + 8 * 7:7, 7:7 + 8 * 7:7, 0]  # one pixel per scaled block
    # 8-bit PNG through a 256-entry grey colormap: the value's bin (1/256) plus 8-bit rounding (1/255)
    assert abs(tile - first).max() < 2 / 255


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
    ],
    ids=["dataset", "hidden", "lr", "no-out", "no-command", "command", "n"],
)
def test_usage_errors_are_one_line(argv, fragments, tmp_path):
    result = run(*argv, cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "x").exists()


def test_corrupt_checkpoint_is_one_line_in_a_subprocess(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    result = run("evaluate", bad, "--k", 5, cwd=tmp_path)
    assert_one_line_error(result, str(bad), "not a readable vaelib checkpoint")


def test_errors_after_parsing_are_one_line(tmp_path, capsys, trained):
    _, out, _ = trained
    missing = tmp_path / "missing.pt"
    assert_one_line_error(in_process(["evaluate", missing], capsys), "checkpoint not found", str(missing))
    assert_one_line_error(in_process(["sample", missing, "--out", tmp_path / "s.png"], capsys), "checkpoint not found")
    assert_one_line_error(in_process(["sample", out / "model.pt", "--out", tmp_path / "s.jpg"], capsys), ".png")
    assert_one_line_error(in_process(["sample", out / "model.pt", "--out", tmp_path / "no" / "s.png"], capsys), "does not exist")
    assert_one_line_error(in_process(["train", "--valid-size", 5000, "--out", tmp_path / "r"], capsys), "--valid-size 5000")
    ae = tmp_path / "ae.pt"
    train.save_checkpoint(ae, Autoencoder(64, 2, (4,)))  # no dataset recorded, no prior to sample
    assert_one_line_error(in_process(["sample", ae, "--out", tmp_path / "s.png"], capsys), "Autoencoder", "no prior")
    assert_one_line_error(in_process(["evaluate", ae], capsys), "does not record its dataset", "--dataset")
    if not torch.cuda.is_available():
        assert_one_line_error(in_process(["evaluate", out / "model.pt", "--device", "cuda"], capsys), "CUDA is not available")
    assert not (tmp_path / "r").exists()


def test_help_and_import_have_no_side_effects(capsys):
    assert main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    assert main(["train", "--help"]) == 0
    assert "--latent-dim" in capsys.readouterr().out
