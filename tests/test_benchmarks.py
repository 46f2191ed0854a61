"""The benchmark scripts run end to end on small settings: a likelihood run writes its JSON, resumes exactly,
and the report turns JSON files into the RESULTS.md section; the throughput benchmark compares fit with its
plain loop. (The recorded numbers come from the full runs; these tests only keep the scripts working.)"""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from vaelib import data

ROOT = Path(__file__).resolve().parent.parent


def fashion_available():
    try:
        data.load("fashion-mnist", "test", download=False)
        return True
    except (OSError, ValueError):
        return False


needs_fashion = pytest.mark.skipif(not fashion_available(), reason="needs Fashion-MNIST (Debian dataset-fashion-mnist)")


def script(name, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as when run as a script: its folder comes first
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SMALL = ["--train-limit", "300", "--k", "20", "--test-limit", "40", "--curve-every", "1", "--curve-k", "5",
         "--curve-images", "20", "--hidden", "16,16", "--latent-dim", "4"]


def run_likelihood(out, *args):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "likelihood.py"), *SMALL, "--out", str(out), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@needs_fashion
def test_likelihood_run_resume_and_report(tmp_path, monkeypatch):
    straight = run_likelihood(tmp_path / "straight", "--epochs", "3", "--seed", "1")
    assert straight.returncode == 0, straight.stderr
    r = json.loads((tmp_path / "straight" / "likelihood.json").read_text())
    assert r["status"] == "done" and r["n_train"] == 300 and r["n_valid"] == 10000 and r["n_test"] == 40
    assert [e["epoch"] for e in r["epochs"]] == [1, 2, 3] and [p["epoch"] for p in r["curve"]] == [1, 2, 3]
    best = max(r["epochs"], key=lambda e: e["valid_elbo"])
    assert r["best"]["epoch"] == best["epoch"] == r["final"]["epoch"]
    assert r["epochs"][0]["lr"] == pytest.approx(1e-3) and r["epochs"][-1]["lr"] == pytest.approx(1e-5)
    assert math.isfinite(r["final"]["nll"]) and math.isfinite(r["final"]["nll_se"])

    # Stopped after epoch 2 and resumed: the numbers of the uninterrupted run, bit for bit.
    again = tmp_path / "again"
    stopped = run_likelihood(again, "--epochs", "3", "--seed", "1", "--stop-after", "2")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads((again / "likelihood.json").read_text())["status"] == "training"
    resumed = run_likelihood(again, "--epochs", "3", "--seed", "1", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    r2 = json.loads((again / "likelihood.json").read_text())
    assert r2["final"] == {**r["final"], **{k: r2["final"][k] for k in r2["final"] if "minutes" in k}}
    assert [e["valid_elbo"] for e in r2["epochs"]] == [e["valid_elbo"] for e in r["epochs"]]

    report = script("likelihood_report", monkeypatch)
    monkeypatch.setattr(report, "RESULTS", tmp_path / "RESULTS.md")
    monkeypatch.setattr(report, "CURVE", tmp_path / "curve.png")
    (tmp_path / "RESULTS.md").write_text("# Benchmark results\n\n## other\n\nkept\n")
    other = tmp_path / "seed2"
    assert run_likelihood(other, "--epochs", "1", "--seed", "2").returncode == 0
    r1 = r
    # Different --epochs: two configurations, so two rows.
    assert report.main([str(tmp_path / "straight" / "likelihood.json"), str(other / "likelihood.json"), "--write"]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## other\n\nkept" in text and text.count(report.SECTION) == 1
    assert f"{r1['final']['nll']:.2f} ± {r1['final']['nll_se']:.2f}" in text
    assert "--seed 1 --out DIR" in text and "--seed 2 --out DIR" in text
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_throughput_compares_fit_with_the_plain_loop():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--cases", "small",
                          "--epochs", "1", "--rounds", "1", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "small: fit / plain = " in out.stdout
