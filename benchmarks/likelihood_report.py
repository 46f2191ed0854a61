"""Turn the JSON files of `benchmarks/likelihood.py` runs into RESULTS.md tables and a curve of test
NLL against epochs.

Runs with the same configuration (everything but --seed, --out, --threads) form one row. What each
number is:
  - test NLL on the reference's draw: mean over seeds of the K = 5000 estimate on all 10,000 test
    images binarized as the published number's code binarizes them (draw "reference777"), so the
    comparison with it shares the test set; ± = standard error over seeds;
  - seed spread: standard deviation over seeds of the NLL on one draw (training noise);
  - binarization spread: standard deviation over draws of the seed-mean NLL (which test set was
    drawn), from the spread pass (every draw at K = --spread-k, 1000 by default) where every seed
    has it, else from the draws evaluated at K = 5000;
  - difference: our NLL minus the published one, with a 95 % interval (normal approximation) from
    the seed standard error and the published ±, taken as the standard error of their number (wider
    if it is a standard deviation of a mean of several runs); where the reference draw is missing,
    the binarization spread is added.
Below it, one row per seed with the command that reruns it. Runs still evaluating are reported with
the draws they have finished. The section opens with the answer (`lead`): each Gaussian-prior
row against its published number, each other row against that row. Then each other row (a learned
prior, the control run) minus our Gaussian-prior row on the same test draw, with a 95 % interval
from the two standard errors over seeds; a learned prior is compared with the published number of
that prior only (PUBLISHED_PRIORS), never with the Gaussian prior's. Last, what the protocol
choices move where measured: the test draw (the binarization spread), the probability clamp at
evaluation (the files of `likelihood_clamp.py` in results/likelihood_clamp/), every training
choice together (the control run), and each choice alone (a control run with --as-ours CHOICE,
minus the run of the same seed without it: seed-paired differences).

Print the tables, or write them into RESULTS.md and redraw the curve:

    python benchmarks/likelihood_report.py benchmarks/results/likelihood/*.json
    python benchmarks/likelihood_report.py benchmarks/results/likelihood/*.json --write
"""

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from _results import replace_section
from _runs import AS_OURS, fill_defaults

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
CURVE = HERE / "likelihood_curve.png"
SECTION = "## Test log-likelihood against published results"
REFERENCE_DRAW = "reference777"
Z95 = 1.959964

# Published test NLL (nats; minus the published log-likelihood), its ±, and where the number was
# checked.
REFERENCES = {
    "fashion-mnist": {
        "nll": 228.70,
        "pm": 0.15,
        "source": "Norouzi, Fleet & Norouzi 2020, Exemplar VAE (NeurIPS), density-estimation "
        "table: VAE with a "
        "Gaussian prior, z = 40, 228.70 ± 0.15",
        "their_setup": "784-300-300-40 gated dense layers, hardtanh-bounded encoder log-variance; "
        "AdamNormGrad 5e-4, "
        "batch 100, He-normal weights, KL weight epoch/100, early stopping (patience 50, after the "
        "warm-up) up to 2000 epochs on 10,000 held-out training images binarized with numpy seed "
        "777; "
        "probabilities clamped to [1e-5, 1 - 1e-5]; 5000 importance samples on the test set "
        "binarized "
        "by the same seed-777 stream",
        "checked": "the number and its ± are in the density-estimation table image "
        "images/density_estimation.png of "
        "the authors' repository (github.com/sajadn/Exemplar-VAE), read for issues 15 and 20 (an "
        "image; not "
        "re-read here); their setup checked against the repository's density_estimation.py, "
        "utils/optimizer.py, utils/training.py, utils/evaluation.py, utils/distributions.py, "
        "utils/nn.py, "
        "models/BaseModel.py, models/VAE.py and utils/load_data/base_load_data.py",
    },
    "mnist": {
        "nll": 86.76,
        "pm": None,
        "source": "Burda, Grosse & Salakhutdinov 2016, Importance Weighted Autoencoders (ICLR), "
        "Table 1: VAE, one "
        "stochastic layer, K = 1",
        "their_setup": "784-200-200-50 tanh; Adam, lr 1e-3 * 10^(-i/7) for 3^i epochs, i = 0..7; "
        "5000 importance samples",
        "checked": "not checked here (the paper's table could not be read from the sources "
        "available); not run: "
        "no MNIST copy on this machine (no Debian package; no network)",
    },
}

# Published numbers of the learned priors, by (dataset, prior): the same fields as REFERENCES, "nll"
# None where the number could not be read.
PUBLISHED_PRIORS = {
    ("fashion-mnist", "vamp"): {
        "nll": None,
        "pm": None,
        "source": "Norouzi, Fleet & Norouzi 2020, Exemplar VAE (NeurIPS), density-estimation "
        "table: VAE with a VampPrior, z = 40 (the row beside the Gaussian prior's 228.70 ± 0.15)",
        "their_setup": "as for their Gaussian-prior row, with their code's VampPrior "
        "(density_estimation.py --prior vampprior --number_components C; C for this row is not "
        "in the code, whose default is 50,000; ours: 500 pseudo-inputs, Tomczak & Welling 2018)",
        "checked": "not transcribed: the table is only an image (images/density_estimation.png "
        "of github.com/sajadn/Exemplar-VAE) and the tools here read text only; searches of the "
        "stored text copies of the paper (ar5iv, an arXiv-source extract) return their opening "
        "pages, not the table. No number is given rather than one from memory",
    },
}
CLAMP_DIR = HERE / "results" / "likelihood_clamp"  # likelihood_clamp.py's measurements

