"""Training: `fit` (Adam on in-memory minibatches, dynamic binarization, history), and checkpoints.

`fit` trains a `vaelib.models.VAE` (loss = minus the ELBO, optionally with a KL weight beta) or a
`vaelib.models.Autoencoder` (loss = minus the reconstruction log-likelihood) on a data tensor held in
memory: each epoch draws a seeded permutation (torch.randperm), a fresh binarization of the whole
training tensor for Bernoulli likelihoods, then steps through the minibatches (`_train_epoch`). No Dataset,
DataLoader or image decoding. The data's values (NaN, inf, range) are scanned once, before training; each step
calls the model's `_loss`, whose checks are cheap (types and shapes). The KL weight of each epoch is
`kl_weight(epoch, beta, warmup_epochs)`.

Reproducibility: the model's initial weights come from torch's global generator when the model is
constructed, so call `torch.manual_seed(s)` before constructing it. `fit` draws everything else (the
permutations, the binarizations, the reparameterization noise) from its own generator seeded with
`seed`, so the same (s, seed) gives the same weights bit for bit on the same machine and device.
The generator's state travels in the returned history and in checkpoints, so a resumed run continues
the same random stream: 2 epochs, save, load, 1 more epoch == 3 epochs uninterrupted.

Nothing is lost: an interrupt (KeyboardInterrupt) or a NaN/inf (FloatingPointError) leaves the model at the
end of the last complete epoch (finite weights) and attaches a resumable History to the exception as
`e.history`; `on_epoch_end` lets a caller save a checkpoint after every epoch (the command line does).

Checkpoints hold only tensors, dicts, lists, strings and numbers, so `torch.load(weights_only=True)`
reads them; a SHA-256 digest over everything stored detects corruption on load. The model is rebuilt
from its class name and constructor config stored in the file, or, for a model with your own encoder
or decoder, loaded into a model you build (`load_checkpoint(path, model=...)`).
"""

import hashlib
import math
import os
import time
import warnings
from enum import Enum
from pathlib import PurePath, Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from tqdm.auto import tqdm

from vaelib import _atomic, _validate, quick_mode
from vaelib.models import MODELS, VAE, Autoencoder

CHECKPOINT_FORMAT = "vaelib-checkpoint"
CHECKPOINT_VERSION = 2  # 2 adds the SHA-256 digest; version 1 files (no digest) are still read
_READABLE_VERSIONS = (1, 2)
_SEED_LIMIT = 2**64  # torch generators take seeds in [0, 2**64)
_TRAIN_DTYPES = (torch.float32, torch.float64)

# Check the per-step losses for NaN/inf every this many steps (and at the end of each epoch): one
# host-device synchronisation per check instead of one per step.
_CHECK_EVERY = 64


class History(dict):
    """What `fit` returns: a dict of per-epoch lists, plus the state needed to resume training.

    Keys (all per example, in nats):
        VAE: "epoch", "elbo" (mean training ELBO over the epoch's minibatches), "log_px_z" (the
            reconstruction term E_q[log p(x | z)]), "kl" (KL(q(z | x) || p(z))), "beta" (the KL weight
            used), "seconds" (wall-clock time of the epoch's training steps), and "valid_elbo" when a
            validation set is given.
        Autoencoder: "epoch", "log_px_z" (reconstruction log-likelihood), "seconds", and
            "valid_log_px_z" when a validation set is given.

    Attributes:
        optimizer_state: the Adam state dict after the last epoch (None before training).
        rng_state: {"device": str, "state": uint8 tensor}, the state of fit's generator after the last epoch.
    `save_checkpoint(path, model, history=history)` stores both, so a loaded checkpoint resumes exactly.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.optimizer_state = None
        self.rng_state = None


class Checkpoint(NamedTuple):
    """What `load_checkpoint(path, with_state=True)` returns."""

    model: torch.nn.Module  # rebuilt and loaded, on the CPU
    optimizer_state: dict | None  # Adam state dict (history carries it too)
    history: dict | None  # a History with the optimizer and generator state: fit(model, x, n, history=...) resumes
    rng_state: dict | None  # {"device", "state"} of fit's generator (history carries it too)
    metadata: dict | None  # whatever save_checkpoint(metadata=...) stored (the CLI stores the dataset)


def _history_keys(model, with_valid):
    keys = ["epoch", "elbo", "log_px_z", "kl", "beta", "seconds"] if isinstance(model, VAE) else ["epoch", "log_px_z", "seconds"]
    if with_valid:
        keys.append("valid_elbo" if isinstance(model, VAE) else "valid_log_px_z")
    return keys


def resolve_device(device=None):
    """torch.device to train on: `device` if given, else CUDA when available, else the CPU.

    Raises ValueError for an unknown device string or a CUDA device on a machine without CUDA.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or None, got {device!r} ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available on this machine; use device='cpu'")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be a CPU or CUDA device, got {str(device)!r}")
    return device


