"""Turn the JSON files of `benchmarks/likelihood.py` runs into RESULTS.md tables and a curve of test NLL against epochs.

Runs with the same configuration (everything but --seed, --out, --threads) form one row: the mean test NLL over
their seeds with its standard error, beside the published value. Below it, one row per seed with the command
that reruns it.

    python benchmarks/likelihood_report.py benchmarks/results/likelihood/*.json            # print the tables
    python benchmarks/likelihood_report.py benchmarks/results/likelihood/*.json --write    # ... into RESULTS.md
"""

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from _results import replace_section

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
CURVE = HERE / "likelihood_curve.png"
SECTION = "## Test log-likelihood against published results"

# Published test NLL (nats; minus the published log-likelihood) and where the number was checked.
REFERENCES = {
    "fashion-mnist": {
        "nll": 228.70,
        "source": "Norouzi, Fleet & Norouzi 2020, Exemplar VAE (NeurIPS), density-estimation table: VAE with a "
                  "Gaussian prior, z = 40",
        "their_setup": "784-300-300-40 gated dense layers, hardtanh-bounded encoder log-variance; Adam 5e-4, batch "
                       "100, KL warm-up 100 epochs, up to 2000 epochs, early stopping (patience 50) on 10,000 held-out "
                       "training images; 5000 importance samples",
        "checked": "checked: the number is in the density-estimation table image images/density_estimation.png of the "
                   "authors' repository (github.com/sajadn/Exemplar-VAE; read there for issue 15, the image is not "
                   "text and was not re-read here); their setup checked against the same repository's "
                   "density_estimation.py and models/VAE.py",
    },
    "mnist": {
        "nll": 86.76,
        "source": "Burda, Grosse & Salakhutdinov 2016, Importance Weighted Autoencoders (ICLR), Table 1: VAE, one "
                  "stochastic layer, k = 1",
        "their_setup": "784-200-200-50 tanh; Adam, lr 1e-3 * 10^(-i/7) for 3^i epochs, i = 0..7; 5000 importance samples",
        "checked": "not checked here (the paper's table could not be read from the sources available); not run: "
                   "no MNIST copy on this machine (no Debian package; no network)",
    },
}
RUN_KEYS = ("seed", "out", "threads")  # what may differ between the seeds of one configuration


def load(paths):
    runs = []
    for p in paths:
        r = json.loads(Path(p).read_text())
        if r.get("status") != "done":
            print(f"skipping {p}: status {r.get('status')!r} (not finished)", file=sys.stderr)
            continue
        r["path"] = str(p)
        runs.append(r)
    return runs


def group(runs):
    """{configuration key: [runs]}, in the order first seen."""
    groups = {}
    for r in runs:
        key = json.dumps({k: v for k, v in r["config"].items() if k not in RUN_KEYS}, sort_keys=True)
        groups.setdefault(key, []).append(r)
    return groups


def describe(c):
    return (f"{c['model']} {c['hidden'].replace(',', '-')}, z = {c['latent_dim']}; Adam {c['lr']:g} cosine to "
            f"{c['lr_final']:g} over {c['epochs']} epochs, batch {c['batch_size']}, KL warm-up {c['warmup_epochs']} "
            f"epochs; best validation ELBO")


def rerun(r):
    c = r["config"]
    return (f"`python benchmarks/likelihood.py --dataset {c['dataset']} --model {c['model']} --hidden {c['hidden']} "
            f"--latent-dim {c['latent_dim']} --epochs {c['epochs']} --batch-size {c['batch_size']} --lr {c['lr']:g} "
            f"--lr-final {c['lr_final']:g} --warmup-epochs {c['warmup_epochs']} --seed {c['seed']} --out DIR`")


def _unusual(f):
    return "" if (f["k"], f["n_test"]) == (5000, 10000) else f" (K = {f['k']}, {f['n_test']} images)"


def tables(groups):
    out = ["| dataset | configuration | seeds | test NLL, mean ± se (nats) | published | difference | "
           "CPU-minutes per seed (train + evaluation) |\n|---|---|---|---|---|---|---|\n"]
    seeds = ["\n| dataset | seed | best epoch (of) | test ELBO | test NLL, K = 5000 (± se over images) | CPU-minutes "
             "train + evaluation | device, threads | command |\n|---|---|---|---|---|---|---|---|\n"]
    for runs in groups.values():
        c, ref = runs[0]["config"], REFERENCES[runs[0]["config"]["dataset"]]
        nll = [r["final"]["nll"] for r in runs]
        mean = statistics.fmean(nll)
        se = statistics.stdev(nll) / math.sqrt(len(nll)) if len(nll) > 1 else float("nan")
        cpu = [r["final"]["train_cpu_minutes"] + r["final"]["eval_cpu_minutes"] for r in runs]
        out.append(f"| {c['dataset']} | {describe(c)} | {len(runs)} | **{mean:.2f} ± {se:.2f}** | {ref['nll']:.2f} | "
                   f"{mean - ref['nll']:+.2f} | {min(cpu):.0f}–{max(cpu):.0f} |\n")
        for r in sorted(runs, key=lambda r: r["config"]["seed"]):
            f = r["final"]
            seeds.append(f"| {c['dataset']} | {r['config']['seed']} | {f['epoch']} ({c['epochs']}) | {f['elbo']:.2f} | "
                         f"{f['nll']:.2f} ± {f['nll_se']:.2f}{_unusual(f)} | {f['train_cpu_minutes']:.0f} + {f['eval_cpu_minutes']:.0f} | "
                         f"{r['device']}, {r['threads']} | {rerun(r)} |\n")
    return "".join(out + seeds)


