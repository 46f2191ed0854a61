"""The command line: python -m vaelib {train, evaluate, sample}.

    python -m vaelib train --dataset digits --latent-dim 20 --hidden 400 --epochs 10 --out runs/digits
        writes runs/digits/model.pt (checkpoint), history.json (per-epoch nats) and training_curve.png
    python -m vaelib evaluate runs/digits/model.pt --k 5000
        prints the test ELBO and the importance-weighted log-likelihood (nats per example, bits/dim)
    python -m vaelib sample runs/digits/model.pt --n 64 --out samples.png
        writes a grid of decoded samples from the prior

Expected failures (bad arguments, unknown datasets, missing or corrupt checkpoints, missing data files)
print one line `vaelib: error: ...` on stderr and exit with a non-zero status, never a traceback.
Nothing happens at import time; the heavy modules (torch, data, matplotlib) load inside the commands.
"""

import argparse
import json
import math
import sys
from pathlib import Path

PROG = "python -m vaelib"
DATASETS = ("digits", "mnist", "fashion-mnist")


class CLIError(Exception):
    """A user error with a message for stderr."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr: `vaelib: error: ...`, exit status 2."""

    def error(self, message):
        self.exit(2, f"vaelib: error: {message} (see '{self.prog} --help')\n")


def _number(convert, ok, expected, expected_finite=None):
    """An argparse type: `convert` the text, then accept it only if `ok(value)`; errors say what was expected."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected_finite or expected}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(float, lambda v: v > 0 and math.isfinite(v), "a positive number", "a finite positive number")
_nonnegative_float = _number(float, lambda v: v >= 0 and math.isfinite(v), "a number >= 0", "a finite number >= 0")


def _hidden_list(text):
    """'400' or '400,200' -> [400] or [400, 200]."""
    parts = [p.strip() for p in text.split(",")]
    try:
        return [_positive_int(p) for p in parts]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected positive integer widths such as 400 or 400,200, got {text!r}") from None


def build_parser():
    """The argparse parser of `python -m vaelib`."""
    parser = _Parser(prog=PROG, description="Train, evaluate and sample VAEs (vaelib).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,sample}")

    p = sub.add_parser("train", help="train a VAE or autoencoder; write model.pt, history.json, training_curve.png",
                       description="Train a model with vaelib.train.fit and write DIR/model.pt, DIR/history.json "
                       "and DIR/training_curve.png.")
    p.add_argument("--dataset", choices=DATASETS, default="digits", help="training data (default: digits, offline)")
    p.add_argument("--model", choices=("vae", "autoencoder"), default="vae", help="model type (default: vae)")
    p.add_argument("--latent-dim", type=_positive_int, default=20, metavar="K", help="latent dimensions (default: 20)")
    p.add_argument("--hidden", type=_hidden_list, action="append", metavar="H",
                   help="hidden layer width; repeat or give a comma list for several layers (default: 400)")
    p.add_argument("--epochs", type=_nonnegative_int, default=10, metavar="N", help="epochs (default: 10)")
    p.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default="bernoulli",
                   help="p(x|z): bernoulli (dynamically binarized pixels) or gaussian with sigma_x = 1 (default: bernoulli)")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="minibatch size (default: 128)")
    p.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    p.add_argument("--beta", type=_nonnegative_float, default=1.0, help="KL weight (default: 1, the ELBO)")
    p.add_argument("--warmup-epochs", type=_nonnegative_int, default=0, help="linear KL warm-up epochs (default: 0)")
    p.add_argument("--valid-size", type=_nonnegative_int, default=0, metavar="M",
                   help="hold out M training examples for a per-epoch validation ELBO (default: 0)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of the initial weights and of training (default: 0)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="print test ELBO and importance-weighted log-likelihood",
                       description="Evaluate a checkpoint on a dataset split: test ELBO and the importance-weighted "
                       "log-likelihood estimate (Burda et al. 2016), in nats per example and bits per dimension. "
                       "Bernoulli models are evaluated on one fixed binarization of the images (seeded).")
    p.add_argument("checkpoint", metavar="CKPT", help="a model.pt written by 'train'")
    p.add_argument("--dataset", choices=DATASETS, default=None, help="default: the dataset the model was trained on")
    p.add_argument("--split", choices=("train", "test"), default="test", help="default: test")
    p.add_argument("--k", type=_positive_int, default=5000, help="importance samples per example (default: 5000)")
    p.add_argument("--limit", type=_positive_int, default=None, metavar="N", help="evaluate the first N examples only")
    p.add_argument("--batch-size", type=_positive_int, default=100, help="examples per pass (default: 100)")
    p.add_argument("--chunk-size", type=_positive_int, default=500, help="importance samples per pass (default: 500)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of the binarization and the samples (default: 0)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sample", help="write a grid of samples from the prior as a PNG",
                       description="Decode z ~ N(0, I) and write the decoder means (pixel probabilities) as a grid image.")
    p.add_argument("checkpoint", metavar="CKPT", help="a VAE model.pt written by 'train'")
    p.add_argument("--n", type=_positive_int, default=64, help="number of samples (default: 64)")
    p.add_argument("--out", required=True, metavar="FILE.png", help="PNG file to write")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of z (default: 0)")
    p.set_defaults(func=cmd_sample)
    return parser


def main(argv=None):
    """Run the command line with `argv` (default sys.argv[1:]); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error already reported on one line (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("vaelib: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, OSError, FloatingPointError, RuntimeError) as e:
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
        print(f"vaelib: error: {message}", file=sys.stderr)
        return 1
    return 0


# -- train ------------------------------------------------------------------------------------------

def cmd_train(args):
    import torch

    from vaelib import data, models, train

    device = train.resolve_device(args.device)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a directory")
    hidden = [h for group in args.hidden for h in group] if args.hidden else [400]
    x, _ = data.load(args.dataset, "train")  # (N, D) in [0, 1]
    if args.valid_size >= x.shape[0]:
        raise CLIError(f"--valid-size {args.valid_size} must be smaller than the {x.shape[0]} training examples")
    valid_x = None
    if args.valid_size:
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(args.seed))
        valid_x, x = x[order[: args.valid_size]], x[order[args.valid_size :]]

    torch.manual_seed(args.seed)  # the initial weights
    if args.model == "vae":
        model = models.VAE(x.shape[1], args.latent_dim, hidden, likelihood=args.likelihood)
    else:
        model = models.Autoencoder(x.shape[1], args.latent_dim, hidden, likelihood=args.likelihood)
    print(f"training {type(model).__name__} {x.shape[1]}-{'-'.join(map(str, hidden))}-{args.latent_dim} "
          f"({args.likelihood}) on {args.dataset}: {x.shape[0]} examples, {args.epochs} epochs, device {device}")
    history = train.fit(
        model, x, args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=device,
        valid_x=valid_x, progress=not args.no_progress, beta=args.beta, warmup_epochs=args.warmup_epochs,
    )
    out.mkdir(parents=True, exist_ok=True)
    metadata = {"dataset": args.dataset, "seed": args.seed, "valid_size": args.valid_size}
    ckpt = train.save_checkpoint(out / "model.pt", model, history=history, metadata=metadata)
    _write_text(out / "history.json", json.dumps(dict(history), indent=1) + "\n")
    _plot_history(history, out / "training_curve.png", f"{type(model).__name__} on {args.dataset}")
    if history["epoch"]:
        key = "elbo" if "elbo" in history else "log_px_z"
        label = "train ELBO" if key == "elbo" else "train log p(x|z)"
        print(f"epoch {history['epoch'][-1]}: {label} {history[key][-1]:.3f} nats per example")
    print(f"wrote {ckpt}, {out / 'history.json'}, {out / 'training_curve.png'}")


def _write_text(path, text):
    from vaelib.train import atomic_write

    atomic_write(path, lambda f: f.write(text), mode="w")


def _save_figure(fig, path):
    from vaelib.train import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, format="png", metadata={"Software": None}))


