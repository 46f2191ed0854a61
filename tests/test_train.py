"""vaelib.train: fit (seeding, minibatches, binarization, history, errors) and checkpoints.

Tiny models on the embedded digits (1500 train / 297 test images of 8x8), so every test takes well
under a second. The history is checked against independent evaluations of the same model
(vaelib.evaluate, the model's own methods), not just for its keys.
"""

import math
import os

import pytest
import torch

from vaelib import data, evaluate, train
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


# -- reproducibility and resuming -------------------------------------------------------------------

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
    path = train.save_checkpoint(tmp_path / "model.pt", first, history=h2)
    ck = train.load_checkpoint(path, with_state=True)
    assert same_weights(ck.model, first)  # the weights load exactly
    h = train.fit(ck.model, x, 1, seed=1, valid_x=xv, optimizer_state=ck.optimizer_state,
                  history=ck.history, rng_state=ck.rng_state, **KW)
    assert h["epoch"] == [1, 2, 3]
    assert without_seconds(h) == without_seconds(h3)
    assert same_weights(ck.model, straight)
    assert ck.history["epoch"] == [1, 2]  # fit appended to a copy


def test_resume_without_rng_state_continues_the_history_only(digits):
    x, xv = digits
    model = vae()
    h = train.fit(model, x, 1, **KW)
    h = train.fit(model, x, 2, valid_x=xv, history=h, optimizer_state=h.optimizer_state, **KW)
    assert h["epoch"] == [1, 2, 3]
    assert h["valid_elbo"][0] is None and all(isinstance(v, float) for v in h["valid_elbo"][1:])
    h = train.fit(model, x, 1, history=h, **KW)  # the validation set left out again
    assert h["valid_elbo"][-1] is None and len(h["valid_elbo"]) == 4


# -- what fit computes ------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [VAE, Autoencoder])
def test_history_is_the_per_example_average_over_the_epoch(digits, cls):
    """With a learning rate of 1e-9 the model does not move during the epoch, so the recorded training
    averages must agree with an independent evaluation of the model on a fresh binarization of the
    same data: two independent estimates of one mean, within 4 standard errors of their difference."""
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
        assert abs(h[key][0] - values.mean().item()) < 4 * se, (key, h[key][0], values.mean().item(), se)


def test_validation_elbo_is_the_elbo_of_the_validation_set(digits):
    x, xv = digits
    model = vae().double()
    h = train.fit(model, x, 2, valid_x=xv, **KW)
    xb = torch.bernoulli(xv.double(), generator=torch.Generator().manual_seed(0))
    values = evaluate.test_elbo(model, xb, n_samples=1, generator=torch.Generator().manual_seed(1))
    # fit uses its own fixed binarization and noise: agreement within 4 standard errors of the difference
    se = math.sqrt(2) * values.std().item() / math.sqrt(len(values))
    assert abs(h["valid_elbo"][-1] - values.mean().item()) < 4 * se


def spy_on_batches(model, record):
    """Record every minibatch (and beta) that fit passes to the model's unchecked loss."""
    inner = model._loss

    def spy(xb, *args):
        record.append((xb.detach().clone(), args[0] if args else None))
        return inner(xb, *args)

    model._loss = spy


def test_each_epoch_visits_every_example_once_in_a_new_order(digits):
    x, _ = digits
    x = x[:300].clone()
    x[:, 0] = torch.arange(300) / 1000.0  # pixel 0 is blank in every digit: use it as an example id
    model, record = vae(), []
    spy_on_batches(model, record)
    train.fit(model, x, 2, batch_size=128, binarize=False, progress=False)
    assert [b.shape[0] for b, _ in record] == [128, 128, 44] * 2  # the last, smaller batch is kept
    epochs = [torch.cat([b for b, _ in record[i:i + 3]]) for i in (0, 3)]  # (300, 64) each
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
    assert not torch.equal(b1.sum(0), b2.sum(0))  # a new draw in epoch 2, not the same one reshuffled
    g, gr = vae(likelihood="gaussian"), []  # Gaussian: no binarization by default
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
    inner, calls = model._loss, [0]

    def poisoned(xb, *args):
        calls[0] += 1
        loss, terms = inner(xb, *args)
        return (loss * float("nan"), terms) if calls[0] == 12 + 3 else (loss, terms)  # epoch 2, step 3

    model._loss = poisoned
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_shapes_and_resumes(digits, tmp_path):
    x, _ = digits
    model = vae()
    h = train.fit(model, x, 1, device="cuda", **KW)
    path = train.save_checkpoint(tmp_path / "m.pt", model, history=h)
    ck = train.load_checkpoint(path, with_state=True)
    h = train.fit(ck.model, x, 1, device="cuda", optimizer_state=ck.optimizer_state, history=ck.history,
                  rng_state=ck.rng_state, **KW)
    assert h["epoch"] == [1, 2]


