"""Test log-likelihood of a VAE under the literature's protocol, beside published results.

Protocol (as in Burda et al. 2016, sec. 5, and the density-estimation tables that follow them):
dynamically binarized training data (a fresh Bernoulli draw of every training image per epoch, which
`vaelib.train.fit` does for a Bernoulli model), a Bernoulli decoder, and the test negative
log-likelihood estimated by importance sampling with the encoder as proposal and k = 5000 samples
(`vaelib.evaluate.iwae_log_likelihood`), on test images binarized once with a fixed seed. Everything
is in nats per image; NLL = -log p(x), so lower is better and NLL = -(the papers' "log-likelihood").

Training runs for a wall-clock budget (default 60 minutes), one `fit` epoch at a time, continuing the
optimizer and generator state between epochs. What the run uses besides plain Adam (all standard):
  - a cosine learning-rate schedule over the budget's wall-clock, from --lr down to --lr-final
    (Loshchilov & Hutter 2017, "SGDR", without restarts), set per epoch;
  - linear KL warm-up over the first --warmup-epochs epochs (fit's warmup_epochs; Bowman et al. 2016,
    Sonderby et al. 2016);
  - a batch of 250 rather than the references' 100: on a CPU, per-step overhead makes batch 100 about
    three times slower per image, and the time budget buys more epochs with the larger batch.
Should the loss ever become NaN/inf, the epoch is retried from the last good state with half the
learning rate (recorded under "events" in the JSON).

Every --eval-every-minutes of training (evaluation time excluded) the script estimates the test NLL on
a subset (first --curve-images binarized test images, k = --curve-k) to record a curve of test NLL
against training wall-clock, and saves the history JSON, the curve PNG and a checkpoint in --out, so
an interrupted run keeps its results. The final evaluation (full test set, k = --k) is also saved
block by block.

    python benchmarks/likelihood.py                        # fashion-mnist, 60 min, k=5000 -> /tmp/vaelib-likelihood
    python benchmarks/likelihood.py --write                # ... and update benchmarks/RESULTS.md
    python benchmarks/likelihood.py --budget-minutes 1 --k 100 --test-limit 500 --out /tmp/lk-smoke
    python benchmarks/likelihood.py --from-json /tmp/vaelib-likelihood/likelihood.json --write
    python benchmarks/likelihood.py --dataset mnist        # skipped with a message when the files are absent

Published references (see REFERENCES below for what was checked):
  Fashion-MNIST: Norouzi, Fleet & Norouzi 2020, "Exemplar VAE" (NeurIPS), density-estimation table,
      VAE with a Gaussian prior, z = 40: log-likelihood -228.70 nats (dynamically binarized, 5000
      importance samples).
  MNIST: Burda, Grosse & Salakhutdinov 2016, "Importance Weighted Autoencoders" (ICLR), Table 1,
      VAE, one stochastic layer, k = 1 (784-200-200-50): NLL 86.76 nats.
"""

import argparse
import copy
import datetime
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from vaelib import data, evaluate, train
from vaelib.models import VAE

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
DEFAULT_OUT = Path("/tmp/vaelib-likelihood")
JSON_NAME = "likelihood.json"
TEST_BINARIZATION_SEED = 12345  # one fixed draw of the binarized test set, the same for every run and --seed

REFERENCES = {
    "fashion-mnist": {
        "paper": "Norouzi, Fleet & Norouzi 2020, Exemplar VAE (NeurIPS), density-estimation table",
        "short": "Norouzi et al. 2020",
        "model": "VAE, Gaussian prior, z = 40",
        "nll": 228.70,
        "architecture": ("784-300-300-40 MLP with gated dense layers (h = W1 x * sigmoid(W2 x)), hardtanh-bounded "
                         "encoder log-variance; Adam 5e-4, batch 100, KL warm-up 100 epochs, up to 2000 epochs with "
                         "early stopping (patience 50) on 10000 held-out training images; 5000 importance samples"),
        "latent_dim": 40,
        "hidden": (300, 300),
        "verified": ("architecture and training settings checked against the authors' code (github.com/sajadn/"
                     "Exemplar-VAE: density_estimation.py defaults, models/VAE.py); the table's number itself "
                     "could not be read from the sources available here (-228.70 as given in the project brief)"),
    },
    "mnist": {
        "paper": "Burda, Grosse & Salakhutdinov 2016, Importance Weighted Autoencoders (ICLR), Table 1",
        "short": "Burda et al. 2016",
        "model": "VAE, one stochastic layer, k = 1",
        "nll": 86.76,
        "architecture": ("784-200-200-50 MLP (tanh), Adam with lr 1e-3 * 10^(-i/7) for 3^i epochs, i = 0..7 "
                         "(3280 passes); 5000 importance samples"),
        "latent_dim": 50,
        "hidden": (200, 200),
        "verified": "not verified here: the paper's table could not be read from the sources available (number from the brief)",
    },
}


