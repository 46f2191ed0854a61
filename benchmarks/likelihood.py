"""Train one VAE under the density-estimation protocol and write its test NLL to a JSON file.

The run only; `benchmarks/likelihood_report.py` turns the JSON files of several seeds into the table and
the curve in RESULTS.md.

Protocol (Burda et al. 2016, sec. 5; the Exemplar VAE code, github.com/sajadn/Exemplar-VAE):
  - the first 50,000 training images train, the last 10,000 are the validation set (binarized once);
  - training images are binarized afresh every epoch (what `vaelib.train.fit` does for a Bernoulli model);
  - the model kept is the epoch with the best validation ELBO (model selection on held-out data);
  - test NLL = -log p(x), estimated with K = 5000 importance samples from the encoder
    (`vaelib.evaluate.iwae_log_likelihood`) on all 10,000 test images, binarized once with a fixed seed.
Nats per image; lower is better.

The schedule depends on epochs only, never on the wall-clock: Adam with a cosine learning rate from --lr
to --lr-final over --epochs epochs (set before each epoch), linear KL warm-up over --warmup-epochs.
The "gated" model is the reference's: 784-300-300-40 with gated dense layers, h = (W x + b) * sigmoid(V x + c),
and the encoder's log-variance bounded to [-6, 2] by a hardtanh; "mlp" is vaelib's ReLU MLP.

Every --curve-every epochs the test NLL on the first --curve-images test images (K = --curve-k) is added to
the curve, and the JSON and a checkpoint are saved, so a stopped run resumes where it was (--resume).

    python benchmarks/likelihood.py --seed 0 --out /tmp/lk/seed0                         # the RESULTS.md rows
    python benchmarks/likelihood.py --seed 0 --epochs 2 --train-limit 1000 --k 50 --test-limit 200 --out /tmp/lk-smoke
    python benchmarks/likelihood.py --dataset mnist ...    # exits with a message when the files are absent
"""

import argparse
import copy
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

from vaelib import _atomic, checkpoints, data, evaluate, train
from vaelib.models import VAE

TEST_BINARIZATION_SEED = 12345  # one fixed draw of the binarized test set, the same for every run
N_VALID = 10000


