"""Training: `fit` (Adam on in-memory minibatches, dynamic binarization, history), and checkpoints.

`fit` trains a `vaelib.models.VAE` (loss = minus the ELBO, optionally with a KL weight beta) or a
`vaelib.models.Autoencoder` (loss = minus the reconstruction log-likelihood) on a data tensor held in
memory: each epoch draws a seeded permutation (torch.randperm), a fresh binarization of the whole
training tensor for Bernoulli likelihoods, then steps through the minibatches. No Dataset, DataLoader
or image decoding; the hot loop calls the models' unchecked methods, the data are checked once.

Reproducibility: the model's initial weights come from torch's global generator when the model is
constructed, so call `torch.manual_seed(s)` before constructing it. `fit` draws everything else (the
permutations, the binarizations, the reparameterization noise) from its own generator seeded with
`seed`, so the same (s, seed) gives the same weights bit for bit on the same machine and device.
The generator's state travels in the returned history and in checkpoints, so a resumed run continues
the same random stream: 2 epochs, save, load, 1 more epoch == 3 epochs uninterrupted.

Checkpoints hold only tensors, dicts, lists, strings and numbers, so `torch.load(weights_only=True)`
reads them; the model is rebuilt from its class name and constructor config stored in the file.
"""

import hashlib
import math
import os
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from vaelib import _validate, quick_mode
from vaelib.models import MODELS, VAE, Autoencoder, _check_beta, _check_values

CHECKPOINT_FORMAT = "vaelib-checkpoint"
CHECKPOINT_VERSION = 1

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
    optimizer_state: dict | None  # Adam state dict, for fit(optimizer_state=...)
    history: dict | None  # per-epoch lists, for fit(history=...)
    rng_state: dict | None  # {"device", "state"}, for fit(rng_state=...)
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


def _check_data(model, name, x, binarize):
    model._check_x(x, name=name, match_model=False)  # fit converts the data to the model's dtype and device
    if x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one example, got shape {tuple(x.shape)}")
    if binarize and model.likelihood != "bernoulli":
        _check_values(name, x, unit_interval=True)  # probabilities to binarize


