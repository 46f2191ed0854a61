"""Train and eval modes (issue 22, item 1): fit trains in train mode and validates in eval mode;
every evaluation, sample, plot and explorer runs in eval mode and gives the model back in the mode
it had. Networks with BatchNorm and Dropout make a forgotten mode visible: in train mode BatchNorm
normalises each minibatch by its own statistics (results depend on the batch size) and updates its
running statistics, and Dropout draws from torch's global generator."""

import pytest
import torch
from torch import nn

from vaelib import evaluate, plotting
from vaelib.models import VAE
from vaelib.networks import eval_mode
from vaelib.train import fit
from vaelib.widgets._common import decoded_mean

D, K = 12, 2


class Encoder(nn.Module):
    """x (B, D) -> (B, 2k), with BatchNorm or Dropout in the hidden layer."""

    def __init__(self, layer):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D, 16), layer, nn.ReLU(), nn.Linear(16, 2 * K))

    def forward(self, x):
        return self.body(x)


class Decoder(nn.Module):
    """z (..., k) -> (..., D) logits, with BatchNorm on the flattened batch or Dropout."""

    def __init__(self, layer):
        super().__init__()
        self.hidden, self.layer, self.out = nn.Linear(K, 16), layer, nn.Linear(16, D)

    def forward(self, z):
        h = self.hidden(z.reshape(-1, K))  # (S B, 16): BatchNorm1d takes (N, C)
        return self.out(torch.relu(self.layer(h))).reshape(*z.shape[:-1], D)


def make(kind, seed=0):
    torch.manual_seed(seed)
    layer = (lambda: nn.BatchNorm1d(16)) if kind == "batchnorm" else (lambda: nn.Dropout(0.3))
    model = VAE(D, K, encoder=Encoder(layer()), decoder=Decoder(layer())).double()
    if kind == "batchnorm":  # running statistics away from their initial (0, 1)
        with torch.no_grad():
            for _ in range(3):
                model.elbo(data(64, seed=9))
    return model


def data(n=40, seed=1):
    return torch.rand(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "batches" in k}


def modes(model):
    return [m.training for m in model.modules()]


def _gen():
    return torch.Generator().manual_seed(5)


# What runs a model on data or codes, each called on a model and the data x.
CALLS = {
    "test_elbo": lambda m, x: evaluate.test_elbo(m, x, batch_size=7, generator=_gen()),
    "iwae": lambda m, x: evaluate.iwae_log_likelihood(m, x, K=20, batch_size=7, generator=_gen()),
    "active_units": lambda m, x: evaluate.active_units(m, x, batch_size=7)[1],
    "kl_per_unit": lambda m, x: evaluate.kl_per_unit(m, x, batch_size=7),
    "optimal_gaussian_elbo": lambda m, x: (
        evaluate.optimal_gaussian_elbo(m, x[:4], steps=3, eval_samples=4, generator=_gen()).elbo
    ),
    "rate_distortion": lambda m, x: torch.tensor(
        evaluate.rate_distortion(m, x, batch_size=7, generator=_gen()).rate
    ),
    "sample": lambda m, x: m.sample(5, generator=_gen()),
    "latent_manifold": lambda m, x: plotting.latent_manifold(m, n=3, image_shape=(3, 4)),
    "traversals": lambda m, x: plotting.traversals(m, x[:1], n=3, image_shape=(3, 4)),
    "decoded_mean": lambda m, x: decoded_mean(m, torch.zeros(3, K, dtype=torch.float64)),
}


