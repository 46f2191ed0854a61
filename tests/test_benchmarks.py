"""The benchmark scripts run end to end on small settings: a likelihood run writes its JSON, resumes
exactly, and the report turns JSON files into the RESULTS.md section; the throughput benchmark
compares fit with its plain loop. (The recorded numbers come from the full runs; these tests only
keep the scripts working.)"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vaelib import _atomic, data

ROOT = Path(__file__).resolve().parent.parent


def fashion_available():
    try:
        data.load("fashion-mnist", "test", download=False)
        return True
    except (OSError, ValueError):
        return False


needs_fashion = pytest.mark.skipif(
    not fashion_available(), reason="needs Fashion-MNIST (Debian dataset-fashion-mnist)"
)


def script(name, monkeypatch):
    monkeypatch.syspath_prepend(
        str(ROOT / "benchmarks")
    )  # as when run as a script: its folder comes first
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SMALL = [
    "--train-limit",
    "300",
    "--k",
    "20",
    "--test-limit",
    "1200",
    "--curve-every",
    "1",
    "--curve-k",
    "5",
    "--curve-images",
    "20",
    "--hidden",
    "16,16",
    "--latent-dim",
    "4",
    "--binarizations",
    "reference777,numpy1",
    "--spread-k",
    "10",
]


# The configuration of the benchmark's Gaussian-prior row, for the report's hand-made runs.
GATED = dict(
    model="gated",
    hidden="300,300",
    latent_dim=40,
    prior="normal",
    prior_components=None,
    lr=1e-3,
    lr_final=1e-5,
    epochs=300,
    batch_size=100,
    warmup_epochs=50,
    as_ours=[],
)


def run_likelihood(out, *args):
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "likelihood.py"),
        *SMALL,
        "--out",
        str(out),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_reference_draw_reproduces_the_reference_loaders_numpy_stream(monkeypatch):
    """reference777: numpy's legacy RandomState(777) draws the validation set, then the test set,
    from k/255 in float64, as the published number's loader does; other names are refused before
    any training."""
    import numpy as np
    import torch

    lk = script("likelihood", monkeypatch)
    rng = np.random.default_rng(0)
    valid_u8, test_u8 = rng.integers(0, 256, (7, 12)), rng.integers(0, 256, (5, 12))
    as_loaded = lambda u8: torch.from_numpy(
        u8.astype(np.float32) / np.float32(255)
    )  # what data.load returns
    np.random.seed(777)  # their loader: the global legacy generator, validation first
    np.random.binomial(1, valid_u8 / 255.0)
    want = np.random.binomial(1, test_u8 / 255.0)
    got = lk.binarize("reference777", as_loaded(test_u8), as_loaded(valid_u8))
    assert np.array_equal(got.numpy(), want) and got.dtype == torch.float32
    assert not np.array_equal(
        lk.binarize("numpy777", as_loaded(test_u8), as_loaded(valid_u8)).numpy(), want
    )
    for bad in ("reference1", "numpy", "torchx", "mine"):
        with pytest.raises(SystemExit, match="unknown binarization"):
            lk.parse_args(["--out", "x", "--binarizations", bad])


def test_adam_norm_grad_is_adam_on_normalised_gradients(monkeypatch):
    """AdamNormGrad against torch's Adam fed the gradient divided by its L2 norm (+1e-7), step by
    step. eps = 0: AdamNormGrad adds eps to sqrt(v) before the bias correction (Kingma & Ba's
    "efficient version", as the reference does), torch after it, a difference of order eps / sqrt(v)
    ~ 1e-7 that is not the point here."""
    import torch

    lk = script("likelihood", monkeypatch)
    torch.manual_seed(0)
    w1 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w2 = w1.detach().clone().requires_grad_(True)
    ours, adam = lk.AdamNormGrad([w1], lr=0.01, eps=0.0), torch.optim.Adam([w2], lr=0.01, eps=0.0)
    for step in range(5):
        g = torch.randn(4, 3, dtype=torch.float64) * 10**step  # scale must not matter
        w1.grad, w2.grad = g.clone(), g / (torch.linalg.vector_norm(g) + 1e-7)
        ours.step()
        adam.step()
        torch.testing.assert_close(w1, w2, rtol=1e-12, atol=1e-14)


def test_reference_model_clamps_probabilities_and_draws_he_normal_weights(monkeypatch):
    import torch

    lk = script("likelihood", monkeypatch)
    torch.manual_seed(0)
    model = lk.build_model("gated", 784, (300, 300), 40, protocol="reference")
    w = model.encoder.net[0].h.weight  # (300, 784): 235,200 draws of N(0, 2/784)
    assert (
        abs(w.std().item() / (2 / 784) ** 0.5 - 1) < 0.01
        and abs(w.mean().item()) < 4 * (2 / 784 / w.numel()) ** 0.5
    )
    p = torch.sigmoid(model.decoder(torch.randn(3, 40) * 100))
    assert p.min().item() >= 1e-5 * (1 - 1e-6) and p.max().item() <= 1 - 1e-5 * (1 - 1e-3)


def test_as_ours_sets_each_control_choice_back_to_ours(monkeypatch):
    """--as-ours: each choice alone changes its own part of the control run and nothing else (lr
    against stopping, which it needs), and the misuses are refused by name."""
    lk = script("likelihood", monkeypatch)
    out = ["--out", "/tmp/unused"]
    a = lk.parse_args(["--protocol", "reference", *out])
    assert (a.as_ours, a.epochs, a.lr) == ([], 2000, 5e-4)
    a = lk.parse_args(["--protocol", "reference", "--as-ours", "stopping", *out])
    assert (a.as_ours, a.epochs, a.lr) == (["stopping"], 300, 5e-4)
    a = lk.parse_args(["--protocol", "reference", "--as-ours", "stopping,lr", *out])
    assert (a.as_ours, a.epochs, a.lr) == (["lr", "stopping"], 300, 1e-3)  # AS_OURS's order
    for argv, message in [
        (["--as-ours", "init"], "use it with --protocol reference"),
        (["--protocol", "reference", "--as-ours", "init,adam"], "unknown choice 'adam'"),
        (["--protocol", "reference", "--as-ours", "lr"], "--as-ours lr needs stopping too"),
        (["--protocol", "reference", "--model", "mlp", "--as-ours", "clamp"], "never clamps"),
    ]:
        with pytest.raises(SystemExit, match=message):
            lk.parse_args([*argv, *out])

    gray = torch.rand(30, 784)

    def parts(choices):
        """Every part of the control run that a choice may touch, as comparable values."""
        args = lk.parse_args(["--protocol", "reference", "--as-ours", choices, *out])
        st = lk.control_settings(args)
        torch.manual_seed(0)
        model = lk.build_model("gated", 784, (300, 300), 40, "reference", as_ours=args.as_ours)
        w = model.encoder.net[0].h.weight  # (300, 784)
        he = abs(w.std().item() / (2 / 784) ** 0.5 - 1) < 0.01  # else sd 1/sqrt(3 * 784)
        return {
            "optimizer": st["optimizer"],
            "beta": [st["beta"](e) for e in range(1, 151)],
            "lr": [st["lr"](e) for e in range(1, 151)],
            "epochs": args.epochs,
            "early_stopping": st["early_stopping"],
            "init": he,
            "clamp": any(isinstance(m, lk.ClampLogits) for m in model.decoder.modules()),
            "valid": lk.control_valid(gray, 0, args.as_ours).tolist(),
        }

    control, stopping = parts(""), parts("stopping")
    for choices, base, changed in [
        ("optimizer", control, ["optimizer"]),
        ("init", control, ["init"]),
        ("warmup", control, ["beta"]),
        ("stopping", control, ["epochs", "early_stopping"]),  # 300 epochs, no early stop
        ("clamp", control, ["clamp"]),
        ("valid-draw", control, ["valid"]),
        ("stopping,lr", stopping, ["lr"]),
    ]:
        one = parts(choices)
        assert [k for k in one if one[k] != base[k]] == changed, choices
    assert control["optimizer"] is lk.AdamNormGrad and control["init"] and control["clamp"]
    assert parts("optimizer")["optimizer"] is torch.optim.Adam
    assert control["beta"][:2] == [0.01, 0.02] and parts("warmup")["beta"][:2] == [0.0, 0.02]
    lr = lk.control_settings(
        lk.parse_args(["--protocol", "reference", "--as-ours", "stopping,lr", *out])
    )["lr"]
    assert [lr(1), lr(300)] == pytest.approx([1e-3, 1e-5]) and stopping["lr"][0] == 5e-4
    # valid-draw: the very validation set fit draws for this seed (read from fit's own closure)
    from vaelib import train

    validate = train._validation(None, gray, True, 0, 100, torch.device("cpu"), torch.float32)
    vx = dict(zip(validate.__code__.co_freevars, validate.__closure__))["vx"].cell_contents
    assert parts("valid-draw")["valid"] == vx.tolist() != control["valid"]
    assert control["valid"] == lk.reference_valid(gray).tolist()


@needs_fashion
def test_control_run_with_choices_as_ours(tmp_path, monkeypatch):
    """A control run with the optimizer, warm-up, stopping, learning rate and validation draw set
    back to ours: plain Adam (AdamNormGrad is never built), our warm-up and cosine rate epoch by
    epoch, every epoch run where the control stops early (a validation ELBO that falls every
    epoch, patience 0), and fit's validation draw where the control uses the reference's."""
    lk = script("likelihood", monkeypatch)
    argv = [*SMALL, "--epochs", "3", "--warmup-epochs", "2", "--protocol", "reference"]

    class Refused(lk.AdamNormGrad):
        def __init__(self, *a, **k):
            raise AssertionError("AdamNormGrad built")

    monkeypatch.setattr(lk, "AdamNormGrad", Refused)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # main's; keep this process's
    with pytest.raises(AssertionError, match="AdamNormGrad built"):  # the plain control uses it
        lk.main([*argv, "--out", str(tmp_path / "control")])
    calls = []

    def falling_elbo(model, x, generator=None, **kw):  # -1, -2, -3, ... call by call
        calls.append(x)
        return torch.full((x.shape[0],), -float(len(calls)))

    monkeypatch.setattr(lk.evaluate, "test_elbo", falling_elbo)
    monkeypatch.setitem(lk.REFERENCE, "patience", 0)
    monkeypatch.setitem(lk.REFERENCE, "warmup_epochs", 1)  # patience counted from epoch 1
    runs, gray = {}, data.load("fashion-mnist", "train", download=False)[0][-10000:]
    for name, ours, valid in [
        ("ours", "optimizer,warmup,stopping,lr,valid-draw", lk.fit_valid_draw(gray, 0)),
        ("early", "optimizer,warmup", lk.reference_valid(gray)),
    ]:
        calls.clear()
        assert lk.main([*argv, "--as-ours", ours, "--out", str(tmp_path / name)]) == 0
        assert torch.equal(calls[0], valid)  # the first validation: the validation set's draw
        runs[name] = json.loads((tmp_path / name / "likelihood.json").read_text())
        assert runs[name]["status"] == "done" and f"--as-ours {ours}" in runs[name]["command"]
    r = runs["ours"]
    # in AS_OURS's order
    assert r["config"]["as_ours"] == ["optimizer", "lr", "warmup", "stopping", "valid-draw"]
    assert [e["beta"] for e in r["epochs"]] == [0.0, 0.5, 1.0]  # (epoch - 1) / 2; theirs: e / 100
    assert [e["lr"] for e in r["epochs"]] == pytest.approx([1e-3, 0.5 * (1e-3 + 1e-5), 1e-5])
    assert "stopped" not in r and len(r["epochs"]) == 3
    r = runs["early"]  # their stopping rule and constant rate; our warm-up
    assert r["stopped"]["epoch"] == 2 and len(r["epochs"]) == 2
    assert [e["lr"] for e in r["epochs"]] == [5e-4, 5e-4]
    assert [e["beta"] for e in r["epochs"]] == [0.0, 0.5]


def _draws(r):
    return {
        (key, n): b["nll"]
        for key in ("binarizations", "spread")
        for n, b in r["final"][key].items()
    }


@needs_fashion
def test_likelihood_run_resume_and_report(tmp_path, monkeypatch):
    straight = run_likelihood(tmp_path / "straight", "--epochs", "3", "--seed", "1")
    assert straight.returncode == 0, straight.stderr
    r = json.loads((tmp_path / "straight" / "likelihood.json").read_text())
    assert r["status"] == "done" and r["n_train"] == 300 and r["n_valid"] == 10000
    assert [e["epoch"] for e in r["epochs"]] == [1, 2, 3] and [p["epoch"] for p in r["curve"]] == [
        1,
        2,
        3,
    ]
    best = max(r["epochs"], key=lambda e: e["valid_elbo"])
    assert r["best"]["epoch"] == best["epoch"] == r["final"]["epoch"]
    assert r["epochs"][0]["lr"] == pytest.approx(1e-3) and r["epochs"][-1]["lr"] == pytest.approx(
        1e-5
    )
    # the first draw at K = 20, then every draw at the spread pass's K = 10
    draws, spread = r["final"]["binarizations"], r["final"]["spread"]
    assert list(draws) == ["reference777"] and list(spread) == ["reference777", "numpy1"]
    for b, k in [(draws["reference777"], 20), *((b, 10) for b in spread.values())]:
        # two blocks of 1000 and 200 images
        assert b["n_test"] == 1200 and sorted(b["blocks"]) == ["0", "1000"] and b["k"] == k
        assert {blk["threads"] for blk in b["blocks"].values()} == {r["threads"]}
        assert math.isfinite(b["nll"]) and 0 < b["nll_se"] < 5 and b["elbo"] < -b["nll"]
    assert spread["reference777"]["nll"] != spread["numpy1"]["nll"]
    # more samples, a tighter bound: K = 20 beats K = 10 on the same images
    assert draws["reference777"]["nll"] < spread["reference777"]["nll"]

    # Stopped after epoch 2 and resumed, then stopped in the middle of the evaluation (a block
    # deleted, as if the run had died before writing it) and resumed: the numbers of the
    # uninterrupted run, bit for bit.
    again = tmp_path / "again"
    stopped = run_likelihood(again, "--epochs", "3", "--seed", "1", "--stop-after", "2")
    assert stopped.returncode == 0, stopped.stderr
    saved = (again / "likelihood.json").read_text()
    assert json.loads(saved)["status"] == "training"
    # A resume with other settings would mix two runs: refused by name, nothing written.
    other = run_likelihood(again, "--epochs", "4", "--seed", "2", "--resume")
    assert other.returncode != 0
    assert "seed: saved 1, now 2" in other.stderr and "epochs: saved 3, now 4" in other.stderr
    assert (again / "likelihood.json").read_text() == saved
    empty = run_likelihood(tmp_path / "empty", "--epochs", "3", "--seed", "1", "--resume")
    assert empty.returncode != 0 and "there is no run in" in empty.stderr
    # A second process on a live run's folder (here: this test holds the lock) is refused.
    with _atomic.lock_directory(again):
        twice = run_likelihood(again, "--epochs", "3", "--seed", "1", "--resume")
    assert twice.returncode != 0 and f"another likelihood.py (pid {os.getpid()})" in twice.stderr
    assert (again / "likelihood.json").read_text() == saved
    resumed = run_likelihood(again, "--epochs", "3", "--seed", "1", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    r2 = json.loads((again / "likelihood.json").read_text())
    assert [e["valid_elbo"] for e in r2["epochs"]] == [e["valid_elbo"] for e in r["epochs"]]
    assert _draws(r2) == _draws(r)
    r2["status"] = "evaluating"
    for b in (r2["final"]["spread"]["numpy1"],):
        del b["blocks"]["1000"], b["nll"]
    (again / "likelihood.json").write_text(json.dumps(r2))
    finished = run_likelihood(again, "--epochs", "3", "--seed", "1", "--resume")
    assert finished.returncode == 0, finished.stderr
    assert "numpy1 (K=10): 1200/1200" in finished.stdout
    assert "reference777 (K=20): 1000/" not in finished.stdout
    assert "reference777 (K=10): 1000/" not in finished.stdout
    assert _draws(json.loads((again / "likelihood.json").read_text())) == _draws(r)

    report = script("likelihood_report", monkeypatch)
    monkeypatch.setattr(report, "RESULTS", tmp_path / "RESULTS.md")
    monkeypatch.setattr(report, "CURVE", tmp_path / "curve.png")
    (tmp_path / "RESULTS.md").write_text("# Benchmark results\n\n## other\n\nkept\n")
    other = tmp_path / "seed2"
    assert run_likelihood(other, "--epochs", "3", "--seed", "2").returncode == 0
    r3 = json.loads((other / "likelihood.json").read_text())
    assert (
        report.main(
            [
                str(tmp_path / "straight" / "likelihood.json"),
                str(other / "likelihood.json"),
                "--write",
            ]
        )
        == 0
    )
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## other\n\nkept" in text and text.count(report.SECTION) == 1
    mean = (
        r["final"]["binarizations"]["reference777"]["nll"]
        + r3["final"]["binarizations"]["reference777"]["nll"]
    ) / 2
    assert f"**{mean:.2f} ± " in text and "228.70 ± 0.15" in text
    assert "--seed 1 --out DIR" in text and "--seed 2 --out DIR" in text and "AdamNormGrad" in text
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_old_run_files_read_with_the_settings_they_were_run_with(monkeypatch):
    """A run file written before a setting existed is read as run then (Gaussian prior, our
    protocol, every draw at --k); a setting the file has is kept; the runner may fill the spread
    pass with today's."""
    runs = script("_runs", monkeypatch)
    assert runs.fill_defaults({"seed": 0}) == {
        "seed": 0,
        "protocol": "ours",
        "prior": "normal",
        "prior_components": None,
        "spread_k": 0,
        "train_limit": None,
        "as_ours": [],
    }
    c = runs.fill_defaults({"prior": "vamp", "spread_k": 10}, spread_k=1000)
    assert c["prior"] == "vamp" and c["spread_k"] == 10
    assert runs.fill_defaults({}, spread_k=1000)["spread_k"] == 1000