def _start_history(model, history, with_valid):
    """A History continuing `history` (copied, not modified), checked against the model type."""
    keys = _history_keys(model, with_valid)
    if history is None:
        return History({k: [] for k in keys})
    if not isinstance(history, dict) or not isinstance(history.get("epoch"), list):
        raise TypeError("history must be a dict of per-epoch lists with an 'epoch' key (from fit or a checkpoint), "
                        f"got {type(history).__name__}")
    n = len(history["epoch"])
    valid_key = "valid_elbo" if isinstance(model, VAE) else "valid_log_px_z"
    expected = set(_history_keys(model, False))
    given = set(history) - {valid_key}
    if given != expected:
        raise ValueError(
            f"history keys {sorted(history)} do not fit a {type(model).__name__}: expected {sorted(expected)} "
            f"(plus {valid_key!r} with a validation set)"
        )
    if any(not isinstance(v, list) or len(v) != n for v in history.values()):
        raise ValueError(f"history lists must all have length len(history['epoch']) = {n}")
    out = History({k: list(v) for k, v in history.items()})
    if with_valid and valid_key not in out:
        out[valid_key] = [None] * n  # earlier epochs ran without a validation set
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
            "resume on the same kind of device, or pass rng_state=None to reseed with `seed`"
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

    Args:
        model: a vaelib.models.VAE or Autoencoder.
        train_x: (N, D) training data (values in [0, 1] for a Bernoulli likelihood). Checked once.
        epochs: number of epochs to run (>= 0).
        batch_size: minibatch size.
        lr: Adam learning rate (overrides the rate stored in `optimizer_state`).
        seed: seed of fit's generator (permutations, binarization, reparameterization noise).
        device: "cpu", "cuda", a torch.device, or None for CUDA when available, else the CPU.
        valid_x: optional (M, D) validation data; its ELBO (log p(x | z) for an Autoencoder) is
            recorded after every epoch.
        binarize: dynamic binarization; None means True for a Bernoulli likelihood, False for Gaussian.
        progress: show a tqdm progress bar (tqdm.auto: a widget in notebooks, text on stderr otherwise).
            None: on, except in quick mode (VAELIB_QUICK=1). Tests pass False.
        beta: KL weight of the VAE objective (1 = the ELBO; ignored for an Autoencoder).
        warmup_epochs: epochs of linear KL warm-up from 0 to beta (VAE only); 0 = none.
        n_samples: K samples of z per example in the VAE's Monte Carlo reconstruction term.
        optimizer_state: an Adam state dict to resume from (History.optimizer_state or a checkpoint's).
        history: a history to continue (from fit or a checkpoint): new epochs are appended, numbered
            after its last. The argument itself is not modified.
        rng_state: a generator state to continue (History.rng_state or a checkpoint's); None seeds with `seed`.
    Returns:
        History: a dict of per-epoch lists (see `History` for the keys), all in nats per example, with
        the optimizer and generator state as attributes for `save_checkpoint`.
    Raises:
        TypeError, ValueError: bad arguments or data (wrong shape, dtype, NaN/inf, values outside [0, 1]).
        FloatingPointError: the loss became NaN or infinite; the message names the epoch and step.
    """
    _check_model(model)
    _validate.positive_int("epochs", epochs, minimum=0)
    _validate.positive_int("batch_size", batch_size)
    lr = _validate.positive_scalar("lr", lr)
    _validate.positive_int("seed", seed, minimum=0)
    beta = _check_beta(beta)
    _validate.positive_int("warmup_epochs", warmup_epochs, minimum=0)
    _validate.positive_int("n_samples", n_samples)
    device = resolve_device(device)
    if binarize is None:
        binarize = model.likelihood == "bernoulli"
    if not isinstance(binarize, bool):
        raise TypeError(f"binarize must be True, False or None, got {type(binarize).__name__}")
    progress = (not quick_mode()) if progress is None else progress
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None, got {type(progress).__name__}")
    _check_data(model, "train_x", train_x, binarize)
    if valid_x is not None:
        _check_data(model, "valid_x", valid_x, binarize)
    history = _start_history(model, history, valid_x is not None)
    start = history["epoch"][-1] if history["epoch"] else 0
    is_vae = isinstance(model, VAE)
    valid_key = "valid_elbo" if is_vae else "valid_log_px_z"

    model.to(device)
    dtype = next(model.parameters()).dtype
    x = train_x.to(device=device, dtype=dtype)  # (N, D), the whole training set in memory
    N = x.shape[0]
    n_steps = math.ceil(N / batch_size)

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    if optimizer_state is not None:
        try:
            optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise ValueError(f"optimizer_state does not fit this model's parameters ({e})") from None
        for group in optimizer.param_groups:
            group["lr"] = lr
    gen = _make_generator(device, seed, rng_state)

    if valid_x is not None:
        vgen = torch.Generator(device=device).manual_seed(_derived_seed(seed, "valid"))
        vx = valid_x.to(device=device, dtype=dtype)  # (M, D)
        if binarize:
            vx = torch.bernoulli(vx, generator=vgen)  # one fixed binarization
        vgen_state = vgen.get_state()
        if is_vae:
            valid_fn = lambda xb: model._elbo_terms(xb, 1, vgen).elbo  # noqa: E731
        else:
            valid_fn = model._reconstruction_log_likelihood
        valid_batch = max(batch_size, 1024)

    with tqdm(total=epochs * n_steps, disable=not progress, unit="batch", dynamic_ncols=True) as bar:
        for epoch in range(start + 1, start + epochs + 1):
            beta_e = beta * min(1.0, (epoch - 1) / warmup_epochs) if warmup_epochs else beta
            bar.set_description(f"epoch {epoch}/{start + epochs}")
            t0 = time.perf_counter()
            perm = torch.randperm(N, generator=gen, device=device)  # (N,)
            xe = x[perm]  # (N, D) shuffled
            if binarize:
                xe = torch.bernoulli(xe, generator=gen)  # (N, D) fresh binary draw
            losses = torch.empty(n_steps, dtype=dtype, device=device)  # per-step loss, checked every _CHECK_EVERY
            sum_log_px_z = torch.zeros((), dtype=dtype, device=device)
            sum_kl = torch.zeros((), dtype=dtype, device=device)
            checked = 0
            for step, xb in enumerate(xe.split(batch_size)):
                optimizer.zero_grad(set_to_none=True)
                if is_vae:
                    loss, terms = model._loss(xb, beta_e, n_samples, gen)
                    sum_kl += terms.kl.detach().sum()
                    log_px_z = terms.log_px_z
                else:
                    loss, log_px_z = model._loss(xb)
                loss.backward()
                optimizer.step()
                losses[step] = loss.detach()
                sum_log_px_z += log_px_z.detach().sum()
                if step + 1 - checked >= _CHECK_EVERY:
                    _check_losses(losses, checked, step + 1, epoch, n_steps)
                    checked = step + 1
                    bar.set_postfix(loss=f"{losses[step].item():.2f}")
                bar.update(1)
            _check_losses(losses, checked, n_steps, epoch, n_steps)
            log_px_z_mean = sum_log_px_z.item() / N
            seconds = time.perf_counter() - t0

            history["epoch"].append(epoch)
            history["log_px_z"].append(log_px_z_mean)
            if is_vae:
                kl_mean = sum_kl.item() / N
                history["elbo"].append(log_px_z_mean - kl_mean)
                history["kl"].append(kl_mean)
                history["beta"].append(beta_e)
            history["seconds"].append(seconds)
            postfix = {"elbo": f"{history['elbo'][-1]:.2f}"} if is_vae else {"log_px_z": f"{log_px_z_mean:.2f}"}
            if valid_x is not None:
                vgen.set_state(vgen_state)  # the same validation noise every epoch
                value = _batched(valid_fn, vx, valid_batch).mean().item()
                history[valid_key].append(value)
                postfix["valid"] = f"{value:.2f}"
            elif valid_key in history:
                history[valid_key].append(None)  # resumed without the validation set of earlier epochs
            bar.set_postfix(postfix)

    history.optimizer_state = optimizer.state_dict()
    history.rng_state = {"device": device.type, "state": gen.get_state()}
    return history


def _check_losses(losses, begin, end, epoch, n_steps):
    """Raise FloatingPointError naming the first step in [begin, end) whose loss is NaN or infinite."""
    window = losses[begin:end]
    if bool(torch.isfinite(window).all()):
        return
    bad = begin + int(torch.nonzero(~torch.isfinite(window))[0, 0])
    raise FloatingPointError(
        f"the training loss is {losses[bad].item()} at epoch {epoch}, step {bad + 1} of {n_steps}; "
        "the parameters are no longer usable. Lower the learning rate, check the data, or resume from a checkpoint"
    )


# -- checkpoints ------------------------------------------------------------------------------------

def atomic_write(path, write, mode="wb"):
    """Write a file so that `path` is either the old file or the complete new one, never a partial one.

    `write(f)` writes into a temporary file in the same directory, which is flushed, fsync'ed, given the
    usual permissions (0666 minus the umask) and renamed over `path` with os.replace; on any failure the
    temporary file is removed and `path` is untouched.

    Args:
        path: destination (its directory must exist).
        write: callable taking the open temporary file.
        mode: "wb" or "w".
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _to_cpu(obj):
    """A copy of a nested structure of tensors/dicts/lists/tuples with every tensor detached on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def save_checkpoint(path, model, optimizer=None, history=None, rng_state=None, metadata=None):
    """Save a model, and optionally the training state, so that `load_checkpoint` rebuilds it from the file alone.

    Stored: format tag and version, the model class name ("VAE" or "Autoencoder"), its constructor
    config, its state_dict (on the CPU), the optimizer state, the history, the generator state and
    `metadata` — only tensors, dicts, lists, strings and numbers (readable with weights_only=True).
    The file is written to a temporary file in the same directory, flushed to disk, then renamed over
    `path` with os.replace, so an interrupted save never leaves a broken checkpoint at `path`.

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
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot save checkpoint {path}: directory {path.parent} does not exist")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_class": type(model).__name__,
        "config": model.config,
        "state_dict": _to_cpu(dict(model.state_dict())),
        "optimizer_state": _to_cpu(optimizer),
        "history": None if history is None else {k: list(v) for k, v in history.items()},
        "rng_state": _to_cpu(rng_state),
        "metadata": metadata,
    }
    atomic_write(path, lambda f: torch.save(payload, f))
    return path


def _read_payload(path):
    """torch.load(weights_only=True) of an existing file; anything unreadable becomes a ValueError naming it."""
    with open(path, "rb") as f:  # errors opening the file (permissions) surface as they are
        try:
            return torch.load(f, weights_only=True, map_location="cpu")
        except Exception as e:  # corrupt or truncated zip (even as OSError), bad pickle, disallowed globals
            kind, first = type(e).__name__, (str(e).strip().splitlines() or [""])[0][:200]
    if first.startswith("Weights only load failed"):
        first = "not a torch file of plain tensors, dicts, lists, strings and numbers"
    raise ValueError(f"{path}: not a readable vaelib checkpoint; the file is corrupt, truncated or of another "
                     f"format ({kind}: {first})")


def load_checkpoint(path, with_state=False):
    """Rebuild a model from a checkpoint written by `save_checkpoint`, on the CPU.

    Reads with torch.load(path, weights_only=True, map_location="cpu"): no code from the file runs.

    Args:
        path: the checkpoint file.
        with_state: False returns the model; True returns a Checkpoint(model, optimizer_state, history,
            rng_state, metadata) NamedTuple, whose fields go straight into fit(...) to resume training.
    Returns:
        The VAE or Autoencoder with the stored weights (in the stored dtype), or a Checkpoint.
    Raises:
        FileNotFoundError: `path` does not exist (the message names it).
        ValueError: the file is not a readable vaelib checkpoint (corrupt, truncated, or another format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    payload = _read_payload(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a vaelib checkpoint (no '{CHECKPOINT_FORMAT}' format tag)")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {payload.get('version')!r}; this vaelib reads version {CHECKPOINT_VERSION}")
    cls = MODELS.get(payload.get("model_class"))
    config, state = payload.get("config"), payload.get("state_dict")
    if cls is None or not isinstance(config, dict) or not isinstance(state, dict):
        raise ValueError(f"{path}: broken checkpoint: model_class {payload.get('model_class')!r}, expected one of "
                         f"{sorted(MODELS)} with a config and a state_dict")
    try:
        model = cls(**config)
        floats = [t for t in state.values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
        if floats:
            model.to(dtype=floats[0].dtype)
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        detail = " ".join(str(e).split())
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise ValueError(f"{path}: broken checkpoint: cannot rebuild {cls.__name__} from its config and weights "
                         f"({detail})") from None
    if not with_state:
        return model
    return Checkpoint(model, payload.get("optimizer_state"), payload.get("history"), payload.get("rng_state"),
                      payload.get("metadata"))
