"""vaelib.train: fit (seeding, minibatches, binarization, history, errors) and checkpoints.

Tiny models on the embedded digits (1500 train / 297 test images of 8x8), so every test takes well
under a second. The history is checked against independent evaluations of the same model
(vaelib.evaluate, the model's own methods), not just for its keys.
"""

import math
import os

import pytest
import torch

from vaelib import checkpoints, data, evaluate, train
from vaelib.history import History
from vaelib.models import VAE, Autoencoder

KW = dict(batch_size=128, progress=False)


@pytest.fixture(scope="module")
def digits():
    x, _ = data.load("digits", "train")
    xv, _ = data.load("digits", "test")
    return x, xv


def vae(seed=0, cls=VAE, **kw):
    torch.manual_seed(seed)
    return cls(64, 2, (16,), **kw)


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def without_seconds(h):
    return {k: v for k, v in h.items() if k != "seconds"}


# -- reproducibility and resuming
# -------------------------------------------------------------------


def test_same_seeds_give_identical_weights_and_history(digits):
    x, xv = digits
    a, b, c = vae(), vae(), vae()
    ha = train.fit(a, x, 2, seed=5, valid_x=xv, **KW)
    hb = train.fit(b, x, 2, seed=5, valid_x=xv, **KW)
    train.fit(c, x, 2, seed=6, **KW)
    assert same_weights(a, b)
    assert without_seconds(ha) == without_seconds(hb)
    assert not same_weights(a, c)  # another fit seed: other permutations, binarizations and noise


def test_resume_from_checkpoint_equals_uninterrupted_training(digits, tmp_path):
    """2 epochs, save, load in a fresh model, 1 more epoch == 3 epochs in one go, bit for bit.

    The checkpoint carries the weights, Adam's moments and step count, and fit's generator state.
    """
    x, xv = digits
    straight = vae()
    h3 = train.fit(straight, x, 3, seed=1, valid_x=xv, **KW)

    first = vae()
    h2 = train.fit(first, x, 2, seed=1, valid_x=xv, **KW)
    path = checkpoints.save_checkpoint(tmp_path / "model.pt", first, history=h2)
    ck = checkpoints.load_checkpoint(path, with_state=True)
    assert same_weights(ck.model, first)  # the weights load exactly
    h = train.fit(
        ck.model,
        x,
        1,
        seed=1,
        valid_x=xv,
        optimizer_state=ck.optimizer_state,
        history=ck.history,
        rng_state=ck.rng_state,
        **KW,
    )
    assert h["epoch"] == [1, 2, 3]
    assert without_seconds(h) == without_seconds(h3)
    assert same_weights(ck.model, straight)
    assert ck.history["epoch"] == [1, 2]  # fit appended to a copy


def test_resume_from_the_history_alone_continues_exactly(digits):
    """fit(..., history=h) resumes from the optimizer and generator state h carries: 2 epochs, then
    1 more from the history alone, give the weights and numbers of 3 epochs in one go, bit for bit.
    A plain dict of lists (no state) continues the numbering only, with a fresh Adam and generator:
    a different run, and a warning that says so (History(d) is the same without the warning)."""
    x, xv = digits
    straight = vae()
    h3 = train.fit(straight, x, 3, **KW)
    model = vae()
    h = train.fit(model, x, 2, **KW)
    h = train.fit(model, x, 1, history=h, **KW)
    assert all(
        torch.equal(a, b)
        for a, b in zip(straight.state_dict().values(), model.state_dict().values())
    )
    assert {k: v for k, v in h.items() if k != "seconds"} == {
        k: v for k, v in h3.items() if k != "seconds"
    }
    fresh = vae()
    h = train.fit(fresh, x, 2, **KW)
    plain = {k: list(v) for k, v in h.items()}
    with pytest.warns(
        UserWarning, match=r"history is a plain dict without the optimizer and generator state"
    ):
        h = train.fit(fresh, x, 1, history=plain, **KW)
    assert h["epoch"] == [1, 2, 3] and h["elbo"][2] != h3["elbo"][2]
    assert train.fit(vae(), x, 1, history=History(plain), **KW)["epoch"] == [
        1,
        2,
        3,
    ]  # no warning: History(d)
    h = train.fit(model, x, 2, valid_x=xv, history=h, **KW)
    assert h["epoch"] == [1, 2, 3, 4, 5]
    assert h["valid_elbo"][:3] == [None] * 3 and all(
        isinstance(v, float) for v in h["valid_elbo"][3:]
    )
    h = train.fit(model, x, 1, history=h, **KW)  # the validation set left out again
    assert h["valid_elbo"][-1] is None and len(h["valid_elbo"]) == 6


def test_a_history_resumed_twice_gives_the_same_run_twice_and_is_not_modified(digits):
    """fit copies the optimizer state it resumes from: Adam must not update the caller's history in
    place."""
    x, _ = digits
    model = vae()
    h = train.fit(model, x, 1, **KW)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    saved = {i: {n: t.clone() for n, t in s.items()} for i, s in h.optimizer_state["state"].items()}
    runs = []
    for _ in range(2):
        model.load_state_dict(start)
        runs.append(train.fit(model, x, 1, history=h, **KW)["elbo"][-1])
    assert runs[0] == runs[1]
    assert all(
        torch.equal(t, saved[i][n])
        for i, s in h.optimizer_state["state"].items()
        for n, t in s.items()
    )


