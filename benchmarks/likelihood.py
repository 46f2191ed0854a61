"""Train one VAE under a density-estimation protocol and write its test NLL to a JSON file.

The run only; `benchmarks/likelihood_report.py` turns the JSON files of several seeds into the
tables and the curve in RESULTS.md.

Two protocols (--protocol), the same data split and the same evaluation:
  - "ours" (default): Adam with a cosine learning rate from --lr to --lr-final over --epochs epochs
    (set before each epoch, never from the wall-clock), linear KL warm-up from 0 over
    --warmup-epochs, PyTorch's default initialisation, exact Bernoulli log-likelihood from logits;
    the epoch with the best validation ELBO is kept.
  - "reference": the training choices of the published number's code
    (github.com/sajadn/Exemplar-VAE, density_estimation.py), as a control: AdamNormGrad (each
    parameter tensor's gradient divided by its L2 norm + 1e-7, then Adam) at a constant 5e-4,
    He-normal initial weights N(0, 2 / fan_in), KL weight min(1, epoch / 100), early stopping with
    patience 50 (not counted during the warm-up) up to 2000 epochs, Bernoulli probabilities clamped
    to [1e-5, 1 - 1e-5], validation set binarized by their numpy seed-777 draw.
    --as-ours CHOICE[,CHOICE...] sets some of these back to ours (see AS_OURS): a run with one
    choice set back, read against the control run of the same seed, measures what that choice
    moves (lr: the run with stopping,lr read against the run with stopping).
Both: the first 50,000 training images train (binarized afresh for every minibatch or epoch), the
last 10,000 validate. Architecture "gated" (the reference's): 784-300-300-40 gated dense layers,
h = (W x + b) * sigmoid(V x + c), encoder log-variance bounded to [-6, 2] by a hardtanh; "mlp" is
vaelib's ReLU MLP.

Evaluation of the kept model: test NLL = -log p(x) with K = --k importance samples from the encoder
(`vaelib.evaluate.iwae_log_likelihood`) on all 10,000 test images of the first draw of
--binarizations, then with K = --spread-k on each draw (the binarization spread; 0: every draw at
--k). Draws: "reference777" is the reference's own draw (numpy RandomState(777), the validation set
drawn first, then the test set, as their loader does), "torch12345" the draw of our earlier runs,
"numpyS" a fresh numpy RandomState(S) draw. Saved block by block (1000 images), so a stopped
evaluation resumes. Nats per image.

--prior vamp (or mog) trains the same model with a learned prior (`vaelib.priors`): the VampPrior
with --prior-components pseudo-inputs (default 500, Tomczak & Welling 2018), everything else as
above, so its row compares with the Gaussian-prior row under one protocol.

Every --curve-every epochs the test NLL on the first --curve-images test images (K = --curve-k, draw
torch12345) is added to the curve, and the JSON and a checkpoint are saved, so a stopped run resumes
where it was (--resume, with the run's own settings: any other setting but --threads is refused by
name). One process at a time writes a run folder: a second one on a live run's folder is refused.

Examples (the RESULTS.md rows; the control run; a smoke test; MNIST exits with a message when its
files are absent):

    python benchmarks/likelihood.py --seed 0 --out /tmp/lk/seed0
    python benchmarks/likelihood.py --protocol reference --seed 0 --out /tmp/lk/ref0
    python benchmarks/likelihood.py --protocol reference --as-ours stopping --out /tmp/lk/s0
    python benchmarks/likelihood.py --seed 0 --epochs 2 --train-limit 1000 --k 50 --test-limit 200 \
        --out /tmp/lk-smoke
    python benchmarks/likelihood.py --dataset mnist ...
"""

import argparse
import copy
import datetime
import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _runs import AS_OURS, fill_defaults
from torch import nn

from vaelib import _atomic, checkpoints, data, evaluate, train
from vaelib.models import VAE
from vaelib.registry import PRIORS