def _derived_seed(seed, purpose):
    """An independent 63-bit seed for a second stream (e.g. the validation binarization)."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _check_model(model):
    if not isinstance(model, (VAE, Autoencoder)):
        raise TypeError(f"model must be a vaelib.models.VAE or Autoencoder, got {type(model).__name__}")


def _check_train_dtype(model):
    """fit trains in float32 or float64 only: Adam's moments and the ELBO's sums overflow or stall in 16 bits."""
    for name, p in model.named_parameters():
        if p.dtype not in _TRAIN_DTYPES:
            raise TypeError(f"model parameter {name!r} has dtype {p.dtype}; fit trains float32 or float64 models "
                            "only (float16/bfloat16 overflow or stall in Adam and the ELBO's sums): call "
                            "model.float() or model.double() first")


def _as_tensor(name, x):
    """A numpy array becomes a tensor (sharing memory when it can); tensors pass through; others are refused."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise TypeError(f"{name} must be a floating-point array (float32 or float64), got numpy dtype {x.dtype} "
                            f"with shape {x.shape}" + (" (scale integer images to [0, 1] first, e.g. x / 255)"
                                                       if x.dtype.kind in "iu" else ""))
        if not (x.flags.c_contiguous and x.flags.writeable):
            x = np.array(x, order="C")  # torch.from_numpy needs a writable, contiguous array
        return torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or a numpy array, got {type(x).__name__}")
    return x


def _check_data(model, name, x, binarize):
    x = _as_tensor(name, x)
    if x.is_floating_point() and x.dtype not in _TRAIN_DTYPES and x.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"{name} has dtype {x.dtype}; expected float32 or float64")
    model._check_x(x, name=name, match_model=False)  # fit converts the data to the model's dtype and device
    if x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one example, got shape {tuple(x.shape)}")
    # NaN/inf, and [0, 1] for a Bernoulli likelihood or probabilities to binarize: scanned once, here
    return _validate.values(name, x, unit_interval=binarize or model.likelihood == "bernoulli")


def _check_seed(seed):
    _validate.nonnegative_int("seed", seed)
    if seed >= _SEED_LIMIT:
        raise ValueError(f"seed must be < 2**64 (torch generators take 64-bit seeds), got {seed}")
    return seed


_ADAM_GROUP_KEYS = ("params", "lr", "betas", "eps", "weight_decay", "amsgrad")


def _check_adam_state(state, params):
    """Check an Adam state dict against the model's parameters before training starts.

    torch.optim.Adam.load_state_dict accepts any optimizer's state dict (SGD's too) and a state whose
    moments have the wrong shapes; the mistake would surface steps later, mid-training.
    """
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict) \
            or not isinstance(state.get("param_groups"), list):
        raise TypeError("optimizer_state must be an Adam state dict {'state': {...}, 'param_groups': [...]} "
                        f"(History.optimizer_state or a checkpoint's), got {type(state).__name__}")
    ids = []
    for i, group in enumerate(state["param_groups"]):
        missing = [k for k in _ADAM_GROUP_KEYS if not isinstance(group, dict) or k not in group]
        if missing:
            got = sorted(group) if isinstance(group, dict) else type(group).__name__
            raise ValueError(f"optimizer_state is not an Adam state dict: param group {i} lacks {missing} (got {got}); "
                             "fit trains with Adam, so pass a state from fit or a checkpoint, or None to start afresh")
        ids.extend(group["params"])
    if len(ids) != len(params):
        raise ValueError(f"optimizer_state does not fit this model's parameters: it covers {len(ids)} parameters, "
                         f"the model has {len(params)}")
    for pid, p in zip(ids, params):
        s = state["state"].get(pid)
        if s is None:
            continue  # a parameter that has not been stepped yet
        for key in ("exp_avg", "exp_avg_sq"):
            t = s.get(key) if isinstance(s, dict) else None
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(p.shape):
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"optimizer_state does not fit this model's parameters: state {pid} {key!r} is "
                                 f"{got}, expected a tensor of shape {tuple(p.shape)} (not an Adam state for this model?)")
        if not isinstance(s.get("step"), (torch.Tensor, int, float)):
            raise ValueError(f"optimizer_state is not an Adam state dict: state {pid} has no 'step'")


def _start_history(model, history, with_valid, optimizer_state, rng_state):
    """A History continuing `history` (copied, not modified), checked against the model type, with the state to
    resume from: `optimizer_state`/`rng_state` when given, else those `history` carries (None for a new run)."""
    keys = _history_keys(model, with_valid)
    valid_key = _history_keys(model, True)[-1]
    if history is None:
        out = History({k: [] for k in keys})
    else:
        if not isinstance(history, dict) or not isinstance(history.get("epoch"), list):
            raise TypeError("history must be a dict of per-epoch lists with an 'epoch' key (from fit or a checkpoint), "
                            f"got {type(history).__name__}")
        n = len(history["epoch"])
        expected = set(_history_keys(model, False))
        if set(history) - {valid_key} != expected:
            raise ValueError(
                f"history keys {sorted(history)} do not fit a {type(model).__name__}: expected {sorted(expected)} "
                f"(plus {valid_key!r} with a validation set)"
            )
        if any(not isinstance(v, list) or len(v) != n for v in history.values()):
            raise ValueError(f"history lists must all have length len(history['epoch']) = {n}")
        out = History({k: list(v) for k, v in history.items()})
        if with_valid and valid_key not in out:
            out[valid_key] = [None] * n  # earlier epochs ran without a validation set
    out.optimizer_state = optimizer_state if optimizer_state is not None else getattr(history, "optimizer_state", None)
    out.rng_state = rng_state if rng_state is not None else getattr(history, "rng_state", None)
    if out.optimizer_state is not None:
        _check_adam_state(out.optimizer_state, list(model.parameters()))
    return out