def test_the_state_handed_to_on_epoch_end_has_this_run_learning_rate(digits):
    x, _ = digits
    model = vae()
    h = train.fit(model, x, 1, lr=1e-3, **KW)
    seen = []
    h = train.fit(
        model,
        x,
        2,
        lr=5e-4,
        history=h,
        **KW,
        on_epoch_end=lambda m, hist: seen.append(hist.optimizer_state["param_groups"][0]["lr"]),
    )
    assert seen == [5e-4, 5e-4] and h.optimizer_state["param_groups"][0]["lr"] == 5e-4


# -- what fit computes
# ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [VAE, Autoencoder])
def test_history_is_the_per_example_average_over_the_epoch(digits, cls):
    """With a learning rate of 1e-9 the model does not move during the epoch, so the recorded
    training averages must agree with an independent evaluation of the model on a fresh binarization
    of the same data: two independent estimates of one mean, within 4 standard errors of their
    difference."""
    x, _ = digits
    model = vae(cls=cls).double()
    h = train.fit(model, x, 1, lr=1e-9, seed=2, **KW)
    xb = torch.bernoulli(x.double(), generator=torch.Generator().manual_seed(3))
    if cls is VAE:
        terms = model.elbo_terms(xb, generator=torch.Generator().manual_seed(4))
        checks = [("elbo", terms.elbo), ("log_px_z", terms.log_px_z), ("kl", terms.kl)]
        assert h["elbo"][0] == pytest.approx(h["log_px_z"][0] - h["kl"][0], abs=1e-9)
    else:
        checks = [("log_px_z", model.reconstruction_log_likelihood(xb))]
    for key, values in checks:
        values = values.detach()
        se = math.sqrt(2) * values.std().item() / math.sqrt(len(values))
        assert abs(h[key][0] - values.mean().item()) < 4 * se, (
            key,
            h[key][0],
            values.mean().item(),
            se,
        )


def test_validation_elbo_is_the_elbo_of_the_validation_set(digits):
    x, xv = digits
    model = vae().double()
    h = train.fit(model, x, 2, valid_x=xv, **KW)
    xb = torch.bernoulli(xv.double(), generator=torch.Generator().manual_seed(0))
    values = evaluate.test_elbo(model, xb, n_samples=1, generator=torch.Generator().manual_seed(1))
    # fit uses its own fixed binarization and noise: agreement within 4 standard errors of the
    # difference
    se = math.sqrt(2) * values.std().item() / math.sqrt(len(values))
    assert abs(h["valid_elbo"][-1] - values.mean().item()) < 4 * se


def spy_on_batches(model, record):
    """Record every minibatch (and beta) that fit passes to the model's training loss."""
    inner = model.loss_terms

    def spy(xb, *args):
        record.append((xb.detach().clone(), args[0] if args else None))
        return inner(xb, *args)

    model.loss_terms = spy


def test_each_epoch_visits_every_example_once_in_a_new_order(digits):
    x, _ = digits
    x = x[:300].clone()
    x[:, 0] = torch.arange(300) / 1000.0  # pixel 0 is blank in every digit: use it as an example id
    model, record = vae(), []
    spy_on_batches(model, record)
    train.fit(model, x, 2, batch_size=128, binarize=False, progress=False)
    assert [b.shape[0] for b, _ in record] == [128, 128, 44] * 2  # the last, smaller batch is kept
    epochs = [torch.cat([b for b, _ in record[i : i + 3]]) for i in (0, 3)]  # (300, 64) each
    for e in epochs:
        assert torch.equal(e[torch.argsort(e[:, 0])], x)  # every example exactly once, unchanged
    assert not torch.equal(epochs[0][:, 0], x[:, 0])  # shuffled ...
    assert not torch.equal(epochs[0][:, 0], epochs[1][:, 0])  # ... differently each epoch


def test_dynamic_binarization_draws_fresh_binary_data_each_epoch(digits):
    x, _ = digits
    model, record = vae(), []
    spy_on_batches(model, record)
    train.fit(model, x, 2, batch_size=1500, seed=0, progress=False)  # one batch per epoch
    (b1, _), (b2, _) = record
    assert set(torch.unique(torch.cat([b1, b2])).tolist()) == {0.0, 1.0}
    # E[binarized] = x: the pixel mean of a binarization matches the grey-scale mean within 5 SE.
    p = x.mean().item()
    assert abs(b1.mean().item() - p) < 5 * math.sqrt(p * (1 - p) / x.numel())
    assert not torch.equal(
        b1.sum(0), b2.sum(0)
    )  # a new draw in epoch 2, not the same one reshuffled
    g, gr = (
        vae(likelihood="gaussian", sigma_x=0.3),
        [],
    )  # Gaussian: no binarization by default (sigma_x = 1 would warn)
    spy_on_batches(g, gr)
    train.fit(g, x, 1, batch_size=1500, progress=False)
    assert len(torch.unique(gr[0][0])) > 2


def test_warmup_ramps_the_kl_weight_used_by_the_loss(digits):
    x, _ = digits
    model, record = vae(), []
    spy_on_batches(model, record)
    h = train.fit(model, x[:256], 4, beta=0.5, warmup_epochs=2, batch_size=128, progress=False)
    assert h["beta"] == [0.0, 0.25, 0.5, 0.5]  # beta * min(1, (e - 1) / warmup_epochs)
    assert [b for _, b in record] == [0.0, 0.0, 0.25, 0.25, 0.5, 0.5, 0.5, 0.5]


def test_training_improves_the_elbo(digits):
    x, xv = digits
    model = vae()
    h = train.fit(model, x, 6, lr=3e-3, valid_x=xv, **KW)
    assert h["elbo"][-1] > h["elbo"][0] + 1.0
    assert h["valid_elbo"][-1] > h["valid_elbo"][0] + 1.0
    assert all(k >= 0 for k in h["kl"]) and all(s > 0 for s in h["seconds"])