CURVE_BINARIZATION = (
    "torch12345"  # the draw of the curve points (and of the runs before the multi-draw evaluation)
)
BINARIZATIONS = ("reference777", "torch12345", "numpy1", "numpy2", "numpy3")
N_VALID = 10000
BLOCK = 1000  # test images per saved evaluation block
PROB_CLAMP = 1e-5  # the reference clamps Bernoulli probabilities to [1e-5, 1 - 1e-5]
REFERENCE = {"lr": 5e-4, "warmup_epochs": 100, "patience": 50, "max_epochs": 2000, "save_every": 10}


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


class ClampLogits(nn.Module):
    """Logits clamped to +-logit(1 - eps): the same as clamping the probabilities to [eps, 1 -
    eps]."""

    def __init__(self, eps):
        super().__init__()
        self.bound = math.log((1 - eps) / eps)

    def forward(self, logits):
        return logits.clamp(-self.bound, self.bound)


def build_model(
    kind,
    data_dim,
    hidden,
    latent_dim,
    protocol="ours",
    prior="normal",
    prior_components=None,
    as_ours=(),
):
    """The VAE of configuration `kind` ("gated" or "mlp"), Bernoulli decoder; seed torch before
    calling.

    protocol "reference": every Linear weight drawn He-normal, N(0, 2 / fan_in) (biases keep
    PyTorch's default), and the decoder's probabilities clamped to [1e-5, 1 - 1e-5]; as_ours
    "init" and "clamp" leave out the one or the other.
    prior: p(z) by its name in vaelib.registry.PRIORS ("vamp": the VampPrior, whose parameters are
    its pseudo-inputs); prior_components: its number of components (None: the prior's default,
    500 pseudo-inputs for "vamp", as in Tomczak & Welling 2018)."""
    prior_kw = {"prior": prior}
    if prior_components is not None:
        prior_kw["prior_options"] = {"n_components": prior_components}
    if kind == "mlp":
        model = VAE(data_dim, latent_dim, hidden, likelihood="bernoulli", **prior_kw)
    else:
        sizes = (latent_dim, *hidden)
        layers = [GatedDense(a, b) for a, b in zip(sizes[:-1], sizes[1:])] + [
            nn.Linear(sizes[-1], data_dim)
        ]
        if protocol == "reference" and "clamp" not in as_ours:
            layers.append(ClampLogits(PROB_CLAMP))
        model = VAE(
            data_dim,
            latent_dim,
            likelihood="bernoulli",
            encoder=GatedEncoder(data_dim, hidden, latent_dim),
            decoder=nn.Sequential(*layers),
            **prior_kw,
        )
    if protocol == "reference" and "init" not in as_ours:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.Linear):
                    m.weight.normal_(0.0, math.sqrt(2.0 / m.in_features))
    return model


class AdamNormGrad(torch.optim.Optimizer):
    """Adam on normalised gradients: g <- g / (||g||_2 + 1e-7) for each parameter tensor, then the
    Adam update with bias correction (Kingma & Ba 2015, alg. 1). The reference's optimizer, as its
    code describes it."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad / (torch.linalg.vector_norm(p.grad) + 1e-7)
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float64)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"].item()
                state["exp_avg"].mul_(beta1).add_(g, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                step_size = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                p.addcdiv_(
                    state["exp_avg"],
                    state["exp_avg_sq"].sqrt().add_(group["eps"]),
                    value=-step_size,
                )


def cosine_lr(epoch, epochs, lr, lr_final):
    """Learning rate of epoch `epoch` (1-based) of `epochs`: lr at the first, lr_final at the
    last."""
    fraction = (epoch - 1) / max(epochs - 1, 1)
    return lr_final + 0.5 * (lr - lr_final) * (1.0 + math.cos(math.pi * fraction))


def _unit_float64(x):
    """(N, D) float32 k/255 -> float64 k/255, the values the reference's numpy loader binarizes."""
    return np.rint(x.double().numpy() * 255.0) / 255.0