def test_report_interval_and_spreads(monkeypatch):
    """The report's numbers against hand computation: seed se and sd on the reference draw, the
    spread of the seed means over draws, and the 95 % interval from the seed se and the published
    ±."""
    report = script("likelihood_report", monkeypatch)
    mk = lambda seed, nlls: {
        "config": {"seed": seed, "dataset": "fashion-mnist", "protocol": "ours"},
        "final": {"binarizations": {n: {"nll": v} for n, v in nlls.items()}},
    }
    runs = [
        mk(0, {"reference777": 229.0, "numpy1": 229.2}),
        mk(1, {"reference777": 229.4, "numpy1": 229.4}),
        mk(2, {"reference777": 228.9}),
    ]  # numpy1 is missing for seed 2: only draws every seed has count
    s = report.summary(runs)
    assert s["draws"] == ["reference777"] and s["main"] == "reference777"
    assert s["mean"] == pytest.approx(229.1) and s["seed_sd"] == pytest.approx(0.264575, abs=1e-6)
    assert s["se"] == pytest.approx(0.264575 / 3**0.5, abs=1e-6)
    runs[2]["final"]["binarizations"]["numpy1"] = {"nll": 229.3}
    s = report.summary(runs)
    assert s["draws"] == ["reference777", "numpy1"] and s["bin_sd"] == pytest.approx(
        (229.3 - 229.1) / 2**0.5
    )
    # a spread pass (every draw at a cheaper K) measures the binarization spread where every seed
    # has at least two of its draws
    for r, (a, b) in zip(runs, [(230.0, 230.6), (230.4, 230.8), (229.9, None)]):
        r["final"]["spread"] = {"reference777": {"nll": a, "k": 1000}}
        if b is not None:
            r["final"]["spread"]["numpy2"] = {"nll": b, "k": 1000}
    s2 = report.summary(runs)
    assert s2["spread_k"] is None and s2["bin_sd"] == s["bin_sd"]  # numpy2 missing for seed 2
    runs[2]["final"]["spread"]["numpy2"] = {"nll": 230.5, "k": 1000}
    s2 = report.summary(runs)
    assert s2["spread_k"] == 1000 and s2["spread_draws"] == ["numpy2", "reference777"]
    assert s2["bin_sd"] == pytest.approx(
        ((230.6 + 230.8 + 230.5) - (230.0 + 230.4 + 229.9)) / 3 / 2**0.5
    )
    assert (s2["mean"], s2["se"]) == (s["mean"], s["se"])  # the headline stays the K = 5000 draw
    d, hw = report.difference(s, {"nll": 228.7, "pm": 0.15})
    assert d == pytest.approx(0.4) and hw == pytest.approx(
        1.959964 * (s["se"] ** 2 + 0.15**2) ** 0.5
    )
    # one seed: no seed standard error, so the interval is the published ± alone, and says so
    one = report.summary(runs[:1])
    assert math.isnan(one["se"]) and report.difference(one, {"nll": 228.7, "pm": 0.15})[
        1
    ] == pytest.approx(1.959964 * 0.15)
    for r in runs:
        r["config"].update(GATED)
        r["final"].update(train_cpu_minutes=50.0, epoch=300)
        r.update(device="cpu", threads=1)
        for b in r["final"]["binarizations"].values():
            b.update(nll_se=0.76, elbo=-231.0, k=5000, n_test=10000)
    row = report.tables({"one": runs[:1]})
    assert "(one seed: from the published ± alone, without our seed spread)" in row
    assert "| cpu, 1 |" in row  # no block records its threads: the training's count
    runs[0]["final"]["binarizations"]["reference777"]["blocks"] = {"0": {"threads": 2}}
    assert "| cpu, 1 (evaluation: 2) |" in report.tables({"one": runs[:1]})
    assert "(one seed" not in report.tables({"all": runs})