def test_nan_loss_raises_naming_epoch_and_step(digits):
    x, _ = digits
    model = vae()
    inner, calls = model.loss_terms, [0]

    def poisoned(xb, *args):
        calls[0] += 1
        loss, log_px_z, kl = inner(xb, *args)
        return (
            (loss * float("nan"), log_px_z, kl) if calls[0] == 12 + 3 else (loss, log_px_z, kl)
        )  # epoch 2, step 3

    model.loss_terms = poisoned
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 2, step 3 of 12"):
        train.fit(model, x, 3, **KW)


def test_progress_bar_on_stderr(digits, capsys):
    x, _ = digits
    train.fit(vae(), x[:200], 1, batch_size=100, progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "2/2" in err


def test_default_device_and_dtype(digits):
    x, _ = digits
    model = vae().double()  # float32 data, float64 model: fit casts the data once
    train.fit(model, x[:100], 1, device=None, **KW)
    p = next(model.parameters())
    assert p.dtype == torch.float64
    assert p.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
        ),
    ],
)
def test_training_on_a_device_records_the_right_numbers_and_resumes(digits, tmp_path, device):
    """What a run on `device` could get wrong, checked against the CPU and against itself. The "cpu"
    case is the same check on a machine without a GPU (where it can be seen to pass and to fail).

    1. The model, Adam's moments and the generator live on the device; every recorded number is
       finite.
    2. The numbers fit records on the device are those of the model: with lr = 1e-9 the model does
       not move during the epoch, so the training averages (elbo, log_px_z, kl) and the validation
       ELBO must agree with the same model copied to the CPU and evaluated there on its own
       binarization and noise: two independent estimates of one mean, within 4 standard errors of
       their difference.
    3. Save on the device, load (on the CPU), resume one epoch on the device: the same history and
       weights as three epochs in one go, bit for bit (the same kernels on the same inputs from the
       same generator state).
    """
    x, xv = digits
    model = vae()
    h = train.fit(model, x, 1, lr=1e-9, seed=2, valid_x=xv, device=device, **KW)
    assert {p.device.type for p in model.parameters()} == {device}
    moments = [t for s in h.optimizer_state["state"].values() for n, t in s.items() if n != "step"]
    assert len(moments) == 2 * len(list(model.parameters())) and {
        t.device.type for t in moments
    } == {device}
    assert h.rng_state["device"] == device
    assert all(math.isfinite(v) for key in ("elbo", "log_px_z", "kl", "valid_elbo") for v in h[key])
    cpu = vae()
    cpu.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    xb = torch.bernoulli(x, generator=torch.Generator().manual_seed(3))
    terms = cpu.elbo_terms(xb, generator=torch.Generator().manual_seed(4))
    xvb = torch.bernoulli(xv, generator=torch.Generator().manual_seed(5))
    valid = evaluate.test_elbo(cpu, xvb, n_samples=1, generator=torch.Generator().manual_seed(6))
    for key, recorded, values in [
        ("elbo", h["elbo"][0], terms.elbo),
        ("log_px_z", h["log_px_z"][0], terms.log_px_z),
        ("kl", h["kl"][0], terms.kl),
        ("valid_elbo", h["valid_elbo"][0], valid),
    ]:
        values = values.detach()
        se = math.sqrt(2) * values.std().item() / math.sqrt(len(values))
        assert abs(recorded - values.mean().item()) < 4 * se, (
            key,
            recorded,
            values.mean().item(),
            se,
        )

    straight = vae()
    h3 = train.fit(straight, x, 3, seed=1, valid_x=xv, device=device, **KW)
    first = vae()
    h2 = train.fit(first, x, 2, seed=1, valid_x=xv, device=device, **KW)
    path = checkpoints.save_checkpoint(tmp_path / "model.pt", first, history=h2)
    ck = checkpoints.load_checkpoint(path, with_state=True)
    saved = {k: v.cpu() for k, v in first.state_dict().items()}
    assert all(
        torch.equal(v, saved[k]) for k, v in ck.model.state_dict().items()
    )  # the weights load exactly
    h = train.fit(
        ck.model,
        x,
        1,
        seed=1,
        valid_x=xv,
        device=device,
        optimizer_state=ck.optimizer_state,
        history=ck.history,
        rng_state=ck.rng_state,
        **KW,
    )
    assert h["epoch"] == [1, 2, 3]
    assert without_seconds(h) == without_seconds(h3)
    assert same_weights(ck.model, straight)