# Every difference between our protocol ("ours"), the control run ("reference") and the published
# number's code.
DIFFERENCES = [
    (
        "optimizer",
        "Adam, 1e-3 cosine to 1e-5",
        "AdamNormGrad (gradient / its L2 norm per tensor, then Adam), 5e-4 constant",
        "as theirs",
        "`optimizer` (the normalisation); `lr` (the schedule and its 1e-3 start, with `stopping`)",
    ),
    (
        "initial weights",
        "PyTorch default, U(±1/√fan_in)",
        "He-normal N(0, 2/fan_in) (biases: PyTorch default)",
        "as theirs",
        "`init`",
    ),
    (
        "KL warm-up",
        "(epoch − 1)/50, from 0",
        "epoch/100 (0.01 in epoch 1)",
        "as theirs",
        "`warmup`",
    ),
    (
        "stopping and model kept",
        "300 epochs; best validation ELBO",
        "up to 2000 epochs, patience 50 not counted before epoch 100; best validation loss",
        "as theirs",
        "`stopping`",
    ),
    (
        "Bernoulli likelihood",
        "exact, from logits",
        "sigmoid probabilities clamped to [1e-5, 1 − 1e-5]",
        "as theirs",
        "`clamp`",
    ),
    (
        "validation set",
        "last 10,000 training images, one torch draw (fit's fixed draw)",
        "the same images, numpy RandomState(777) draw",
        "as theirs",
        "`valid-draw`",
    ),
    (
        "validation ELBO noise",
        "the same z noise every epoch",
        "fresh noise every epoch",
        "as ours",
        "already ours",
    ),
    (
        "KL term in training",
        "closed form",
        "one-sample Monte Carlo, log q(z|x) − log p(z)",
        "as ours",
        "already ours",
    ),
    (
        "training binarization",
        "a fresh draw of the whole set each epoch",
        "a fresh draw of each minibatch",
        "as theirs",
        "none needed: both draw each image afresh once per epoch",
    ),
    (
        "test set",
        "reported on their draw (and four others)",
        "numpy RandomState(777), after the validation draw",
        "as ours",
        "already ours",
    ),
]
# what may differ between the seeds of one configuration: the seed, where and how it ran, and
# (a run stopped and resumed) where it stopped
RUN_KEYS = ("seed", "out", "threads", "stop_after")


def draws_of(r):
    """{draw name: {"nll", "nll_se", "elbo", "n_test", "k", ...}} of the finished draws of run r
    (old runs: one draw)."""
    f = r.get("final") or {}
    if "binarizations" not in f:  # written before the multi-draw evaluation: one draw, seed 12345
        return {"torch12345": f} if "nll" in f else {}
    return {n: b for n, b in f["binarizations"].items() if "nll" in b}


def spread_of(r):
    """{draw name: {...}} of the finished draws of run r's spread pass (final["spread"], all draws
    at one cheaper K); {} for runs that evaluated every draw at the headline K."""
    f = r.get("final") or {}
    return {n: b for n, b in f.get("spread", {}).items() if "nll" in b}


def cpu_minutes(r):
    """Run r's CPU-minutes: training and every finished evaluation pass."""
    passes = [*draws_of(r).values(), *spread_of(r).values()]
    return r["final"]["train_cpu_minutes"] + sum(b.get("eval_cpu_minutes", 0.0) for b in passes)


def eval_threads_of(r):
    """The thread counts of run r's evaluation blocks (runs written before blocks recorded their
    threads: the empty set, read as the training's)."""
    f = r.get("final") or {}
    passes = [*f.get("binarizations", {}).values(), *f.get("spread", {}).values()]
    return {b["threads"] for d in passes for b in d.get("blocks", {}).values() if "threads" in b}


def load(paths):
    runs = []
    for p in paths:
        r = json.loads(Path(p).read_text())
        if r.get("status") not in ("done", "evaluating") or not draws_of(r):
            print(
                f"skipping {p}: status {r.get('status')!r}, no finished test draw", file=sys.stderr
            )
            continue
        fill_defaults(r["config"])  # a run written before a setting existed
        r["path"] = str(p)
        runs.append(r)
    return runs


def group(runs):
    """{configuration key: [runs]}, in the order first seen."""
    groups = {}
    for r in runs:
        key = json.dumps(
            {k: v for k, v in r["config"].items() if k not in RUN_KEYS}, sort_keys=True
        )
        groups.setdefault(key, []).append(r)
    return groups


