"""Training: `fit` (Adam on in-memory minibatches, dynamic binarization, history).

`fit` trains a `vaelib.models.VAE` (loss = minus the ELBO, optionally with a KL weight beta) or a
`vaelib.models.Autoencoder` (loss = minus the reconstruction log-likelihood) on a data tensor held
in
memory: each epoch draws a seeded permutation (torch.randperm), a fresh binarization of the whole
training tensor for Bernoulli likelihoods, then steps through the minibatches (`_train_epoch`). No
Dataset, DataLoader or image decoding. The data's values (NaN, inf, range) are scanned once, before
training; each step calls the model's `loss_terms`, whose checks are cheap (types and shapes). The
KL weight of each epoch is `kl_weight(epoch, beta, warmup_epochs)`.

Reproducibility: the model's initial weights come from torch's global generator when the model is
constructed, so call `torch.manual_seed(s)` before constructing it. `fit` draws everything else (the
permutations, the binarizations, the reparameterization noise) from its own generator seeded with
`seed`, so the same (s, seed) gives the same weights bit for bit on the same machine and device.
The generator's state travels in the returned history and in checkpoints, so a resumed run continues
the same random stream: 2 epochs, save, load, 1 more epoch == 3 epochs uninterrupted.

Nothing is lost: an interrupt (KeyboardInterrupt) or a NaN/inf (FloatingPointError) leaves the model
at the end of the last complete epoch (finite weights) and attaches a resumable History to the
exception as `e.history`; `on_epoch_end` lets a caller save a checkpoint after every epoch (the
command line does). (Longer than most modules: fit's argument checks, its resume state and the
roll-back on an interrupt or a NaN belong together.) The history's keys are declared in
`vaelib.history`; checkpoints live in `vaelib.checkpoints` (DESIGN.md's API also names them
`vaelib.train.save_checkpoint` and `vaelib.train.load_checkpoint`).
"""

import hashlib
import math
import time

import torch
from tqdm.auto import tqdm

from vaelib import _validate, objectives, quick_mode
from vaelib import history as _history
from vaelib.checkpoints import load_checkpoint, save_checkpoint  # noqa: F401 - DESIGN.md's public names
from vaelib.models import check_model
from vaelib.networks import device_dtype, eval_mode, set_mode
from vaelib.registry import LIKELIHOODS

_SEED_LIMIT = 2**64  # torch generators take seeds in [0, 2**64)
_TRAIN_DTYPES = (torch.float32, torch.float64)

# Check the per-step losses for NaN/inf every this many steps (and at the end of each epoch): one
# host-device synchronisation per check instead of one per step.
_CHECK_EVERY = 64


def resolve_device(device=None):
    """torch.device to train on: `device` if given, else CUDA when available, else the CPU.

    Raises ValueError for an unknown device string or a CUDA device on a machine without CUDA.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"device must be 'cpu', 'cuda', 'cuda:N' or None, got {device!r} ({e})"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} requested but CUDA is not available on this machine; use "
            f"device='cpu'"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be a CPU or CUDA device, got {str(device)!r}")
    return device


def _derived_seed(seed, purpose):
    """An independent 63-bit seed for a second stream (e.g. the validation binarization)."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _check_train_dtype(model):
    """fit trains in float32 or float64 only: Adam's moments and the ELBO's sums overflow or stall
    in 16 bits."""
    for name, p in model.named_parameters():
        if p.dtype not in _TRAIN_DTYPES:
            raise TypeError(
                f"model parameter {name!r} has dtype {p.dtype}; fit trains float32 or float64 "
                f"models "
                "only (float16/bfloat16 overflow or stall in Adam and the ELBO's sums): call "
                "model.float() or model.double() first"
            )


def _check_data(model, name, x, binarize):
    x = _validate.as_tensor(name, x).detach()  # data, never a leaf of the training graph
    if (
        x.is_floating_point()
        and x.dtype not in _TRAIN_DTYPES
        and x.dtype not in (torch.float16, torch.bfloat16)
    ):
        raise TypeError(f"{name} has dtype {x.dtype}; expected float32 or float64")
    model.check_x(
        x, name=name, match_model=False
    )  # fit converts the data to the model's dtype and device
    if x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one example, got shape {tuple(x.shape)}")
    # NaN/inf, and [0, 1] for a Bernoulli likelihood or probabilities to binarize: scanned once,
    # here
    return _validate.values(
        name, x, unit_interval=binarize or LIKELIHOODS.get(model.likelihood).unit_interval
    )