def _plot_history(history, path, title):
    """Training curve: ELBO, reconstruction term (and validation ELBO) and KL per epoch, in nats per example."""
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure

    from vaelib.plotting import STYLE

    def series(key):
        return np.array([np.nan if v is None else v for v in history[key]], dtype=float)

    epoch = np.array(history["epoch"])
    with matplotlib.rc_context(STYLE):
        if "elbo" in history:
            fig = Figure(figsize=(10, 4))
            ax, ax_kl = fig.subplots(1, 2)
            ax.plot(epoch, series("elbo"), marker="o", label="ELBO (train)")
            ax.plot(epoch, series("log_px_z"), marker="o", label="reconstruction E_q[log p(x|z)] (train)")
            if "valid_elbo" in history:
                ax.plot(epoch, series("valid_elbo"), marker="o", label="ELBO (validation)")
            ax.set_title(f"{title}: ELBO")
            ax.set_ylabel("nats per example")
            ax_kl.plot(epoch, series("kl"), marker="o", color="C2", label="KL(q(z|x) || p(z)) (train)")
            ax_kl.set_title("KL term")
            ax_kl.set_ylabel("nats per example")
            axes = (ax, ax_kl)
        else:
            fig = Figure(figsize=(6.4, 4))
            ax = fig.subplots()
            ax.plot(epoch, series("log_px_z"), marker="o", label="log p(x|z) (train)")
            if "valid_log_px_z" in history:
                ax.plot(epoch, series("valid_log_px_z"), marker="o", label="log p(x|z) (validation)")
            ax.set_title(f"{title}: reconstruction log-likelihood")
            ax.set_ylabel("nats per example")
            axes = (ax,)
        for a in axes:
            a.set_xlabel("epoch")
            a.legend()
        _save_figure(fig, path)