def test_report_names_repeated_runs_and_the_last_curve_step(monkeypatch):
    """Runs of one configuration and seeds evaluated on another draw are named as earlier runs,
    not extra seeds; a finished row off the reference draw says it was never evaluated there (not
    "not yet"); the curve text gives its last step."""
    report = script("likelihood_report", monkeypatch)
    config = dict(
        GATED, dataset="fashion-mnist", protocol="ours", curve_k=500, curve_images=1000, spread_k=0
    )
    mk = lambda seed, draw, status, curve: {
        "config": {**config, "seed": seed},
        "status": status,
        "device": "CPU",
        "threads": 1,
        "curve": [{"epoch": e, "nll": v} for e, v in curve],
        "final": {
            "epoch": 300,
            "train_cpu_minutes": 50.0,
            "binarizations": {
                draw: {
                    "nll": 229.0 + seed / 10,
                    "nll_se": 0.76,
                    "elbo": -231.0,
                    "k": 5000,
                    "n_test": 10000,
                }
            },
        },
    }
    new = [mk(s, "reference777", "done", [(280, 228.5), (300, 228.4 + s / 100)]) for s in (0, 1)]
    old = [mk(s, "torch12345", "done", [(300, 228.4)]) for s in (0, 1)]
    groups = {"new": new, "old": old}
    assert report._repeats(groups) == [("ours, 2 seeds, torch12345", "ours, 2 seeds, reference777")]
    assert "holds earlier runs of the configuration and seeds of" in report.intro(groups)
    assert "these runs were not evaluated on the reference's draw" in report.tables(groups)
    old[0]["status"] = "evaluating"
    assert "the reference's draw not evaluated yet" in report.tables(groups)
    text = report.curve_table({"new": new})
    assert (
        "epoch 280: 228.50, epoch 300: 228.41. From epoch 280 to 300 the mean fell by 0.09" in text
    )
    assert report._repeats({"new": new, "other": [mk(2, "torch12345", "done", [])]}) == []


