"""How much the reference's probability clamp alone moves a kept model's test NLL.

The published number's code clamps the decoder's Bernoulli probabilities to [1e-5, 1 - 1e-5], in
training and in its test evaluation. At test time the clamp caps what one pixel can cost at
-log(1e-5) = 11.5 nats (a pixel the model is sure of and gets wrong), and costs at most 1e-5 nats
on every pixel it is sure of and gets right. This script measures that evaluation-time part on a
finished run of `benchmarks/likelihood.py` (protocol "ours"), without training anything:

  for every block of 1000 test images of one draw, the kept model (DIR/best.pt) is evaluated twice
  with the same importance samples (the generator seeds of that run's own evaluation of the draw
  at K): as trained, then with the clamp; the per-image difference (clamped minus as trained, in
  log p(x)) is paired, so its standard error over images is free of Monte Carlo noise between the
  two passes. The unclamped pass must reproduce the run's stored block sums (a check that the
  samples really are the same); the fraction of decoder outputs that the clamp changed is counted.

The JSON (--out) is saved after every block; --resume continues. `likelihood_report.py` reads
benchmarks/results/likelihood_clamp/*.json into the table of differences.

    python benchmarks/likelihood_clamp.py /tmp/lk/seed0 \
        --out benchmarks/results/likelihood_clamp/seed0.json
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from _runs import fill_defaults
from likelihood import (
    BLOCK,
    N_VALID,
    PROB_CLAMP,
    ClampLogits,
    _block_seed,
    binarize,
    block_tag,
    build_model,
    log,
    write_json,
)
from torch import nn

from vaelib import checkpoints, data, evaluate


class CountingClamp(ClampLogits):
    """ClampLogits that also counts the outputs it changed: (..., D) -> (..., D)."""

    def __init__(self, eps):
        super().__init__(eps)
        self.changed, self.total = 0, 0

    def forward(self, logits):
        self.changed += int((logits.abs() > self.bound).sum())
        self.total += logits.numel()
        return super().forward(logits)


def stored_pass(run, draw, K):
    """(tag of the block seeds, stored result or None) of `run`'s evaluation of `draw` at K."""
    final = run.get("final") or {}
    for key in ("spread", "binarizations"):
        stored = final.get(key, {}).get(draw)
        if stored is not None and stored.get("k") == K:
            return block_tag(key, draw, K), stored
    return block_tag("spread", draw, K), None


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a finished likelihood.py run: likelihood.json, best.pt")
    p.add_argument(
        "--draw", default="reference777", help="test binarization (default reference777)"
    )
    p.add_argument("--k", type=int, default=1000, help="importance samples (default 1000)")
    p.add_argument("--test-limit", type=int, default=None, help="first N test images (smoke tests)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    p.add_argument("--resume", action="store_true", help="continue the measurement in --out")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    run_json, best = args.run / "likelihood.json", args.run / "best.pt"
    for path in (run_json, best):
        if not path.is_file():
            raise SystemExit(f"{path} is missing: give the folder of a finished likelihood.py run")
    run = json.loads(run_json.read_text())
    c = fill_defaults(run["config"])
    if run.get("status") != "done":
        raise SystemExit(f"the run in {args.run} is not finished (status {run.get('status')!r})")
    if c["protocol"] != "ours":
        raise SystemExit(
            f"the run in {args.run} is a control run (protocol {c['protocol']!r}); the clamp "
            "measurement takes runs of protocol 'ours', which never clamp"
        )
    if args.out.exists() and not args.resume:
        raise SystemExit(f"{args.out} exists; add --resume to continue it, or remove it")

    x_all = data.load(c["dataset"], "train", download=False)[0]
    xt = data.load(c["dataset"], "test", download=False)[0]
    xb = binarize(args.draw, xt, x_all[-N_VALID:])[: args.test_limit]
    hidden = tuple(int(h) for h in c["hidden"].split(","))
    model = build_model(
        c["model"], xt.shape[1], hidden, c["latent_dim"], "ours", c["prior"], c["prior_components"]
    )
    checkpoints.load_checkpoint(best, model=model)
    model.eval()
    decoder, clamp = model.decoder, CountingClamp(PROB_CLAMP)
    tag, stored = stored_pass(run, args.draw, args.k)

    if args.resume:
        r = json.loads(args.out.read_text())
        if (r["run_command"], r["draw"], r["k"]) != (run["command"], args.draw, args.k):
            raise SystemExit(f"{args.out} measures another run, draw or K; start a new file")
    else:
        r = {
            "run_command": run["command"],
            "seed": c["seed"],
            "best_epoch": run["best"]["epoch"],
            "draw": args.draw,
            "k": args.k,
            "clamp": PROB_CLAMP,
            "block_seeds": tag,
            "blocks": {},
        }
    for start in range(0, xb.shape[0], BLOCK):
        if str(start) in r["blocks"]:
            continue
        x = xb[start : start + BLOCK]
        c0 = time.process_time()
        log_px = {}
        for name, dec in (("trained", decoder), ("clamped", nn.Sequential(decoder, clamp))):
            model.decoder = dec
            g = torch.Generator().manual_seed(_block_seed(c["seed"], tag, start))
            evaluate.test_elbo(model, x, generator=g)  # the run drew its ELBO noise first
            log_px[name] = evaluate.iwae_log_likelihood(model, x, K=args.k, generator=g).double()
        model.decoder = decoder
        d = log_px["clamped"] - log_px["trained"]
        block = {
            "n": int(x.shape[0]),
            "log_px_sum": log_px["trained"].sum().item(),
            "clamped_log_px_sum": log_px["clamped"].sum().item(),
            "diff_sum": d.sum().item(),
            "diff_sumsq": (d**2).sum().item(),
            "cpu_seconds": time.process_time() - c0,
        }
        if stored is not None and str(start) in stored["blocks"]:
            block["stored_log_px_sum"] = stored["blocks"][str(start)]["log_px_sum"]
        r["blocks"][str(start)] = block
        r["clamped_outputs"] = r.get("clamped_outputs", 0) + clamp.changed
        r["decoder_outputs"] = r.get("decoder_outputs", 0) + clamp.total
        clamp.changed = clamp.total = 0
        log(
            f"{args.draw} (K={args.k}), images {start}-{start + x.shape[0]}: clamped - trained "
            f"= {d.mean().item():+.4f} nats per image"
        )
        write_json(args.out, r)

    blocks = r["blocks"].values()
    n = sum(b["n"] for b in blocks)
    mean = sum(b["diff_sum"] for b in blocks) / n
    var = (sum(b["diff_sumsq"] for b in blocks) - n * mean**2) / (n - 1)
    recomputed = [b for b in blocks if "stored_log_px_sum" in b]
    r["summary"] = {
        "n_test": n,
        "nll_trained": -sum(b["log_px_sum"] for b in blocks) / n,
        "nll_clamped": -sum(b["clamped_log_px_sum"] for b in blocks) / n,
        "nll_change": -mean,  # clamped minus trained, in NLL
        "nll_change_se": math.sqrt(max(var, 0.0) / n),
        "clamped_fraction": r["clamped_outputs"] / r["decoder_outputs"],
        # the unclamped pass against the run's own evaluation: the same samples, up to rounding
        "max_abs_diff_from_stored_per_image": max(
            (abs(b["log_px_sum"] - b["stored_log_px_sum"]) / b["n"] for b in recomputed),
            default=None,
        ),
        "cpu_minutes": sum(b["cpu_seconds"] for b in blocks) / 60,
    }
    write_json(args.out, r)
    s = r["summary"]
    log(
        f"done: NLL {s['nll_trained']:.3f} -> {s['nll_clamped']:.3f} with the clamp "
        f"({s['nll_change']:+.4f} ± {s['nll_change_se']:.4f}); {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
