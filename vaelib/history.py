"""What `fit` records per epoch: the history's keys, declared once, and the `History` that carries
the resume state.

Each model class has its keys in `KEYS`, in the order a history holds them. A key declares what it
records and `fill`: the value of the epochs of a history written before the key existed (an older
checkpoint), or `REQUIRED` for the keys every history has always had. A key with `validation=True`
is recorded only when fit has a validation set (None for the epochs that ran without one). Adding a
per-epoch number is one `Key` line here plus the value in `fit`'s epoch: histories saved before it
resume with its `fill`.
"""

import warnings
from typing import NamedTuple

REQUIRED = object()  # the fill of a key that every history must hold


class Key(NamedTuple):
    """One per-epoch entry of a history."""

    name: str
    doc: str
    fill: object = REQUIRED  # the value of the epochs recorded before this key existed
    validation: bool = False  # recorded only with a validation set


KEYS = {
    "VAE": (
        Key("epoch", "the epoch's number, 1-based, counting on from the history it resumed"),
        Key("elbo", "mean training ELBO over the epoch's minibatches, nats per example"),
        Key("log_px_z", "the reconstruction term E_q[log p(x | z)], nats per example"),
        Key("kl", "KL(q(z | x) || p(z)), nats per example"),
        Key("beta", "the KL weight of the epoch"),
        Key("seconds", "wall-clock time of the epoch's training steps"),
        Key("objective", "the training objective (vaelib.registry.OBJECTIVES)", fill="elbo"),
        Key(
            "K", "importance samples per example of an IWAE objective; None for the ELBO", fill=None
        ),
        Key(
            "valid_elbo",
            "the validation ELBO after the epoch, nats per example",
            fill=None,
            validation=True,
        ),
    ),
    "Autoencoder": (
        Key("epoch", "the epoch's number, 1-based, counting on from the history it resumed"),
        Key("log_px_z", "reconstruction log-likelihood log p(x | z), nats per example"),
        Key("seconds", "wall-clock time of the epoch's training steps"),
        Key(
            "valid_log_px_z",
            "the validation log p(x | z) after the epoch, nats per example",
            fill=None,
            validation=True,
        ),
    ),
}


def keys_of(model):
    """The declared keys of `model`'s class (KEYS[class name], looked up along its base classes)."""
    for cls in type(model).__mro__:
        if cls.__name__ in KEYS:
            return KEYS[cls.__name__]
    raise TypeError(
        f"no history keys are declared for {type(model).__name__} (vaelib.history.KEYS)"
    )


def validation_key(model):
    """The name of the key that holds the validation number of `model`'s class."""
    return next(k.name for k in keys_of(model) if k.validation)


class History(dict):
    """What `fit` returns: a dict of per-epoch lists (keys in `KEYS`), plus the state needed to
    resume training.

    Attributes:
        optimizer_state: the Adam state dict after the last epoch (None before training).
        rng_state: {"device": str, "state": uint8 tensor}, the state of fit's generator after the
            last epoch.
    `fit(model, x, n, history=h)` resumes from both, and `save_checkpoint(path, model, history=h)`
    stores them. A plain dict (`dict(h)`, a history.json) holds the lists only; `History(d)` makes
    one with no resume state, which fit continues with a fresh Adam and a generator seeded with
    `seed` (numbering only, another run).
    """

    def __init__(self, *args, optimizer_state=None, rng_state=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.optimizer_state = optimizer_state
        self.rng_state = rng_state


def start(model, history, with_valid):
    """A History continuing `history` (copied, not modified) with every declared key of `model`'s
    class.

    None: an empty one. Keys missing from `history` get their declared fill (REQUIRED keys raise);
        keys that are not
    declared raise (a history of another model class). Resume state: `history`'s when it is a
    History; a plain dict with epochs warns that training continues its numbering only.
    """
    keys = keys_of(model)
    wanted = [k for k in keys if with_valid or not k.validation]
    if history is None:
        return History({k.name: [] for k in wanted})
    if not isinstance(history, dict) or not isinstance(history.get("epoch"), list):
        raise TypeError(
            "history must be a dict of per-epoch lists with an 'epoch' key (from fit or a "
            "checkpoint), "
            f"got {type(history).__name__}"
        )
    n = len(history["epoch"])
    declared = {k.name for k in keys}
    required = {k.name for k in keys if k.fill is REQUIRED}
    if set(history) - declared or required - set(history):
        optional = sorted(declared - required)
        raise ValueError(
            f"history keys {sorted(history)} do not fit a {type(model).__name__}: expected "
            f"{sorted(required)} (plus {', '.join(map(repr, optional))} when recorded)"
        )
    if any(not isinstance(v, list) or len(v) != n for v in history.values()):
        raise ValueError(f"history lists must all have length len(history['epoch']) = {n}")
    out = History()
    for k in keys:  # the declared order
        if k.name in history:
            out[k.name] = list(history[k.name])
        elif k in wanted:
            out[k.name] = [
                k.fill
            ] * n  # epochs recorded before the key existed, or without a validation set
    if isinstance(history, History):
        out.optimizer_state, out.rng_state = history.optimizer_state, history.rng_state
    elif n:
        warnings.warn(
            f"history is a plain {type(history).__name__} without the optimizer and generator "
            f"state: fit "
            "continues its numbering with a fresh Adam and a generator seeded with `seed` (another "
            "run). "
            "Pass the History from fit or a checkpoint to resume exactly, or History(d) to start "
            "afresh "
            "without this warning",
            UserWarning,
            stacklevel=4,
        )
    return out