def _draw_seed(name):
    """ "torchS" / "numpyS" -> ("torch" / "numpy", S); "reference777" -> ("reference", 777)."""
    for kind in ("torch", "numpy", "reference"):
        if (
            name.startswith(kind)
            and name[len(kind) :].isdigit()
            and (kind != "reference" or name == "reference777")
        ):
            return kind, int(name[len(kind) :])
    raise SystemExit(
        f"unknown binarization {name!r}; expected reference777, torchS or numpyS (S a number)"
    )


def binarize(name, x_test, x_valid):
    """(N, D) float32 binarized test set of draw `name` (see the module docstring); x_valid (10000,
    D) in [0, 1]."""
    kind, seed = _draw_seed(name)
    if kind == "torch":
        return torch.bernoulli(x_test, generator=torch.Generator().manual_seed(seed))
    rs = np.random.RandomState(seed)
    if kind == "reference":
        rs.binomial(
            1, _unit_float64(x_valid)
        )  # their loader draws the validation set first from the same stream
    return torch.from_numpy(rs.binomial(1, _unit_float64(x_test)).astype(np.float32))


def reference_valid(x_valid):
    """The reference's validation set: numpy RandomState(777) draw of the last 10,000 training
    images."""
    return torch.from_numpy(
        np.random.RandomState(777).binomial(1, _unit_float64(x_valid)).astype(np.float32)
    )


def fit_valid_draw(x_valid, seed):
    """The validation set as `vaelib.train.fit(..., seed=seed)` binarizes it: one fixed torch draw
    from the seed's derived "valid" stream (what protocol ours validates on)."""
    return train._validation_draw(x_valid, True, seed, torch.device("cpu"), x_valid.dtype)[0]


def _block_seed(seed, name, start):
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}/{start}".encode()).digest()[:7], "big")


def block_tag(key, name, K):
    """The name in the block seeds of one evaluation pass: the draw's name for the headline pass
    (key "binarizations"), "name/K{K}" for the spread pass (key "spread"), so the two passes over
    one draw use different importance samples."""
    return name if key == "binarizations" else f"{name}/K{K}"


def run_config(args):
    """The settings saved in a run's likelihood.json: every option but the ones that only steer
    this invocation (--resume, --stop-after) and the draws (kept per draw in "final")."""
    return {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("resume", "binarizations", "stop_after")
    }


# Settings a resumed run may change: they move where and how fast it runs, not its numbers.
RESUME_FREE = ("threads", "out")


def resume_conflicts(saved, now):
    """["name: saved A, now B", ...] for each setting (other than RESUME_FREE) in which the
    configuration `now` of a --resume differs from the run's `saved` one."""
    return [
        f"{k.replace('_', '-')}: saved {saved.get(k)!r}, now {now[k]!r}"
        for k in now
        if k not in RESUME_FREE and saved.get(k) != now[k]
    ]