def _check_seed(seed):
    _validate.nonnegative_int("seed", seed)
    if seed >= _SEED_LIMIT:
        raise ValueError(f"seed must be < 2**64 (torch generators take 64-bit seeds), got {seed}")
    return seed


_ADAM_GROUP_KEYS = ("params", "lr", "betas", "eps", "weight_decay", "amsgrad")


def _check_adam_state(state, params):
    """Check an Adam state dict against the model's parameters before training starts.

    torch.optim.Adam.load_state_dict accepts any optimizer's state dict (SGD's too) and a state
    whose moments have the wrong shapes; the mistake would surface steps later, mid-training.
    """
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("state"), dict)
        or not isinstance(state.get("param_groups"), list)
    ):
        raise TypeError(
            "optimizer_state must be an Adam state dict {'state': {...}, 'param_groups': [...]} "
            f"(History.optimizer_state or a checkpoint's), got {type(state).__name__}"
        )
    ids = []
    for i, group in enumerate(state["param_groups"]):
        missing = [k for k in _ADAM_GROUP_KEYS if not isinstance(group, dict) or k not in group]
        if missing:
            got = sorted(group) if isinstance(group, dict) else type(group).__name__
            raise ValueError(
                f"optimizer_state is not an Adam state dict: param group {i} lacks {missing} (got "
                f"{got}); "
                "fit trains with Adam, so pass a state from fit or a checkpoint, or None to start "
                "afresh"
            )
        ids.extend(group["params"])
    if len(ids) != len(params):
        raise ValueError(
            f"optimizer_state does not fit this model's parameters: it covers {len(ids)} "
            f"parameters, "
            f"the model has {len(params)}"
        )
    for pid, p in zip(ids, params):
        s = state["state"].get(pid)
        if s is None:
            continue  # a parameter that has not been stepped yet
        for key in ("exp_avg", "exp_avg_sq"):
            t = s.get(key) if isinstance(s, dict) else None
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(p.shape):
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(
                    f"optimizer_state does not fit this model's parameters: state {pid} {key!r} is "
                    f"{got}, expected a tensor of shape {tuple(p.shape)} (not an Adam state for "
                    f"this model?)"
                )
        if not isinstance(s.get("step"), (torch.Tensor, int, float)):
            raise ValueError(
                f"optimizer_state is not an Adam state dict: state {pid} has no 'step'"
            )


def _start_history(model, history, with_valid, optimizer_state, rng_state):
    """`vaelib.history.start`, with the resume state `optimizer_state`/`rng_state` when given
    (checked)."""
    out = _history.start(model, history, with_valid)
    if optimizer_state is not None:
        out.optimizer_state = optimizer_state
    if rng_state is not None:
        out.rng_state = rng_state
    if out.optimizer_state is not None:
        _check_adam_state(out.optimizer_state, list(model.parameters()))
    return out