def test_report_compares_a_learned_prior_and_the_control_with_the_gaussian_row(monkeypatch):
    """The differences from our Gaussian-prior row against hand computation: a 3-seed row uses
    both seed standard errors; a one-seed row borrows the Gaussian row's seed sd and says so; a
    learned prior is never compared with the Gaussian prior's published number."""
    report = script("likelihood_report", monkeypatch)
    mk = lambda seed, nll, **config: {
        "config": report.fill_defaults(
            {"seed": seed, "dataset": "fashion-mnist", "protocol": "ours", **config}
        ),
        "final": {
            "binarizations": {"reference777": {"nll": nll, "eval_cpu_minutes": 40.0}},
            "train_cpu_minutes": 180.0,
        },
    }
    gauss = [mk(0, 229.0), mk(1, 229.2), mk(2, 228.9)]
    vamp = [mk(s, v, prior="vamp") for s, v in enumerate([227.5, 227.9, 227.6])]
    control = [mk(0, 228.6, protocol="reference")]
    groups = {"g": gauss, "v": vamp, "c": control}
    text = report.comparisons(groups)
    g, v = report.summary(gauss), report.summary(vamp)
    d = v["mean"] - g["mean"]
    hw = 1.959964 * (v["se"] ** 2 + g["se"] ** 2) ** 0.5
    assert "'ours, vamp prior, 3 seeds, reference777' minus 'ours, 3 seeds, reference777'" in text
    assert f"**{d:+.2f} nats** [{d - hw:+.2f}, {d + hw:+.2f}]." in text
    dc, hwc = 228.6 - g["mean"], 1.959964 * (g["seed_sd"] ** 2 + g["se"] ** 2) ** 0.5
    assert "'reference, 1 seed, reference777' minus" in text
    assert f"**{dc:+.2f} nats** [{dc - hwc:+.2f}, {dc + hwc:+.2f}]; one seed" in text
    assert text.count("\n- ") == 2  # the Gaussian row is not compared with itself
    assert report.published(vamp[0]["config"])["nll"] is None
    assert report.published(gauss[0]["config"])["nll"] == 228.70
    # the choices: the control's total, and the clamp measurements averaged over seeds
    clamps = [
        {
            "seed": s,
            "k": 1000,
            "draw": "reference777",
            "summary": {
                "nll_change": c,
                "nll_change_se": 0.006,
                "clamped_fraction": 0.3,
                "max_abs_diff_from_stored_per_image": 0.0,
                "cpu_minutes": 18.0,
            },
        }
        for s, c in [(0, -0.010), (1, -0.020), (2, -0.015)]
    ]
    text = report.choices(groups, clamps)
    assert "**-0.015 nats** over 3 seeds (seed 0 -0.010 ± 0.006" in text
    assert "30.0 % of the decoder's outputs" in text
    assert f"together (the control run): {dc:+.2f} nats" in text
    assert "has not finished" in report.choices({"g": gauss}, [])
    # the answer first: the Gaussian row against its published number (the interval holds 0),
    # each other row against the Gaussian row (the VampPrior's interval lies below 0)
    text = report.lead(groups)
    dg, hwg = g["mean"] - 228.70, 1.959964 * (g["se"] ** 2 + 0.15**2) ** 0.5
    assert abs(dg) <= hwg and abs(d) > hw
    assert (
        f"**{g['mean']:.2f} ± {g['se']:.2f}** nats on the reference's test draw; "
        f"{dg:+.2f} [{dg - hwg:+.2f}, {dg + hwg:+.2f}] from the published 228.70 ± 0.15, "
        "consistent with it." in text
    )
    assert (
        f"the vamp prior (3 seeds): **{v['mean']:.2f}** nats; {d:+.2f} [{d - hw:+.2f}, "
        f"{d + hw:+.2f}] against our Gaussian-prior row, better than it." in text
    )
    assert "the control run with the reference's training choices (1 seed): **228.60**" in text
    assert report.lead({"v": vamp}) == ""  # no Gaussian row: nothing to lead with
    # the resolution: the t quantile for 2 degrees of freedom (4.302653, from a t table) on our se
    hw_t = ((4.302653 * g["se"]) ** 2 + (1.959964 * 0.15) ** 2) ** 0.5
    assert f"2 degrees of freedom on our se: ± {hw_t:.2f})" in text
    one = report.lead({"g": gauss[:1]})  # one seed: no se, so no resolution sentence, no nan
    assert "(1 seed): **229.00 ± n/a**" in one and "nan" not in one and "t quantile" not in one

    # Control runs with choices set back to ours, each against the run of the same seed without
    # them: stopping against the control run, lr (with stopping) against stopping alone.
    ref = dict(protocol="reference")
    stop = [mk(0, 228.9, **ref, as_ours=["stopping"])]
    lr = [mk(0, 228.7, **ref, as_ours=["lr", "stopping"])]
    groups |= {"s": stop, "l": lr}
    text = report.choices(groups, [])
    assert (
        "- stopping set back to ours (`--as-ours stopping` against the control run): **+0.30 "
        "nats** (seed 0, one pair: no interval" in text
    )
    assert (
        "- lr set back to ours (`--as-ours lr,stopping` against `--as-ours stopping`): **-0.20 "
        "nats** (seed 0, one pair" in text
    )
    assert f"together (the control run): {dc:+.2f} nats" in text  # still the whole control
    missing = "not measured for `optimizer`, `init`, `warmup`, `clamp`, `valid-draw`;"
    assert missing in text and "(the others)" in text
    assert "the control run took 220 CPU-minutes here, training and evaluation;" in text
    assert "the control run with our stopping (1 seed): **228.90**" in report.lead(groups)
    assert "'reference, our stopping, 1 seed, reference777' minus" in report.comparisons(groups)
    # without the control run: waiting; and a control of another prior is not ours to compare
    other = [mk(0, 227.0, **ref, prior="vamp")]
    text = report.choices({"g": gauss, "s": stop, "o": other}, [])
    assert "(`--as-ours stopping`): run, waiting for the control run to be compared with." in text
    assert "has not finished" in text and "not measured for `optimizer`, `lr`, `init`" in text
    # several paired seeds: the mean difference with a t interval (t(0.975, 1) = 12.706205, from
    # a t table) from the spread of the per-seed differences
    pair = report._paired(
        [mk(0, 229.0, **ref), mk(1, 229.3, **ref)], [mk(0, 228.8, **ref), mk(1, 229.0, **ref)]
    )
    hw = 12.706205 * 0.05 * 2**0.5 / 2**0.5  # the differences 0.2 and 0.3: sd 0.05 * sqrt(2)
    assert f"**+0.25 nats** [{0.25 - hw:+.2f}, {0.25 + hw:+.2f}] (mean of 2 paired seeds" in pair
    c = stop[0]["config"] | GATED | {"protocol": "reference", "as_ours": ["lr", "stopping"]}
    assert "control with our lr, stopping (`--as-ours`; up to 300 epochs, lr 0.001)" in (
        report.describe(c)
    )
    assert "--as-ours lr,stopping --epochs 300 --lr 0.001 --lr-final 1e-05 --seed 0" in (
        report.rerun({"config": c})
    )