def cpu_model():
    """The processor's model name (BLAS kernels, hence the last bits of every result, differ between
    models)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def log(msg):
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


def write_json(path, obj):
    _atomic.atomic_write(path, lambda f: json.dump(obj, f, indent=1), mode="w")


def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    p.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "mnist"))
    p.add_argument("--protocol", default="ours", choices=("ours", "reference"))
    p.add_argument(
        "--as-ours",
        default="",
        metavar="CHOICE[,CHOICE]",
        help="protocol reference only: set these training choices back to ours ("
        + "; ".join(f"{k}: {v}" for k, v in AS_OURS.items())
        + ")",
    )
    p.add_argument("--model", default="gated", choices=("gated", "mlp"))
    p.add_argument("--hidden", default="300,300", help="hidden widths (default 300,300)")
    p.add_argument("--latent-dim", type=int, default=40)
    p.add_argument(
        "--prior",
        default="normal",
        choices=PRIORS.names(),
        help="p(z): " + PRIORS.choices_help("normal"),
    )
    p.add_argument(
        "--prior-components",
        type=int,
        default=None,
        metavar="C",
        help="components of a mixture prior (default: 500 pseudo-inputs for vamp, 10 for mog)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs (default 300); protocol reference: the most epochs (default 2000; 300 with "
        "--as-ours stopping)",
    )
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="(first) learning rate (default 1e-3; protocol reference 5e-4, 1e-3 with --as-ours "
        "lr)",
    )
    p.add_argument("--lr-final", type=float, default=1e-5)
    p.add_argument("--warmup-epochs", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=5000, help="importance samples of the final test NLL")
    p.add_argument(
        "--spread-k",
        type=int,
        default=1000,
        help="importance samples of the binarization-spread pass: the first draw is evaluated at "
        "--k, then every draw at --spread-k (0: every draw at --k, no separate pass; default "
        "%(default)s)",
    )
    p.add_argument(
        "--binarizations",
        default=",".join(BINARIZATIONS),
        help="test-set draws to evaluate on, in order (default: %(default)s)",
    )
    p.add_argument(
        "--test-limit",
        type=int,
        default=None,
        help="final evaluation on the first N test images only",
    )
    p.add_argument(
        "--train-limit",
        type=int,
        default=None,
        help="train on the first N of the 50,000 images only (a smoke test)",
    )
    p.add_argument(
        "--curve-every", type=int, default=20, help="a curve point every this many epochs"
    )
    p.add_argument("--curve-k", type=int, default=500)
    p.add_argument("--curve-images", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--out", type=Path, required=True, help="output folder (outside the repository)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="E",
        help="save and stop after epoch E, to be continued with --resume",
    )
    args = p.parse_args(argv)
    args.binarizations = [b for b in args.binarizations.split(",") if b]
    for name in args.binarizations:
        _draw_seed(name)  # an unknown name fails before any training
    reference = args.protocol == "reference"
    args.as_ours = parse_as_ours(args.as_ours, reference, args.model)
    if args.epochs is None:
        args.epochs = (
            REFERENCE["max_epochs"] if reference and "stopping" not in args.as_ours else 300
        )
    if args.lr is None:
        args.lr = REFERENCE["lr"] if reference and "lr" not in args.as_ours else 1e-3
    return args


def parse_as_ours(text, reference, model="gated"):
    """--as-ours "a,b" -> the choices in AS_OURS's order; SystemExit naming what is wrong."""
    names = [n for n in text.split(",") if n]
    if names and not reference:
        raise SystemExit(
            "--as-ours sets choices of the control back to ours: use it with --protocol reference"
        )
    unknown = [n for n in names if n not in AS_OURS]
    if unknown:
        raise SystemExit(
            f"--as-ours: unknown choice {', '.join(map(repr, unknown))}; choose "
            f"from {', '.join(AS_OURS)}"
        )
    if "lr" in names and "stopping" not in names:
        raise SystemExit(
            "--as-ours lr needs stopping too: our cosine learning rate runs over a "
            "fixed number of epochs, which early stopping does not have"
        )
    if "clamp" in names and model != "gated":
        raise SystemExit(
            f"--as-ours clamp: the {model} model never clamps, so there is nothing to set back"
        )
    return [n for n in AS_OURS if n in names]


def control_settings(args):
    """What the control run does, with the choices in args.as_ours set back to ours (the model's
    initial weights and clamp: `build_model`; its validation set: `control_valid`):
    {"optimizer": its class, "beta": epoch -> KL weight, "lr": epoch -> learning rate,
    "early_stopping": whether patience stops the run}; epochs count from 1."""
    ours = set(args.as_ours)
    if "warmup" in ours:
        beta = lambda e: train.kl_weight(e, 1.0, args.warmup_epochs)
    else:
        beta = lambda e: min(1.0, e / REFERENCE["warmup_epochs"])
    if "lr" in ours:
        lr = lambda e: cosine_lr(e, args.epochs, args.lr, args.lr_final)
    else:
        lr = lambda e: args.lr
    return {
        "optimizer": torch.optim.Adam if "optimizer" in ours else AdamNormGrad,
        "beta": beta,
        "lr": lr,
        "early_stopping": "stopping" not in ours,
    }