def published(c):
    """The published entry that configuration c compares with (its dataset and prior)."""
    if c["prior"] == "normal":
        return REFERENCES[c["dataset"]]
    return PUBLISHED_PRIORS.get(
        (c["dataset"], c["prior"]),
        {"nll": None, "pm": None, "source": "none known", "their_setup": "", "checked": ""},
    )


def describe(c):
    arch = f"{c['model']} {c['hidden'].replace(',', '-')}, z = {c['latent_dim']}"
    if c["prior"] != "normal":
        n = c["prior_components"]
        arch += f", prior {c['prior']}" + (f" ({n} components)" if n is not None else "")
    if c["protocol"] == "reference" and c["as_ours"]:
        return (
            f"{arch}; control with our {', '.join(c['as_ours'])} (`--as-ours`; up to "
            f"{c['epochs']} epochs, lr {c['lr']:g})"
        )
    if c["protocol"] == "reference":
        return (
            f"{arch}; control: the reference's training (AdamNormGrad {c['lr']:g}, He init, "
            f"warm-up 100, patience 50)"
        )
    return (
        f"{arch}; Adam {c['lr']:g} cosine to {c['lr_final']:g} over {c['epochs']} epochs, batch "
        f"{c['batch_size']}, "
        f"KL warm-up {c['warmup_epochs']} epochs; best validation ELBO"
    )


def _as_ours_options(c):
    """The options of a control run with --as-ours, with the settings its choices use."""
    ours = c["as_ours"]
    if not ours:
        return ""
    text = f"--as-ours {','.join(ours)} --epochs {c['epochs']} --lr {c['lr']:g} "
    if "lr" in ours:
        text += f"--lr-final {c['lr_final']:g} "
    if "warmup" in ours:
        text += f"--warmup-epochs {c['warmup_epochs']} "
    return text


def rerun(r):
    c = r["config"]
    if c["protocol"] == "reference":
        return (
            f"`python benchmarks/likelihood.py --protocol reference --dataset {c['dataset']} "
            f"--model {c['model']} "
            f"--hidden {c['hidden']} --latent-dim {c['latent_dim']} "
            + _as_ours_options(c)
            + f"--seed {c['seed']} --out DIR`"
        )
    return (
        f"`python benchmarks/likelihood.py --dataset {c['dataset']} --model {c['model']} --hidden "
        f"{c['hidden']} "
        f"--latent-dim {c['latent_dim']} --epochs {c['epochs']} --batch-size {c['batch_size']} "
        f"--lr {c['lr']:g} "
        f"--lr-final {c['lr_final']:g} --warmup-epochs {c['warmup_epochs']} --seed {c['seed']} "
        + (f"--prior {c['prior']} " if c["prior"] != "normal" else "")
        + (f"--prior-components {c['prior_components']} " if c["prior_components"] else "")
        + "--out DIR`"
    )


def _sd(values):
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def summary(runs):
    """The row's numbers: per-draw seed means, seed spread, binarization spread, the comparison
    draw."""
    names = sorted({n for r in runs for n in draws_of(r)}, key=lambda n: (n != REFERENCE_DRAW, n))
    complete = [n for n in names if all(n in draws_of(r) for r in runs)]  # draws every seed has
    per_draw = {n: [draws_of(r)[n]["nll"] for r in runs] for n in complete}
    main = REFERENCE_DRAW if REFERENCE_DRAW in per_draw else (complete[0] if complete else None)
    out = {"draws": complete, "main": main, "n_seeds": len(runs)}
    if main is None:
        return out
    v = per_draw[main]
    # the binarization spread: from the spread pass (every draw at one K) where every seed has it,
    # else from the headline draws
    spread_names = sorted({n for r in runs for n in spread_of(r)})
    spread_complete = [n for n in spread_names if all(n in spread_of(r) for r in runs)]
    if len(spread_complete) > 1:
        spread = {n: [spread_of(r)[n]["nll"] for r in runs] for n in spread_complete}
        out["spread_k"] = spread_of(runs[0])[spread_complete[0]]["k"]
    else:
        spread, out["spread_k"] = {n: per_draw[n] for n in complete}, None
    out["spread_draws"] = list(spread)
    out.update(
        mean=statistics.fmean(v),
        se=_sd(v) / math.sqrt(len(v)),
        seed_sd=_sd(v),
        bin_sd=_sd([statistics.fmean(spread[n]) for n in spread])
        if len(spread) > 1
        else float("nan"),
    )
    return out


def _span(values):
    """'a–b' of the smallest and largest value, rounded; one number where they round alike."""
    lo, hi = f"{min(values):.0f}", f"{max(values):.0f}"
    return lo if lo == hi else f"{lo}–{hi}"


def _fmt(x, digits=2):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def difference(s, ref):
    """(difference, half-width of its 95 % interval), see the module docstring."""
    d = s["mean"] - ref["nll"]
    se = 0.0 if math.isnan(s["se"]) else s["se"]
    var = se**2 + (ref["pm"] or 0.0) ** 2
    if (
        s["main"] != REFERENCE_DRAW
    ):  # another test set than theirs: which draw it was adds its own spread
        var += 0.0 if math.isnan(s["bin_sd"]) else s["bin_sd"] ** 2
    return d, Z95 * math.sqrt(var)


