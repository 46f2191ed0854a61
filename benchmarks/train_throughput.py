"""Training throughput of vaelib.train.fit against a plain PyTorch loop doing the same work.

Both train the same 784-400-20 Bernoulli VAE (same initial weights) on Fashion-MNIST with Adam,
batch 128, a seeded permutation and a fresh binarization of the whole training set per epoch, and one
reparameterized sample per example. The plain loop is the minimum: no argument checks, no history,
no NaN checks, no progress bar. Rounds alternate plain, fit, plain, fit, ... so both see the same
machine load; the report gives the median samples/s of each and the ratio fit / plain (target >= 0.9),
by wall-clock time and by this process's CPU time (steadier on a shared machine; use --threads 1 there,
as OpenMP threads competing with other processes for few cores slow down by an order of magnitude).

    python benchmarks/train_throughput.py                 # 2 epochs x 3 rounds each, print the results
    python benchmarks/train_throughput.py --write         # ... and append a row to benchmarks/RESULTS.md
    python benchmarks/train_throughput.py --limit 10000 --threads 1   # shorter, on a small shared machine

Falls back to the embedded digits (8x8, 64-400-20) with a notice when Fashion-MNIST is not available.
"""

import argparse
import datetime
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vaelib import data, evaluate, train
from vaelib.models import VAE

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = (
    "## train_throughput: vaelib.train.fit against a plain loop\n\n"
    "VAE D-400-20, Bernoulli, batch 128, Adam 1e-3, dynamic binarization; samples/s = training examples per "
    "second, median over alternating rounds; also the ratio of the fastest rounds and of CPU time "
    "(`python benchmarks/train_throughput.py --write`).\n\n"
    "| date | device | torch | threads | dataset (train images) | epochs x rounds | plain samples/s | fit samples/s "
    "| fit / plain (median) | fit / plain (fastest rounds) | fit / plain (CPU time) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def add_row(text, row):
    """`text` of RESULTS.md with `row` appended to this benchmark's table (created at the end if missing)."""
    if HEADER not in text:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "# Benchmark results\n\n") + HEADER
    lines = text.splitlines(keepends=True)
    i = len(text[: text.index(HEADER) + len(HEADER)].splitlines())  # first line after the table header
    while i < len(lines) and lines[i].startswith("|"):
        i += 1
    return "".join(lines[:i] + [row] + lines[i:])