# -- small helpers -----------------------------------------------------------------------------------

def log(msg):
    print(f"[{datetime.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def arch_string(d, hidden, latent):
    return "-".join(str(v) for v in (d, *hidden, latent))


def cosine_lr(fraction, lr, lr_final):
    """lr at `fraction` in [0, 1] of the budget: lr_final + (lr - lr_final) (1 + cos(pi fraction)) / 2."""
    fraction = min(max(fraction, 0.0), 1.0)
    return lr_final + 0.5 * (lr - lr_final) * (1.0 + math.cos(math.pi * fraction))


def write_json(path, obj):
    train.atomic_write(path, lambda f: json.dump(obj, f, indent=1), mode="w")


def load_split(name, split):
    return data.load(name, split, download=False)[0]


# -- evaluation ----------------------------------------------------------------------------------------

def curve_point(model, x_sub, k, seed):
    """Test NLL (k importance samples) and test ELBO on the curve subset, in nats per image."""
    model.eval()
    t0 = time.perf_counter()
    log_px = evaluate.iwae_log_likelihood(model, x_sub, k=k, generator=torch.Generator().manual_seed(seed))
    elbo = evaluate.test_elbo(model, x_sub, generator=torch.Generator().manual_seed(seed + 1))
    return -log_px.mean().item(), elbo.mean().item(), time.perf_counter() - t0


def plot_curve(result, path):
    """PNG of test NLL (nats) against training wall-clock (minutes), with the published value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vaelib.plotting import use_style

    use_style()
    curve = result["curve"]
    fig, ax = plt.subplots()
    if curve:
        ax.plot([c["minutes"] for c in curve], [c["nll"] for c in curve], "o-", ms=3,
                label=f"vaelib, k={result['config']['curve_k']} on {result['config']['curve_images']} test images")
    final = result.get("final") or {}
    if final.get("nll") is not None and final.get("complete"):
        ax.plot([final["train_minutes"]], [final["nll"]], "s", color="#2ca02c", ms=7,
                label=f"final, k={final['k']} on {final['n_test']} test images: {final['nll']:.2f}")
    ref = result["reference"]
    if ref:
        short = REFERENCES.get(result["config"]["dataset"], {}).get("short", ref["paper"].split(",")[0])
        ax.axhline(ref["nll"], ls="--", color="#7f7f7f", label=f"published: {ref['nll']:.2f} ({short})")
    if curve:
        lo = min([c["nll"] for c in curve] + ([ref["nll"]] if ref else []))
        late = [c["nll"] for c in curve if c["minutes"] >= 0.1 * curve[-1]["minutes"]] or [c["nll"] for c in curve]
        ax.set_ylim(lo - 2, max(late) + 2)
    ax.set_xlim(left=0)
    ax.set_xlabel("training wall-clock (minutes, evaluation excluded)")
    ax.set_ylabel("test negative log-likelihood (nats)")
    c = result["config"]
    ax.set_title(f"{c['dataset']}: VAE {c['architecture']}, Bernoulli, dynamically binarized")
    ax.legend()
    train.atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


# -- RESULTS.md --------------------------------------------------------------------------------------

SECTION = "## Test log-likelihood against published results"
TABLE_HEADER = (
    "| run (date, time) | dataset | model (vaelib) | training | epochs | train wall-clock (min) | device, threads "
    "| seed | test ELBO | test NLL, k=5000 | published NLL | difference |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)
CURVE_PREFIX = "### Test NLL against training wall-clock: "


def summary(r):
    """The run's final numbers; for an unfinished run (stopped early), the latest ones, marked partial."""
    f = r.get("final") or {}
    if f.get("complete"):
        return dict(f, partial=False)
    epochs = r["epochs"]
    s = {"epochs": epochs[-1]["epoch"] if epochs else 0, "train_minutes": epochs[-1]["train_minutes"] if epochs else 0.0,
         "train_cpu_minutes": sum(e["cpu_seconds"] for e in epochs) / 60, "eval_minutes": f.get("eval_minutes", 0.0),
         "partial": True}
    if f.get("blocks"):  # the final evaluation was under way: its finished blocks
        n = sum(b["n"] for b in f["blocks"])
        return dict(s, elbo=f["elbo"], nll=f["nll"], k=f["k"], n_test=n)
    last = r["curve"][-1]
    return dict(s, elbo=last["elbo"], nll=last["nll"], k=r["config"]["curve_k"], n_test=r["config"]["curve_images"],
                epochs=last["epochs"], train_minutes=last["minutes"])


def result_row(r):
    c, f, ref = r["config"], summary(r), r["reference"]
    training = (f"Adam {c['lr']:g} cosine to {c['lr_final']:g} over {c['budget_minutes']:g} min, batch {c['batch_size']}, "
                f"KL warm-up {c['warmup_epochs']} epochs")
    if r.get("events"):
        training += f", {len(r['events'])} NaN restart(s)"
    k_label = f"{f['nll']:.2f}" + ("" if f["k"] == 5000 else f" (k={f['k']})")
    if f["n_test"] != 10000:
        k_label += f" ({f['n_test']} images)"
    if f["partial"]:
        k_label += " (unfinished run)"
    diff = f"{f['nll'] - ref['nll']:+.2f}" if ref else "—"
    return (f"| {r['started'][:16].replace('T', ' ')} | {c['dataset']} | VAE {c['architecture']} ReLU, Bernoulli | "
            f"{training} | {f['epochs']} | {f['train_minutes']:.1f} | {c['device']}, {c['threads']} | {c['seed']} | "
            f"{f['elbo']:.2f} | {k_label} | {ref['nll']:.2f} | {diff} |\n")


def references_table():
    lines = ["Published references (NLL = minus the published test log-likelihood):\n\n",
             "| dataset | source | model | their architecture and training | test NLL (nats) | verified |\n",
             "|---|---|---|---|---|---|\n"]
    for name, ref in REFERENCES.items():
        lines.append(f"| {name} | {ref['paper']} | {ref['model']} | {ref['architecture']} | {ref['nll']:.2f} | "
                     f"{ref['verified']} |\n")
    return "".join(lines)


def curve_key(r):
    """The heading of a run's curve subsection: one per dataset and run."""
    return f"{r['config']['dataset']}, run of {r['started'][:16].replace('T', ' ')}"


def curve_section(r):
    c, f, ref = r["config"], summary(r), r["reference"]
    out = [f"{CURVE_PREFIX}{curve_key(r)}\n\n",
           f"Run of {r['started'][:16].replace('T', ' ')} (seed {c['seed']}, VAE {c['architecture']}): test NLL with "
           f"k = {c['curve_k']} importance samples on the first {c['curve_images']} binarized test images, every "
           f"{c['eval_every_minutes']:g} minutes of training (minutes count training only)"
           + ("." if f["partial"] else f"; the last row is the final evaluation (k = {f['k']}, {f['n_test']} images).")
           + "\n\n",
           "| minutes | epochs | lr | test ELBO | test NLL (nats) |\n|---|---|---|---|---|\n"]
    for p in r["curve"]:
        out.append(f"| {p['minutes']:.1f} | {p['epochs']} | {p['lr']:.2g} | {p['elbo']:.2f} | {p['nll']:.2f} |\n")
    if not f["partial"]:
        out.append(f"| {f['train_minutes']:.1f} | {f['epochs']} | final | {f['elbo']:.2f} | **{f['nll']:.2f}** "
                   f"(k={f['k']}, {f['n_test']} images) |\n")
    out.append("\n")
    out.append(notes(r))
    return "".join(out)


def notes(r):
    """Whether the target (within 2 nats of the published value) was reached and, if not, what the curve says."""
    c, f, ref, curve = r["config"], summary(r), r["reference"], r["curve"]
    gap = f["nll"] - ref["nll"]
    text = ["Unfinished run (stopped before its final evaluation): the numbers are the latest available, "
            f"k={f['k']} on {f['n_test']} test images. " if f["partial"] else ""]
    text.append(f"{'Latest' if f['partial'] else 'Final'}: {f['nll']:.2f} nats against the published {ref['nll']:.2f} ({gap:+.2f}); test ELBO "
            f"{f['elbo']:.2f}; {f['epochs']} epochs in {f['train_minutes']:.1f} minutes of training "
            f"({f['train_cpu_minutes']:.1f} CPU-minutes); final evaluation {f['eval_minutes']:.1f} minutes. ")
    if gap <= 2.0:
        text.append("Target (within 2 nats of the published value) reached.")
    else:
        text.append(f"Target (within 2 nats) not reached: {gap - 2.0:.2f} nats short of it. ")
        if len(curve) >= 3:
            last, half = curve[-1], min(curve, key=lambda p: abs(p["minutes"] - curve[-1]["minutes"] / 2))
            text.append(f"On the curve the subset NLL went from {half['nll']:.2f} at {half['minutes']:.0f} min "
                        f"(epoch {half['epochs']}) to {last['nll']:.2f} at {last['minutes']:.0f} min (epoch "
                        f"{last['epochs']}), {half['nll'] - last['nll']:.2f} nats in the second half, with the "
                        f"learning rate decayed to {c['lr_final']:g} at the end. ")
        text.append(f"The reference trains its gated {REFERENCES[c['dataset']]['architecture'].split(' MLP')[0]} "
                    "model to convergence (hundreds of epochs, early stopping on held-out data); closing the rest "
                    "needs more epochs under the same schedule (a longer budget, or the same budget on a machine "
                    "that is not shared), and possibly the reference's gated layers, which vaelib's ReLU MLP lacks. ")
    if r["epochs"]:
        wall = sorted(e["wall_seconds"] for e in r["epochs"])
        cpu = sorted(e["cpu_seconds"] for e in r["epochs"])
        text.append(f"Epochs took {statistics.median(wall):.0f} s of wall-clock (median; {wall[0]:.0f} to "
                    f"{wall[-1]:.0f} s) and {statistics.median(cpu):.0f} CPU-s (median) with {c['threads']} threads, "
                    "so the epochs a budget buys depend on the machine's other load")
        half = sum(1 for e in r["epochs"] if e["train_minutes"] <= c["budget_minutes"] / 2)
        text.append(f"; {half} of the {len(r['epochs'])} epochs ran in the first half of the budget, where the "
                    "wall-clock cosine schedule keeps the learning rate high." if f["partial"] is False else ".")
    return "".join(text) + "\n"


def update_results(text, r):
    """`text` of RESULTS.md with this benchmark's section updated for run `r`; other sections untouched."""
    if not text.strip():
        text = "# Benchmark results\n"
    intro = (
        f"{SECTION}\n\n"
        "`python benchmarks/likelihood.py --write` (or `--from-json DIR/likelihood.json --write`). Protocol: "
        "dynamically binarized training images (a fresh draw per epoch), Bernoulli decoder, test NLL = "
        "−log p(x) estimated with k = 5000 importance samples from the encoder (`evaluate.iwae_log_likelihood`) "
        f"on the 10000 test images binarized once (seed {TEST_BINARIZATION_SEED}); nats per image, lower is "
        "better. Difference = ours − published. Training time is CPU wall-clock on a shared machine, "
        "evaluation excluded.\n\n"
    )
    # Split out the existing section (up to the next "## " heading), keep its rows and other datasets' curves.
    start = text.find(SECTION)
    rows, curves = [], {}
    if start >= 0:
        m = re.search(r"^## ", text[start + len(SECTION):], flags=re.M)
        end = start + len(SECTION) + m.start() if m else len(text)
        old, before, after = text[start:end], text[:start], text[end:]
        if TABLE_HEADER in old:
            for line in old[old.index(TABLE_HEADER) + len(TABLE_HEADER):].splitlines(keepends=True):
                if not line.startswith("|"):
                    break
                rows.append(line)
        for part in old.split(CURVE_PREFIX)[1:]:
            curves[part.split("\n", 1)[0].strip()] = CURVE_PREFIX + part.rstrip("\n") + "\n"
    else:
        before, after = text.rstrip("\n") + "\n\n", ""
    new_row = result_row(r)
    key = lambda row: row.split("|")[1:3]  # noqa: E731  (run time, dataset): the same run replaces its row
    rows = [row for row in rows if key(row) != key(new_row)] + [new_row]
    curves[curve_key(r)] = curve_section(r)
    section = intro + TABLE_HEADER + "".join(rows) + "\n" + references_table() + "\n" + "\n".join(curves[d] for d in sorted(curves))
    return before + section + ("\n" + after.lstrip("\n") if after.strip() else "")


def write_results(r, path):
    if not r["curve"] and not (r.get("final") or {}).get("blocks"):
        raise SystemExit(f"the run in {r.get('out')} has no evaluation yet; nothing written to {path}")
    path.write_text(update_results(path.read_text() if path.exists() else "", r))
    log(f"updated {path}")


# -- the run -------------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "mnist"))
    p.add_argument("--budget-minutes", type=float, default=60.0, help="training wall-clock budget (default 60)")
    p.add_argument("--max-epochs", type=int, default=None, help="stop earlier after this many epochs")
    p.add_argument("--latent-dim", type=int, default=None, help="default: the reference's (40 fashion-mnist, 50 mnist)")
    p.add_argument("--hidden", default=None, help="hidden widths, e.g. 300,300 (default: the reference's)")
    p.add_argument("--lr", type=float, default=1e-3, help="initial Adam learning rate (default 1e-3)")
    p.add_argument("--lr-final", type=float, default=5e-5, help="learning rate at the end of the budget (cosine; default 5e-5)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--warmup-epochs", type=int, default=10, help="linear KL warm-up epochs (default 10; 0 = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=5000, help="importance samples for the final test NLL (default 5000)")
    p.add_argument("--test-limit", type=int, default=None, help="final evaluation on the first N test images only")
    p.add_argument("--eval-every-minutes", type=float, default=5.0, help="curve point every this many training minutes")
    p.add_argument("--curve-k", type=int, default=500)
    p.add_argument("--curve-images", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--write", action="store_true", help=f"update the section in {RESULTS.name}")
    p.add_argument("--from-json", type=Path, default=None, help="skip training: report a saved run's JSON")
    p.add_argument("--results", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.from_json is not None:
        r = json.loads(args.from_json.read_text())
        f = r.get("final") or {}
        log(f"{args.from_json}: {r['config']['dataset']}, status {r.get('status')}, "
            f"test NLL {f.get('nll')} (k={f.get('k')}, {f.get('n_test')} images)")
        plot_curve(r, args.from_json.parent / "likelihood_curve.png")
        if args.write:
            write_results(r, args.results)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)

    ref = REFERENCES[args.dataset]
    try:
        x = load_split(args.dataset, "train")
        xt = load_split(args.dataset, "test")
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"skipping {args.dataset}: its IDX files are not available here ({first}). Put the four files "
              f"(train-images-idx3-ubyte[.gz], train-labels-..., t10k-images-..., t10k-labels-...) in "
              f"$VAELIB_DATA/{args.dataset}/ or ~/.cache/vaelib/{args.dataset}/ and run again.", file=sys.stderr)
        return 0
    hidden = tuple(int(h) for h in args.hidden.split(",")) if args.hidden else ref["hidden"]
    latent = args.latent_dim or ref["latent_dim"]
    D = x.shape[1]
    device = train.resolve_device(None)

    out = args.out.resolve()
    repo = Path(__file__).resolve().parent.parent
    if out == repo or repo in out.parents:
        raise SystemExit(f"--out {out} is inside the repository; choose a directory outside it (default {DEFAULT_OUT})")
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path, ckpt_path = out / JSON_NAME, out / "likelihood_curve.png", out / "checkpoint.pt"

    # The binarized test set: one fixed draw, the same for every run.
    xt_bin = torch.bernoulli(xt, generator=torch.Generator().manual_seed(TEST_BINARIZATION_SEED))  # (10000, D)
    x_test = xt_bin[: args.test_limit] if args.test_limit else xt_bin
    x_curve = xt_bin[: min(args.curve_images, x_test.shape[0])]

    torch.manual_seed(args.seed)
    model = VAE(D, latent, hidden, likelihood="bernoulli")
    budget = 60.0 * args.budget_minutes
    r = {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "status": "training",
        "out": str(out),
        "config": {
            "dataset": args.dataset, "architecture": arch_string(D, hidden, latent), "hidden": list(hidden),
            "latent_dim": latent, "likelihood": "bernoulli", "activation": "relu", "n_train": int(x.shape[0]),
            "budget_minutes": args.budget_minutes, "max_epochs": args.max_epochs, "lr": args.lr,
            "lr_final": args.lr_final, "schedule": "cosine over the wall-clock budget, set per epoch",
            "batch_size": args.batch_size, "warmup_epochs": args.warmup_epochs, "seed": args.seed, "k": args.k,
            "n_test": int(x_test.shape[0]), "test_binarization_seed": TEST_BINARIZATION_SEED,
            "eval_every_minutes": args.eval_every_minutes, "curve_k": args.curve_k,
            "curve_images": int(x_curve.shape[0]), "device": "CPU" if device.type == "cpu" else torch.cuda.get_device_name(device),
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "command": " ".join(sys.argv),
        },
        "reference": {k: v for k, v in ref.items() if k in ("paper", "short", "model", "nll", "architecture", "verified")},
        "epochs": [],  # per epoch: epoch, train elbo/log_px_z/kl, beta, lr, seconds, train_minutes
        "curve": [],  # per evaluation: minutes, epochs, lr, nll, elbo, eval_seconds
        "events": [],
        "final": None,
    }
    log(f"{args.dataset}: {x.shape[0]} train / {x_test.shape[0]} test images; VAE {r['config']['architecture']} "
        f"Bernoulli; batch {args.batch_size}; Adam {args.lr:g} -> {args.lr_final:g} (cosine over "
        f"{args.budget_minutes:g} min); KL warm-up {args.warmup_epochs} epochs; {torch.get_num_threads()} threads; "
        f"out {out}")

    def save(with_checkpoint=True):
        write_json(json_path, r)
        plot_curve(r, png_path)
        if with_checkpoint and history is not None:
            train.save_checkpoint(ckpt_path, model, history=history,
                                  metadata={"dataset": args.dataset, "benchmark": "likelihood", "started": r["started"]})

    def evaluate_curve():
        nll, elbo, secs = curve_point(model, x_curve, args.curve_k, args.seed)
        r["curve"].append({"minutes": train_seconds / 60, "epochs": epoch, "lr": lr_e, "nll": nll, "elbo": elbo,
                           "eval_seconds": secs})
        log(f"curve: {train_seconds / 60:6.1f} min, epoch {epoch:4d}: test NLL {nll:.2f} (k={args.curve_k}, "
            f"{x_curve.shape[0]} images), ELBO {elbo:.2f} [{secs:.0f} s]")
        save()

    history, opt_state, rng_state = None, None, None
    train_seconds, cpu_seconds, epoch, lr_e, lr_scale = 0.0, 0.0, 0, args.lr, 1.0
    next_eval = 60.0 * args.eval_every_minutes
    good = None  # the last good state, for a retry after a NaN loss
    while True:
        recent = [e["wall_seconds"] for e in r["epochs"][-3:]]
        if epoch and (args.max_epochs is not None and epoch >= args.max_epochs):
            break
        if epoch and train_seconds + statistics.median(recent) > budget:
            break  # the next epoch would end past the budget
        lr_e = lr_scale * cosine_lr(train_seconds / budget, args.lr, args.lr_final)
        model.train()
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            h = train.fit(model, x, 1, batch_size=args.batch_size, lr=lr_e, seed=args.seed, progress=False,
                          warmup_epochs=args.warmup_epochs, optimizer_state=opt_state, history=history,
                          rng_state=rng_state)
        except FloatingPointError as e:
            train_seconds += time.perf_counter() - t0
            lr_scale *= 0.5
            r["events"].append({"epoch": epoch + 1, "minutes": train_seconds / 60, "error": str(e),
                                "action": f"restored epoch {epoch}, learning rate x{lr_scale:g}"})
            log(f"NaN/inf loss in epoch {epoch + 1}; restoring epoch {epoch} and halving the learning rate")
            if good is None:
                torch.manual_seed(args.seed)
                model = VAE(D, latent, hidden, likelihood="bernoulli")
            else:
                model.load_state_dict(good[0])
                opt_state, history, rng_state = copy.deepcopy(good[1]), good[2], good[3]
            continue
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        train_seconds += wall
        cpu_seconds += cpu
        history, opt_state, rng_state = h, h.optimizer_state, h.rng_state
        epoch = h["epoch"][-1]
        good = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt_state), history, rng_state)
        r["epochs"].append({"epoch": epoch, "elbo": h["elbo"][-1], "log_px_z": h["log_px_z"][-1], "kl": h["kl"][-1],
                            "beta": h["beta"][-1], "lr": lr_e, "wall_seconds": wall, "cpu_seconds": cpu,
                            "train_minutes": train_seconds / 60})
        if epoch == 1 or epoch % 5 == 0:
            log(f"epoch {epoch:4d} {train_seconds / 60:6.1f} min: train ELBO {h['elbo'][-1]:.2f} (KL {h['kl'][-1]:.2f}, "
                f"beta {h['beta'][-1]:.2f}), lr {lr_e:.2e}, {wall:.1f} s/epoch")
        if train_seconds >= next_eval:
            evaluate_curve()
            every = 60.0 * args.eval_every_minutes
            next_eval = (math.floor(train_seconds / every) + 1) * every  # one point even if an epoch spans several intervals
        else:
            write_json(json_path, r)

    if not r["curve"] or r["curve"][-1]["epochs"] != epoch:
        evaluate_curve()  # the curve's last point at the end of training
    r["status"] = "evaluating"
    save()

    # Final evaluation: test ELBO, then the IWAE estimate with k samples, saved block by block.
    model.eval()
    t_eval = time.perf_counter()
    elbo = evaluate.test_elbo(model, x_test, generator=torch.Generator().manual_seed(args.seed + 1)).mean().item()
    final = r["final"] = {"epochs": epoch, "train_minutes": train_seconds / 60, "train_cpu_minutes": cpu_seconds / 60,
                          "elbo": elbo, "k": args.k, "n_test": int(x_test.shape[0]), "nll": None,
                          "blocks": [], "complete": False, "eval_minutes": 0.0}
    log(f"final: test ELBO {elbo:.2f} on {x_test.shape[0]} images; IWAE k={args.k} ...")
    gen = torch.Generator().manual_seed(args.seed + 2)
    block = 1000
    sum_log_px, done = 0.0, 0
    for start in range(0, x_test.shape[0], block):
        tb = time.perf_counter()
        log_px = evaluate.iwae_log_likelihood(model, x_test[start:start + block], k=args.k, generator=gen)
        sum_log_px += log_px.sum().item()
        done += log_px.shape[0]
        final["blocks"].append({"start": start, "n": int(log_px.shape[0]), "mean_nll": -log_px.mean().item(),
                                "seconds": time.perf_counter() - tb})
        final["nll"] = -sum_log_px / done
        final["eval_minutes"] = (time.perf_counter() - t_eval) / 60
        log(f"  {done}/{x_test.shape[0]} images: running test NLL {final['nll']:.2f} "
            f"[{time.perf_counter() - tb:.0f} s for this block]")
        write_json(json_path, r)
    final["complete"] = True
    final["bits_per_dim"] = final["nll"] / (D * math.log(2.0))
    r["status"] = "done"
    save(with_checkpoint=False)
    gap = final["nll"] - ref["nll"]
    log(f"done: {epoch} epochs, {train_seconds / 60:.1f} min training; test ELBO {elbo:.2f}; test NLL "
        f"{final['nll']:.2f} (k={args.k}, {done} images); published {ref['nll']:.2f}; difference {gap:+.2f} nats; "
        f"evaluation {final['eval_minutes']:.1f} min. Files in {out}")
    if args.write:
        write_results(r, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