def control_valid(x_valid, seed, as_ours):
    """The control run's validation set, (N, D) binary: the reference's numpy seed-777 draw of the
    gray images x_valid, or with "valid-draw" in as_ours the draw fit makes for `seed`."""
    return fit_valid_draw(x_valid, seed) if "valid-draw" in as_ours else reference_valid(x_valid)


def train_ours(args, r, out, model, x_train, x_valid, x_curve, build):
    """The cosine-schedule run (protocol "ours"); returns the state dict of the best-validation
    epoch, or None when stopped by --stop-after."""
    json_path, last_path, best_path = out / "likelihood.json", out / "last.pt", out / "best.pt"
    history, best_state = None, None
    if args.resume:
        ck = checkpoints.load_checkpoint(last_path, model=model, with_state=True)
        history = ck.history  # carries the optimizer and generator state
        best_state = copy.deepcopy(
            checkpoints.load_checkpoint(best_path, model=build()).state_dict()
        )
        log(f"resumed at epoch {history['epoch'][-1]}")
    lr_scale = 0.5 ** len(r["events"])

    def curve_point(epoch):
        r["curve"].append(
            {
                "epoch": epoch,
                "nll": curve_nll(args, model, x_curve),
                "valid_elbo": history["valid_elbo"][-1],
            }
        )
        log(
            f"epoch {epoch}: test NLL {r['curve'][-1]['nll']:.2f} (K={args.curve_k}, "
            f"{x_curve.shape[0]} images), "
            f"valid ELBO {history['valid_elbo'][-1]:.2f}, best {r['best']['valid_elbo']:.2f} at "
            f"{r['best']['epoch']}"
        )
        checkpoints.save_checkpoint(last_path, model, history=history)
        best = build()
        best.load_state_dict(best_state)
        checkpoints.save_checkpoint(best_path, best)
        write_json(json_path, r)

    epoch = history["epoch"][-1] if history else 0
    while epoch < args.epochs:
        lr_e = lr_scale * cosine_lr(epoch + 1, args.epochs, args.lr, args.lr_final)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            history = train.fit(
                model,
                x_train,
                1,
                batch_size=args.batch_size,
                lr=lr_e,
                seed=args.seed,
                valid_x=x_valid,
                progress=False,
                warmup_epochs=args.warmup_epochs,
                history=history,
            )
        except FloatingPointError as e:  # fit rolled the model back to the last complete epoch
            lr_scale *= 0.5
            r["events"].append(
                {"epoch": epoch + 1, "error": str(e), "action": f"retried with lr x{lr_scale:g}"}
            )
            log(f"epoch {epoch + 1}: {e}; retrying with the learning rate x{lr_scale:g}")
            if lr_scale < 1e-3:
                raise
            continue
        epoch = history["epoch"][-1]
        r["epochs"].append(
            {
                "epoch": epoch,
                "lr": lr_e,
                "elbo": history["elbo"][-1],
                "kl": history["kl"][-1],
                "valid_elbo": history["valid_elbo"][-1],
                "wall_seconds": time.perf_counter() - t0,
                "cpu_seconds": time.process_time() - c0,
            }
        )
        if r["best"] is None or history["valid_elbo"][-1] > r["best"]["valid_elbo"]:
            r["best"] = {"epoch": epoch, "valid_elbo": history["valid_elbo"][-1]}
            best_state = copy.deepcopy(model.state_dict())
        if epoch % args.curve_every == 0 or epoch == args.epochs or epoch == args.stop_after:
            curve_point(epoch)
        if epoch == args.stop_after:
            log(f"stopped after epoch {epoch}; continue with --resume")
            return None
    if best_state is None:  # resumed after the last epoch: the best model is on disk
        best_state = checkpoints.load_checkpoint(best_path, model=build()).state_dict()
    return best_state