def _make_generator(device, seed, rng_state):
    gen = torch.Generator(device=device)
    if rng_state is None:
        return gen.manual_seed(seed)
    if not isinstance(rng_state, dict) or not isinstance(rng_state.get("state"), torch.Tensor):
        raise TypeError(
            "rng_state must be the dict {'device': str, 'state': uint8 tensor} from a History or "
            "checkpoint"
        )
    saved = rng_state.get("device")
    if saved != device.type:
        raise ValueError(
            f"rng_state comes from a {saved} generator but training runs on {device.type}; "
            "resume on the same kind of device, or pass History(dict(h)) (vaelib.history) to "
            "continue its "
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
    """A deep copy of a nested structure of tensors/dicts/lists/tuples (tensors detached, on their
    device).

    `into`: an earlier copy of the same structure, whose tensors of matching shape, dtype and device
    are overwritten in place instead of allocated again (fit copies the training state at the end of
    every epoch).
    """
    if isinstance(obj, torch.Tensor):
        if isinstance(into, torch.Tensor) and (into.shape, into.dtype, into.device) == (
            obj.shape,
            obj.dtype,
            obj.device,
        ):
            return into.copy_(obj)
        return obj.detach().clone()
    if isinstance(obj, dict):
        into = into if isinstance(into, dict) else {}
        return {k: _clone(v, into.get(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        into = (
            into if isinstance(into, (list, tuple)) and len(into) == len(obj) else [None] * len(obj)
        )
        return type(obj)(_clone(v, i) for v, i in zip(obj, into))
    return obj


class _Snapshot:
    """The training state at the end of the last complete epoch: what an interrupt or a NaN rolls
    back to.

    The state lives in one tuple (model state, optimizer state, generator state, epochs), replaced
    by a single assignment: `take` copies into a spare set of buffers (the previous snapshot's), and
    only a complete copy is swapped in, so an interrupt at any point of `take` leaves the previous
    snapshot whole (never weights from two epochs).
    """

    def __init__(self, model, optimizer_state, gen, n_epochs):
        self._state = (
            _clone(model.state_dict()),
            _clone(optimizer_state),
            gen.get_state(),
            n_epochs,  # len(history["epoch"]) at that point
        )
        self._spare = None  # buffers of an older snapshot that `take` may overwrite

    @property
    def model_state(self):
        return self._state[0]

    @property
    def optimizer_state(self):
        return self._state[1]

    @property
    def rng_state(self):
        return self._state[2]

    @property
    def n_epochs(self):
        return self._state[3]

    def take(self, model, optimizer, gen, n_epochs):
        spare, self._spare = self._spare, None  # being overwritten: never the live snapshot
        spare = spare or (None, None)
        new = (
            _clone(model.state_dict(), into=spare[0]),
            _clone(optimizer.state_dict(), into=spare[1]),
            gen.get_state(),
            n_epochs,
        )
        self._state, self._spare = new, self._state  # the swap: `_state` is set in one store

    def give_to(self, history, device):
        """Set history's optimizer and generator state to copies of this snapshot's (training goes
        on)."""
        history.optimizer_state = _clone(self.optimizer_state)
        history.rng_state = {"device": device.type, "state": self.rng_state.clone()}

    def restore(self, model, history, device):
        """Put the model back to the snapshot, cut the history back to its epochs and give it the
        snapshot's state."""
        model_state, optimizer_state, rng_state, n_epochs = self._state
        with torch.no_grad():
            model.load_state_dict(model_state)
        for key in history:
            del history[key][n_epochs:]
        history.optimizer_state = optimizer_state
        history.rng_state = {"device": device.type, "state": rng_state}


def kl_weight(epoch, beta, warmup_epochs):
    """The KL weight of epoch `epoch` (1-based): beta (epoch - 1) / warmup_epochs during a linear
    warm-up from 0 (Bowman et al. 2016, Sonderby et al. 2016), then beta; warmup_epochs = 0: beta
    from the start."""
    if warmup_epochs == 0:
        return beta
    return beta * min(1.0, (epoch - 1) / warmup_epochs)


def _make_optimizer(model, lr, optimizer_state):
    """Adam with the multi-tensor ("foreach") update: the same numbers as the per-parameter loop,
    bit for bit, in fewer operations per step (benchmarks/train_throughput.py; the first Adam of a
    process imports torch._dynamo). The state is copied in: Adam would otherwise update the caller's
    tensors (a history resumed twice must give the same run twice)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, foreach=True)
    if optimizer_state is not None:
        try:
            optimizer.load_state_dict(_clone(optimizer_state))
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise ValueError(
                f"optimizer_state does not fit this model's parameters ({e})"
            ) from None
        for group in optimizer.param_groups:
            group["lr"], group["foreach"] = lr, True
    return optimizer


def _validation_draw(valid_x, binarize, seed, device, dtype):
    """(vx, vgen): the validation data (M, D) on `device` as fit validates them, binarized once
    (a fixed draw) when `binarize`, and the generator of the validation noise, seeded from `seed`,
    which drew it."""
    vgen = torch.Generator(device=device).manual_seed(_derived_seed(seed, "valid"))
    vx = valid_x.to(device=device, dtype=dtype)  # (M, D)
    if binarize:
        vx = torch.bernoulli(vx, generator=vgen)  # one fixed binarization
    return vx, vgen


def _validation(model, valid_x, binarize, seed, batch_size, device, dtype):
    """None without validation data, else a function () -> the mean validation ELBO (an
    Autoencoder's log p(x | z)).

    The data are binarized once (a fixed draw) and every call uses the same noise.
    """
    if valid_x is None:
        return None
    vx, vgen = _validation_draw(valid_x, binarize, seed, device, dtype)
    vgen_state = vgen.get_state()

    def elbo(xb):
        _, log_px_z, kl = model.loss_terms(xb, 1.0, 1, vgen)
        return log_px_z - kl  # (B,); an Autoencoder's kl is 0

    def validate():
        vgen.set_state(vgen_state)  # the same validation noise every epoch
        with eval_mode(model):  # dropout off, batch norm on its running statistics
            return _batched(elbo, vx, max(batch_size, 1024)).mean().item()

    return validate


def _train_epoch(
    model, optimizer, x, *, batch_size, binarize, beta_e, n_samples, gen, epoch, bar, loss_terms
):
    """One epoch: a fresh permutation (and binarization) of x (N, D), then one Adam step per
    minibatch.

    The per-step losses are checked for NaN/inf, with the parameters, every _CHECK_EVERY steps and
    at the end (one host-device synchronisation per check). Returns the epoch's means per example:
    {"log_px_z", "kl", "elbo", "beta", "seconds"}. Raises FloatingPointError naming the step.
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
        loss, log_px_z, kl = loss_terms(xb, beta_e, n_samples, gen)
        loss.backward()
        optimizer.step()
        losses[step] = loss.detach()
        sum_log_px_z += log_px_z.detach().sum()
        sum_kl += kl.detach().sum()
        if step + 1 - checked >= _CHECK_EVERY or step + 1 == n_steps:
            _check_steps_finite(losses, checked, step + 1, epoch, n_steps, model)
            bar.update(step + 1 - checked)
            checked = step + 1
    log_px_z, kl = sum_log_px_z.item() / N, sum_kl.item() / N
    return {
        "log_px_z": log_px_z,
        "kl": kl,
        "elbo": log_px_z - kl,
        "beta": beta_e,
        "seconds": time.perf_counter() - t0,
    }


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
    objective=None,
    K=None,
):
    """Train a VAE (maximise the ELBO) or an Autoencoder (maximise log p(x | z)) with Adam.

    VAE loss per minibatch: -(1/B) sum_b [E_q log p(x_b | z) - beta_e KL(q(z | x_b) || N(0, I))]
    (Kingma & Welling 2013, alg. 1; Adam: Kingma & Ba 2015). beta_e = beta min(1, (e - 1) /
    warmup_epochs) in epoch e (linear KL warm-up from 0: Bowman et al. 2016, Sonderby et al. 2016);
    warmup_epochs=0: beta_e = beta.

    Each epoch: a seeded permutation of the training set; for Bernoulli data a fresh draw x ~
    Bernoulli(train_x) of the whole tensor (dynamic binarization, as in Burda et al. 2016, sec. 5);
    minibatches of `batch_size` (the last one may be smaller); one Adam step per minibatch.
    Validation data are binarized once (a fixed draw) and the validation ELBO uses the same noise
    every epoch.

    The model moves to `device` and stays there. Initial weights are the model's: seed torch
    (torch.manual_seed) before constructing it. Everything random inside fit comes from one
    generator seeded with `seed` (or restored from `rng_state`), so reruns give identical weights.

    The model trains in train mode (dropout on, batch norm on each minibatch, updating its running
    statistics) and is validated in eval mode (`vaelib.networks.eval_mode`), whatever mode it came
    in; fit gives it back in the mode it had.

    Nothing is lost when training stops early: on a KeyboardInterrupt (Ctrl-C, or a signal handler
    that raises one) or a FloatingPointError (a NaN or infinite loss or parameter), fit puts back
    the weights of the end of the last complete epoch (the last finite ones), and the exception
    carries `e.history`: the History of the complete epochs with their optimizer and generator
    state, so `save_checkpoint(path, model, history=e.history)` writes a checkpoint that resumes
    exactly.

    Args:
        model: a vaelib.models.VAE or Autoencoder with float32 or float64 parameters.
        train_x: (N, D) training data, a tensor or numpy array (values in [0, 1] for a Bernoulli
            likelihood). Checked once, then converted to the model's dtype and device.
        epochs: number of epochs to run (>= 0).
        batch_size: minibatch size.
        lr: Adam learning rate (overrides the rate stored in `optimizer_state`).
        seed: seed of fit's generator (permutations, binarization, reparameterization noise), in [0,
            2**64).
        device: "cpu", "cuda", a torch.device, or None for CUDA when available, else the CPU.
        valid_x: optional (M, D) validation data (tensor or numpy array); its ELBO (log p(x | z) for
            an Autoencoder) is recorded after every epoch.
        binarize: dynamic binarization; None means True for a Bernoulli likelihood, False for
            Gaussian.
        progress: show a tqdm progress bar (tqdm.auto: a widget in notebooks, text on stderr
            otherwise). None: on, except in quick mode (VAELIB_QUICK=1). Tests pass False.
        beta: KL weight of the VAE objective (1 = the ELBO; ignored for an Autoencoder).
        warmup_epochs: epochs of linear KL warm-up from 0 to beta (VAE only); 0 = none.
        n_samples: K samples of z per example in the VAE's Monte Carlo reconstruction term.
        optimizer_state: an Adam state dict to resume from; default: the one `history` carries.
        history: a History to continue (from fit, an exception's e.history, or a checkpoint's): new
            epochs are appended, numbered after its last, and training resumes from the optimizer
            and generator state it carries (History.optimizer_state, History.rng_state), so fit(...,
            history=h) continues exactly where the run that returned h stopped. A plain dict of
            lists has no such state: fit starts a fresh Adam and generator and warns (History(d)
            does the same without the warning). Keys that `vaelib.history.KEYS` declares with a fill
            value may be missing (older histories). The argument itself is not modified.
        rng_state: a generator state to continue; default: the one `history` carries, else a
            generator seeded with `seed`.
        on_epoch_end: optional callable(model, history), called after every epoch with the History
            so far, whose optimizer_state and rng_state are those of that moment:
            `save_checkpoint(path, model, history=history)` inside it writes a checkpoint that
            resumes exactly.
        objective: the loss, a name in `vaelib.registry.OBJECTIVES` (`vaelib.objectives`):
            "elbo" (the default: the loss above, bit for bit as before), "iwae" (minus IWAE_K,
            Burda et al. 2016) or "iwae-dreg" (IWAE_K with DReG encoder gradients, Tucker et al.
            2019); VAE only for the IWAE ones, with beta = 1, warmup_epochs = 0, n_samples = 1.
            None: the objective of `history`'s last epoch, else "elbo". The history records each
            epoch's objective and K, so fit(model, x, n, history=h) resumes the same objective.
        K: importance samples per example of an IWAE objective (required with one, unless the
            history's last epoch recorded it); None for the ELBO, whose samples are n_samples.
    Returns:
        History: a dict of per-epoch lists (see `History` for the keys), all in nats per example,
            with
        the optimizer and generator state as attributes for `save_checkpoint`.
    Raises:
        TypeError, ValueError: bad arguments or data (wrong shape, dtype, NaN/inf, values outside
            [0, 1]).
        FloatingPointError: the loss or a parameter became NaN or infinite; the message names the
            epoch and step; the model is back at the last complete epoch and `e.history` holds the
            history up to it.
        KeyboardInterrupt: re-raised after the same roll-back, with `e.history` attached.
    """
    device, binarize, progress = _check_fit_args(
        model,
        epochs,
        batch_size,
        lr,
        seed,
        beta,
        warmup_epochs,
        n_samples,
        device,
        binarize,
        progress,
        on_epoch_end,
    )
    # numpy integers (np.int64) pass the checks as counts; torch wants Python ints
    epochs, batch_size, n_samples, warmup_epochs = map(
        int, (epochs, batch_size, n_samples, warmup_epochs)
    )
    train_x = _check_data(model, "train_x", train_x, binarize)
    valid_x = None if valid_x is None else _check_data(model, "valid_x", valid_x, binarize)
    history = _start_history(model, history, valid_x is not None, optimizer_state, rng_state)
    objective, K = objectives.resolve(
        model, objective, K, history, beta=beta, warmup_epochs=warmup_epochs, n_samples=n_samples
    )
    if objective.name == "elbo":
        loss_terms = model.loss_terms  # the ELBO's loss, as before the objectives arrived
    else:

        def loss_terms(xb, beta_e, n_samples, gen):
            return objective.loss_terms(model, xb, beta_e, n_samples, K, gen)

    valid_key = _history.validation_key(model)
    model.to(device)
    dtype = device_dtype(model)[1]
    x = train_x.to(device=device, dtype=dtype)  # (N, D), the whole training set in memory
    gen = _make_generator(device, seed, history.rng_state)
    validate = _validation(model, valid_x, binarize, seed, batch_size, device, dtype)
    start = history["epoch"][-1] if history["epoch"] else 0
    snapshot = _Snapshot(
        model, history.optimizer_state, gen, len(history["epoch"])
    )  # the start, until an epoch ends
    restore_mode = set_mode(model, training=True)  # train mode; the caller's mode comes back after
    try:
        optimizer = _make_optimizer(model, lr, history.optimizer_state)
        with tqdm(
            total=epochs * math.ceil(x.shape[0] / batch_size),
            disable=not progress,
            unit="batch",
            dynamic_ncols=True,
        ) as bar:
            for epoch in range(start + 1, start + epochs + 1):
                bar.set_description(f"epoch {epoch}/{start + epochs}", refresh=False)
                values = _train_epoch(
                    model,
                    optimizer,
                    x,
                    batch_size=batch_size,
                    binarize=binarize,
                    n_samples=n_samples,
                    beta_e=kl_weight(epoch, beta, warmup_epochs),
                    gen=gen,
                    epoch=epoch,
                    bar=bar,
                    loss_terms=loss_terms,
                )
                values["epoch"] = epoch
                values["objective"], values["K"] = objective.name, K
                values[valid_key] = (
                    validate() if validate else None
                )  # None: resumed without the earlier validation set
                for key in history:
                    history[key].append(values[key])
                bar.set_postfix(
                    {
                        k: f"{values[k]:.2f}"
                        for k in ("elbo", valid_key)
                        if k in history and values[k] is not None
                    },
                    refresh=False,
                )
                snapshot.take(model, optimizer, gen, len(history["epoch"]))
                if on_epoch_end is not None:
                    snapshot.give_to(history, device)
                    on_epoch_end(model, history)
        history.optimizer_state = optimizer.state_dict()
        history.rng_state = {"device": device.type, "state": gen.get_state()}
    except (KeyboardInterrupt, FloatingPointError) as e:
        snapshot.restore(model, history, device)
        e.history = history
        raise
    finally:
        restore_mode()
    return history


def _check_fit_args(
    model,
    epochs,
    batch_size,
    lr,
    seed,
    beta,
    warmup_epochs,
    n_samples,
    device,
    binarize,
    progress,
    on_epoch_end,
):
    """Check fit's arguments; return (device, binarize, progress) with their defaults resolved."""
    check_model(model)
    _check_train_dtype(model)
    _validate.count("epochs", epochs, minimum=0)
    _validate.count("batch_size", batch_size)
    lr = _validate.positive_scalar("lr", lr)
    dtype = device_dtype(model)[1]
    if lr / 0.1 > torch.finfo(dtype).max:  # Adam's first step is lr / (1 - beta1) per parameter
        raise ValueError(
            f"lr={lr:g} is too large for a {dtype} model: Adam's first step, lr / (1 - 0.9), "
            f"overflows {dtype} (at most {torch.finfo(dtype).max:.3g}); typical rates are 1e-4 to "
            "1e-2"
        )
    _check_seed(seed)
    _validate.beta(beta)
    _validate.count("warmup_epochs", warmup_epochs, minimum=0)
    _validate.count("n_samples", n_samples)
    if binarize is None:
        binarize = LIKELIHOODS.get(model.likelihood).binarize
    if not isinstance(binarize, bool):
        raise TypeError(f"binarize must be True, False or None, got {type(binarize).__name__}")
    progress = (not quick_mode()) if progress is None else progress
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None, got {type(progress).__name__}")
    if on_epoch_end is not None and not callable(on_epoch_end):
        raise TypeError(
            "on_epoch_end must be a callable(model, history) or None, got "
            f"{type(on_epoch_end).__name__}"
        )
    return resolve_device(device), binarize, progress


def _check_steps_finite(losses, begin, end, epoch, n_steps, model):
    """Raise FloatingPointError naming the first step in [begin, end) whose loss is NaN or infinite,
    or the first parameter that is, after step `end` (one host-device synchronisation for both
    checks)."""
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
            f"the training loss is {losses[bad].item()} at epoch {epoch}, step {bad + 1} of "
            f"{n_steps}{where}. "
            "Lower the learning rate, check the data, or resume from a checkpoint (the exception's "
            ".history holds "
            "the history and optimizer state up to that epoch)"
        )
    name = next(n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all()))
    raise FloatingPointError(
        f"parameter {name!r} became NaN or infinite at epoch {epoch}, by step {end} of {n_steps} "
        f"(the losses were "
        f"finite){where}. Lower the learning rate, or resume from a checkpoint (the exception's "
        f".history holds "
        "the history and optimizer state up to that epoch)"
    )
