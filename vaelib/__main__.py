"""The command line: python -m vaelib {train, evaluate, sample}.

    python -m vaelib train --dataset digits --latent-dim 20 --hidden 400 --epochs 10 --out
    runs/digits
        writes runs/digits/model.pt (checkpoint), history.json (per-epoch nats) and
        training_curve.png; model.pt is written every --checkpoint-every epochs too, and when the
        run is stopped (Ctrl-C, SIGTERM, a NaN): `train --resume runs/digits` continues it to the
        same weights as one run
    python -m vaelib train --data mine.npz --likelihood gaussian --image-shape 28 20 --out runs/mine
        your own data: x_train (and optionally x_test) in an .npz file; sigma_x is set to its
        closed-form optimum per batch by default (--sigma-x-per-pixel: one per pixel)
    python -m vaelib evaluate runs/digits/model.pt --K 5000
        prints the test ELBO and the importance-weighted log-likelihood (nats per example, bits/dim)
        on the data the model was trained on (recorded in the checkpoint), and which scale the
        bits/dim are on (binary pixels; a density on the data's scale; with --dequantize, 8-bit)
    python -m vaelib sample runs/digits/model.pt --n 64 --out samples.png
        writes a grid of decoded samples from the prior (image shape recorded in the checkpoint)

Expected failures (bad arguments, unknown datasets, missing or corrupt checkpoints, missing data
files, a NaN in training, running out of memory) print one line `vaelib: error: ...` on stderr and
exit with a non-zero status, never a traceback. Anything else (a TypeError or RuntimeError from a
bug) keeps its traceback. Ctrl-C exits with status 130 and SIGTERM with 143, after saving the
training state. Nothing happens at import time; the heavy modules (torch, data, matplotlib) load
inside the commands. The choices of --likelihood come from `vaelib.registry.LIKELIHOODS`, which does
not import torch.

(Longer than most modules: the three commands, their arguments and their error paths read best in
one place.)
"""

import argparse
import contextlib
import hashlib
import json
import math
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from vaelib.registry import LIKELIHOODS, OBJECTIVES, PRIORS

PROG = "python -m vaelib"


def _prog():
    """The command as the user typed it, for usage lines and hints: `vaelib` (the installed script)
    or `python -m vaelib`."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "vaelib" if name in ("vaelib", "vaelib.exe") else PROG


DATASETS = ("digits", "mnist", "fashion-mnist")


class CLIError(Exception):
    """A user error with a message for stderr."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr: `vaelib: error: ...`, exit status 2."""

    def error(self, message):
        self.exit(2, f"vaelib: error: {message} (see '{self.prog} --help')\n")