def train_reference(args, r, out, model, x_train, x_valid, x_curve, build):
    """The control run (protocol "reference", see the module docstring): a plain loop with
    AdamNormGrad, the reference's warm-up and early stopping, less the choices in --as-ours. State
    saved every 10 epochs and at stops (state.pt); returns the best state dict, or None when
    stopped by --stop-after."""
    json_path, state_path = out / "likelihood.json", out / "state.pt"
    settings = control_settings(args)
    opt = settings["optimizer"](model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    valid_gen_seed = args.seed + 3
    best_state, patience_count, epoch = None, 0, 0
    if args.resume:
        st = torch.load(state_path, weights_only=True)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        gen.set_state(st["generator"])
        best_state, patience_count, epoch = st["best"], st["patience_count"], st["epoch"]
        log(f"resumed at epoch {epoch}")

    def save(epoch):
        state = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "generator": gen.get_state(),
            "best": best_state,
            "patience_count": patience_count,
            "epoch": epoch,
        }
        _atomic.atomic_write(state_path, lambda f: torch.save(state, f))
        write_json(json_path, r)

    N = x_train.shape[0]
    while epoch < args.epochs and r.get("stopped") is None:
        epoch += 1
        beta_e, lr_e = settings["beta"](epoch), settings["lr"](epoch)
        for g in opt.param_groups:
            g["lr"] = lr_e
        t0, c0 = time.perf_counter(), time.process_time()
        model.train()
        losses = []
        for idx in torch.randperm(N, generator=gen).split(args.batch_size):
            xb = torch.bernoulli(
                x_train[idx], generator=gen
            )  # (B, D) a fresh draw of each minibatch
            opt.zero_grad(set_to_none=True)
            loss = model.loss(xb, beta=beta_e, generator=gen)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        model.eval()
        valid_elbo = (
            evaluate.test_elbo(
                model, x_valid, generator=torch.Generator().manual_seed(valid_gen_seed)
            )
            .mean()
            .item()
        )
        r["epochs"].append(
            {
                "epoch": epoch,
                "lr": lr_e,
                "beta": beta_e,
                "loss": sum(losses) / len(losses),
                "valid_elbo": valid_elbo,
                "wall_seconds": time.perf_counter() - t0,
                "cpu_seconds": time.process_time() - c0,
            }
        )
        if not math.isfinite(valid_elbo):
            r["stopped"] = {"epoch": epoch, "why": "validation ELBO not finite"}
        elif r["best"] is None or valid_elbo > r["best"]["valid_elbo"]:
            r["best"] = {"epoch": epoch, "valid_elbo": valid_elbo}
            best_state = copy.deepcopy(model.state_dict())
            patience_count = 0
        elif settings["early_stopping"]:
            patience_count = 0 if epoch < REFERENCE["warmup_epochs"] else patience_count + 1
            if patience_count > REFERENCE["patience"]:
                r["stopped"] = {
                    "epoch": epoch,
                    "why": f"no better validation ELBO in {REFERENCE['patience']} epochs",
                }
        if epoch % args.curve_every == 0:
            r["curve"].append(
                {"epoch": epoch, "nll": curve_nll(args, model, x_curve), "valid_elbo": valid_elbo}
            )
            log(
                f"epoch {epoch}: test NLL {r['curve'][-1]['nll']:.2f}, valid ELBO "
                f"{valid_elbo:.2f}, best "
                f"{r['best']['valid_elbo']:.2f} at {r['best']['epoch']}, patience {patience_count}"
            )
        if epoch % REFERENCE["save_every"] == 0 or r.get("stopped") or epoch == args.stop_after:
            save(epoch)
        if epoch == args.stop_after and r.get("stopped") is None and epoch < args.epochs:
            log(f"stopped after epoch {epoch}; continue with --resume")
            return None
    save(epoch)
    return best_state


