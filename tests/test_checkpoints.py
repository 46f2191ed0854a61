"""Checkpoints written by an older vaelib keep loading and resuming; the history schema fills what
they lack.

tests/fixtures/*_v2_main_6a7164c.pt were written by vaelib at commit 6a7164c
(tests/fixtures/README.md). The SHA-256 digests below are of the weights after resuming each for one
epoch, printed by the script that wrote them (tests/fixtures/make_fixtures_6a7164c.py): they equal
those of an uninterrupted 3-epoch run, so a resume that loses any state (weights, Adam moments, the
generator, the history's keys) fails here.
"""

import hashlib
from pathlib import Path

import pytest
import torch

from vaelib import checkpoints, data, history, train
from vaelib.history import History, Key
from vaelib.models import VAE, Autoencoder

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# name: (file, fit arguments, digest of the weights after one more epoch, the history's numbers)
RESUMED = {
    "vae": (
        "vae_v2_main_6a7164c.pt",
        dict(seed=3, warmup_epochs=1),
        "e56b70b17763bdc519a6ce6c76bf43ec9b59732652e5ab863eac8b9f040bcee9",
        {
            "epoch": [1, 2, 3],
            "beta": [0.0, 1.0, 1.0],
            "elbo": [-45.438802456855775, -45.16376112699509, -45.09253549575806],
            "valid_elbo": [-45.4471549987793, -45.280303955078125, -45.12023162841797],
        },
    ),
    "autoencoder": (
        "autoencoder_v2_main_6a7164c.pt",
        dict(seed=4),
        "bf96a3b090c59762e366e45342e8cc686c1735fe6bb34fb9760fb1da44f97882",
        {"epoch": [1, 2, 3], "log_px_z": [-87.775478515625, -85.309736328125, -82.856083984375]},
    ),
}


def weights_digest(model):
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def x200():
    x, _ = data.load("digits", "train")
    return x[:200]


@pytest.mark.parametrize("name", sorted(RESUMED))
def test_an_old_checkpoint_loads_and_resumes_to_the_uninterrupted_run(name, x200):
    file, kw, digest, numbers = RESUMED[name]
    ck = checkpoints.load_checkpoint(FIXTURES / file, with_state=True)
    assert (
        isinstance(ck.history, History)
        and ck.history.rng_state is not None
        and ck.optimizer_state is not None
    )
    x, valid = (x200[:160], x200[160:]) if name == "vae" else (x200, None)
    h = train.fit(
        ck.model,
        x,
        1,
        batch_size=40,
        progress=False,
        device="cpu",
        valid_x=valid,
        history=ck.history,
        **kw,
    )
    assert weights_digest(ck.model) == digest
    assert {k: h[k] for k in numbers} == numbers


def test_old_history_lacking_a_new_key_resumes_with_its_fill(x200, monkeypatch):
    """A key added to the schema later (here "grad_norm", fill None) is filled for the old epochs;
    fit then records it."""
    keys = history.KEYS["VAE"]
    monkeypatch.setitem(
        history.KEYS,
        "VAE",
        (*keys[:-1], Key("grad_norm", "a number added later", fill=None), keys[-1]),
    )
    ck = checkpoints.load_checkpoint(FIXTURES / RESUMED["vae"][0], with_state=True)
    started = history.start(ck.model, ck.history, with_valid=True)
    assert list(started) == [
        "epoch",
        "elbo",
        "log_px_z",
        "kl",
        "beta",
        "seconds",
        "objective",
        "K",
        "grad_norm",
        "valid_elbo",
    ]
    assert started["grad_norm"] == [None, None] and started["elbo"] == ck.history["elbo"]
    assert started["objective"] == ["elbo", "elbo"] and started["K"] == [None, None]
    assert started.rng_state is ck.history.rng_state  # the resume state travels with the keys


def test_required_keys_and_foreign_keys_are_errors():
    model = VAE(4, 2, (3,))
    with pytest.raises(
        ValueError, match=r"history keys \['epoch', 'log_px_z', 'seconds'\] do not fit a VAE"
    ):
        history.start(
            model, History({"epoch": [1], "log_px_z": [0.0], "seconds": [0.1]}), with_valid=False
        )
    with pytest.raises(ValueError, match=r"do not fit a Autoencoder"):
        history.start(
            Autoencoder(4, 2, (3,)),
            History({k.name: [] for k in history.KEYS["VAE"]}),
            with_valid=False,
        )
    assert history.validation_key(model) == "valid_elbo"


def test_every_checkpoint_version_still_loads(tmp_path):
    """Version 1 (no digest) and version 2 files load to the same weights, version 1 only with
    allow_unverified=True (without a digest it cannot be told from a stripped version-2 file);
    another version is refused."""
    torch.manual_seed(0)
    model = VAE(6, 2, (4,))
    path = checkpoints.save_checkpoint(tmp_path / "v2.pt", model)
    payload = torch.load(path, weights_only=True)
    v1 = {k: v for k, v in payload.items() if k != "digest"} | {"version": 1}
    torch.save(v1, tmp_path / "v1.pt")
    with pytest.raises(ValueError, match=r"version 1 has no SHA-256 digest"):
        checkpoints.load_checkpoint(tmp_path / "v1.pt")
    for file in ("v1.pt", "v2.pt"):
        loaded = checkpoints.load_checkpoint(tmp_path / file, allow_unverified=file == "v1.pt")
        assert all(
            torch.equal(a, b)
            for a, b in zip(loaded.state_dict().values(), model.state_dict().values())
        )
    torch.save(dict(payload, version=3), tmp_path / "v3.pt")
    with pytest.raises(ValueError, match=r"checkpoint version 3; this vaelib reads versions 1, 2"):
        checkpoints.load_checkpoint(tmp_path / "v3.pt")