def _make_generator(device, seed, rng_state):
    gen = torch.Generator(device=device)
    if rng_state is None:
        return gen.manual_seed(seed)
    if not isinstance(rng_state, dict) or not isinstance(rng_state.get("state"), torch.Tensor):
        raise TypeError("rng_state must be the dict {'device': str, 'state': uint8 tensor} from a History or checkpoint")
    saved = rng_state.get("device")
    if saved != device.type:
        raise ValueError(
            f"rng_state comes from a {saved} generator but training runs on {device.type}; "
            "resume on the same kind of device, or pass the history as a plain dict (history=dict(h)) to continue its "
            "numbering with a fresh Adam and a generator seeded with `seed`"
        )
    try:
        gen.set_state(rng_state["state"].cpu())
    except RuntimeError as e:
        raise ValueError(f"rng_state is not a valid {device.type} generator state ({e})") from None
    return gen


def _batched(fn, x, batch_size):
    """Concatenate fn(batch) over minibatches of x, without gradients."""
    with torch.no_grad():
        return torch.cat([fn(xb) for xb in x.split(batch_size)])


def _clone(obj, into=None):
    """A deep copy of a nested structure of tensors/dicts/lists/tuples (tensors detached, on their device).

    `into`: an earlier copy of the same structure, whose tensors of matching shape, dtype and device are overwritten
    in place instead of allocated again (fit copies the training state at the end of every epoch).
    """
    if isinstance(obj, torch.Tensor):
        if isinstance(into, torch.Tensor) and (into.shape, into.dtype, into.device) == (obj.shape, obj.dtype, obj.device):
            return into.copy_(obj)
        return obj.detach().clone()
    if isinstance(obj, dict):
        into = into if isinstance(into, dict) else {}
        return {k: _clone(v, into.get(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        into = into if isinstance(into, (list, tuple)) and len(into) == len(obj) else [None] * len(obj)
        return type(obj)(_clone(v, i) for v, i in zip(obj, into))
    return obj


class _Snapshot:
    """The training state at the end of the last complete epoch: what an interrupt or a NaN rolls back to."""

    def __init__(self, model, optimizer_state, gen, n_epochs):
        self.model_state = _clone(model.state_dict())
        self.optimizer_state = _clone(optimizer_state)
        self.rng_state = gen.get_state()
        self.n_epochs = n_epochs  # len(history["epoch"]) at that point

    def take(self, model, optimizer, gen, n_epochs):
        self.model_state = _clone(model.state_dict(), into=self.model_state)
        self.optimizer_state = _clone(optimizer.state_dict(), into=self.optimizer_state)
        self.rng_state = gen.get_state()
        self.n_epochs = n_epochs

    def give_to(self, history, device):
        """Set history's optimizer and generator state to copies of this snapshot's (training goes on)."""
        history.optimizer_state = _clone(self.optimizer_state)
        history.rng_state = {"device": device.type, "state": self.rng_state.clone()}

    def restore(self, model, history, device):
        """Put the model back to the snapshot, cut the history back to its epochs and give it the snapshot's state."""
        with torch.no_grad():
            model.load_state_dict(self.model_state)
        for key in history:
            del history[key][self.n_epochs:]
        history.optimizer_state = self.optimizer_state
        history.rng_state = {"device": device.type, "state": self.rng_state}


def kl_weight(epoch, beta, warmup_epochs):
    """The KL weight of epoch `epoch` (1-based): beta (epoch - 1) / warmup_epochs during a linear warm-up from 0
    (Bowman et al. 2016, Sonderby et al. 2016), then beta; warmup_epochs = 0: beta from the start."""
    if warmup_epochs == 0:
        return beta
    return beta * min(1.0, (epoch - 1) / warmup_epochs)


def _make_optimizer(model, lr, optimizer_state):
    """Adam with the multi-tensor ("foreach") update: the same numbers as the per-parameter loop, bit for bit, in
    fewer operations per step (benchmarks/train_throughput.py; the first Adam of a process imports torch._dynamo).
    The state is copied in: Adam would otherwise update the caller's tensors (a history resumed twice must
    give the same run twice)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, foreach=True)
    if optimizer_state is not None:
        try:
            optimizer.load_state_dict(_clone(optimizer_state))
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise ValueError(f"optimizer_state does not fit this model's parameters ({e})") from None
        for group in optimizer.param_groups:
            group["lr"], group["foreach"] = lr, True
    return optimizer


def _validation(model, valid_x, binarize, seed, batch_size, device, dtype):
    """None without validation data, else a function () -> the mean validation ELBO (an Autoencoder's log p(x | z)).

    The data are binarized once (a fixed draw) and every call uses the same noise.
    """
    if valid_x is None:
        return None
    vgen = torch.Generator(device=device).manual_seed(_derived_seed(seed, "valid"))
    vx = valid_x.to(device=device, dtype=dtype)  # (M, D)
    if binarize:
        vx = torch.bernoulli(vx, generator=vgen)  # one fixed binarization
    vgen_state = vgen.get_state()

    def elbo(xb):
        _, log_px_z, kl = model._loss(xb, 1.0, 1, vgen)
        return log_px_z - kl  # (B,); an Autoencoder's kl is 0

    def validate():
        vgen.set_state(vgen_state)  # the same validation noise every epoch
        return _batched(elbo, vx, max(batch_size, 1024)).mean().item()

    return validate


def _train_epoch(model, optimizer, x, *, batch_size, binarize, beta_e, n_samples, gen, epoch, bar):
    """One epoch: a fresh permutation (and binarization) of x (N, D), then one Adam step per minibatch.

    The per-step losses are checked for NaN/inf, with the parameters, every _CHECK_EVERY steps and at the end
    (one host-device synchronisation per check). Returns the epoch's means per example: {"log_px_z", "kl",
    "elbo", "beta", "seconds"}. Raises FloatingPointError naming the step.
    """
    t0 = time.perf_counter()
    N = x.shape[0]
    n_steps = math.ceil(N / batch_size)
    xe = x[torch.randperm(N, generator=gen, device=x.device)]  # (N, D) shuffled
    if binarize:
        xe = torch.bernoulli(xe, generator=gen)  # (N, D) fresh binary draw
    losses = torch.empty(n_steps, dtype=x.dtype, device=x.device)  # per-step loss
    sum_log_px_z = torch.zeros((), dtype=x.dtype, device=x.device)
    sum_kl = torch.zeros((), dtype=x.dtype, device=x.device)
    checked = 0
    for step, xb in enumerate(xe.split(batch_size)):
        optimizer.zero_grad(set_to_none=True)
        loss, log_px_z, kl = model._loss(xb, beta_e, n_samples, gen)
        loss.backward()
        optimizer.step()
        losses[step] = loss.detach()
        sum_log_px_z += log_px_z.detach().sum()
        sum_kl += kl.detach().sum()
        if step + 1 - checked >= _CHECK_EVERY or step + 1 == n_steps:
            _check_finite(losses, checked, step + 1, epoch, n_steps, model)
            bar.update(step + 1 - checked)
            checked = step + 1
    log_px_z, kl = sum_log_px_z.item() / N, sum_kl.item() / N
    return {"log_px_z": log_px_z, "kl": kl, "elbo": log_px_z - kl, "beta": beta_e, "seconds": time.perf_counter() - t0}


def fit(
    model,
    train_x,
    epochs,
    batch_size=128,
    lr=1e-3,
    seed=0,
    device=None,
    valid_x=None,
    binarize=None,
    progress=None,
    beta=1.0,
    warmup_epochs=0,
    n_samples=1,
    optimizer_state=None,
    history=None,
    rng_state=None,
    on_epoch_end=None,
):
    """Train a VAE (maximise the ELBO) or an Autoencoder (maximise log p(x | z)) with Adam.

    VAE loss per minibatch: -(1/B) sum_b [E_q log p(x_b | z) - beta_e KL(q(z | x_b) || N(0, I))]
    (Kingma & Welling 2013, alg. 1; Adam: Kingma & Ba 2015). beta_e = beta min(1, (e - 1) / warmup_epochs)
    in epoch e (linear KL warm-up from 0: Bowman et al. 2016, Sonderby et al. 2016); warmup_epochs=0: beta_e = beta.

    Each epoch: a seeded permutation of the training set; for Bernoulli data a fresh draw
    x ~ Bernoulli(train_x) of the whole tensor (dynamic binarization, as in Burda et al. 2016, sec. 5);
    minibatches of `batch_size` (the last one may be smaller); one Adam step per minibatch. Validation
    data are binarized once (a fixed draw) and the validation ELBO uses the same noise every epoch.

    The model moves to `device` and stays there. Initial weights are the model's: seed torch
    (torch.manual_seed) before constructing it. Everything random inside fit comes from one generator
    seeded with `seed` (or restored from `rng_state`), so reruns give identical weights.

    Nothing is lost when training stops early: on a KeyboardInterrupt (Ctrl-C, or a signal handler that
    raises one) or a FloatingPointError (a NaN or infinite loss or parameter), fit puts back the weights
    of the end of the last complete epoch (the last finite ones), and the exception carries
    `e.history`: the History of the complete epochs with their optimizer and generator state, so
    `save_checkpoint(path, model, history=e.history)` writes a checkpoint that resumes exactly.

    Args:
        model: a vaelib.models.VAE or Autoencoder with float32 or float64 parameters.
        train_x: (N, D) training data, a tensor or numpy array (values in [0, 1] for a Bernoulli likelihood).
            Checked once, then converted to the model's dtype and device.
        epochs: number of epochs to run (>= 0).
        batch_size: minibatch size.
        lr: Adam learning rate (overrides the rate stored in `optimizer_state`).
        seed: seed of fit's generator (permutations, binarization, reparameterization noise), in [0, 2**64).
        device: "cpu", "cuda", a torch.device, or None for CUDA when available, else the CPU.
        valid_x: optional (M, D) validation data (tensor or numpy array); its ELBO (log p(x | z) for an
            Autoencoder) is recorded after every epoch.
        binarize: dynamic binarization; None means True for a Bernoulli likelihood, False for Gaussian.
        progress: show a tqdm progress bar (tqdm.auto: a widget in notebooks, text on stderr otherwise).
            None: on, except in quick mode (VAELIB_QUICK=1). Tests pass False.
        beta: KL weight of the VAE objective (1 = the ELBO; ignored for an Autoencoder).
        warmup_epochs: epochs of linear KL warm-up from 0 to beta (VAE only); 0 = none.
        n_samples: K samples of z per example in the VAE's Monte Carlo reconstruction term.
        optimizer_state: an Adam state dict to resume from; default: the one `history` carries.
        history: a History to continue (from fit, an exception's e.history, or a checkpoint's): new epochs are
            appended, numbered after its last, and training resumes from the optimizer and generator state it
            carries (History.optimizer_state, History.rng_state), so fit(..., history=h) continues exactly where
            the run that returned h stopped. A plain dict of lists starts a fresh Adam and generator. The
            argument itself is not modified.
        rng_state: a generator state to continue; default: the one `history` carries, else a generator seeded
            with `seed`.
        on_epoch_end: optional callable(model, history), called after every epoch with the History so far,
            whose optimizer_state and rng_state are those of that moment: `save_checkpoint(path, model,
            history=history)` inside it writes a checkpoint that resumes exactly.
    Returns:
        History: a dict of per-epoch lists (see `History` for the keys), all in nats per example, with
        the optimizer and generator state as attributes for `save_checkpoint`.
    Raises:
        TypeError, ValueError: bad arguments or data (wrong shape, dtype, NaN/inf, values outside [0, 1]).
        FloatingPointError: the loss or a parameter became NaN or infinite; the message names the epoch and
            step; the model is back at the last complete epoch and `e.history` holds the history up to it.
        KeyboardInterrupt: re-raised after the same roll-back, with `e.history` attached.
    """
    device, binarize, progress = _check_fit_args(model, epochs, batch_size, lr, seed, beta, warmup_epochs, n_samples,
                                                 device, binarize, progress, on_epoch_end)
    train_x = _check_data(model, "train_x", train_x, binarize)
    valid_x = None if valid_x is None else _check_data(model, "valid_x", valid_x, binarize)
    history = _start_history(model, history, valid_x is not None, optimizer_state, rng_state)
    valid_key = _history_keys(model, True)[-1]
    model.to(device)
    dtype = next(model.parameters()).dtype
    x = train_x.to(device=device, dtype=dtype)  # (N, D), the whole training set in memory
    gen = _make_generator(device, seed, history.rng_state)
    validate = _validation(model, valid_x, binarize, seed, batch_size, device, dtype)
    start = history["epoch"][-1] if history["epoch"] else 0
    snapshot = _Snapshot(model, history.optimizer_state, gen, len(history["epoch"]))  # the start, until an epoch ends
    try:
        optimizer = _make_optimizer(model, lr, history.optimizer_state)
        with tqdm(total=epochs * math.ceil(x.shape[0] / batch_size), disable=not progress, unit="batch",
                  dynamic_ncols=True) as bar:
            for epoch in range(start + 1, start + epochs + 1):
                bar.set_description(f"epoch {epoch}/{start + epochs}", refresh=False)
                values = _train_epoch(model, optimizer, x, batch_size=batch_size, binarize=binarize, n_samples=n_samples,
                                      beta_e=kl_weight(epoch, beta, warmup_epochs), gen=gen, epoch=epoch, bar=bar)
                values["epoch"] = epoch
                values[valid_key] = validate() if validate else None  # None: resumed without the earlier validation set
                for key in history:
                    history[key].append(values[key])
                bar.set_postfix({k: f"{values[k]:.2f}" for k in ("elbo", valid_key) if k in history and values[k] is not None},
                                refresh=False)
                snapshot.take(model, optimizer, gen, len(history["epoch"]))
                if on_epoch_end is not None:
                    snapshot.give_to(history, device)
                    on_epoch_end(model, history)
    except (KeyboardInterrupt, FloatingPointError) as e:
        snapshot.restore(model, history, device)
        e.history = history
        raise
    history.optimizer_state = optimizer.state_dict()
    history.rng_state = {"device": device.type, "state": gen.get_state()}
    return history


def _check_fit_args(model, epochs, batch_size, lr, seed, beta, warmup_epochs, n_samples, device, binarize, progress,
                    on_epoch_end):
    """Check fit's arguments; return (device, binarize, progress) with their defaults resolved."""
    _check_model(model)
    _check_train_dtype(model)
    _validate.count("epochs", epochs, minimum=0)
    _validate.count("batch_size", batch_size)
    _validate.positive_scalar("lr", lr)
    _check_seed(seed)
    _validate.beta(beta)
    _validate.count("warmup_epochs", warmup_epochs, minimum=0)
    _validate.count("n_samples", n_samples)
    if binarize is None:
        binarize = model.likelihood == "bernoulli"
    if not isinstance(binarize, bool):
        raise TypeError(f"binarize must be True, False or None, got {type(binarize).__name__}")
    progress = (not quick_mode()) if progress is None else progress
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None, got {type(progress).__name__}")
    if on_epoch_end is not None and not callable(on_epoch_end):
        raise TypeError(f"on_epoch_end must be a callable(model, history) or None, got {type(on_epoch_end).__name__}")
    return resolve_device(device), binarize, progress


def _check_finite(losses, begin, end, epoch, n_steps, model):
    """Raise FloatingPointError naming the first step in [begin, end) whose loss is NaN or infinite, or the first
    parameter that is, after step `end` (one host-device synchronisation for both checks)."""
    window = losses[begin:end]
    params = [p for p in model.parameters()]
    ok = torch.isfinite(window).all()
    for p in params:
        ok = ok & torch.isfinite(p).all()
    if bool(ok):
        return
    where = "; the model is back at the end of the last complete epoch (the last finite parameters)"
    if not bool(torch.isfinite(window).all()):
        bad = begin + int(torch.nonzero(~torch.isfinite(window))[0, 0])
        raise FloatingPointError(
            f"the training loss is {losses[bad].item()} at epoch {epoch}, step {bad + 1} of {n_steps}{where}. "
            "Lower the learning rate, check the data, or resume from a checkpoint (the exception's .history holds "
            "the history and optimizer state up to that epoch)"
        )
    name = next(n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all()))
    raise FloatingPointError(
        f"parameter {name!r} became NaN or infinite at epoch {epoch}, by step {end} of {n_steps} (the losses were "
        f"finite){where}. Lower the learning rate, or resume from a checkpoint (the exception's .history holds "
        "the history and optimizer state up to that epoch)"
    )


# -- checkpoints ------------------------------------------------------------------------------------

# One implementation of atomic writes for the whole project (temporary file, fsync, permissions, links,
# orphans of killed writers): vaelib._atomic. Re-exported here because the command line, the widgets and
# the benchmarks write through `vaelib.train.atomic_write`.
atomic_write = _atomic.atomic_write


def _to_cpu(obj):
    """A copy of a nested structure of tensors/dicts/lists/tuples with every tensor detached on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


_PLAIN_HINT = "a checkpoint stores str, int, float, bool, None, lists, tuples, dicts and tensors"


def _plain(obj, where):
    """`obj` as the plain values a weights_only load reads back, converting what has an exact plain form.

    numpy scalars -> Python numbers (np.float32 through float: exact); numpy arrays -> nested lists;
    paths -> str; subclasses of str/int/float/bool (enums, numpy float64) -> the base type; tensors ->
    detached CPU copies. Anything else (sets, objects, functions, datetimes) raises TypeError naming `where`.
    """
    if obj is None or type(obj) in (str, int, float, bool):
        return obj
    if isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided or obj.is_quantized:
            raise TypeError(f"{where} is a {obj.layout} tensor; {_PLAIN_HINT} (dense tensors only)")
        return obj.detach().cpu().clone()
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"{where} is a numpy array of dtype {obj.dtype}; {_PLAIN_HINT} (numeric arrays are "
                            "converted to lists)")
        return obj.tolist()
    if isinstance(obj, np.generic):
        return _plain(obj.item(), where)
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, Enum) and not isinstance(obj, (str, int, float)):
        raise TypeError(f"{where} is the enum member {obj!r}; {_PLAIN_HINT} (store its .value or .name)")
    for base in (bool, int, float, str):  # bool before int: bool is an int subclass
        if isinstance(obj, base):
            return base.__str__(obj) if base is str else base(obj)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            key = _plain(k, f"a key of {where}")
            if not (key is None or type(key) in (str, int, float, bool)):
                raise TypeError(f"the key {k!r} of {where} has type {type(k).__name__}; keys must be str, int, float, "
                                "bool or None")
            out[key] = _plain(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)) if type(obj) in (list, tuple) \
            else list(_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(f"{where} has type {type(obj).__name__}; {_PLAIN_HINT} (convert it, e.g. to str)")


def _digest(payload):
    """SHA-256 (hex) over every entry of `payload` except "digest": keys, values, tensor dtypes, shapes and bytes.

    The walk follows dict insertion order, which torch.save/torch.load preserve; each value is tagged
    with its type and length, so different structures never hash alike.
    """
    h = hashlib.sha256()

    def walk(obj):
        if obj is None:
            h.update(b"N")
        elif isinstance(obj, bool):
            h.update(b"T" if obj else b"F")
        elif isinstance(obj, int):
            h.update(b"I%d;" % obj)
        elif isinstance(obj, float):
            h.update(b"R" + float.hex(obj).encode() + b";")
        elif isinstance(obj, complex):
            h.update(b"C" + float.hex(obj.real).encode() + b"," + float.hex(obj.imag).encode() + b";")
        elif isinstance(obj, str):
            data = obj.encode("utf-8", "surrogatepass")
            h.update(b"S%d:" % len(data) + data)
        elif isinstance(obj, bytes):
            h.update(b"Y%d:" % len(obj) + obj)
        elif isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"X{t.dtype}{tuple(t.shape)}:".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(obj, dict):
            h.update(b"D%d:" % len(obj))
            for k, v in obj.items():
                walk(k)
                walk(v)
        elif isinstance(obj, (list, tuple)):
            h.update((b"L%d:" if isinstance(obj, list) else b"U%d:") % len(obj))
            for v in obj:
                walk(v)
        else:
            raise TypeError(type(obj).__name__)

    for key, value in payload.items():
        if key != "digest":
            walk(key)
            walk(value)
    return h.hexdigest()


class _OverBudget(Exception):
    """Raised by _AllocationBudget when building a model would allocate more than the checkpoint stores."""


class _AllocationBudget(TorchDispatchMode):
    """Refuse tensor allocations beyond `budget` bytes in total, before they happen.

    Every factory op whose first argument is a size (aten.empty, zeros, ones, full, rand, randn, ...) is
    counted at 8 bytes per element (or its dtype's size) before it runs; other ops work on existing tensors.
    A crafted config cannot make load_checkpoint allocate a huge model: it fails at the first big layer.
    """

    def __init__(self, budget):
        super().__init__()
        self.left = budget

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        size = args[0] if args else None
        if isinstance(size, (list, tuple)) and all(isinstance(s, int) for s in size):
            dtype = kwargs.get("dtype")
            nbytes = math.prod(size) * (getattr(dtype, "itemsize", 8) if dtype is not None else 8)
            self.left -= nbytes
            if self.left < 0:
                raise _OverBudget(f"the config asks for a tensor of shape {list(size)} ({nbytes / 2**20:.1f} MiB), more "
                                  "than the file's weights hold")
        return func(*args, **kwargs)


def _rebuild(path, cls, config, state):
    """cls(**config), checked against the stored tensors: their number and bytes bound what building may allocate,
    and the built model's state_dict keys and shapes must equal the stored ones. Raises ValueError naming `path`."""
    hidden = config.get("hidden_dims")
    if isinstance(hidden, (list, tuple)) and len(hidden) > len(state):  # each layer stores >= 1 tensor
        raise ValueError(f"{path}: broken checkpoint: config hidden_dims has {len(hidden)} layers but the file stores "
                         f"only {len(state)} tensors")
    stored = sum(t.numel() * t.element_size() for t in state.values())
    try:
        with _AllocationBudget(2 * stored + 2**24):  # the weights, their initialisation, 16 MiB of slack
            model = cls(**config)
    except _OverBudget as e:
        raise ValueError(f"{path}: broken checkpoint: {e} ({stored} bytes); refusing to build it") from None
    except Exception as e:  # noqa: BLE001 - a config that does not build is a broken file
        raise ValueError(f"{path}: broken checkpoint: cannot rebuild {cls.__name__} from its config {_short(config)} "
                         f"({_short(' '.join(str(e).split()))})") from None
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problem = _state_mismatch(want, {k: tuple(v.shape) for k, v in state.items()}, "the config's model")
    if problem is not None:
        raise ValueError(f"{path}: broken checkpoint: {problem}; if you built this model yourself (your own encoder "
                         "or decoder), pass it: load_checkpoint(path, model=model)")
    return model


def _state_mismatch(want, have, what):
    if want == have:
        return None
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    shapes = [f"{k}: file {have[k]}, {what} {want[k]}" for k in want if k in have and want[k] != have[k]]
    parts = ([f"missing {missing[:5]}"] if missing else []) + ([f"unexpected {extra[:5]}"] if extra else []) + \
        ([f"shapes differ ({'; '.join(shapes[:5])})"] if shapes else [])
    return f"the stored weights do not match {what}: {', '.join(parts)}"


def save_checkpoint(path, model, optimizer=None, history=None, rng_state=None, metadata=None):
    """Save a model, and optionally the training state, so that `load_checkpoint` reads it back.

    Stored: format tag and version, the model class name ("VAE" or "Autoencoder"), its constructor
    config, its state_dict (on the CPU), the optimizer state, the history, the generator state,
    `metadata`, and a SHA-256 digest of all of these — only tensors, dicts, lists, strings and numbers
    (readable with weights_only=True). numpy scalars and arrays and paths in `history` and `metadata`
    are converted to plain numbers, lists and strings; values without a plain form raise TypeError here,
    never later at load time. The file is written to a temporary file in the same directory, flushed to
    disk, then renamed over `path` with os.replace, so an interrupted save never leaves a broken
    checkpoint at `path`; a symbolic link at `path` stays a link to the new file.

    An MLP model is rebuilt from the file alone. A model with your own encoder or decoder (its config
    says "custom", or the config's MLP does not have its weights) is stored just the same; load it with
    `load_checkpoint(path, model=a_model_you_built)`.

    Args:
        path: file to write (its directory must exist).
        model: a vaelib.models.VAE or Autoencoder.
        optimizer: a torch optimizer, or its state dict, or None: then `history.optimizer_state` when
            `history` is a History from fit.
        history: per-epoch lists from fit (or None).
        rng_state: fit's generator state, or None: then `history.rng_state` when available.
        metadata: optional dict of plain values (str, numbers, lists, dicts), e.g. {"dataset": "digits"}.
    Returns:
        pathlib.Path of the checkpoint.
    """
    _check_model(model)
    if isinstance(path, str) and not path:
        raise ValueError("path must name a file, got ''")
    path = Path(path)
    if optimizer is None:
        optimizer = getattr(history, "optimizer_state", None)
    if rng_state is None:
        rng_state = getattr(history, "rng_state", None)
    if isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.state_dict()
    if optimizer is not None and not isinstance(optimizer, dict):
        raise TypeError(f"optimizer must be a torch optimizer, its state dict, or None, got {type(optimizer).__name__}")
    if history is not None and not isinstance(history, dict):
        raise TypeError(f"history must be a dict of per-epoch lists or None, got {type(history).__name__}")
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    if rng_state is not None and not isinstance(rng_state, dict):
        raise TypeError(f"rng_state must be the dict {{'device', 'state'}} from a History, got {type(rng_state).__name__}")
    if path.is_dir():
        raise IsADirectoryError(f"cannot save checkpoint {path}: it is a directory; name a file such as {path / 'model.pt'}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot save checkpoint {path}: directory {path.parent} does not exist")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_class": type(model).__name__,
        "config": _plain(model.config, "model.config"),
        "state_dict": _plain(dict(model.state_dict()), "model.state_dict()"),
        "optimizer_state": _plain(_to_cpu(optimizer), "the optimizer state"),
        "history": None if history is None else _plain({k: list(v) for k, v in history.items()}, "history"),
        "rng_state": _plain(_to_cpu(rng_state), "rng_state"),
        "metadata": _plain(metadata, "metadata"),
    }
    payload["digest"] = _digest(payload)
    atomic_write(path, lambda f: torch.save(payload, f))
    return path


def _read_payload(path):
    """torch.load(weights_only=True) of an existing file; anything unreadable becomes a ValueError naming it."""
    with open(path, "rb") as f:  # errors opening the file (permissions) surface as they are
        try:
            with warnings.catch_warnings():  # a damaged file can make the unpickler warn before it fails
                warnings.simplefilter("ignore")
                return torch.load(f, weights_only=True, map_location="cpu")
        except Exception as e:  # corrupt or truncated zip (even as OSError), bad pickle, disallowed globals
            kind, first = type(e).__name__, (str(e).strip().splitlines() or [""])[0][:200]
    if first.startswith("Weights only load failed"):
        first = "not a torch file of plain tensors, dicts, lists, strings and numbers"
    raise ValueError(f"{path}: not a readable vaelib checkpoint; the file is corrupt, truncated or of another "
                     f"format ({kind}: {first})")


def _verify(path, payload):
    """Check the format tag, version and digest; raise ValueError naming `path`."""
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a vaelib checkpoint (no '{CHECKPOINT_FORMAT}' format tag)")
    version = payload.get("version")
    if version not in _READABLE_VERSIONS or isinstance(version, bool):
        raise ValueError(f"{path}: checkpoint version {version!r}; this vaelib reads versions "
                         f"{', '.join(map(str, _READABLE_VERSIONS))}")
    if version >= 2:
        stored = payload.get("digest")
        try:
            actual = _digest(payload)
        except TypeError as e:
            actual = f"<unhashable {e}>"
        if not isinstance(stored, str) or stored != actual:
            raise ValueError(f"{path}: corrupt checkpoint: its SHA-256 digest does not match its contents (stored "
                             f"{str(stored)[:16]!s}..., computed {actual[:16]}...); the file changed after it was "
                             "saved. Use another copy or re-train")
    for key, kind in (("metadata", dict), ("history", dict), ("optimizer_state", dict), ("rng_state", dict)):
        value = payload.get(key)
        if value is not None and not isinstance(value, kind):
            raise ValueError(f"{path}: broken checkpoint: {key} is a {type(value).__name__}, expected a dict or None")


def load_checkpoint(path, model=None, with_state=False):
    """Load a checkpoint written by `save_checkpoint`: rebuild its model on the CPU, or load it into `model`.

    Reads with torch.load(path, weights_only=True, map_location="cpu"): no code from the file runs. The
    SHA-256 digest stored in the file is checked first, so a corrupted file is an error, never a model
    with silently changed weights. Before any weights are allocated, the stored config is checked
    against the stored tensor shapes (a crafted config cannot make it allocate a huge model).

    Args:
        path: the checkpoint file.
        model: None to rebuild the model from the file's class name and config (MLP models), or a
            VAE/Autoencoder you built (e.g. with your own encoder and decoder) to load the weights into:
            its class, config and state_dict keys and shapes must match the file's. The model keeps its
            device and takes the stored dtype.
        with_state: False returns the model; True returns a Checkpoint(model, optimizer_state, history,
            rng_state, metadata) NamedTuple, whose fields go straight into fit(...) to resume training.
    Returns:
        The VAE or Autoencoder with the stored weights (in the stored dtype), or a Checkpoint.
    Raises:
        FileNotFoundError: `path` does not exist (the message names it).
        ValueError: the file is not a readable vaelib checkpoint (corrupt, truncated, tampered with, of
            another format), its model needs `model=`, or `model` does not match it.
        TypeError: `model` is not a VAE or Autoencoder.
    """
    if model is not None:
        _check_model(model)
    if isinstance(path, str) and not path:
        raise ValueError("path must name a checkpoint file, got ''")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    payload = _read_payload(path)
    _verify(path, payload)
    cls = MODELS.get(payload.get("model_class"))
    config, state = payload.get("config"), payload.get("state_dict")
    if cls is None or not isinstance(config, dict) or not isinstance(state, dict) \
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f"{path}: broken checkpoint: model_class {payload.get('model_class')!r}, expected one of "
                         f"{sorted(MODELS)} with a config and a state_dict of tensors")
    floats = [t for t in state.values() if t.is_floating_point()]
    if model is None:
        if any(config.get(k) == "custom" for k in ("encoder", "decoder")):
            raise ValueError(f"{path}: holds a {cls.__name__} with your own encoder/decoder (config {_short(config)}), "
                             "which the file alone cannot rebuild: build the same model and pass it, "
                             "load_checkpoint(path, model=model)")
        model = _rebuild(path, cls, config, state)
    else:
        if not isinstance(model, cls):
            raise ValueError(f"{path}: holds a {cls.__name__}, cannot load it into a {type(model).__name__}")
        mine = _plain(model.config, "model.config")
        if mine != config:
            diff = sorted(k for k in set(mine) | set(config) if mine.get(k, "<absent>") != config.get(k, "<absent>"))
            details = "; ".join(f"{k}: file {_short(repr(config.get(k, '<absent>')))}, "
                                f"model {_short(repr(mine.get(k, '<absent>')))}"
                                for k in diff[:5])
            raise ValueError(f"{path}: the model's config differs from the file's ({details}); build the model "
                             "with the same arguments")
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        have = {k: tuple(v.shape) for k, v in state.items()}
        problem = _state_mismatch(want, have, "the model")
        if problem is not None:
            raise ValueError(f"{path}: {problem}; build the model with the same encoder and decoder as the saved one")
    try:
        if floats:
            model.to(dtype=floats[0].dtype)
        with torch.no_grad():
            model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        raise ValueError(f"{path}: broken checkpoint: cannot load the weights into {cls.__name__} "
                         f"({_short(' '.join(str(e).split()))})") from None
    if not with_state:
        return model
    history = payload.get("history")
    if history is not None:  # carries the state to resume from: fit(model, x, epochs, history=checkpoint.history)
        history = History(history)
        history.optimizer_state, history.rng_state = payload.get("optimizer_state"), payload.get("rng_state")
    return Checkpoint(model, payload.get("optimizer_state"), history, payload.get("rng_state"), payload.get("metadata"))


def _short(value, limit=300):
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