def curve_nll(args, model, x_curve):
    model.eval()
    g = torch.Generator().manual_seed(args.seed)
    return -evaluate.iwae_log_likelihood(model, x_curve, K=args.curve_k, generator=g).mean().item()


def evaluate_draws(args, r, json_path, model, x_test_gray, x_valid_gray):
    """Test ELBO and IWAE NLL of `model`, 1000 images a block, saved after each block.

    The first draw of --binarizations (the headline) at K = --k into final["binarizations"], then
    every draw at K = --spread-k into final["spread"] (the binarization spread: which test set was
    drawn moves every K alike, so a cheaper K measures it); --spread-k 0 puts every draw at --k into
    final["binarizations"]."""
    if args.spread_k and args.spread_k != args.k:
        passes = [("binarizations", args.binarizations[:1], args.k)]
        passes.append(("spread", args.binarizations, args.spread_k))
    else:
        passes = [("binarizations", args.binarizations, args.k)]
    for key, names, K in passes:
        for name in names:
            _evaluate_draw(args, r, json_path, model, key, name, K, x_test_gray, x_valid_gray)


def _evaluate_draw(args, r, json_path, model, key, name, K, x_test_gray, x_valid_gray):
    xb = binarize(name, x_test_gray, x_valid_gray)
    xb = xb[: args.test_limit] if args.test_limit else xb
    res = r["final"].setdefault(key, {}).setdefault(name, {"blocks": {}})
    tag = block_tag(key, name, K)
    for start in range(0, xb.shape[0], BLOCK):
        if str(start) in res["blocks"]:
            continue
        x = xb[start : start + BLOCK]
        t0, c0 = time.perf_counter(), time.process_time()
        g = torch.Generator().manual_seed(_block_seed(args.seed, tag, start))
        elbo = evaluate.test_elbo(model, x, generator=g).double()
        log_px = evaluate.iwae_log_likelihood(model, x, K=K, generator=g).double()
        res["blocks"][str(start)] = {
            "n": int(x.shape[0]),
            "log_px_sum": log_px.sum().item(),
            "log_px_sumsq": (log_px**2).sum().item(),
            "elbo_sum": elbo.sum().item(),
            "cpu_seconds": time.process_time() - c0,
            "wall_seconds": time.perf_counter() - t0,
            "threads": torch.get_num_threads(),  # a resumed evaluation may use other threads
        }
        n = sum(b["n"] for b in res["blocks"].values())
        s = sum(b["log_px_sum"] for b in res["blocks"].values())
        log(f"{name} (K={K}): {n}/{xb.shape[0]} images, running NLL {-s / n:.3f}")
        write_json(json_path, r)
    blocks = res["blocks"].values()
    n = sum(b["n"] for b in blocks)
    mean = sum(b["log_px_sum"] for b in blocks) / n
    var = (sum(b["log_px_sumsq"] for b in blocks) - n * mean**2) / (n - 1)
    res.update(
        {
            "n_test": n,
            "k": K,
            "nll": -mean,
            "nll_se": math.sqrt(max(var, 0.0) / n),
            "elbo": sum(b["elbo_sum"] for b in blocks) / n,
            "eval_cpu_minutes": sum(b["cpu_seconds"] for b in blocks) / 60,
        }
    )
    write_json(json_path, r)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        x_all = data.load(args.dataset, "train", download=False)[0]
        xt = data.load(args.dataset, "test", download=False)[0]
    except (OSError, ValueError) as e:
        print(
            f"{args.dataset} is not available here, nothing run: {str(e).splitlines()[0]}",
            file=sys.stderr,
        )
        return 2
    out = args.out.resolve()
    repo = Path(__file__).resolve().parent.parent
    if out == repo or repo in out.parents:
        raise SystemExit(f"--out {out} is inside the repository; choose a folder outside it")
    out.mkdir(parents=True, exist_ok=True)
    try:
        with _atomic.lock_directory(out):  # one process per run folder
            return train_and_evaluate(args, argv, out, x_all, xt)
    except _atomic.Locked as e:
        who = f"pid {e.pid}" if e.pid is not None else "another process"
        raise SystemExit(
            f"another likelihood.py ({who}) is writing to {out}; wait for it to finish or stop it, "
            "then --resume"
        ) from None