# -- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(model=torch.nn.Linear(64, 2)), TypeError, r"model must be a vaelib.models.VAE or Autoencoder, got Linear"),
        (dict(train_x=torch.zeros(10, 63)), ValueError, r"train_x must have shape \(B, 64\).*got \(10, 63\)"),
        (dict(train_x=torch.zeros(10, 64, dtype=torch.int64)), TypeError, r"train_x must be a floating-point tensor"),
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
        (dict(history={"epoch": [1], "loss": [2.0]}), ValueError, r"history keys \['epoch', 'loss'\] do not fit a VAE"),
        (dict(rng_state={"device": "cuda", "state": torch.zeros(16, dtype=torch.uint8)}), ValueError, r"rng_state comes from a cuda generator"),
        (dict(optimizer_state={"state": {}, "param_groups": []}), ValueError, r"optimizer_state does not fit"),
    ],
    ids=["model", "shape", "dtype", "nan", "range", "empty", "valid-shape", "epochs", "batch", "lr", "seed",
         "beta", "binarize", "device", "history", "rng-device", "optimizer"],
)
def test_fit_rejects_bad_arguments(digits, change, error, match):
    args = dict(model=vae(), train_x=digits[0][:50], epochs=1, progress=False)
    args.update(change)
    with pytest.raises(error, match=match):
        train.fit(**args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_cuda():
    with pytest.raises(ValueError, match=r"'cuda' requested but CUDA is not available"):
        train.resolve_device("cuda")


# -- checkpoints ------------------------------------------------------------------------------------

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
    path = train.save_checkpoint(tmp_path / "m.pt", model, metadata={"dataset": "digits"})
    loaded = train.load_checkpoint(path)
    assert type(loaded) is type(model) and loaded.config == model.config
    assert same_weights(loaded, model)
    assert next(loaded.parameters()).dtype == next(model.parameters()).dtype
    ck = train.load_checkpoint(path, with_state=True)
    assert ck.metadata == {"dataset": "digits"} and ck.history is None and ck.optimizer_state is None
    # Only plain containers and tensors in the file: the weights_only unpickler reads it.
    assert torch.load(path, weights_only=True)["model_class"] == type(model).__name__
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*nothing\.pt"):
        train.load_checkpoint(tmp_path / "nothing.pt")


def _corrupt_files(tmp_path):
    good = train.save_checkpoint(tmp_path / "good.pt", vae())
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
    bad_class = tmp_path / "bad-class.pt"
    payload = torch.load(good, weights_only=True)
    torch.save(dict(payload, model_class="Transformer"), bad_class)
    bad_shape = tmp_path / "bad-shape.pt"
    torch.save(dict(payload, config=dict(payload["config"], latent_dim=5)), bad_shape)
    return paths + [other, bad_class, bad_shape]


def test_corrupt_checkpoints_raise_value_error_naming_the_file(tmp_path):
    for path in _corrupt_files(tmp_path):
        with pytest.raises(ValueError, match=rf"{path.name}: (not a readable vaelib checkpoint|not a vaelib checkpoint|broken checkpoint)"):
            train.load_checkpoint(path)


def test_interrupted_save_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    model = vae()
    path = train.save_checkpoint(tmp_path / "model.pt", model)
    before = path.read_bytes()

    def dies_halfway(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        train.save_checkpoint(path, vae(seed=1))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary file left behind
    monkeypatch.undo()
    assert same_weights(train.load_checkpoint(path), model)


def test_save_checkpoint_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match=r"model must be a vaelib.models.VAE"):
        train.save_checkpoint(tmp_path / "m.pt", torch.nn.Linear(2, 2))
    with pytest.raises(FileNotFoundError, match=r"directory .*missing does not exist"):
        train.save_checkpoint(tmp_path / "missing" / "m.pt", vae())
    with pytest.raises(TypeError, match=r"optimizer must be a torch optimizer"):
        train.save_checkpoint(tmp_path / "m.pt", vae(), optimizer=[1, 2])