# -- bad input
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, error, match",
    [
        (
            dict(model=torch.nn.Linear(64, 2)),
            TypeError,
            r"model must be a vaelib.models.VAE or Autoencoder, got Linear",
        ),
        (
            dict(train_x=torch.zeros(10, 63)),
            ValueError,
            r"train_x must have shape \(B, 64\).*got \(10, 63\)",
        ),
        (
            dict(train_x=torch.zeros(10, 64, dtype=torch.int64)),
            TypeError,
            r"train_x must be a floating-point tensor",
        ),
        (dict(train_x=torch.full((10, 64), float("nan"))), ValueError, r"train_x contains NaN"),
        (dict(train_x=torch.full((10, 64), 2.0)), ValueError, r"train_x must lie in \[0, 1\]"),
        (dict(train_x=torch.zeros(0, 64)), ValueError, r"train_x must hold at least one example"),
        (dict(valid_x=torch.zeros(3, 8)), ValueError, r"valid_x must have shape \(B, 64\)"),
        (dict(epochs=-1), ValueError, r"epochs must be >= 0"),
        (dict(batch_size=0), ValueError, r"batch_size must be >= 1"),
        (dict(lr=0.0), ValueError, r"lr must be a finite positive number"),
        (dict(seed=-3), ValueError, r"seed must be >= 0"),
        (dict(beta=float("inf")), ValueError, r"beta must be a finite number >= 0"),
        (dict(binarize="yes"), TypeError, r"binarize must be True, False or None"),
        (dict(device="tpu"), ValueError, r"device must be"),
        (
            dict(history={"epoch": [1], "loss": [2.0]}),
            ValueError,
            r"history keys \['epoch', 'loss'\] do not fit a VAE",
        ),
        (
            dict(rng_state={"device": "cuda", "state": torch.zeros(16, dtype=torch.uint8)}),
            ValueError,
            r"rng_state comes from a cuda generator",
        ),
        (
            dict(optimizer_state={"state": {}, "param_groups": []}),
            ValueError,
            r"optimizer_state does not fit",
        ),
    ],
    ids=[
        "model",
        "shape",
        "dtype",
        "nan",
        "range",
        "empty",
        "valid-shape",
        "epochs",
        "batch",
        "lr",
        "seed",
        "beta",
        "binarize",
        "device",
        "history",
        "rng-device",
        "optimizer",
    ],
)
def test_fit_rejects_bad_arguments(digits, change, error, match):
    args = dict(model=vae(), train_x=digits[0][:50], epochs=1, progress=False)
    args.update(change)
    with pytest.raises(error, match=match):
        train.fit(**args)


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without CUDA"
)
def test_cuda_requested_without_cuda():
    with pytest.raises(ValueError, match=r"'cuda' requested but CUDA is not available"):
        train.resolve_device("cuda")


# -- checkpoints
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: VAE(64, 3, (8, 5), likelihood="gaussian", sigma_x=0.4, learn_sigma_x=True).double(),
        lambda: Autoencoder(64, 2, (), likelihood="bernoulli"),
    ],
    ids=["vae-gaussian-float64", "autoencoder"],
)
def test_checkpoint_round_trip_rebuilds_the_model_from_the_file_alone(make, tmp_path, digits):
    torch.manual_seed(0)
    model = make()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # not the initial weights of a fresh model
    path = checkpoints.save_checkpoint(tmp_path / "m.pt", model, metadata={"dataset": "digits"})
    loaded = checkpoints.load_checkpoint(path)
    assert type(loaded) is type(model) and loaded.config == model.config
    assert same_weights(loaded, model)
    assert next(loaded.parameters()).dtype == next(model.parameters()).dtype
    ck = checkpoints.load_checkpoint(path, with_state=True)
    assert (
        ck.metadata == {"dataset": "digits"} and ck.history is None and ck.optimizer_state is None
    )
    # Only plain containers and tensors in the file: the weights_only unpickler reads it.
    assert torch.load(path, weights_only=True)["model_class"] == type(model).__name__
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*nothing\.pt"):
        checkpoints.load_checkpoint(tmp_path / "nothing.pt")


def _corrupt_files(tmp_path):
    good = checkpoints.save_checkpoint(tmp_path / "good.pt", vae())
    raw = good.read_bytes()
    files = {
        "random-bytes": os.urandom(4096),
        "truncated": raw[: len(raw) // 2],
        "empty": b"",
        "text": b"not a checkpoint\n",
    }
    paths = []
    for name, content in files.items():
        p = tmp_path / f"{name}.pt"
        p.write_bytes(content)
        paths.append(p)
    other = tmp_path / "other-format.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    payload = torch.load(good, weights_only=True)
    crafted = {  # each with a valid digest: the checks behind the digest must catch them
        "bad-class": dict(payload, model_class="Transformer"),
        "bad-shape": dict(payload, config=dict(payload["config"], latent_dim=5)),
        "bad-config-key": dict(payload, config=dict(payload["config"], depth=3)),
        "string-metadata": dict(payload, metadata="digits"),
        "list-history": dict(payload, history=[1, 2]),
        "version-9": dict(payload, version=9),
    }
    for name, p in crafted.items():
        paths.append(write_with_digest(tmp_path / f"{name}.pt", p))
    tampered = tmp_path / "tampered.pt"  # changed without updating the digest
    torch.save(dict(payload, config=dict(payload["config"], latent_dim=5)), tampered)
    return paths + [other, tampered]


def write_with_digest(path, payload):
    """Write a crafted payload with a matching digest, as an attacker (not a bit flip) would."""
    payload = {k: v for k, v in payload.items() if k != "digest"}
    payload["digest"] = checkpoints._digest(payload)
    torch.save(payload, path)
    return path


def test_corrupt_checkpoints_raise_value_error_naming_the_file(tmp_path):
    for path in _corrupt_files(tmp_path):
        with pytest.raises(
            ValueError,
            match=rf"{path.name}: (not a readable vaelib checkpoint|not a vaelib checkpoint|"
            r"broken checkpoint|corrupt checkpoint|checkpoint version 9)",
        ):
            checkpoints.load_checkpoint(path)


def test_interrupted_save_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    model = vae()
    path = checkpoints.save_checkpoint(tmp_path / "model.pt", model)
    before = path.read_bytes()

    def dies_halfway(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_checkpoint(path, vae(seed=1))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.pt"
    ]  # no temporary file left behind
    monkeypatch.undo()
    assert same_weights(checkpoints.load_checkpoint(path), model)


def test_save_checkpoint_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match=r"model must be a vaelib.models.VAE"):
        checkpoints.save_checkpoint(tmp_path / "m.pt", torch.nn.Linear(2, 2))
    with pytest.raises(FileNotFoundError, match=r"directory .*missing does not exist"):
        checkpoints.save_checkpoint(tmp_path / "missing" / "m.pt", vae())
    with pytest.raises(TypeError, match=r"optimizer must be a torch optimizer"):
        checkpoints.save_checkpoint(tmp_path / "m.pt", vae(), optimizer=[1, 2])