@pytest.mark.parametrize("kind", ["batchnorm", "dropout"])
@pytest.mark.parametrize(
    "name, fn",
    [
        ("kl_per_unit", lambda m, x, b: evaluate.kl_per_unit(m, x, batch_size=b)),
        ("active_units", lambda m, x, b: evaluate.active_units(m, x, batch_size=b)[1]),
        ("test_elbo_K1", lambda m, x, b: evaluate.test_elbo(m, x, batch_size=b, n_samples=1)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_evaluation_does_not_depend_on_the_batch_size(kind, name, fn):
    """In train mode BatchNorm gave kl_per_unit totals of 6.051 nats at batch_size 100 and 5.016 at
    batch_size 2 (issue 22); in eval mode each example is computed on its own: equal to float
    rounding (1e-10 in float64). test_elbo's noise comes from the global generator here, reseeded:
    the same draws per example whatever the split only for K = 1 and batches of whole rows, so it
    is compared at batch sizes 40 and 8 (torch fills normal draws in blocks of 16 or more)."""
    model, x = make(kind), data()
    sizes = (40, 2) if name != "test_elbo_K1" else (40, 8)
    out = []
    for b in sizes:
        torch.manual_seed(3)
        out.append(fn(model, x, b))
    if name == "test_elbo_K1":  # the two splits draw other noise: compare the KL part instead
        out = [evaluate.rate_distortion(model, x, batch_size=b).rate for b in sizes]
        assert out[0] == pytest.approx(out[1], rel=1e-10)
    else:
        torch.testing.assert_close(out[0], out[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(CALLS))
@pytest.mark.parametrize("start", ["train", "eval", "mixed"])
def test_evaluations_keep_running_statistics_and_give_the_mode_back(name, start):
    model, x = make("batchnorm"), data()
    if start == "eval":
        model.eval()
    elif start == "mixed":  # a user's own choice for one submodule survives
        model.decoder.layer.eval()
    before_modes, before_stats = modes(model), bn_state(model)
    model.zero_grad()
    out = CALLS[name](model, x)
    assert modes(model) == before_modes, f"{name} changed the model's mode"
    for key, value in bn_state(model).items():
        torch.testing.assert_close(value, before_stats[key], rtol=0, atol=0, msg=key)
    if isinstance(out, torch.Tensor):
        assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("name", ["kl_per_unit", "test_elbo", "sample"])
def test_dropout_is_off_in_evaluation(name):
    """Dropout in train mode draws from the global generator: two calls would differ."""
    model, x = make("dropout"), data()
    torch.manual_seed(0)
    first = CALLS[name](model, x)
    torch.manual_seed(1)
    torch.testing.assert_close(CALLS[name](model, x), first, rtol=0, atol=0)
    assert model.training  # the fresh module's train mode came back


def test_fit_trains_in_train_mode_validates_in_eval_mode_and_restores_the_mode():
    model = make("batchnorm")
    seen = []  # (training, batch size) of every encoder call
    model.encoder.register_forward_hook(lambda m, i, o: seen.append((m.training, i[0].shape[0])))
    model.eval()  # a user evaluated the model by hand, then trains on
    stats = bn_state(model)
    fit(model, data(32), 2, batch_size=8, valid_x=data(10, seed=2), progress=False, device="cpu")
    assert not model.training and not any(modes(model))  # the caller's eval mode came back
    train_calls = [t for t, b in seen if b == 8]
    valid_calls = [t for t, b in seen if b == 10]
    assert len(train_calls) == 8 and all(train_calls)  # 2 epochs x 4 steps, all in train mode
    assert len(valid_calls) == 2 and not any(valid_calls)  # one validation per epoch, eval mode
    changed = [k for k, v in bn_state(model).items() if not torch.equal(v, stats[k])]
    assert sorted(changed) == sorted(stats)  # every running statistic was updated by training
    assert (
        int(model.state_dict()["encoder.body.1.num_batches_tracked"])
        == int(stats["encoder.body.1.num_batches_tracked"]) + 8
    )


def test_eval_mode_gives_the_modes_back_after_an_error_and_checks_its_argument():
    model = make("dropout")
    model.decoder.layer.eval()
    before = modes(model)
    with pytest.raises(RuntimeError, match="inside"):
        with eval_mode(model):
            assert not any(modes(model))
            raise RuntimeError("inside")
    assert modes(model) == before
    with pytest.raises(TypeError, match=r"eval_mode needs a torch.nn.Module, got str"):
        with eval_mode("model"):
            pass