def plain_loop(model, x, epochs, batch_size, lr, seed, device):
    """The reference: the same minibatches, binarization, noise and loss, written out in full."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator(device=device).manual_seed(seed)
    N = x.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(N, generator=gen, device=device)
        xe = torch.bernoulli(x[perm], generator=gen)  # (N, D) fresh binarization
        for xb in xe.split(batch_size):
            h = model.encoder(xb)
            mu, logvar = model.to_mu(h), model.to_logvar(h)  # (B, k)
            eps = torch.randn(mu.shape, generator=gen, device=device, dtype=mu.dtype)
            z = mu + torch.exp(0.5 * logvar) * eps
            logits = model.decoder(z)  # (B, D)
            log_px_z = -F.binary_cross_entropy_with_logits(logits, xb, reduction="none").sum(-1)
            kl = 0.5 * (torch.exp(logvar) + mu**2 - 1.0 - logvar).sum(-1)
            loss = -(log_px_z - kl).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_data(name):
    """(x_train, x_test, name actually used)."""
    try:
        x, _ = data.load(name, "train", download=False)
        xt, _ = data.load(name, "test", download=False)
        return x, xt, name
    except (OSError, ValueError) as e:
        first = str(e).splitlines()[0]
        print(f"notice: {name} is not available ({first}); falling back to digits", file=sys.stderr)
        x, _ = data.load("digits", "train")
        xt, _ = data.load("digits", "test")
        return x, xt, "digits"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "mnist", "digits"))
    p.add_argument("--epochs", type=int, default=2, help="epochs per timed run (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of plain and fit (default 3)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="train on the first N training images only (a shorter run on a slow machine)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--progress", action="store_true", help="run fit with its progress bar (default: off)")
    p.add_argument("--write", action="store_true", help=f"append the result to {RESULTS.name}")
    p.add_argument("--results", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = train.resolve_device(args.device)
    x, xt, name = load_data(args.dataset)
    if args.limit:
        x = x[: args.limit]
    D = x.shape[1]
    x_dev = x.to(device)
    print(f"{name}: {x.shape[0]} x {D}, VAE {D}-400-20 bernoulli, batch {args.batch_size}, device {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.epochs} epochs x {args.rounds} rounds")

    def fresh():
        torch.manual_seed(0)
        return VAE(D, 20, (400,)).to(device)

    # Warm-up (first-call costs: optimizer import, kernels, allocator), not timed.
    fit_model = fresh()
    train.fit(fit_model, x[:1024], 1, progress=False, device=device)
    plain_loop(fresh(), x_dev[:1024], 1, args.batch_size, 1e-3, 0, device)

    rates = {"plain": [], "fit": []}  # samples per wall-clock second
    cpu_rates = {"plain": [], "fit": []}  # samples per CPU second of this process (robust to a shared machine)
    models = {}
    for r in range(args.rounds):
        for kind in ("plain", "fit"):
            model = fresh()
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            if kind == "plain":
                plain_loop(model, x_dev, args.epochs, args.batch_size, 1e-3, r, device)
            else:
                train.fit(model, x, args.epochs, batch_size=args.batch_size, lr=1e-3, seed=r, device=device,
                          progress=args.progress)
            sync(device)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            rates[kind].append(args.epochs * x.shape[0] / seconds)
            cpu_rates[kind].append(args.epochs * x.shape[0] / cpu)
            models[kind] = model
            print(f"  round {r + 1} {kind:>5}: {seconds:7.2f} s wall {rates[kind][-1]:8.0f} samples/s | "
                  f"{cpu:7.2f} s CPU {cpu_rates[kind][-1]:8.0f} samples/CPU-s", flush=True)

    plain, fit = statistics.median(rates["plain"]), statistics.median(rates["fit"])
    ratio = fit / plain
    best_ratio = max(rates["fit"]) / max(rates["plain"])  # fastest round of each: least disturbed by other load
    cpu_ratio = statistics.median(cpu_rates["fit"]) / statistics.median(cpu_rates["plain"])
    # Same work: both models end at the same test ELBO up to training noise.
    xb = torch.bernoulli(xt[:2000], generator=torch.Generator().manual_seed(0))
    elbo = {k: evaluate.test_elbo(m, xb.to(device), generator=torch.Generator(device=device).manual_seed(0)).mean().item()
            for k, m in models.items()}
    print(f"median: plain loop {plain:.0f} samples/s, fit {fit:.0f} samples/s, fit / plain = {ratio:.3f} "
          f"({'within' if ratio >= 0.9 else 'NOT within'} 10%)")
    print(f"fastest round: plain loop {max(rates['plain']):.0f} samples/s, fit {max(rates['fit']):.0f} samples/s, "
          f"fit / plain = {best_ratio:.3f}")
    print(f"median per CPU-second of this process: fit / plain = {cpu_ratio:.3f}")
    print(f"test ELBO after the last round (2000 binarized test images): plain {elbo['plain']:.2f}, "
          f"fit {elbo['fit']:.2f} nats per example")
    if args.write:
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
        row = (f"| {datetime.date.today().isoformat()} | {device_name} | {torch.__version__} | {torch.get_num_threads()} | "
               f"{name} ({x.shape[0]}) | {args.epochs} x {args.rounds} | {plain:.0f} | {fit:.0f} | {ratio:.3f} | {best_ratio:.3f} | {cpu_ratio:.3f} |\n")
        text = add_row(args.results.read_text(encoding="utf-8") if args.results.exists() else "", row)
        train.atomic_write(args.results, lambda f: f.write(text), mode="w")
        print(f"appended to {args.results}")
    return 0 if math.isfinite(ratio) else 1


if __name__ == "__main__":
    sys.exit(main())