def tables(groups):
    out = [
        "| dataset | configuration | seeds | test draws | test NLL on the reference's draw, mean ± "
        "se over seeds "
        "(nats) | seed spread (sd) | binarization spread (sd over draws) | published | difference "
        "[95 % interval] | "
        "CPU-minutes per seed (train + evaluation) |\n|---|---|---|---|---|---|---|---|---|---|\n"
    ]
    seeds = [
        "\n| dataset | protocol | seed | best epoch (of) | test ELBO | test NLL, K = 5000, per "
        "draw (± se over images) "
        "| CPU-minutes train + evaluation | device, threads | command "
        "|\n|---|---|---|---|---|---|---|---|---|\n"
    ]
    for runs in groups.values():
        c = runs[0]["config"]
        ref = published(c)
        s = summary(runs)
        main = s["main"]
        if main == REFERENCE_DRAW:
            label = ""
        elif any(r.get("status") == "evaluating" for r in runs):
            label = f" (draw {main}: the reference's draw not evaluated yet)"
        else:
            label = f" (draw {main}: these runs were not evaluated on the reference's draw)"
        if ref["nll"] is None:
            pub, diff = "not transcribed (see the table of published numbers)", "n/a"
        else:
            d, hw = difference(s, ref)
            interval = (
                f"[{d - hw:+.2f}, {d + hw:+.2f}]"
                if main == REFERENCE_DRAW or not math.isnan(s["bin_sd"])
                else "[n/a: another test draw, and the spread over draws not measured]"
            )
            if math.isnan(s["se"]) and not interval.startswith("[n/a"):
                interval += " (one seed: from the published ± alone, without our seed spread)"
            pub, diff = f"{ref['nll']:.2f}{_pm(ref)}", f"{d:+.2f} {interval}"
        cpu = [cpu_minutes(r) for r in runs]
        n_draws = len(s["spread_draws"]) if s["spread_draws"] else len(s["draws"])
        bin_sd = _fmt(s["bin_sd"]) + (
            f" ({n_draws} draws, K = {s['spread_k']})" if s["spread_k"] else ""
        )
        out.append(
            f"| {c['dataset']} | {describe(c)} | {len(runs)} | {n_draws} | "
            f"**{s['mean']:.2f} ± "
            f"{_fmt(s['se'])}**{label} | {_fmt(s['seed_sd'])} | {bin_sd} | {pub} | "
            f"{diff} | {_span(cpu)} |\n"
        )
        for r in sorted(runs, key=lambda r: r["config"]["seed"]):
            f, dr = r["final"], draws_of(r)
            elbo = dr[main]["elbo"] if main in dr else next(iter(dr.values()))["elbo"]
            per = "; ".join(
                f"{n} {b['nll']:.2f} ± {b['nll_se']:.2f}"
                + (
                    ""
                    if (b["k"], b["n_test"]) == (5000, 10000)
                    else f" (K = {b['k']}, {b['n_test']} images)"
                )
                for n, b in dr.items()
            )
            sp = spread_of(r)
            if sp:
                per += f"; K = {next(iter(sp.values()))['k']}: " + ", ".join(
                    f"{n} {b['nll']:.2f}" for n, b in sp.items()
                )
            ev = sum(b.get("eval_cpu_minutes", 0.0) for b in [*dr.values(), *sp.values()])
            threads = str(r["threads"])
            eval_threads = eval_threads_of(r)
            if eval_threads and eval_threads != {r["threads"]}:
                threads += f" (evaluation: {', '.join(map(str, sorted(eval_threads)))})"
            seeds.append(
                f"| {c['dataset']} | {c['protocol']} | {r['config']['seed']} | {f['epoch']} "
                f"({c['epochs']}) | "
                f"{elbo:.2f} | {per} | {f['train_cpu_minutes']:.1f} + {ev:.1f} | {r['device']}, "
                f"{threads} "
                f"| {rerun(r)} |\n"
            )
    return "".join(out + seeds)


def curve_table(groups):
    """Test NLL on the curve subset at each curve epoch, mean over the seeds of each
    configuration."""
    out = []
    for runs in groups.values():
        c = runs[0]["config"]
        by_epoch = {}
        for r in runs:
            for p in r["curve"]:
                by_epoch.setdefault(p["epoch"], []).append(p["nll"])
        out.append(
            f"\nCurve ({c['dataset']}, group '{_group_label(runs)}'): test NLL with "
            f"K = {c['curve_k']} on the first {c['curve_images']} test images (draw torch12345; "
            "the same images at every epoch, so the points compare with each other, not with the "
            "full-test numbers above), mean over "
            f"{len(runs)} run{'s' if len(runs) > 1 else ''}: "
        )
        points = sorted(by_epoch.items())
        last = ""
        if len(points) > 1:
            (e1, v1), (e2, v2) = points[-2], points[-1]
            drop = statistics.fmean(v1) - statistics.fmean(v2)
            last = f" From epoch {e1} to {e2} the mean fell by {drop:.2f} nats."
        out.append(
            ", ".join(f"epoch {e}: {statistics.fmean(v):.2f}" for e, v in points)
            + "."
            + last
            + "\n"
        )
    return "".join(out)