@needs_fashion
def test_clamp_measurement_pairs_the_samples_and_resumes(tmp_path, monkeypatch):
    """likelihood_clamp.py on a small finished run: its unclamped pass reproduces the run's own
    numbers (the same importance samples), the NLL change is the clamped minus the trained NLL,
    a stopped measurement resumes to the same numbers, and bad input is refused by name."""
    run = tmp_path / "run"
    done = run_likelihood(run, "--epochs", "1", "--seed", "3")
    assert done.returncode == 0, done.stderr

    def clamp(*args):
        cmd = [sys.executable, str(ROOT / "benchmarks" / "likelihood_clamp.py"), *map(str, args)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    out = tmp_path / "clamp.json"
    first = clamp(run, "--k", "10", "--test-limit", "1200", "--out", out)
    assert first.returncode == 0, first.stderr
    m = json.loads(out.read_text())
    s = m["summary"]
    assert s["n_test"] == 1200 and sorted(m["blocks"]) == ["0", "1000"]
    assert m["block_seeds"] == "reference777/K10"  # the run's spread pass at K = 10
    assert s["max_abs_diff_from_stored_per_image"] < 1e-4
    assert s["nll_change"] == pytest.approx(s["nll_clamped"] - s["nll_trained"], abs=1e-9)
    assert 0.0 <= s["clamped_fraction"] <= 1.0 and s["nll_change_se"] >= 0.0
    # stopped after the first block: resuming computes the second only, to the same numbers
    del m["blocks"]["1000"], m["summary"]
    out.write_text(json.dumps(m))
    again = clamp(run, "--k", "10", "--test-limit", "1200", "--out", out, "--resume")
    assert again.returncode == 0, again.stderr
    assert "images 0-1000" not in again.stdout and "images 1000-1200" in again.stdout
    s2 = json.loads(out.read_text())["summary"]
    assert {k: v for k, v in s2.items() if k != "cpu_minutes"} == {
        k: v for k, v in s.items() if k != "cpu_minutes"
    }
    refused = clamp(run, "--k", "10", "--out", out)
    assert refused.returncode != 0 and "exists; add --resume" in refused.stderr
    (run / "best.pt").rename(run / "kept.pt")
    missing = clamp(run, "--out", tmp_path / "other.json")
    assert missing.returncode != 0 and "best.pt is missing" in missing.stderr


def test_counting_clamp_counts_and_clamps_like_the_probabilities(monkeypatch):
    lc = script("likelihood_clamp", monkeypatch)
    c = lc.CountingClamp(1e-5)
    logits = torch.tensor([[-20.0, -11.0, 0.0], [11.6, 30.0, 5.0]])
    out = c(logits)
    assert (c.changed, c.total) == (3, 6)
    p = torch.sigmoid(logits.double()).clamp(1e-5, 1 - 1e-5)
    assert torch.allclose(torch.sigmoid(out.double()), p, rtol=0, atol=1e-9)


def test_throughput_compares_fit_with_the_plain_loop():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "train_throughput.py"),
            "--cases",
            "small",
            "--epochs",
            "1",
            "--rounds",
            "1",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "small: fit / plain = " in out.stdout