def curve_table(groups):
    """Test NLL on the curve subset at each curve epoch, mean over the seeds of each configuration."""
    out = []
    for runs in groups.values():
        c = runs[0]["config"]
        by_epoch = {}
        for r in runs:
            for p in r["curve"]:
                by_epoch.setdefault(p["epoch"], []).append(p["nll"])
        out.append(f"\nTest NLL against epochs ({c['dataset']}, {c['model']}; K = {c['curve_k']} on the first "
                   f"{c['curve_images']} test images, mean over {len(runs)} runs; the final K = 5000 number uses all "
                   f"10,000 images and the best-validation epoch): ")
        out.append(", ".join(f"epoch {e}: {statistics.fmean(v):.2f}" for e, v in sorted(by_epoch.items())) + ".\n")
    return "".join(out)


def plot(groups, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vaelib.plotting import savefig, use_style

    use_style()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for runs in groups.values():
        c = runs[0]["config"]
        for r in sorted(runs, key=lambda r: r["config"]["seed"]):
            ax.plot([p["epoch"] for p in r["curve"]], [p["nll"] for p in r["curve"]], "o-", ms=2.5, lw=1,
                    label=f"seed {r['config']['seed']}: K={c['curve_k']}, {c['curve_images']} test images")
            ax.plot([r["final"]["epoch"]], [r["final"]["nll"]], "s", ms=6, color=ax.lines[-1].get_color(),
                    label=f"seed {r['config']['seed']} final: K=5000, all 10,000 test images")
        ref = REFERENCES[c["dataset"]]["nll"]
        ax.axhline(ref, ls="--", color="0.5", label=f"published {ref:.2f}")
        ax.axhspan(ref, ref + 2, color="0.9", label="target: within 2 nats")
        lows = [p["nll"] for r in runs for p in r["curve"]]
        ax.set_ylim(min(lows + [ref]) - 1.5, min(lows) + 12)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test NLL (nats)")
    ax.set_title(f"{c['dataset']}: {c['model']} VAE {runs[0]['architecture']}, Bernoulli")
    ax.legend(fontsize=7, loc="upper right")
    savefig(fig, path)
    plt.close(fig)


def section(groups):
    refs = "".join(f"| {name} | {r['nll']:.2f} | {r['source']} | {r['their_setup']} | {r['checked']} |\n"
                   for name, r in REFERENCES.items())
    return (f"{SECTION}\n\n"
            "`python benchmarks/likelihood.py --seed S --out DIR` trains one model and writes DIR/likelihood.json; "
            "`python benchmarks/likelihood_report.py benchmarks/results/likelihood/*.json --write` makes the tables "
            "below and `benchmarks/likelihood_curve.png` from the committed JSON files. Protocol: the first 50,000 "
            "training images train (binarized afresh every epoch), the last 10,000 are the validation set (binarized "
            "once); the epoch with the best validation ELBO is kept; test NLL = −log p(x) with K = 5000 importance "
            "samples on all 10,000 test images, binarized once (seed 12345). Nats per image, lower is better; "
            "se = standard error of the mean over seeds (per seed: over images).\n\n"
            + tables(groups) + curve_table(groups)
            + "\n![test NLL against epochs](likelihood_curve.png)\n\n"
            "| dataset | published NLL | source | their setup | checked |\n|---|---|---|---|---|\n" + refs + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", nargs="+", type=Path, help="likelihood.json files of finished runs")
    p.add_argument("--write", action="store_true", help=f"replace the section of {RESULTS.name} and write {CURVE.name}")
    args = p.parse_args(argv)
    groups = group(load(args.json))
    if not groups:
        raise SystemExit("no finished runs among the files given")
    text = section(groups)
    print(text)
    if args.write:
        plot(groups, CURVE)
        replace_section(RESULTS, SECTION, text)
        print(f"updated {RESULTS} and {CURVE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