# -- evaluate ---------------------------------------------------------------------------------------

def _load(path):
    from vaelib import train

    return train.load_checkpoint(path, with_state=True)


def cmd_evaluate(args):
    import torch

    from vaelib import data, evaluate, models, train

    ckpt = _load(args.checkpoint)
    model = ckpt.model
    dataset = args.dataset or (ckpt.metadata or {}).get("dataset")
    if dataset not in DATASETS:
        raise CLIError(f"{args.checkpoint} does not record its dataset; pass --dataset {{{','.join(DATASETS)}}}")
    device = train.resolve_device(args.device)
    x, _ = data.load(dataset, args.split)
    if args.limit is not None:
        x = x[: args.limit]
    if x.shape[1] != model.data_dim:
        raise CLIError(f"the model expects data_dim {model.data_dim} but {dataset} has {x.shape[1]} pixels per image")
    model.to(device)
    note = ""
    if model.likelihood == "bernoulli":
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(args.seed))  # one fixed binarization
        note = f", binarized once with seed {args.seed}"
    D = model.data_dim
    print(f"checkpoint: {args.checkpoint} ({type(model).__name__}, "
          f"{'-'.join(map(str, [D, *model.hidden_dims, model.latent_dim]))}, {model.likelihood})")
    print(f"data: {dataset} {args.split} split, {x.shape[0]} examples{note}")

    def report(name, values):
        mean = values.mean().item()
        sem = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
        bpd = evaluate.bits_per_dim(mean, D)
        print(f"{name}: {mean:.3f} nats per example (+- {sem:.3f} standard error over examples; {bpd:.4f} bits/dim)")

    gen = torch.Generator(device=device).manual_seed(args.seed)
    if isinstance(model, models.Autoencoder):
        with torch.no_grad():
            values = torch.cat([model._reconstruction_log_likelihood(xb.to(device)) for xb in x.split(args.batch_size)])
        report("reconstruction log p(x|z)", values.cpu())
        print("an autoencoder has no prior: no ELBO or log-likelihood to report")
        return
    report(f"{args.split} ELBO", evaluate.test_elbo(model, x, batch_size=args.batch_size, generator=gen))
    iwae = evaluate.iwae_log_likelihood(model, x, k=args.k, batch_size=args.batch_size, chunk_size=args.chunk_size,
                                        generator=gen, progress=not args.no_progress)
    report(f"IWAE log-likelihood (k={args.k})", iwae)


# -- sample -----------------------------------------------------------------------------------------

def cmd_sample(args):
    import numpy as np
    import torch

    from vaelib import models

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise CLIError(f"--out must name a .png file, got {out}")
    if not out.parent.is_dir():
        raise CLIError(f"--out {out}: directory {out.parent} does not exist")
    model = _load(args.checkpoint).model
    if not isinstance(model, models.VAE):
        raise CLIError(f"{args.checkpoint} holds an {type(model).__name__}, which has no prior to sample from; use a VAE")
    side = math.isqrt(model.data_dim)
    if side * side != model.data_dim:
        raise CLIError(f"cannot show data_dim {model.data_dim} as square images (not a perfect square)")
    images = model.sample(args.n, generator=torch.Generator().manual_seed(args.seed))  # (n, D)
    images = images.clamp(0, 1).reshape(args.n, side, side).cpu().numpy()
    cols = math.ceil(math.sqrt(args.n))
    rows = math.ceil(args.n / cols)
    pad = 1
    grid = np.ones((rows * (side + pad) + pad, cols * (side + pad) + pad))  # white borders
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[pad + r * (side + pad): pad + r * (side + pad) + side, pad + c * (side + pad): pad + c * (side + pad) + side] = img
    scale = max(1, math.ceil(256 / grid.shape[1]))  # at least ~256 pixels wide
    grid = np.kron(grid, np.ones((scale, scale)))
    _save_image(grid, out)
    print(f"wrote {args.n} samples ({side}x{side}) to {out}")


def _save_image(grid, path):
    import matplotlib.image

    from vaelib.train import atomic_write

    # pixel probability 1 is white (MNIST convention); the borders between images are white too
    atomic_write(path, lambda f: matplotlib.image.imsave(f, grid, cmap="gray", vmin=0.0, vmax=1.0, format="png"))


if __name__ == "__main__":
    sys.exit(main())