def _number(convert, ok, expected, expected_finite=None):
    """An argparse type: `convert` the text, then accept it only if `ok(value)`; errors say what was
    expected."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(
                f"expected {expected_finite or expected}, got {text!r}"
            )
        return value

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_seed = _number(int, lambda v: 0 <= v < 2**64, "an integer seed", "an integer in [0, 2**64)")
_positive_float = _number(
    float, lambda v: v > 0 and math.isfinite(v), "a positive number", "a finite positive number"
)
_nonnegative_float = _number(
    float, lambda v: v >= 0 and math.isfinite(v), "a number >= 0", "a finite number >= 0"
)

# train's options, their defaults and whether `--resume` may change them (the rest come from the
# checkpoint)
TRAIN_DEFAULTS = {
    "dataset": "digits",
    "data": None,
    "image_shape": None,
    "model": "vae",
    "latent_dim": 20,
    "hidden": [400],
    "epochs": 10,
    "likelihood": "bernoulli",
    "sigma_x": None,
    "learn_sigma_x": None,
    "sigma_x_per_pixel": False,
    "sigma_x_floor": None,
    "batch_size": 128,
    "lr": 1e-3,
    "beta": 1.0,
    "warmup_epochs": 0,
    "valid_size": 0,
    "seed": 0,
    "objective": "elbo",
    "K": None,
    "prior": "normal",
    "prior_components": None,
}
# Settings added after runs were saved without them: an older run resumes with these values.
TRAIN_FILLS = {
    "objective": "elbo",
    "K": None,
    "sigma_x_per_pixel": False,
    "sigma_x_floor": None,
    "prior": "normal",
    "prior_components": None,
}
RESUME_MAY_CHANGE = ("epochs", "lr")  # a new --lr continues the run, but not bit for bit
CHECKPOINT_EVERY = 1


def _hidden_list(text):
    """'400' or '400,200' -> [400] or [400, 200]."""
    parts = [p.strip() for p in text.split(",")]
    try:
        return [_positive_int(p) for p in parts]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected positive integer widths such as 400 or 400,200, got {text!r}"
        ) from None


def build_parser():
    """The argparse parser of `python -m vaelib`."""
    parser = _Parser(prog=_prog(), description="Train, evaluate and sample VAEs (vaelib).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,sample}")

    p = sub.add_parser(
        "train",
        help="train a VAE or autoencoder; write model.pt, history.json, training_curve.png",
        description="Train a model with vaelib.train.fit and write DIR/model.pt, DIR/history.json "
        "and DIR/training_curve.png. DIR/model.pt is also written every --checkpoint-every epochs "
        "and when the run is stopped (Ctrl-C, SIGTERM, a NaN); continue it with --resume DIR, "
        "which gives the same weights as an uninterrupted run.",
    )
    data = p.add_mutually_exclusive_group()
    data.add_argument(
        "--dataset", choices=DATASETS, default=None, help="training data (default: digits, offline)"
    )
    data.add_argument(
        "--data",
        metavar="FILE.npz",
        default=None,
        help="your own data: an .npz file with x_train (N, D) or (N, H, W) and optionally x_test, "
        "float values (in [0, 1] for --likelihood bernoulli) or uint8 pixels (divided by 255)",
    )
    p.add_argument(
        "--image-shape",
        type=_positive_int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="height and width of one example, for image grids of non-square data (default: from "
        "(N, H, W) data, else square)",
    )
    p.add_argument(
        "--model", choices=("vae", "autoencoder"), default=None, help="model type (default: vae)"
    )
    p.add_argument(
        "--latent-dim",
        type=_positive_int,
        default=None,
        metavar="k",
        help="latent dimensions k (default: 20)",
    )
    p.add_argument(
        "--hidden",
        type=_hidden_list,
        action="append",
        metavar="H",
        help="hidden layer width; repeat or give a comma list for several layers (default: 400)",
    )
    p.add_argument(
        "--epochs",
        type=_nonnegative_int,
        default=None,
        metavar="N",
        help="epochs in total (default: 10); with --resume, the new total",
    )
    p.add_argument(
        "--likelihood",
        choices=LIKELIHOODS.names(),
        default=None,
        help="p(x|z): " + LIKELIHOODS.choices_help("bernoulli"),
    )
    p.add_argument(
        "--sigma-x",
        type=_positive_float,
        default=None,
        metavar="S",
        help="sigma_x of a likelihood with a scale (gaussian): given alone, fixed (as in Python: "
        "VAE(..., sigma_x=S)); with --learn-sigma-x, the initial value. Default: set to its "
        "closed-form optimum on each batch (learn_sigma_x='optimal', the Python default too), "
        "starting from the data's pixel spread",
    )
    p.add_argument(
        "--learn-sigma-x",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="learn sigma_x by gradient with the weights (--no-learn-sigma-x: fixed). Default: "
        "neither, its closed-form optimum per batch, which converges where a gradient at the "
        "weights' learning rate barely moves it; a fixed sigma_x far above the data's spread "
        "makes the KL win and the latent code unused",
    )
    p.add_argument(
        "--sigma-x-per-pixel",
        action="store_true",
        default=None,
        help="one sigma_x per pixel instead of one shared by all (learned or optimal ones are "
        "held at or above --sigma-x-floor)",
    )
    p.add_argument(
        "--sigma-x-floor",
        type=_positive_float,
        default=None,
        metavar="F",
        help="the least value a learned or optimal sigma_x takes (default: 1/256, one 8-bit level "
        "of [0, 1] data), so that sigma_x cannot collapse on near-constant pixels",
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=None, help="minibatch size (default: 128)"
    )
    p.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help="Adam learning rate (default: 1e-3); with --resume, a new rate from there on",
    )
    p.add_argument(
        "--beta", type=_nonnegative_float, default=None, help="KL weight (default: 1, the ELBO)"
    )
    p.add_argument(
        "--objective",
        choices=OBJECTIVES.names(),
        default=None,
        help="the training loss: " + OBJECTIVES.choices_help("elbo"),
    )
    p.add_argument(
        "--prior",
        choices=PRIORS.names(),
        default=None,
        help="p(z): " + PRIORS.choices_help("normal"),
    )
    p.add_argument(
        "--prior-components",
        type=_positive_int,
        default=None,
        help="components of a learned --prior (vamp: pseudo-inputs, default 500; mog: Gaussians, "
        "default 10)",
    )
    p.add_argument(
        "--K",
        type=_positive_int,
        default=None,
        help="importance samples per example of --objective iwae or iwae-dreg (required with them)",
    )
    p.add_argument(
        "--warmup-epochs",
        type=_nonnegative_int,
        default=None,
        help="linear KL warm-up epochs (default: 0)",
    )
    p.add_argument(
        "--valid-size",
        type=_nonnegative_int,
        default=None,
        metavar="M",
        help="hold out M training examples for a per-epoch validation ELBO (default: 0)",
    )
    p.add_argument(
        "--seed",
        type=_seed,
        default=None,
        help="seed of the initial weights and of training (default: 0)",
    )
    p.add_argument(
        "--device",
        default=None,
        help="cpu, cuda or cuda:N (default: cuda when available, else cpu)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="output directory (created if missing); required unless --resume",
    )
    p.add_argument(
        "--resume",
        metavar="DIR",
        default=None,
        help="continue the run whose checkpoint is DIR/model.pt, with its settings, up to --epochs "
        "in total",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh even if --out already holds a model.pt",
    )
    p.add_argument(
        "--checkpoint-every",
        type=_nonnegative_int,
        default=CHECKPOINT_EVERY,
        metavar="N",
        help="write DIR/model.pt every N epochs, 0 = only at the end and when stopped (default: "
        f"{CHECKPOINT_EVERY})",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="print test ELBO and importance-weighted log-likelihood",
        description="Evaluate a checkpoint on a dataset split: test ELBO and the "
        "importance-weighted "
        "log-likelihood estimate (Burda et al. 2016), in nats per example and bits per dimension. "
        "Bernoulli models are evaluated on one fixed binarization of the images (seeded). "
        "The data default to those the model was trained on (recorded in the checkpoint).",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="a model.pt written by 'train'")
    data = p.add_mutually_exclusive_group()
    data.add_argument(
        "--dataset",
        choices=DATASETS,
        default=None,
        help="default: the data the model was trained on",
    )
    data.add_argument(
        "--data", metavar="FILE.npz", default=None, help="an .npz file with x_train and/or x_test"
    )
    p.add_argument("--split", choices=("train", "test"), default="test", help="default: test")
    p.add_argument(
        "--dequantize",
        action="store_true",
        help="(a model with a scale, e.g. gaussian, on 8-bit images) evaluate on x = (k + u) "
        "/ 256, u ~ U(0, 1) seeded, and report bits/dim on the discrete 8-bit scale (vaelib.data."
        "dequantize; the density's nats + D log 256)",
    )
    p.add_argument(
        "--K",
        "--k",
        dest="K",
        type=_positive_int,
        default=5000,
        metavar="K",
        help="importance samples per example, K (default: 5000; --k is an alias)",
    )
    p.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        metavar="N",
        help="evaluate the first N examples only",
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=100, help="examples per pass (default: 100)"
    )
    p.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=500,
        help="importance samples per pass (default: 500)",
    )
    p.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="seed of the binarization and the samples (default: 0)",
    )
    p.add_argument(
        "--device",
        default=None,
        help="cpu, cuda or cuda:N (default: cuda when available, else cpu)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "sample",
        help="write a grid of samples from the prior as a PNG",
        description="Decode z ~ N(0, I) and write the decoder means (pixel probabilities, or a "
        "Gaussian's means) as a grid image, dark ink on white as in vaelib.plotting: 0 white, 1 "
        "black. Values outside [0, 1] are drawn at the ends of the range, and the command says "
        "how many there were.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="a VAE model.pt written by 'train'")
    p.add_argument("--n", type=_positive_int, default=64, help="number of samples (default: 64)")
    p.add_argument("--out", required=True, metavar="FILE.png", help="PNG file to write")
    p.add_argument(
        "--image-shape",
        type=_positive_int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="height and width of one sample (default: recorded in the checkpoint, else square)",
    )
    p.add_argument("--seed", type=_seed, default=0, help="seed of z (default: 0)")
    p.set_defaults(func=cmd_sample)
    for command in sub.choices.values():
        command.add_argument(
            "--threads",
            type=_positive_int,
            default=None,
            metavar="N",
            help="CPU threads torch may use (default: torch's choice, all cores); e.g. 1 on a "
            "shared machine",
        )
    return parser


def main(argv=None):
    """Run the command line with `argv` (default sys.argv[1:]); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error already reported on one line (2)
        return e.code if isinstance(e.code, int) else 2
    if args.func is cmd_train and args.out is None and args.resume is None:
        return _usage_error(
            parser, "train", "the following arguments are required: --out (or --resume DIR)"
        )
    try:
        if args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
        args.func(args)
    except _Stopped as e:
        print(e.message, file=sys.stderr)
        return e.code
    except _Terminated:
        print("vaelib: terminated (SIGTERM)", file=sys.stderr)
        return 128 + 15
    except KeyboardInterrupt:
        print("vaelib: interrupted", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as e:
        message = (
            " ".join(line.strip() for line in str(e).splitlines() if line.strip())
            or type(e).__name__
        )
        print(f"vaelib: error: {message}", file=sys.stderr)
        return 1
    except Exception as e:
        if _out_of_memory(e):
            print(
                f"vaelib: error: out of memory ({type(e).__name__}); {_OOM_ADVICE[args.command]}",
                file=sys.stderr,
            )
            return 1
        raise  # a bug: Python prints the traceback and exits with status 1
    return 0


# The errors the commands and the library raise on purpose, with a message meant for the user:
# CLIError (bad arguments, unusable --out or --data), ValueError (the library's checks: broken or
# corrupt checkpoints, unknown devices, corrupt IDX files), OSError (missing files, failed
# downloads, a full or read-only disk) and FloatingPointError (a NaN in training). A TypeError or
# RuntimeError reaching main is a bug: it keeps its traceback.
EXPECTED_ERRORS = (CLIError, ValueError, OSError, FloatingPointError)


# What to lower when a command runs out of memory: the options that size its allocations.
_OOM_ADVICE = {
    "train": "lower --batch-size or --hidden, train on less data (--data), or use --device cpu",
    "evaluate": "lower --batch-size and --chunk-size, evaluate fewer examples (--limit), or use "
    "--device cpu",
    "sample": "draw fewer samples (--n)",
}


def _out_of_memory(e):
    """True for torch's out-of-memory error (CPU allocations raise a RuntimeError that says so): not
    a bug."""
    torch = sys.modules.get(
        "torch"
    )  # not imported here: if the command never loaded torch, this is no torch error
    if torch is None:
        return False
    return isinstance(e, torch.OutOfMemoryError) or (
        type(e) is RuntimeError and "DefaultCPUAllocator: can't allocate memory" in str(e)
    )


def _usage_error(parser, command, message):
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[
        command
    ]
    try:
        sub.error(message)
    except SystemExit as e:
        return e.code


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that training stops the way Ctrl-C stops it (and
    saves)."""


class _Stopped(Exception):
    """Training stopped by a signal after saving: the message for stderr and the exit status."""

    def __init__(self, message, code):
        super().__init__(message)
        self.message, self.code = message, code


def _raise_terminated(signum, frame):
    raise _Terminated()


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT and SIGTERM while a file is written; they arrive (and stop the run) right after
    it.

    Python-level handlers note the signal and the previous handler runs once the write is done.
    (Blocking the signals with pthread_sigmask in the main thread alone let the kernel hand a Ctrl-C
    to one of torch's worker threads, and about one run in eight then finished as if never
    interrupted.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    old = {
        s: signal.signal(s, lambda signum, frame: caught.append(signum))
        for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if caught:
            handler = old[caught[0]]
            if callable(handler):
                handler(
                    caught[0], None
                )  # default_int_handler raises KeyboardInterrupt; cmd_train's raises _Terminated
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), caught[0])


# -- train
# ------------------------------------------------------------------------------------------


def cmd_train(args):
    with contextlib.ExitStack() as held:  # the run folder's lock, for the run's lifetime
        args.lock_run = lambda out, option: _lock_run(held, out, option)
        if args.resume is not None and args.resume.strip() and Path(args.resume).is_dir():
            args.lock_run(Path(args.resume), "--resume")  # before its checkpoint is read
        if threading.current_thread() is not threading.main_thread():
            return _train(args)
        old = signal.signal(
            signal.SIGTERM, _raise_terminated
        )  # SIGTERM stops training like Ctrl-C: it saves first
        try:
            return _train(args)
        finally:
            signal.signal(signal.SIGTERM, old)


def _lock_run(held, out, option):
    """One run per output folder: lock `out` until the run ends; a live run's lock is an error
    naming its pid."""
    from vaelib import _atomic

    if getattr(held, "locked", None) == out.resolve():
        return
    try:
        held.enter_context(_atomic.lock_directory(out))
    except _atomic.Locked as e:
        who = f"pid {e.pid}" if e.pid is not None else "another process"
        raise CLIError(
            f"{option} {out}: another training run ({who}) is writing to this folder; wait for it "
            f"to finish or stop it (kill {e.pid if e.pid is not None else 'PID'}), or choose "
            "another --out"
        ) from None
    held.locked = out.resolve()


def _option(key):
    return "--" + key.replace("_", "-")


def _out_dir(text, option="--out"):
    """The output directory, created if missing and checked writable now, before any training."""
    if not text.strip():
        raise CLIError(f"{option} must name a directory, got {text!r}")
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise CLIError(f"{option} {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise CLIError(f"{option} {out} is not a writable directory ({e.strerror or e})") from None
    return out


def _settings(args):
    """(settings, checkpoint or None, out): the run's settings, fresh or from the checkpoint of
    --resume."""
    from vaelib import checkpoints

    explicit = {k: getattr(args, k) for k in TRAIN_DEFAULTS if getattr(args, k) is not None}
    if "hidden" in explicit:
        explicit["hidden"] = [h for group in explicit["hidden"] for h in group]
    if "image_shape" in explicit:
        explicit["image_shape"] = list(explicit["image_shape"])
    if "data" in explicit:
        if not explicit["data"].strip():
            raise CLIError("--data must name an .npz file, got ''")
        explicit["data"] = str(Path(explicit["data"]).resolve())
    if args.resume is None:
        if args.out is None:
            raise CLIError("give --out DIR for a new run, or --resume DIR to continue one")
        if not args.out.strip():
            raise CLIError(f"--out must name a directory, got {args.out!r}")
        settings = dict(TRAIN_DEFAULTS, **explicit)
        if settings["data"] is not None:
            settings["dataset"] = None
        scaled = LIKELIHOODS.scale(settings["likelihood"]) is not None
        if not scaled and (
            "sigma_x" in explicit
            or "sigma_x_floor" in explicit
            or explicit.get("learn_sigma_x")
            or explicit.get("sigma_x_per_pixel")
        ):
            with_scale = " or ".join(
                f"--likelihood {n}" for n in LIKELIHOODS.names() if LIKELIHOODS.scale(n)
            )
            raise CLIError(
                f"--sigma-x and --learn-sigma-x need {with_scale} (a "
                f"{settings['likelihood'].capitalize()} "
                "likelihood has no sigma_x)"
            )
        if settings["learn_sigma_x"] is None:  # the Python default: vaelib.models._sigma_x_rule
            given = settings["sigma_x"] is not None
            settings["learn_sigma_x"] = (
                False
                if given or not scaled
                else (
                    "optimal"
                    if LIKELIHOODS.get(settings["likelihood"]).has_optimal_scale()
                    else True
                )
            )
        settings["sigma_x_per_pixel"] = bool(settings["sigma_x_per_pixel"])
        if settings["model"] != "vae" and settings["prior"] != "normal":
            raise CLIError(
                f"--prior {settings['prior']} needs --model vae (an autoencoder has no prior)"
            )
        if settings["prior_components"] is not None and settings["prior"] == "normal":
            raise CLIError(
                "--prior-components needs a learned --prior ("
                + " or ".join(n for n in PRIORS.names() if n != "normal")
                + "); the default prior N(0, I) has no components"
            )
        return settings, None, Path(args.out)
    if args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve():
        raise CLIError(
            f"--resume {args.resume} writes into that directory; leave out --out (got {args.out})"
        )
    if not args.resume.strip():
        raise CLIError("--resume must name a directory, got ''")
    path = Path(args.resume) / "model.pt"
    if not path.is_file():
        raise CLIError(f"--resume {args.resume}: no model.pt there to continue")
    ck = checkpoints.load_checkpoint(path, with_state=True)
    saved = (ck.metadata or {}).get("train_args")
    if isinstance(saved, dict):
        saved = {**TRAIN_FILLS, **saved}  # a run saved before a setting existed had its default
    if not isinstance(saved, dict) or set(saved) != set(TRAIN_DEFAULTS):
        raise CLIError(
            f"{path} does not record the settings of a 'python -m vaelib train' run, so --resume "
            f"cannot "
            "continue it; resume it in Python with vaelib.train.fit(model, x, epochs, "
            "history=checkpoint.history)"
        )
    moved = _moved_data(explicit, saved, ck.metadata, path)
    for key, value in explicit.items():
        if key == "data" and moved:
            continue  # the same bytes at another path: compared by SHA-256 below, in _train
        if key not in RESUME_MAY_CHANGE and value != saved[key]:
            raise CLIError(
                f"{_option(key)} {value} differs from the run's {saved[key]}: --resume continues a "
                f"run "
                "with its own settings (only --epochs, --lr, --device, --checkpoint-every and "
                "--no-progress may change)"
            )
    settings = dict(saved, **{k: explicit[k] for k in RESUME_MAY_CHANGE if k in explicit})
    if moved:
        settings["data"] = explicit["data"]
    elif isinstance(settings["data"], str) and not Path(settings["data"]).is_file():
        raise CLIError(
            f"--resume {args.resume}: the run's data file {settings['data']} is not there any "
            "more; if it moved, pass its new path with --data (it must have the same SHA-256)"
        )
    return settings, ck, Path(args.resume)


def _moved_data(explicit, saved, metadata, path):
    """True when --data names another path than the run's file but with the recorded SHA-256 (a
    moved or copied file): --resume compares the bytes, not the paths."""
    new, old = explicit.get("data"), saved.get("data")
    if new is None or not isinstance(old, str) or new == old:
        return False
    recorded = (metadata or {}).get("data_sha256")
    if not Path(new).is_file():
        raise CLIError(f"--data {new}: no such file")
    actual = _file_sha256(new)
    if actual != recorded:
        raise CLIError(
            f"--data {new} is not the run's data: its SHA-256 is {actual}, {path} records "
            f"{recorded} (for {old}); --resume continues a run on the same data"
        )
    return True


def _train(args):
    import torch

    from vaelib import checkpoints, data, train

    settings, ck, out = _settings(args)
    device = train.resolve_device(args.device)
    if settings["data"] is not None:
        x, _, file_shape = _load_npz(settings["data"], settings["likelihood"])
        del _  # x_test: training keeps one copy of the data
        source, data_sha256 = Path(settings["data"]).name, _file_sha256(settings["data"])
        if ck is not None and data_sha256 != ck.metadata.get("data_sha256"):
            raise CLIError(
                f"--resume: {settings['data']} changed since the run started (its SHA-256 is "
                f"{data_sha256}, the checkpoint records {ck.metadata.get('data_sha256')}); "
                "resuming on other data would not continue the same run"
            )
    else:
        x, _ = data.load(settings["dataset"], "train")  # (N, D) in [0, 1]
        source, data_sha256, file_shape = settings["dataset"], None, None
    image_shape = _image_shape(settings["image_shape"] or file_shape, x.shape[1], "--image-shape")
    if settings["valid_size"] >= x.shape[0]:
        raise CLIError(
            f"--valid-size {settings['valid_size']} must be smaller than the {x.shape[0]} training "
            f"examples"
        )
    valid_x = None
    if settings["valid_size"]:
        order = torch.randperm(
            x.shape[0], generator=torch.Generator().manual_seed(settings["seed"])
        )
        valid_x, x = x[order[: settings["valid_size"]]], x[order[settings["valid_size"] :]]

    if ck is None:
        if LIKELIHOODS.scale(settings["likelihood"]) is not None and settings["sigma_x"] is None:
            # sigma_x of the best constant decoder (the mean image): sqrt(mean_d Var(x_d)). Starting
            # at 1 on [0, 1] pixels the KL wins before sigma_x can shrink (no active unit after the
            # default 10 epochs on digits).
            spread = x.double().var(0, correction=0).mean().sqrt().item()
            settings["sigma_x"] = float(f"{spread:.4g}") if spread > 0 else 1.0
        model = _build_model(settings, x.shape[1])
        out = _out_dir(str(out))
        getattr(args, "lock_run", lambda *_: None)(out, "--out")
        if (out / "model.pt").exists() and not args.overwrite:
            raise CLIError(
                f"{out / 'model.pt'} exists: continue that run with --resume {out}, or start "
                f"afresh with "
                "--overwrite (or another --out)"
            )
        done, state = 0, {}
    else:
        model = ck.model
        out = _out_dir(str(out), "--resume")
        done = len((ck.history or {}).get("epoch", []))
        state = dict(history=ck.history)  # carries the optimizer and generator state
    epochs = max(0, settings["epochs"] - done)
    metadata = {
        "dataset": settings["dataset"],
        "data": settings["data"],
        "data_sha256": data_sha256,
        "image_shape": image_shape,
        "seed": settings["seed"],
        "valid_size": settings["valid_size"],
        "train_args": settings,
    }
    path = out / "model.pt"

    def save(model, history):
        with _signals_deferred():
            checkpoints.save_checkpoint(path, model, history=history, metadata=metadata)
            _write_text(out / "history.json", json.dumps(dict(history), indent=1) + "\n")

    def every(model, history):
        if args.checkpoint_every and history["epoch"][-1] % args.checkpoint_every == 0:
            save(model, history)

    hidden = "-".join(map(str, settings["hidden"]))
    what = (
        f"{type(model).__name__} {x.shape[1]}-{hidden}-{settings['latent_dim']} "
        f"({_likelihood_text(model)}{_prior_text(model)})"
    )
    action = f"resuming {what} at epoch {done}" if ck is not None else f"training {what}"
    print(
        f"{action} on {source}: {x.shape[0]} examples, {epochs} epochs, device {device}", flush=True
    )
    try:
        history = train.fit(
            model,
            x,
            epochs,
            batch_size=settings["batch_size"],
            lr=settings["lr"],
            seed=settings["seed"],
            device=device,
            valid_x=valid_x,
            progress=not args.no_progress,
            beta=settings["beta"],
            warmup_epochs=settings["warmup_epochs"],
            objective=settings["objective"],
            K=settings["K"],
            on_epoch_end=every,
            **state,
        )
    except KeyboardInterrupt as e:
        history = getattr(e, "history", None)
        if history is None:
            raise
        save(model, history)
        n = history["epoch"][-1] if history["epoch"] else 0
        how, code = (
            ("terminated (SIGTERM)", 128 + 15)
            if isinstance(e, _Terminated)
            else ("interrupted", 130)
        )
        raise _Stopped(
            f"vaelib: {how}; saved the state after epoch {n} to {path}; continue with: "
            f"{_prog()} train --resume {out}",
            code,
        ) from None
    except FloatingPointError as e:
        save(model, e.history)
        n = e.history["epoch"][-1] if e.history["epoch"] else 0
        first = str(e).split("; the model is back")[0]
        raise CLIError(
            f"{first}; saved the last finite state (after epoch {n}) to {path}; continue with a "
            f"lower "
            f"learning rate: {_prog()} train --resume {out} --lr {settings['lr'] / 10:g}"
        ) from None
    save(model, history)
    _plot_history(history, out / "training_curve.png", f"{type(model).__name__} on {source}")
    if history["epoch"]:
        key = "elbo" if "elbo" in history else "log_px_z"
        label = "train ELBO" if key == "elbo" else "train log p(x|z)"
        print(f"epoch {history['epoch'][-1]}: {label} {history[key][-1]:.3f} nats per example")
    if model.sigma_x is not None:
        print(f"sigma_x: {_sigma_text(model)}")
    print(f"wrote {path}, {out / 'history.json'}, {out / 'training_curve.png'}")


def _build_model(settings, data_dim):
    import torch

    from vaelib import models

    cls = models.VAE if settings["model"] == "vae" else models.Autoencoder
    kwargs = {"likelihood": settings["likelihood"]}
    prior = settings.get("prior", "normal")
    if prior != "normal":
        kwargs["prior"] = prior
        if settings.get("prior_components") is not None:
            kwargs["prior_options"] = {"n_components": settings["prior_components"]}
    if LIKELIHOODS.scale(settings["likelihood"]) is not None:
        per_pixel = settings.get("sigma_x_per_pixel")
        kwargs["sigma_x"] = [settings["sigma_x"]] * data_dim if per_pixel else settings["sigma_x"]
        kwargs["learn_sigma_x"] = settings["learn_sigma_x"]
        kwargs["sigma_x_floor"] = settings.get("sigma_x_floor")
    from vaelib import _memory

    _memory.check(
        "--hidden",
        _memory.mlp_bytes(data_dim, settings["latent_dim"], settings["hidden"]),
        f"a model {data_dim}-{'-'.join(map(str, settings['hidden']))}-{settings['latent_dim']} "
        "with its gradients and Adam state",
        "lower --hidden (and --latent-dim)",
    )
    torch.manual_seed(settings["seed"])  # the initial weights
    return cls(data_dim, settings["latent_dim"], settings["hidden"], **kwargs)


def _prior_text(model):
    """', prior vamp (500 components)' for a learned prior; '' for N(0, I) and an autoencoder."""
    name = model.config.get("prior", "normal")
    if name == "normal":
        return ""
    n = model.config.get("prior_options", {}).get("n_components")
    return f", prior {name}" + (f" ({n} components)" if n is not None else "")


def _likelihood_text(model):
    if model.sigma_x is None:
        return model.likelihood
    learned = model.config.get("learn_sigma_x", False)
    if learned == "optimal":
        shared = "per pixel" if isinstance(model.config["sigma_x"], list) else "shared"
        return (
            f"{model.likelihood}, sigma_x {shared} at its closed-form optimum per batch, floor "
            f"{model.sigma_x_floor:.4g}"
        )
    return (
        f"{model.likelihood}, sigma_x "
        f"{'learned from ' if learned else ''}{_sigma_text(model, initial=True)}"
    )


def _sigma_text(model, initial=False):
    value = model.config["sigma_x"] if initial else model.sigma_x
    if isinstance(value, (list, tuple)) or hasattr(value, "shape"):
        values = list(value) if not hasattr(value, "tolist") else value.tolist()
        return f"per pixel, in [{min(values):.4g}, {max(values):.4g}]"
    return f"{value:.4g}"


def _image_shape(shape, data_dim, option):
    """[H, W] with H W = data_dim: the given shape, else the square one, else None (no image
    grids)."""
    from vaelib.plotting import resolve_image_shape

    try:
        return list(resolve_image_shape(data_dim, shape))
    except ValueError:
        if shape is None:
            return None
        h, w = shape
        raise CLIError(
            f"{option} {h} {w} has {h * w} pixels but the data have {data_dim} per example"
        ) from None


def _file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_npz(path, likelihood):
    """vaelib.data.load_npz, its errors as CLIErrors, and the range a likelihood needs checked."""
    from vaelib import data

    try:
        x_train, x_test, image_shape = data.load_npz(path)
    except (ValueError, OSError) as e:
        raise CLIError(f"--data {e}") from None
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        if (
            x is not None
            and LIKELIHOODS.get(likelihood).unit_interval
            and (x.min() < 0 or x.max() > 1)
        ):
            raise CLIError(
                f"--data {Path(path)}: {name} has values in [{x.min():.4g}, {x.max():.4g}]; "
                f"--likelihood "
                f"{likelihood} needs [0, 1] (rescale the data or use a likelihood for real values, "
                f"e.g. "
                "--likelihood gaussian)"
            )
    return x_train, x_test, image_shape


def _write_text(path, text):
    from vaelib._atomic import atomic_write

    atomic_write(path, lambda f: f.write(text), mode="w")


def _save_figure(fig, path):
    from vaelib._atomic import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, format="png", metadata={"Software": None}))


def _plot_history(history, path, title):
    """Training curve: ELBO, reconstruction term (and validation ELBO) and KL per epoch, in nats per
    example."""
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
            ax.plot(
                epoch,
                series("log_px_z"),
                marker="o",
                label="reconstruction E_q[log p(x|z)] (train)",
            )
            if "valid_elbo" in history:
                ax.plot(epoch, series("valid_elbo"), marker="o", label="ELBO (validation)")
            ax.set_title(f"{title}: ELBO")
            ax.set_ylabel("nats per example")
            ax_kl.plot(
                epoch, series("kl"), marker="o", color="C2", label="KL(q(z|x) || p(z)) (train)"
            )
            ax_kl.set_title("KL term")
            ax_kl.set_ylabel("nats per example")
            axes = (ax, ax_kl)
        else:
            fig = Figure(figsize=(6.4, 4))
            ax = fig.subplots()
            ax.plot(epoch, series("log_px_z"), marker="o", label="log p(x|z) (train)")
            if "valid_log_px_z" in history:
                ax.plot(
                    epoch, series("valid_log_px_z"), marker="o", label="log p(x|z) (validation)"
                )
            ax.set_title(f"{title}: reconstruction log-likelihood")
            ax.set_ylabel("nats per example")
            axes = (ax,)
        for a in axes:
            a.set_xlabel("epoch")
            a.legend()
        _save_figure(fig, path)


# -- evaluate
# ---------------------------------------------------------------------------------------


def _load(path):
    from vaelib import checkpoints

    return checkpoints.load_checkpoint(path, with_state=True)


def _evaluation_data(args, metadata, likelihood):
    """(x, description): the split to evaluate, from --data/--dataset or else what the checkpoint
    records."""
    from vaelib import data

    if args.data is None and args.dataset is None:
        recorded = metadata.get("data")
        if isinstance(recorded, str):
            if not Path(recorded).is_file():
                raise CLIError(
                    f"{args.checkpoint} was trained on {recorded}, which is not there any more; "
                    "pass --data FILE.npz or --dataset"
                )
            args.data = recorded
        elif metadata.get("dataset") in DATASETS:
            args.dataset = metadata["dataset"]
        else:
            raise CLIError(
                f"{args.checkpoint} does not record its dataset; pass --dataset "
                f"{{{','.join(DATASETS)}}} "
                "or --data FILE.npz"
            )
    if args.dataset is not None:
        x, _ = data.load(args.dataset, args.split)
        return x, args.dataset
    _check_data_hash(args, metadata)
    x_train, x_test, _ = _load_npz(args.data, likelihood)
    if args.split == "test" and x_test is None:
        raise CLIError(f"{args.data} has no x_test array; evaluate on --split train or add x_test")
    return (x_test if args.split == "test" else x_train), Path(args.data).name


def _check_data_hash(args, metadata):
    """The --data file must be the one the checkpoint was trained on when it is that file (by path
    or by default): compare its SHA-256 with the recorded one. Another file is evaluated with a
    note."""
    recorded, trained_on = metadata.get("data_sha256"), metadata.get("data")
    if not isinstance(recorded, str) or not Path(args.data).is_file():
        return
    actual = _file_sha256(args.data)
    if actual == recorded:
        return
    same_path = (
        isinstance(trained_on, str) and Path(args.data).resolve() == Path(trained_on).resolve()
    )
    if same_path:
        raise CLIError(
            f"--data {args.data} changed since {args.checkpoint} was trained on it: its SHA-256 is "
            f"{actual}, the checkpoint records {recorded}; restore the training file, or evaluate "
            "on a copy of the new data at another path"
        )
    print(
        f"note: {args.data} is not the file the model was trained on (SHA-256 {actual[:12]}..., "
        f"training file {recorded[:12]}...)",
        file=sys.stderr,
    )


def cmd_evaluate(args):
    import torch

    from vaelib import evaluate, models, train

    ckpt = _load(args.checkpoint)
    model = ckpt.model
    device = train.resolve_device(args.device)
    x, dataset = _evaluation_data(args, ckpt.metadata or {}, model.likelihood)
    if args.limit is not None:
        x = x[: args.limit]
    if x.shape[1] != model.data_dim:
        raise CLIError(
            f"the model expects data_dim {model.data_dim} but {dataset} has {x.shape[1]} values "
            f"per example"
        )
    model.to(device)
    note = ""
    levels = None
    if LIKELIHOODS.get(model.likelihood).binarize:
        x = torch.bernoulli(
            x, generator=torch.Generator().manual_seed(args.seed)
        )  # one fixed binarization
        note = f", binarized once with seed {args.seed}"
        scale = "bits/dim: -log2 p per binary pixel (of the binarized data)"
    elif args.dequantize:
        from vaelib import data

        x, levels = data.dequantize(x, generator=torch.Generator().manual_seed(args.seed)), 256
        note = f", dequantized once as (k + u) / 256 with seed {args.seed}"
        scale = "bits/dim: on the discrete 8-bit scale (the density's nats + D log 256)"
    else:
        scale = (
            "bits/dim: of a density on the data's own scale, not of 8-bit pixel levels (it can "
            "be negative; for 8-bit images pass --dequantize for the discrete 8-bit scale)"
        )
    D = model.data_dim
    print(
        f"checkpoint: {args.checkpoint} ({type(model).__name__}, "
        f"{'-'.join(map(str, [D, *(model.hidden_dims or []), model.latent_dim]))}, "
        f"{_likelihood_text(model)})"
    )
    print(f"data: {dataset} {args.split} split, {x.shape[0]} examples{note}")
    print(scale)

    def report(name, values):
        mean = values.mean().item()
        sem = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
        bpd = evaluate.bits_per_dim(mean, D, levels=levels)
        print(
            f"{name}: {mean:.3f} nats per example (+- {sem:.3f} standard error over examples; "
            f"{bpd:.4f} bits/dim)"
        )

    gen = torch.Generator(device=device).manual_seed(args.seed)
    if isinstance(model, models.Autoencoder):
        from vaelib.networks import eval_mode

        with torch.no_grad(), eval_mode(model):
            values = torch.cat(
                [
                    model.reconstruction_log_likelihood(xb.to(device))
                    for xb in x.split(args.batch_size)
                ]
            )
        report("reconstruction log p(x|z)", values.cpu())
        print("an autoencoder has no prior: no ELBO or log-likelihood to report")
        return
    report(
        f"{args.split} ELBO",
        evaluate.test_elbo(model, x, batch_size=args.batch_size, generator=gen),
    )
    iwae = evaluate.iwae_log_likelihood(
        model,
        x,
        K=args.K,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        generator=gen,
        progress=not args.no_progress,
    )
    report(f"IWAE log-likelihood (K={args.K})", iwae)


# -- sample
# -----------------------------------------------------------------------------------------


def cmd_sample(args):
    import numpy as np
    import torch

    from vaelib import models
    from vaelib.plotting import make_grid

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise CLIError(f"--out must name a .png file, got {out}")
    if not out.parent.is_dir():
        raise CLIError(f"--out {out}: directory {out.parent} does not exist")
    ckpt = _load(args.checkpoint)
    model = ckpt.model
    if not isinstance(model, models.VAE):
        raise CLIError(
            f"{args.checkpoint} holds an {type(model).__name__}, which has no prior to sample "
            f"from; use a VAE"
        )
    recorded = (ckpt.metadata or {}).get("image_shape")
    shape = args.image_shape or (
        recorded if isinstance(recorded, list) and len(recorded) == 2 else None
    )
    shape = _image_shape(shape, model.data_dim, "--image-shape")
    if shape is None:
        raise CLIError(
            f"cannot show data_dim {model.data_dim} as square images (not a perfect square) and "
            f"the "
            "checkpoint records no image shape; pass --image-shape H W"
        )
    height, width = shape
    images = model.sample(args.n, generator=torch.Generator().manual_seed(args.seed))  # (n, D)
    outside = ((images < 0) | (images > 1)).double().mean().item()
    if outside > 0:  # a Gaussian decoder's means are not confined to [0, 1]: say so, never silently
        print(
            f"note: {outside:.1%} of the pixel values lie outside [0, 1] (range "
            f"[{images.min().item():.3g}, {images.max().item():.3g}]); drawn at the ends of the "
            "colour range [0, 1]"
        )
    grid = make_grid(images.clamp(0, 1), (height, width))  # NaN between the images
    grid = np.nan_to_num(
        np.pad(grid, 1, constant_values=np.nan), nan=0.0
    )  # white borders (value 0), outside too
    scale = max(1, math.ceil(256 / grid.shape[1]))  # at least ~256 pixels wide
    grid = np.kron(grid, np.ones((scale, scale)))
    _save_image(grid, out)
    print(f"wrote {args.n} samples ({height}x{width}) to {out}")


def _save_image(grid, path):
    import matplotlib.image

    from vaelib._atomic import atomic_write

    # the series' convention (vaelib.plotting): dark ink on white, value 0 white and 1 black
    atomic_write(
        path,
        lambda f: matplotlib.image.imsave(f, grid, cmap="gray_r", vmin=0.0, vmax=1.0, format="png"),
    )


if __name__ == "__main__":
    sys.exit(main())