def plot(groups, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vaelib.plotting import savefig, use_style

    use_style()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.0), gridspec_kw={"width_ratios": [2, 1.4]})
    for gi, runs in enumerate(groups.values()):
        c = runs[0]["config"]
        color = f"C{gi}"
        epochs = sorted({p["epoch"] for r in runs for p in r["curve"]})
        vals = [[p["nll"] for r in runs for p in r["curve"] if p["epoch"] == e] for e in epochs]
        mean = [statistics.fmean(v) for v in vals]
        sd = [_sd(v) if len(v) > 1 else 0.0 for v in vals]
        ax.errorbar(
            epochs,
            mean,
            yerr=sd,
            fmt="o-" if gi % 2 == 0 else "s--",  # groups of one configuration overlap
            ms=3,
            lw=1,
            capsize=2,
            color=color,
            label=f"group '{_group_label(runs)}' (as on the right): mean ± sd over seeds",
        )
        s = summary(runs)
        for j, n in enumerate(s["draws"]):
            v = [draws_of(r)[n]["nll"] for r in runs]
            x = gi + (j - (len(s["draws"]) - 1) / 2) * 0.08
            bx.errorbar(
                [x],
                [statistics.fmean(v)],
                yerr=[_sd(v) if len(v) > 1 else 0.0],
                fmt="o",
                ms=4,
                capsize=2,
                color=color,
                alpha=1.0 if n == REFERENCE_DRAW else 0.45,
            )
    bx.plot([], [], "o", color="0.3", label="dark: the reference's draw; bars: sd over seeds")
    ref = REFERENCES[c["dataset"]]
    if ref["pm"]:
        bx.errorbar(
            [len(groups)],
            [ref["nll"]],
            yerr=[ref["pm"]],
            fmt="s",
            color="k",
            capsize=3,
            label=f"published {ref['nll']:.2f} ± {ref['pm']:.2f}",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("test NLL (nats)")
    ax.set_title(f"during training: K = {c['curve_k']}, first {c['curve_images']} test images")
    lows = [p["nll"] for runs in groups.values() for r in runs for p in r["curve"]]
    ax.set_ylim(min(lows) - 1.0, min(lows) + 12)
    ax.legend(fontsize=7, loc="upper right")
    bx.set_xticks(list(range(len(groups))) + ([len(groups)] if ref["pm"] else []))
    bx.set_xticklabels(
        [_group_label(runs).replace(", ", "\n") for runs in groups.values()]
        + (["published"] if ref["pm"] else []),
        fontsize=7,
    )
    bx.set_xlim(-0.5, len(groups) + 0.5)
    bx.margins(y=0.35)
    bx.set_ylabel("test NLL (nats)")
    bx.set_title("kept model: K = 5000, all 10,000 test images")
    bx.legend(fontsize=7, loc="lower left")
    fig.suptitle(
        f"{c['dataset']}: {c['model']} VAE {runs[0]['architecture']}, Bernoulli", fontsize=10
    )
    savefig(fig, path)
    plt.close(fig)


def _group_label(runs):
    """'ours, 3 seeds, torch12345': what tells the groups apart (seeds, and the draw of their
    K = 5000 number)."""
    n, c = len(runs), runs[0]["config"]
    prior = "" if c["prior"] == "normal" else f"{c['prior']} prior, "
    if c["as_ours"]:
        prior += f"our {'+'.join(c['as_ours'])}, "
    return f"{c['protocol']}, {prior}{n} seed{'s' if n > 1 else ''}, {summary(runs)['main']}"


def _base(groups, dataset):
    """Our Gaussian-prior row on `dataset` on the reference's draw (the group with most seeds), or
    None."""
    rows = [
        runs
        for runs in groups.values()
        if (runs[0]["config"]["dataset"], runs[0]["config"]["protocol"], runs[0]["config"]["prior"])
        == (dataset, "ours", "normal")
        and summary(runs)["main"] == REFERENCE_DRAW
    ]
    return max(rows, key=len, default=None)


def _against_base(groups):
    """[(runs, base, difference, half-width of its 95 % interval)] for each row on the reference
    draw other than our Gaussian-prior row `base` of its dataset (see `comparisons`)."""
    out = []
    for runs in groups.values():
        base = _base(groups, runs[0]["config"]["dataset"])
        s = summary(runs)
        if base is None or base is runs or s["main"] != REFERENCE_DRAW:
            continue
        b = summary(base)
        se = s["se"] if len(runs) > 1 else b["seed_sd"]  # one seed: the Gaussian row's seed sd
        out.append((runs, base, s["mean"] - b["mean"], Z95 * math.sqrt(se**2 + b["se"] ** 2)))
    return out


# What two rows must share to be compared choice by choice: the data, the model and the prior.
SETUP = ("dataset", "model", "hidden", "latent_dim", "prior", "prior_components", "batch_size")


def _setup(c):
    return tuple(c.get(k) for k in (*SETUP, "train_limit"))


def _paired(runs, against):
    """'**d nats** ...': the NLL on the reference's draw of `runs` minus that of `against`, seed by
    seed (the same seed trains both from the same initial weights and random stream, up to where
    the choice acts); with 2 or more shared seeds the mean difference and a t interval from the
    differences' spread, with one the difference alone."""

    def nll(rs):
        return {r["config"]["seed"]: draws_of(r)[REFERENCE_DRAW]["nll"] for r in rs}

    a, b = nll(runs), nll(against)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return "no seed in common, so not compared."
    diffs = [a[s] - b[s] for s in seeds]
    d = statistics.fmean(diffs)
    if len(diffs) == 1:
        return (
            f"**{d:+.2f} nats** (seed {seeds[0]}, one pair: no interval; negative: ours is "
            "better here)."
        )
    from scipy import stats

    hw = stats.t.ppf(0.975, len(diffs) - 1) * _sd(diffs) / math.sqrt(len(diffs))
    return (
        f"**{d:+.2f} nats** [{d - hw:+.2f}, {d + hw:+.2f}] (mean of {len(diffs)} paired seeds, t "
        "interval; negative: ours is better here)."
    )


def _verdict(d, hw, than):
    """'consistent with {than}' when the 95 % interval holds 0, else 'better/worse than {than}'."""
    if abs(d) <= hw:
        return f"consistent with {than}"
    return f"{'better' if d < 0 else 'worse'} than {than}"


def lead(groups):
    """The answer first: each dataset's Gaussian-prior row against its published number, then
    each other row against that row."""
    out = []
    for dataset, ref in REFERENCES.items():
        base = _base(groups, dataset)
        if base is None:
            continue
        b = summary(base)
        d, hw = difference(b, ref)
        n, pm = b["n_seeds"], ref["pm"] or 0.0
        resolution = ""
        if n > 1:
            from scipy import stats  # the t quantile for our few seeds

            t = stats.t.ppf(0.975, n - 1)
            hw_t = math.sqrt((t * b["se"]) ** 2 + (Z95 * pm) ** 2)
            resolution = (
                f" The published ± makes {100 * pm**2 / (pm**2 + b['se'] ** 2):.0f} % of the "
                f"interval's variance, so this comparison cannot resolve a difference under about "
                f"{hw:.2f} nats (with a t quantile for {n - 1} degrees of freedom on our se: "
                f"± {hw_t:.2f})."
            )
        out.append(
            f"- {dataset}, our VAE with the Gaussian prior ({n} seed{'s' if n > 1 else ''}): "
            f"**{b['mean']:.2f} ± {_fmt(b['se'])}** nats on the reference's test draw; "
            f"{d:+.2f} [{d - hw:+.2f}, {d + hw:+.2f}] from the published "
            f"{ref['nll']:.2f}{_pm(ref)}, {_verdict(d, hw, 'it')}.{resolution}\n"
        )
        for runs, _, d, hw in _against_base(groups):
            if runs[0]["config"]["dataset"] != dataset:
                continue
            s, c = summary(runs), runs[0]["config"]
            if c["protocol"] != "reference":
                what = f"the {c['prior']} prior"
            elif c["as_ours"]:
                what = f"the control run with our {', '.join(c['as_ours'])}"
            else:
                what = "the control run with the reference's training choices"
            n = s["n_seeds"]
            out.append(
                f"- {dataset}, {what} ({n} seed{'s' if n > 1 else ''}): **{s['mean']:.2f}** "
                f"nats; {d:+.2f} [{d - hw:+.2f}, {d + hw:+.2f}] against our Gaussian-prior row, "
                f"{_verdict(d, hw, 'it')}.\n"
            )
    if not out:
        return ""
    return (
        "In short (test NLL, nats per image, lower is better; [95 % interval] of each "
        "difference; details below):\n\n" + "".join(out) + "\n"
    )


def comparisons(groups):
    """Each other row (a learned prior, the control run) minus our Gaussian-prior row, on the same
    test draw, with a 95 % interval from the two seed standard errors (a one-seed row borrows the
    Gaussian row's seed sd: its own cannot be measured from one seed)."""
    out = []
    for runs, base, d, hw in _against_base(groups):
        note = (
            ""
            if len(runs) > 1
            else "; one seed, so its seed noise is taken as the Gaussian row's seed sd "
            f"({summary(base)['seed_sd']:.2f})"
        )
        out.append(
            f"- '{_group_label(runs)}' minus '{_group_label(base)}' "
            f"({runs[0]['config']['dataset']}, K = 5000 on {REFERENCE_DRAW}, the same test images "
            f"for both): **{d:+.2f} nats** [{d - hw:+.2f}, {d + hw:+.2f}]{note}.\n"
        )
    if not out:
        return ""
    return (
        "\nAgainst our Gaussian-prior row (negative: a better model; the interval combines the "
        "two rows' standard errors over seeds; both use one test set, so which draw it is "
        "cancels):\n\n" + "".join(out)
    )


def clamp_runs(folder=None):
    """The finished measurements of `likelihood_clamp.py` in `folder` (default CLAMP_DIR)."""
    folder = CLAMP_DIR if folder is None else folder
    out = []
    for p in sorted(Path(folder).glob("*.json")):
        m = json.loads(p.read_text())
        if "summary" in m:
            out.append(m)
    return out


def choices(groups, clamps):
    """What the choices in the table of differences move, where measured."""
    base = _base(groups, "fashion-mnist")
    if base is None:
        return ""
    b = summary(base)
    lines = [
        "- Which test binarization: the seed-mean NLL over "
        f"{len(b['spread_draws'])} draws has sd {_fmt(b['bin_sd'])} nats (our Gaussian-prior "
        f"row; K = {b['spread_k']})."
    ]
    if clamps:
        change = [m["summary"]["nll_change"] for m in clamps]
        per = ", ".join(
            f"seed {m['seed']} {m['summary']['nll_change']:+.3f} ± "
            f"{m['summary']['nll_change_se']:.3f}"
            for m in sorted(clamps, key=lambda m: m["seed"])
        )
        frac = statistics.fmean(m["summary"]["clamped_fraction"] for m in clamps)
        match = max(m["summary"]["max_abs_diff_from_stored_per_image"] or 0.0 for m in clamps)
        cpu = statistics.fmean(m["summary"]["cpu_minutes"] for m in clamps)
        lines.append(
            "- The probability clamp at evaluation alone (`python benchmarks/likelihood_clamp.py "
            "DIR --out FILE`: each kept model evaluated with and without it, the same importance "
            f"samples, K = {clamps[0]['k']} on {clamps[0]['draw']}): "
            f"**{statistics.fmean(change):+.3f} nats** over {len(clamps)} "
            f"seed{'s' if len(clamps) > 1 else ''} ({per}; ± the "
            f"standard error over images of the paired difference). "
            f"{100 * frac:.1f} % of the decoder's outputs (pixel by importance sample) were "
            "clamped. Why so many clamped outputs move the number so little: a clamped pixel the "
            "model gets right costs at most 1e-5 nats more, and one it gets wrong at most 11.5 "
            "nats instead of more. The "
            "unclamped pass reproduced the run's own numbers "
            + ("exactly" if match == 0 else f"to within {match:.1e} nats per image")
            + f"; {cpu:.0f} CPU-minutes per seed."
        )
    controls = [
        runs
        for runs in groups.values()
        if runs[0]["config"]["protocol"] == "reference"
        and _setup(runs[0]["config"]) == _setup(base[0]["config"])
        and summary(runs)["main"] == REFERENCE_DRAW
    ]
    by_choices = {tuple(runs[0]["config"]["as_ours"]): runs for runs in controls}
    control = by_choices.get(())
    if control:
        s = summary(control)
        lines.append(
            "- Every training choice marked 'as theirs' together (the control run): "
            f"{s['mean'] - b['mean']:+.2f} nats against our row (above)."
        )
    else:
        lines.append(
            "- Every training choice marked 'as theirs' together: the control run "
            "(`--protocol reference --seed 0`, up to 2000 epochs) has not finished; its result "
            "is not in the committed files yet."
        )
    alone = set()
    for ours, runs in by_choices.items():
        if not ours:
            continue
        # a run with lr is read against the same run without it (which has stopping); any other
        # against the control run
        against = tuple(c for c in ours if c != "lr") if "lr" in ours else ()
        what = "lr" if "lr" in ours else " and ".join(ours)
        name = "the control run" if not against else f"`--as-ours {','.join(against)}`"
        if against not in by_choices:
            lines.append(
                f"- {what} set back to ours (`--as-ours {','.join(ours)}`): run, waiting for "
                f"{name} to be compared with."
            )
            continue
        if len(ours) - len(against) == 1:
            alone.add(what)
        lines.append(
            f"- {what} set back to ours (`--as-ours {','.join(ours)}` against {name}): "
            + _paired(runs, by_choices[against])
        )
    missing = [k for k in AS_OURS if k not in alone]
    if missing:
        lines.append(
            f"- Each training choice alone{' (the others)' if alone else ''}: not measured for "
            f"{', '.join(f'`{k}`' for k in missing)}; each is a control run with `--as-ours "
            "CHOICE`, read against the control run of the same seed ("
            + (
                f"the control run took {cpu_minutes(control[0]):.0f} CPU-minutes here, training "
                "and evaluation; "
                if control
                else ""
            )
            + "`lr` runs as `--as-ours stopping,lr`, read against `--as-ours stopping`)."
        )
    return "\nWhat the choices move, where measured (test NLL, nats):\n\n" + "\n".join(lines) + "\n"


def _pm(ref):
    return f" ± {ref['pm']:.2f}" if ref["pm"] else ""


def _repeats(groups):
    """The groups that repeat an earlier group's configuration and seeds (runs trained again and
    evaluated under another protocol): [(label, label of the earlier group)]."""
    seen, out = {}, []
    for runs in groups.values():
        key = (describe(runs[0]["config"]), tuple(sorted(r["config"]["seed"] for r in runs)))
        if key in seen:
            out.append((_group_label(runs), seen[key]))
        else:
            seen[key] = _group_label(runs)
    return out


def intro(groups):
    """What the numbers are and how to rerun them, one point a line."""
    base = _base(groups, "fashion-mnist")
    img_se = statistics.fmean(draws_of(r)[REFERENCE_DRAW]["nll_se"] for r in base) if base else None
    lines = [
        "- Data: the first 50,000 training images train (binarized afresh), the last 10,000 "
        "validate; the test set is all 10,000 test images.",
        "- Test NLL: −log p(x) estimated with K = 5000 importance samples (the IWAE bound, "
        "`vaelib.evaluate.iwae_log_likelihood`) on the reference's own binarization of the test "
        "set, `reference777` (numpy RandomState(777), drawn after their validation set as their "
        "loader does; `tests/test_benchmarks.py` reproduces their loader's stream). Nats per "
        "image, lower is better.",
        "- ± after our NLL: the standard error over seeds, the test images fixed: how "
        "reproducible training is. It leaves out the error of the test sample itself"
        + (f" (± {img_se:.2f} per model, over images)" if img_se else "")
        + ", which every row on `reference777` shares with the published number, so it largely "
        "cancels when they are compared.",
        "- Binarization spread: each model is also scored at K = 1000 on five binarizations "
        "(`reference777`, our earlier draw `torch12345`, `numpy1`–`numpy3`; the draw moves every "
        "K alike, and K = 1000 costs a fifth of K = 5000). Its sd says how much a number measured "
        "on another binarization may differ for that reason alone.",
        "- Interval: 95 %, normal approximation, 1.96 · √(our se² + published ±²). The published "
        "± is taken as the standard error of their number (what it is over could not be read "
        "here; were it a standard deviation over several runs, the interval would be narrower). "
        "With few seeds a t quantile on our se is stricter; the first lines give that half-width "
        "too.",
    ]
    for label, earlier in _repeats(groups):
        lines.append(
            f"- The group '{label}' holds earlier runs of the configuration and seeds of "
            f"'{earlier}' (trained again, not extra seeds), evaluated on one draw only before the "
            "five-draw protocol; kept for the record."
        )
    lines.append(
        "- Rerun: `python benchmarks/likelihood.py --seed S --out DIR` trains one model and "
        "evaluates it into DIR/likelihood.json (resumable: `--resume`); `python "
        "benchmarks/likelihood_report.py benchmarks/results/likelihood/*.json --write` rebuilds "
        "this section and `benchmarks/likelihood_curve.png` from the committed JSON files. The "
        "columns are defined in `benchmarks/likelihood_report.py`'s docstring."
    )
    return "What the numbers are:\n\n" + "\n".join(lines) + "\n\n"


def section(groups, clamps=None):
    published_rows = [*REFERENCES.items()] + [
        (f"{dataset}, {prior} prior", r) for (dataset, prior), r in PUBLISHED_PRIORS.items()
    ]
    refs = "".join(
        f"| {name} | "
        + ("not transcribed" if r["nll"] is None else f"{r['nll']:.2f}{_pm(r)}")
        + f" | {r['source']} | {r['their_setup']} | {r['checked']} |\n"
        for name, r in published_rows
    )
    diffs = "".join(f"| {a} | {b} | {c} | {d} | {e} |\n" for a, b, c, d, e in DIFFERENCES)
    return (
        f"{SECTION}\n\n"
        + lead(groups)
        + intro(groups)
        + tables(groups)
        + comparisons(groups)
        + curve_table(groups)
        + "\n![test NLL against epochs, and the kept models against the published "
        "number](likelihood_curve.png)\n\n"
        "| dataset | published NLL | source | their setup | checked |\n|---|---|---|---|---|\n"
        + refs
        + "\nEvery difference between our protocol, the control run (`--protocol reference`) and "
        "the code behind "
        "the published number (last column: the `--as-ours` choice that sets it back to ours in a "
        "control run, to measure it alone):\n\n| choice | ours | theirs | control run | "
        "`--as-ours` |\n|---|---|---|---|---|\n"
        + diffs
        + choices(groups, clamp_runs() if clamps is None else clamps)
        + "\n"
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "json", nargs="+", type=Path, help="likelihood.json files of finished (or evaluating) runs"
    )
    p.add_argument(
        "--write",
        action="store_true",
        help=f"replace the section of {RESULTS.name} and write {CURVE.name}",
    )
    args = p.parse_args(argv)
    groups = group(load(args.json))
    if not groups:
        raise SystemExit("no run with a finished test draw among the files given")
    text = section(groups)
    print(text)
    if args.write:
        plot(groups, CURVE)
        replace_section(RESULTS, SECTION, text)
        print(f"updated {RESULTS} and {CURVE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