class GatedDense(nn.Module):
    """h = (W x + b) * sigmoid(V x + c): (..., n_in) -> (..., n_out)."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.h = nn.Linear(n_in, n_out)
        self.g = nn.Linear(n_in, n_out)

    def forward(self, x):
        return self.h(x) * torch.sigmoid(self.g(x))


class GatedEncoder(nn.Module):
    """x (B, D) -> (mu, logvar), (B, k) each; logvar = hardtanh(., -6, 2)."""

    def __init__(self, data_dim, hidden, latent_dim):
        super().__init__()
        sizes = (data_dim, *hidden)
        self.net = nn.Sequential(*[GatedDense(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
        self.mu = nn.Linear(sizes[-1], latent_dim)
        self.logvar = nn.Linear(sizes[-1], latent_dim)

    def forward(self, x):
        h = self.net(x)
        return self.mu(h), nn.functional.hardtanh(self.logvar(h), -6.0, 2.0)


def build_model(kind, data_dim, hidden, latent_dim):
    """The VAE of configuration `kind` ("gated" or "mlp"), Bernoulli decoder; seed torch before calling."""
    if kind == "mlp":
        return VAE(data_dim, latent_dim, hidden, likelihood="bernoulli")
    sizes = (latent_dim, *hidden)
    decoder = nn.Sequential(*[GatedDense(a, b) for a, b in zip(sizes[:-1], sizes[1:])], nn.Linear(sizes[-1], data_dim))
    return VAE(data_dim, latent_dim, likelihood="bernoulli", encoder=GatedEncoder(data_dim, hidden, latent_dim),
               decoder=decoder)


def cosine_lr(epoch, epochs, lr, lr_final):
    """Learning rate of epoch `epoch` (1-based) of `epochs`: lr at the first, lr_final at the last."""
    fraction = (epoch - 1) / max(epochs - 1, 1)
    return lr_final + 0.5 * (lr - lr_final) * (1.0 + math.cos(math.pi * fraction))


def log(msg):
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


def write_json(path, obj):
    _atomic.atomic_write(path, lambda f: json.dump(obj, f, indent=1), mode="w")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "mnist"))
    p.add_argument("--model", default="gated", choices=("gated", "mlp"))
    p.add_argument("--hidden", default="300,300", help="hidden widths (default 300,300)")
    p.add_argument("--latent-dim", type=int, default=40)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-final", type=float, default=1e-5)
    p.add_argument("--warmup-epochs", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=5000, help="importance samples of the final test NLL")
    p.add_argument("--test-limit", type=int, default=None, help="final evaluation on the first N test images only")
    p.add_argument("--train-limit", type=int, default=None, help="train on the first N of the 50,000 images only (a smoke test)")
    p.add_argument("--curve-every", type=int, default=20, help="a curve point every this many epochs")
    p.add_argument("--curve-k", type=int, default=500)
    p.add_argument("--curve-images", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--out", type=Path, required=True, help="output folder (outside the repository)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--stop-after", type=int, default=None, metavar="E",
                   help="save and stop after epoch E, to be continued with --resume")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        x_all = data.load(args.dataset, "train", download=False)[0]
        xt = data.load(args.dataset, "test", download=False)[0]
    except (OSError, ValueError) as e:
        print(f"{args.dataset} is not available here, nothing run: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    out = args.out.resolve()
    repo = Path(__file__).resolve().parent.parent
    if out == repo or repo in out.parents:
        raise SystemExit(f"--out {out} is inside the repository; choose a folder outside it")
    out.mkdir(parents=True, exist_ok=True)
    json_path, last_path, best_path = out / "likelihood.json", out / "last.pt", out / "best.pt"

    x_train, x_valid = x_all[:-N_VALID][: args.train_limit], x_all[-N_VALID:]  # (50000, D), (10000, D)
    xt_bin = torch.bernoulli(xt, generator=torch.Generator().manual_seed(TEST_BINARIZATION_SEED))  # (10000, D)
    x_test = xt_bin[: args.test_limit] if args.test_limit else xt_bin
    x_curve = xt_bin[: args.curve_images]
    hidden = tuple(int(h) for h in args.hidden.split(","))
    D = x_train.shape[1]

    torch.manual_seed(args.seed)
    model = build_model(args.model, D, hidden, args.latent_dim)
    history, best_state = None, None
    if args.resume:
        r = json.loads(json_path.read_text())
        if r["status"] == "done":
            raise SystemExit(f"the run in {out} is finished; nothing to resume")
        ck = checkpoints.load_checkpoint(last_path, model=model, with_state=True)
        history = ck.history  # carries the optimizer and generator state
        best_state = copy.deepcopy(checkpoints.load_checkpoint(best_path, model=build_model(args.model, D, hidden,
                                                                                       args.latent_dim)).state_dict())
        log(f"resumed at epoch {history['epoch'][-1]}")
    else:
        r = {"started": datetime.datetime.now().isoformat(timespec="seconds"), "status": "training",
             "command": "python benchmarks/likelihood.py " + " ".join(sys.argv[1:] if argv is None else argv),
             "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "resume"},
             "architecture": "-".join(str(v) for v in (D, *hidden, args.latent_dim)),
             "n_train": int(x_train.shape[0]), "n_valid": int(x_valid.shape[0]), "n_test": int(x_test.shape[0]),
             "test_binarization_seed": TEST_BINARIZATION_SEED, "device": "CPU", "cpu": platform.machine(),
             "threads": torch.get_num_threads(), "torch": torch.__version__,
             "epochs": [], "curve": [], "events": [], "best": None, "final": None}
    lr_scale = 0.5 ** len(r["events"])

    def curve_point(epoch):
        model.eval()
        g = torch.Generator().manual_seed(args.seed)
        nll = -evaluate.iwae_log_likelihood(model, x_curve, K=args.curve_k, generator=g).mean().item()
        r["curve"].append({"epoch": epoch, "nll": nll, "valid_elbo": history["valid_elbo"][-1]})
        log(f"epoch {epoch}: test NLL {nll:.2f} (K={args.curve_k}, {x_curve.shape[0]} images), "
            f"valid ELBO {history['valid_elbo'][-1]:.2f}, best {r['best']['valid_elbo']:.2f} at {r['best']['epoch']}")
        checkpoints.save_checkpoint(last_path, model, history=history)
        best = build_model(args.model, D, hidden, args.latent_dim)
        best.load_state_dict(best_state)
        checkpoints.save_checkpoint(best_path, best)
        write_json(json_path, r)

    epoch = history["epoch"][-1] if history else 0
    while epoch < args.epochs:
        lr_e = lr_scale * cosine_lr(epoch + 1, args.epochs, args.lr, args.lr_final)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            history = train.fit(model, x_train, 1, batch_size=args.batch_size, lr=lr_e, seed=args.seed,
                                valid_x=x_valid, progress=False, warmup_epochs=args.warmup_epochs, history=history)
        except FloatingPointError as e:  # fit rolled the model back to the last complete epoch
            lr_scale *= 0.5
            r["events"].append({"epoch": epoch + 1, "error": str(e), "action": f"retried with lr x{lr_scale:g}"})
            log(f"epoch {epoch + 1}: {e}; retrying with the learning rate x{lr_scale:g}")
            if lr_scale < 1e-3:
                raise
            continue
        epoch = history["epoch"][-1]
        r["epochs"].append({"epoch": epoch, "lr": lr_e, "elbo": history["elbo"][-1], "kl": history["kl"][-1],
                            "valid_elbo": history["valid_elbo"][-1], "wall_seconds": time.perf_counter() - t0,
                            "cpu_seconds": time.process_time() - c0})
        if r["best"] is None or history["valid_elbo"][-1] > r["best"]["valid_elbo"]:
            r["best"] = {"epoch": epoch, "valid_elbo": history["valid_elbo"][-1]}
            best_state = copy.deepcopy(model.state_dict())
        if epoch % args.curve_every == 0 or epoch == args.epochs or epoch == args.stop_after:
            curve_point(epoch)
        if epoch == args.stop_after:
            log(f"stopped after epoch {epoch}; continue with --resume")
            return 0

    # Final evaluation of the model with the best validation ELBO, saved block by block.
    model.load_state_dict(best_state)
    model.eval()
    t0, c0 = time.perf_counter(), time.process_time()
    elbo = evaluate.test_elbo(model, x_test, generator=torch.Generator().manual_seed(args.seed + 1)).mean().item()
    gen = torch.Generator().manual_seed(args.seed + 2)
    log_px = []
    for start in range(0, x_test.shape[0], 1000):
        log_px.append(evaluate.iwae_log_likelihood(model, x_test[start:start + 1000], K=args.k, generator=gen))
        log(f"final: {start + log_px[-1].shape[0]}/{x_test.shape[0]} images, running NLL "
            f"{-torch.cat(log_px).mean().item():.2f}")
    log_px = torch.cat(log_px).double()
    r["final"] = {"epoch": r["best"]["epoch"], "elbo": elbo, "k": args.k, "n_test": int(x_test.shape[0]),
                  "nll": -log_px.mean().item(), "nll_se": log_px.std().item() / math.sqrt(log_px.shape[0]),
                  "train_cpu_minutes": sum(e["cpu_seconds"] for e in r["epochs"]) / 60,
                  "train_wall_minutes": sum(e["wall_seconds"] for e in r["epochs"]) / 60,
                  "eval_cpu_minutes": (time.process_time() - c0) / 60, "eval_wall_minutes": (time.perf_counter() - t0) / 60}
    r["status"] = "done"
    write_json(json_path, r)
    log(f"done: best epoch {r['best']['epoch']}, test ELBO {elbo:.2f}, test NLL {r['final']['nll']:.2f} "
        f"(K={args.k}, {x_test.shape[0]} images); {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