# -- checkpoint integrity (issue 14, item 1)
# --------------------------------------------------------


def same_content(a, b):
    """Exact equality of nested checkpoint contents: tensors by dtype, shape and every value."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and torch.equal(a, b)
        )
    if isinstance(a, dict) or isinstance(b, dict):
        return (
            isinstance(a, dict)
            and isinstance(b, dict)
            and list(a) == list(b)
            and all(same_content(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(same_content(u, v) for u, v in zip(a, b))
        )
    return type(a) is type(b) and a == b


def loaded(path):
    ck = checkpoints.load_checkpoint(path, with_state=True)
    return {
        "model": dict(ck.model.state_dict()),
        "config": ck.model.config,
        "optimizer": ck.optimizer_state,
        "history": ck.history,
        "rng": ck.rng_state,
        "metadata": ck.metadata,
    }


def test_single_bit_flips_never_load_silently_changed(digits, tmp_path):
    """Flip one bit at 400 offsets spread over the whole file (zip headers, the pickle, every
    tensor's bytes, the central directory). Every load must either fail with a ValueError naming the
    file, or (a flip in bytes nothing reads, such as zip padding or a CRC field) give exactly the
    saved weights and state. Before the digest, 84 of 100 such flips loaded silently changed
    weights, Adam state or RNG state. Measured once on every third byte of this 45 KB file: 15114
    flips, 12657 errors, 2457 identical, 0 silent."""
    x, xv = digits
    model = vae(likelihood="gaussian", learn_sigma_x=True)
    h = train.fit(model, x[:300], 1, valid_x=xv[:50], **KW)
    path = checkpoints.save_checkpoint(
        tmp_path / "good.pt", model, history=h, metadata={"dataset": "digits", "seed": 0}
    )
    reference = loaded(path)
    raw = path.read_bytes()
    rng = torch.Generator().manual_seed(0)
    n_flips = 400
    offsets = torch.linspace(0, len(raw) - 1, n_flips).long().tolist()
    bits = torch.randint(0, 8, (n_flips,), generator=rng).tolist()
    bad = tmp_path / "flipped.pt"
    outcomes = {"error": 0, "identical": 0}
    for offset, bit in zip(offsets, bits):
        flipped = bytearray(raw)
        flipped[offset] ^= 1 << bit
        bad.write_bytes(bytes(flipped))
        try:
            content = loaded(bad)
        except ValueError as e:
            assert "flipped.pt" in str(e), (offset, bit, str(e))
            outcomes["error"] += 1
            continue
        assert same_content(content, reference), (
            f"flip at byte {offset}, bit {bit} loaded changed values"
        )
        outcomes["identical"] += 1
    assert outcomes["error"] + outcomes["identical"] == n_flips
    assert outcomes["error"] > n_flips // 2  # most bytes are tensor data and pickle: all detected


def test_tampered_checkpoint_fails_the_digest(tmp_path):
    path = checkpoints.save_checkpoint(tmp_path / "m.pt", vae())
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["to_mu.bias"] += 1e-6  # a change a reader would never notice
    torch.save(payload, path)
    with pytest.raises(
        ValueError, match=r"m\.pt: corrupt checkpoint: its SHA-256 digest does not match"
    ):
        checkpoints.load_checkpoint(path)


def test_version_1_checkpoints_without_digest_still_load(tmp_path):
    """Only when trusted (allow_unverified=True): without a digest, a version-1 file cannot be told
    from a version-2 file rewritten as version 1 (issue 26, item 5)."""
    model = vae()
    path = checkpoints.save_checkpoint(tmp_path / "m.pt", model)
    payload = torch.load(path, weights_only=True)
    del payload["digest"]
    torch.save(dict(payload, version=1), path)
    with pytest.raises(ValueError, match=r"version 1 has no SHA-256 digest"):
        checkpoints.load_checkpoint(path)
    assert same_weights(checkpoints.load_checkpoint(path, allow_unverified=True), model)
    torch.save(dict(payload, version=2), path)  # version 2 without its digest: refused
    with pytest.raises(ValueError, match=r"corrupt checkpoint"):
        checkpoints.load_checkpoint(path)


# -- save what you can load (item 2)
# ----------------------------------------------------------------


def test_numpy_values_and_paths_in_metadata_and_history_round_trip(digits, tmp_path):
    from pathlib import Path, PurePosixPath

    import numpy as np

    x, _ = digits
    model = vae()
    h = train.fit(model, x[:200], 2, **KW)
    history = dict(h)
    history["elbo"] = [np.float32(v) for v in h["elbo"]]  # numpy scalars, e.g. from np.mean
    history["kl"] = np.asarray(h["kl"])  # a numpy array instead of a list
    metadata = {
        "root": Path("/data/run"),
        "pure": PurePosixPath("a/b"),
        "n": np.int64(7),
        "flag": np.bool_(True),
        "scale": np.float64(0.5),
        "shape": np.array([[8, 8]]),
        "nested": {"k": [np.float16(1.5), (np.int8(2),)]},
        np.int64(3): "numpy key",
    }
    path = checkpoints.save_checkpoint(
        tmp_path / "m.pt",
        model,
        history=history,
        rng_state=h.rng_state,
        optimizer=h.optimizer_state,
        metadata=metadata,
    )
    ck = checkpoints.load_checkpoint(path, with_state=True)
    assert ck.metadata == {
        "root": "/data/run",
        "pure": "a/b",
        "n": 7,
        "flag": True,
        "scale": 0.5,
        "shape": [[8, 8]],
        "nested": {"k": [1.5, (2,)]},
        3: "numpy key",
    }
    assert (
        type(ck.metadata["n"]) is int
        and type(ck.metadata["flag"]) is bool
        and type(ck.metadata["scale"]) is float
    )
    assert ck.history["elbo"] == [
        float(np.float32(v)) for v in h["elbo"]
    ]  # float32 -> float is exact
    assert ck.history["kl"] == h["kl"] and all(type(v) is float for v in ck.history["kl"])
    # and it resumes
    h2 = train.fit(
        ck.model,
        x[:200],
        1,
        history=ck.history,
        optimizer_state=ck.optimizer_state,
        rng_state=ck.rng_state,
        **KW,
    )
    assert h2["epoch"] == [1, 2, 3]


@pytest.mark.parametrize(
    "metadata, match",
    [
        ({"tags": {"a", "b"}}, r"metadata\['tags'\] has type set"),
        ({"fn": print}, r"metadata\['fn'\] has type builtin_function_or_method"),
        ({"when": __import__("datetime").date(2020, 1, 1)}, r"metadata\['when'\] has type date"),
        (
            {"strings": __import__("numpy").array(["a"])},
            r"metadata\['strings'\] is a numpy array of dtype <U1",
        ),
        ({(1, 2): "tuple key"}, r"the key \(1, 2\) of metadata has type tuple"),
    ],
    ids=["set", "function", "date", "string-array", "tuple-key"],
)
def test_save_refuses_what_it_cannot_load_back(tmp_path, metadata, match):
    with pytest.raises(TypeError, match=match):
        checkpoints.save_checkpoint(tmp_path / "m.pt", vae(), metadata=metadata)
    assert list(tmp_path.iterdir()) == []  # nothing written


# -- crafted checkpoints (item 6)
# ---------------------------------------------------------------------


def test_crafted_config_is_refused_before_allocating_the_layer(tmp_path):
    """A small file whose config asks for a 10000 x 20000 layer (800 MB in float32) is refused at
    the first big allocation, before it happens: the peak memory of this process does not move by
    even 100 MB."""
    import resource

    path = checkpoints.save_checkpoint(tmp_path / "m.pt", vae())
    payload = torch.load(path, weights_only=True)
    crafted = write_with_digest(
        tmp_path / "crafted.pt",
        dict(payload, config=dict(payload["config"], data_dim=10000, hidden_dims=[20000])),
    )
    assert crafted.stat().st_size < 100_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(
        ValueError,
        match=r"crafted\.pt: broken checkpoint: the config asks for a tensor of shape "
        r"\[20000, 10000\]",
    ):
        checkpoints.load_checkpoint(crafted)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000
    many = write_with_digest(
        tmp_path / "many.pt", dict(payload, config=dict(payload["config"], hidden_dims=[1] * 10**5))
    )
    with pytest.raises(
        ValueError, match=r"hidden_dims has 100000 layers but the file stores only 10 tensors"
    ):
        checkpoints.load_checkpoint(many)


# -- your own model (issue 13, item 2)
# --------------------------------------------------------------


class TwoLayerDecoder(torch.nn.Module):
    """A decoder that is not the MLP the config describes: (..., k) -> (..., 64), with other layer
    names."""

    def __init__(self, k=2, d=64):
        super().__init__()
        self.first = torch.nn.Linear(k, 8)
        self.second = torch.nn.Linear(8, d)

    def forward(self, z):
        return self.second(torch.tanh(self.first(z)))


def custom_vae(seed=0):
    model = vae(seed)
    model.decoder = TwoLayerDecoder()  # what a user's model looks like to save_checkpoint
    return model


def test_model_argument_loads_weights_into_a_model_you_built(tmp_path, digits):
    x, _ = digits
    model = custom_vae()
    h = train.fit(model, x[:200], 1, **KW)
    path = checkpoints.save_checkpoint(tmp_path / "custom.pt", model, history=h)
    with pytest.raises(
        ValueError,
        match=r"custom\.pt: broken checkpoint: the stored weights do not match the "
        r"config's model.*load_checkpoint\(path, model=model\)",
    ):
        checkpoints.load_checkpoint(
            path
        )  # the file alone cannot rebuild it, and says how to load it
    target = custom_vae(seed=1)
    assert not same_weights(target, model)
    ck = checkpoints.load_checkpoint(path, model=target, with_state=True)
    assert ck.model is target and same_weights(target, model)
    h2 = train.fit(
        target,
        x[:200],
        1,
        history=ck.history,
        optimizer_state=ck.optimizer_state,
        rng_state=ck.rng_state,
        **KW,
    )
    straight = custom_vae()
    h_straight = train.fit(straight, x[:200], 2, **KW)
    assert same_weights(target, straight) and without_seconds(h2) == without_seconds(h_straight)
    # float64 file into a float32 model: the model takes the stored dtype
    path64 = checkpoints.save_checkpoint(tmp_path / "c64.pt", custom_vae().double())
    assert (
        next(checkpoints.load_checkpoint(path64, model=custom_vae(1)).parameters()).dtype
        == torch.float64
    )


def test_config_marked_custom_asks_for_the_model(tmp_path):
    path = checkpoints.save_checkpoint(tmp_path / "m.pt", vae())
    payload = torch.load(path, weights_only=True)
    marked = write_with_digest(
        tmp_path / "marked.pt", dict(payload, config=dict(payload["config"], encoder="custom"))
    )
    with pytest.raises(
        ValueError, match=r"marked\.pt: holds a VAE with your own encoder/decoder.*model=model"
    ):
        checkpoints.load_checkpoint(marked)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Autoencoder(64, 2, (16,)), r"holds a VAE, cannot load it into a Autoencoder"),
        (
            lambda: VAE(64, 2, (16,), likelihood="gaussian", sigma_x=1.0),
            r"config differs from the file's \(likelihood: file 'bernoulli'",
        ),
        (
            lambda: vae(),
            r"the stored weights do not match the model: missing \['decoder.hidden1.bias'",
        ),
        (lambda: torch.nn.Linear(2, 2), r"model must be a vaelib.models.VAE or Autoencoder"),
    ],
    ids=["class", "config", "layers", "not-a-model"],
)
def test_model_argument_must_match_the_file(tmp_path, make, match):
    path = checkpoints.save_checkpoint(tmp_path / "custom.pt", custom_vae())
    with pytest.raises((ValueError, TypeError), match=match):
        checkpoints.load_checkpoint(path, model=make())


# -- fit: numpy data, seeds, optimizer state, NaN, interrupts (items 4, 7; issue 13)
# -----------------


def test_fit_accepts_numpy_arrays(digits):
    x, xv = digits
    a, b = vae(), vae()
    ha = train.fit(a, x[:300], 2, valid_x=xv[:50], **KW)
    import numpy as np

    xn = np.asfortranarray(x[:300].numpy())  # not C-contiguous
    xn.setflags(write=False)  # and read-only, as from np.load(mmap_mode="r")
    hb = train.fit(
        b, xn, 2, valid_x=xv[:50].double().numpy(), **KW
    )  # float64 validation data: cast once
    assert same_weights(a, b) and without_seconds(ha) == without_seconds(hb)

    with pytest.raises(
        TypeError, match=r"train_x must be a floating-point array .* got numpy dtype uint8.*x / 255"
    ):
        train.fit(vae(), (x[:10].numpy() * 255).astype(np.uint8), 1, **KW)
    with pytest.raises(
        TypeError, match=r"train_x must be a torch.Tensor or a numpy array, got list"
    ):
        train.fit(vae(), x[:10].tolist(), 1, **KW)


def test_seed_must_fit_in_64_bits(digits):
    x, _ = digits
    with pytest.raises(ValueError, match=r"seed must be < 2\*\*64"):
        train.fit(vae(), x[:20], 1, seed=2**64, **KW)
    train.fit(vae(), x[:20], 1, seed=2**64 - 1, **KW)  # the largest seed works


def test_optimizer_state_of_another_optimizer_is_refused_before_training(digits):
    x, _ = digits
    model = vae()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.loss(x[:10]).backward()
    sgd.step()
    model.load_state_dict(before)
    with pytest.raises(
        ValueError,
        match=r"optimizer_state is not an Adam state dict: param group 0 lacks \['betas'",
    ):
        train.fit(model, x[:50], 1, optimizer_state=sgd.state_dict(), **KW)
    other = VAE(64, 2, (16, 4))
    h = train.fit(other, x[:50], 1, **KW)
    with pytest.raises(ValueError, match=r"optimizer_state does not fit this model's parameters"):
        train.fit(model, x[:50], 1, optimizer_state=h.optimizer_state, **KW)
    with pytest.raises(TypeError, match=r"optimizer_state must be an Adam state dict"):
        train.fit(model, x[:50], 1, optimizer_state=[1, 2], **KW)
    assert same_weights(model, vae())  # nothing trained


def poison_loss_at(model, call, value=float("nan")):
    inner, calls = model.loss_terms, [0]

    def poisoned(xb, *args):
        calls[0] += 1
        loss, log_px_z, kl = inner(xb, *args)
        return (loss * value, log_px_z, kl) if calls[0] == call else (loss, log_px_z, kl)

    model.loss_terms = poisoned


def test_nan_keeps_the_last_finite_weights_and_a_resumable_history(digits, tmp_path):
    """A NaN loss in epoch 2 (step 3 of 12): the model is back at the end of epoch 1, e.history
    holds epoch 1 with its optimizer and generator state, and resuming from it reproduces the
    uninterrupted run exactly."""
    x, _ = digits
    straight = vae()
    h3 = train.fit(straight, x, 3, seed=4, **KW)
    one = vae()
    train.fit(one, x, 1, seed=4, **KW)

    model = vae()
    poison_loss_at(model, 12 + 3)
    with pytest.raises(
        FloatingPointError, match=r"loss is nan at epoch 2, step 3 of 12; the model is back"
    ) as info:
        train.fit(model, x, 3, seed=4, **KW)
    assert same_weights(model, one)  # finite, and exactly the weights after epoch 1
    h = info.value.history
    assert h["epoch"] == [1] and without_seconds(h) == {
        k: v[:1] for k, v in without_seconds(h3).items()
    }
    path = checkpoints.save_checkpoint(tmp_path / "m.pt", model, history=h)
    ck = checkpoints.load_checkpoint(path, with_state=True)
    h_resumed = train.fit(
        ck.model,
        x,
        2,
        seed=4,
        history=ck.history,
        optimizer_state=ck.optimizer_state,
        rng_state=ck.rng_state,
        **KW,
    )
    assert same_weights(ck.model, straight) and without_seconds(h_resumed) == without_seconds(h3)


def test_nan_parameter_with_finite_losses_is_caught(digits, monkeypatch):
    """The step after the last loss of an epoch can make a parameter NaN while every recorded loss
    is finite."""
    x, _ = digits
    model = vae()
    step, calls = torch.optim.Adam.step, [0]

    def poisoned_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == 12:  # the last step of epoch 1
            with torch.no_grad():
                model.to_mu.weight[0, 0] = float("inf")
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", poisoned_step)
    initial = vae()
    with pytest.raises(
        FloatingPointError,
        match=r"parameter 'to_mu.weight' became NaN or infinite at epoch 1, by step 12",
    ):
        train.fit(model, x, 2, **KW)
    assert same_weights(model, initial)  # back to the start: no epoch completed


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_are_refused(digits, dtype):
    x, _ = digits
    with pytest.raises(
        TypeError, match=rf"has dtype {dtype}; fit trains float32 or float64 models only"
    ):
        train.fit(vae().to(dtype), x[:20], 1, **KW)
    model = vae()
    h = train.fit(
        model, x[:200].to(dtype), 1, **KW
    )  # 16-bit data: converted exactly to the model's float32
    reference = vae()
    h_ref = train.fit(reference, x[:200].to(dtype).float(), 1, **KW)
    assert same_weights(model, reference) and h["elbo"] == h_ref["elbo"]


def test_keyboard_interrupt_rolls_back_to_the_last_epoch_and_attaches_the_history(digits):
    x, _ = digits
    one = vae()
    train.fit(one, x, 1, **KW)
    model = vae()
    inner, calls = model.loss_terms, [0]

    def interrupted(xb, *args):
        calls[0] += 1
        if calls[0] == 12 + 5:
            raise KeyboardInterrupt
        return inner(xb, *args)

    model.loss_terms = interrupted
    with pytest.raises(KeyboardInterrupt) as info:
        train.fit(model, x, 3, **KW)
    assert same_weights(model, one) and info.value.history["epoch"] == [1]
    assert info.value.history.optimizer_state["state"][0]["step"].item() == 12


def test_on_epoch_end_sees_a_resumable_state(digits, tmp_path):
    x, _ = digits
    seen = []

    def save(model, history):
        seen.append(history["epoch"][-1])
        checkpoints.save_checkpoint(
            tmp_path / f"e{history['epoch'][-1]}.pt", model, history=history
        )

    straight = vae()
    h3 = train.fit(straight, x, 3, on_epoch_end=save, **KW)
    assert seen == [1, 2, 3]
    ck = checkpoints.load_checkpoint(tmp_path / "e1.pt", with_state=True)
    h = train.fit(
        ck.model,
        x,
        2,
        history=ck.history,
        optimizer_state=ck.optimizer_state,
        rng_state=ck.rng_state,
        **KW,
    )
    assert same_weights(ck.model, straight) and without_seconds(h) == without_seconds(h3)
    assert same_weights(checkpoints.load_checkpoint(tmp_path / "e3.pt"), straight)
    with pytest.raises(TypeError, match=r"on_epoch_end must be a callable"):
        train.fit(vae(), x[:10], 1, on_epoch_end="save", **KW)


# -- atomic writes: links, permissions, orphans (items 5, 7)
# -----------------------------------------


def test_save_through_a_symlink_keeps_the_link(tmp_path):
    real_dir = tmp_path / "store"
    real_dir.mkdir()
    target = real_dir / "model.pt"
    checkpoints.save_checkpoint(target, vae(seed=1))
    target.chmod(0o640)
    link = tmp_path / "latest.pt"
    link.symlink_to(target)
    model = vae(seed=2)
    checkpoints.save_checkpoint(link, model)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert same_weights(checkpoints.load_checkpoint(target), model)
    assert oct(target.stat().st_mode & 0o777) == oct(
        0o640
    )  # the replaced file keeps its permissions
    assert sorted(p.name for p in real_dir.iterdir()) == ["model.pt"]


def test_temporary_files_of_a_killed_save_are_removed_at_the_next_save(tmp_path):
    import fcntl
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    orphan = (
        tmp_path / f".model.pt.{dead_pid}-abc123.tmp"
    )  # as a save killed with SIGKILL leaves it
    orphan.write_bytes(b"PK partial")
    mine = (
        tmp_path / f".model.pt.{os.getpid()}-live.tmp"
    )  # a save in progress (it holds its flock): kept
    mine.write_bytes(b"PK")
    other = tmp_path / ".other.pt.1-x.tmp"  # another file's temporary: not ours to judge
    other.write_bytes(b"")
    with open(mine, "rb") as in_progress:
        fcntl.flock(in_progress, fcntl.LOCK_EX)
        checkpoints.save_checkpoint(tmp_path / "model.pt", vae())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.pt", mine.name, other.name])


def test_save_and_load_refuse_empty_paths_and_directories(tmp_path):
    with pytest.raises(ValueError, match=r"path must name a file, got ''"):
        checkpoints.save_checkpoint("", vae())
    with pytest.raises(IsADirectoryError, match=r"it is a directory"):
        checkpoints.save_checkpoint(tmp_path, vae())
    with pytest.raises(ValueError, match=r"path must name a checkpoint file, got ''"):
        checkpoints.load_checkpoint("")