def train_and_evaluate(args, argv, out, x_all, xt):
    """Train and evaluate into the locked folder `out`; returns the exit status."""
    json_path = out / "likelihood.json"

    x_train, x_valid_gray = (
        x_all[:-N_VALID][: args.train_limit],
        x_all[-N_VALID:],
    )  # (50000, D), (10000, D)
    x_valid = x_valid_gray  # protocol ours: fit binarizes it, one fixed draw
    if args.protocol == "reference":
        x_valid = control_valid(x_valid_gray, args.seed, args.as_ours)
    x_curve = binarize(CURVE_BINARIZATION, xt, x_valid_gray)[: args.curve_images]
    hidden = tuple(int(h) for h in args.hidden.split(","))
    D = x_train.shape[1]

    def build():
        return build_model(
            args.model,
            D,
            hidden,
            args.latent_dim,
            args.protocol,
            args.prior,
            args.prior_components,
            args.as_ours,
        )

    torch.manual_seed(args.seed)
    model = build()
    if args.resume:
        if not json_path.is_file():
            raise SystemExit(f"{json_path} is missing: there is no run in {out} to resume")
        r = json.loads(json_path.read_text())
        if r["status"] == "done":
            raise SystemExit(f"the run in {out} is finished; nothing to resume")
        changed = resume_conflicts(
            fill_defaults(r["config"], spread_k=args.spread_k), run_config(args)
        )
        if changed:
            raise SystemExit(
                f"the run in {out} was started with other settings ({'; '.join(changed)}); "
                "resume it with its own settings, or start a new --out folder"
            )
    else:
        r = {
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "status": "training",
            "command": "python benchmarks/likelihood.py "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "config": run_config(args),
            "architecture": "-".join(str(v) for v in (D, *hidden, args.latent_dim)),
            "n_train": int(x_train.shape[0]),
            "n_valid": int(x_valid.shape[0]),
            "device": "CPU",
            "cpu": platform.machine(),
            "cpu_model": cpu_model(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "epochs": [],
            "curve": [],
            "events": [],
            "best": None,
            "final": None,
        }

    if r["status"] == "training":
        run = train_reference if args.protocol == "reference" else train_ours
        best_state = run(args, r, out, model, x_train, x_valid, x_curve, build)
        if best_state is None:
            return 0
        model.load_state_dict(best_state)
        checkpoints.save_checkpoint(out / "best.pt", model)
        r["status"] = "evaluating"
        r["final"] = {
            "epoch": r["best"]["epoch"],
            "binarizations": {},
            "train_cpu_minutes": sum(e["cpu_seconds"] for e in r["epochs"]) / 60,
            "train_wall_minutes": sum(e["wall_seconds"] for e in r["epochs"]) / 60,
        }
        write_json(json_path, r)
    else:  # evaluating: the kept model is best.pt
        checkpoints.load_checkpoint(out / "best.pt", model=model)
    r["final"].pop(
        "nll", None
    )  # a run finished before the multi-draw evaluation is evaluated again, draw by draw
    r["final"].setdefault("binarizations", {})
    model.eval()
    evaluate_draws(args, r, json_path, model, xt, x_valid_gray)
    r["status"] = "done"
    write_json(json_path, r)
    summary = "; ".join(
        f"{n} {b['nll']:.2f} (K={b['k']})"
        for key in ("binarizations", "spread")
        for n, b in r["final"].get(key, {}).items()
    )
    log(f"done: best epoch {r['best']['epoch']}; test NLL {summary}; {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
