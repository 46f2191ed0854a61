"""Training throughput of vaelib.train.fit against a plain PyTorch loop doing the same work, on two
model sizes.

Cases: "small" = the notebooks' size, VAE 64-400-20 on the embedded digits (1,500 images, 12 steps
    an epoch);
"fashion" = VAE 784-400-20 on Fashion-MNIST (first --limit images). Both: Bernoulli, Adam 1e-3,
batch 128, a seeded permutation and a fresh binarization of the training set per epoch, one
reparameterized sample per example, the same initial weights. The plain loop is the minimum: no
argument checks, no history, no NaN checks, no progress bar, PyTorch's default Adam. fit runs as a
learner runs it: progress bar on (written to stderr; --no-progress turns it off), NaN checks,
history.

Rounds alternate plain, fit, plain, fit, ... so both see the same machine load; the report gives the
median samples/s of each by wall-clock and by this process's CPU time (steadier on a shared machine)
and their ratio (target: fit / plain >= 0.9).

--variants also times what PyTorch offers to go past the plain loop on a CPU, on the small case:
Adam's multi-tensor ("foreach") and fused updates, torch.compile of the loss, and a larger batch;
each against the plain loop, with whether it reproduces the plain loop's weights bit for bit.

    python benchmarks/train_throughput.py                      # both cases, print the results
    python benchmarks/train_throughput.py --variants --write   # ... the variants too, tables into
    RESULTS.md
"""

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _results import replace_section

from vaelib import data, train
from vaelib.distributions import kl_normal
from vaelib.models import VAE

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## train_throughput: vaelib.train.fit against a plain loop"


def plain_loop(model, x, epochs, batch_size, seed, adam=None, loss_fn=None):
    """The reference: the same minibatches, binarization, noise and loss, written out in full."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, **(adam or {}))
    gen = torch.Generator().manual_seed(seed)
    loss_fn = loss_fn or plain_loss
    for _ in range(epochs):
        xe = torch.bernoulli(
            x[torch.randperm(x.shape[0], generator=gen)], generator=gen
        )  # (N, D) fresh draw
        for xb in xe.split(batch_size):
            eps = torch.randn((xb.shape[0], model.latent_dim), generator=gen)  # (B, k)
            loss = loss_fn(model, xb, eps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def plain_loss(model, xb, eps):
    h = model.encoder(xb)
    mu, logvar = model.to_mu(h), model.to_logvar(h)  # (B, k)
    z = mu + torch.exp(0.5 * logvar) * eps
    logits = model.decoder(z)  # (B, D)
    log_px_z = -F.binary_cross_entropy_with_logits(logits, xb, reduction="none").sum(-1)
    kl = kl_normal(mu, logvar)  # (B,) KL(q || N(0, I))
    return -(log_px_z - kl).mean()


def fresh(D):
    torch.manual_seed(0)
    return VAE(D, 20, (400,))


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def compare(x, epochs, rounds, runs, label):
    """Alternate the runs {name: fn(model)} `rounds` times; return {name: (wall samples/s, CPU
    samples/s, model)}."""
    D, n = x.shape[1], x.shape[0] * epochs
    rates = {name: ([], []) for name in runs}
    models = {}
    for r in range(rounds):
        for name, run in runs.items():
            model = fresh(D)
            wall, cpu = timed(lambda: run(model))
            rates[name][0].append(n / wall)
            rates[name][1].append(n / cpu)
            models[name] = model
            print(
                f"  {label} round {r + 1} {name:>14}: {wall:6.2f} s wall {n / wall:8.0f}/s | "
                f"{cpu:6.2f} CPU-s "
                f"{n / cpu:8.0f}/CPU-s",
                file=sys.stderr,
                flush=True,
            )
    return {
        name: (statistics.median(w), statistics.median(c), models[name])
        for name, (w, c) in rates.items()
    }


def same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    p.add_argument(
        "--cases", default="small,fashion", help="comma-separated: small, fashion (default both)"
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs per timed run (default: 20 small, 1 fashion)",
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--limit",
        type=int,
        default=10000,
        help="fashion: train on the first N images (default 10000)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", help="fit without its progress bar"
    )
    p.add_argument(
        "--variants",
        action="store_true",
        help="also time foreach/fused Adam, torch.compile, batch 512",
    )
    p.add_argument(
        "--write", action="store_true", help=f"replace this benchmark's section of {RESULTS.name}"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, variant_rows = [], []
    for case in args.cases.split(","):
        if case == "small":
            x, name, epochs = data.load("digits", "train")[0], "digits", args.epochs or 20
        else:
            try:
                x, name, epochs = (
                    data.load("fashion-mnist", "train", download=False)[0][: args.limit],
                    "fashion-mnist",
                    args.epochs or 1,
                )
            except (OSError, ValueError) as e:
                print(f"skipping the fashion case: {str(e).splitlines()[0]}", file=sys.stderr)
                continue
        D = x.shape[1]
        # Warm-up (first-call costs: the optimizer's imports, kernels, the allocator), not timed.
        train.fit(fresh(D), x[:512], 1, progress=False)
        plain_loop(fresh(D), x[:512], 1, 128, 0)
        res = compare(
            x,
            epochs,
            args.rounds,
            {
                "plain": lambda m: plain_loop(m, x, epochs, 128, 0),
                "fit": lambda m: train.fit(m, x, epochs, progress=args.progress),
            },
            case,
        )
        (pw, pc, _), (fw, fc, _) = res["plain"], res["fit"]
        rows.append(
            f"| {case}: VAE {D}-400-20, {name} ({x.shape[0]} images) | {epochs} x {args.rounds} | "
            f"{pw:.0f} | "
            f"{fw:.0f} | **{fw / pw:.3f}** | {pc:.0f} | {fc:.0f} | **{fc / pc:.3f}** |\n"
        )
        print(f"{case}: fit / plain = {fw / pw:.3f} wall, {fc / pc:.3f} CPU")
        if args.variants and case == "small":
            compiled = torch.compile(plain_loss)
            wall, _ = timed(lambda: plain_loop(fresh(D), x[:512], 1, 128, 0, loss_fn=compiled))
            print(f"torch.compile: first epoch (compilation) {wall:.1f} s", file=sys.stderr)
            res = compare(
                x,
                epochs,
                args.rounds,
                {
                    "plain": lambda m: plain_loop(m, x, epochs, 128, 0),
                    "foreach Adam": lambda m: plain_loop(
                        m, x, epochs, 128, 0, adam={"foreach": True}
                    ),
                    "fused Adam": lambda m: plain_loop(m, x, epochs, 128, 0, adam={"fused": True}),
                    "torch.compile": lambda m: plain_loop(m, x, epochs, 128, 0, loss_fn=compiled),
                    "batch 512": lambda m: plain_loop(m, x, epochs, 512, 0),
                },
                "variants",
            )
            pw, pc, pm = res["plain"]
            for v in ("foreach Adam", "fused Adam", "torch.compile", "batch 512"):
                vw, vc, vm = res[v]
                extra = (
                    f"; compiling took {wall:.1f} s once per process"
                    if v == "torch.compile"
                    else ""
                )
                variant_rows.append(
                    f"| {v} | {vw / pw:.3f} | {vc / pc:.3f} | "
                    f"{'yes' if same_weights(pm, vm) else 'no'}{extra} |\n"
                )
                print(
                    f"{v}: {vw / pw:.3f} wall, {vc / pc:.3f} CPU, bit-identical: "
                    f"{same_weights(pm, vm)}"
                )
    if args.write:
        write_results(rows, variant_rows, args)
    return 0


def write_results(rows, variant_rows, args):
    """Replace this benchmark's section of RESULTS.md (up to the next "## " heading)."""
    machine = (
        f"{platform.machine()} CPU, torch {torch.__version__}, {args.threads} thread(s), "
        f"{datetime.date.today()}"
    )
    section = (
        f"{SECTION}\n\n`python benchmarks/train_throughput.py --variants --write` ({machine}). "
        f"Samples/s = training "
        "examples per second, median over rounds that alternate the plain loop and fit (the plain "
        "loop: no "
        "checks, no history, no progress bar; fit: progress bar "
        f"{'on' if args.progress else 'off'}); by wall-clock "
        "and by this process's CPU time.\n\n"
        "| case | epochs x rounds | plain /s (wall) | fit /s (wall) | fit / plain (wall) | plain "
        "/CPU-s | fit /CPU-s "
        "| fit / plain (CPU) |\n|---|---|---|---|---|---|---|---|\n" + "".join(rows)
    )
    if variant_rows:
        section += (
            "\nWhat PyTorch offers to go past the plain loop on this CPU (small case, each against "
            "the plain "
            "loop in the same alternating rounds; bit-identical = the same trained weights as the "
            "plain loop):\n\n"
            "| variant | speed / plain (wall) | speed / plain (CPU) | bit-identical "
            "|\n|---|---|---|---|\n" + "".join(variant_rows)
        )
    replace_section(RESULTS, SECTION, section)
    print(f"updated {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
