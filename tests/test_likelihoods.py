"""The likelihood registry: each registered p(x | z) against torch.distributions, and a new one
(Laplace, defined in this file alone) reaching the model, fit, evaluation, the command line and
checkpoints by its name.

Every test that walks the registry runs for each registered likelihood, so a likelihood that some
part of vaelib does not handle fails here; `ORACLES` must name an independent torch.distributions
density for each.
"""

import math

import pytest
import torch

from vaelib import checkpoints, evaluate, likelihoods, train
from vaelib.__main__ import main
from vaelib.models import VAE, Autoencoder
from vaelib.registry import LIKELIHOODS, Registry


class Laplace(likelihoods.Likelihood):
    """p(x | z) = prod_d Laplace(x_d; mean_d, b_d), b = sigma_x: log p = -sum_d [log 2 b_d + |x_d -
    mean_d| / b_d]."""

    name = "laplace"
    help = "Laplace(mean, b = sigma_x) per pixel"
    scale = "sigma_x"

    def log_prob(self, x, out, log_scale):
        log_b = log_scale.to(out.dtype)
        return -(math.log(2.0) + log_b + (x - out).abs() * torch.exp(-log_b)).sum(-1)

    def sample(self, out, log_scale, noise):
        u = noise(torch.rand) - 0.5  # inverse CDF of the Laplace distribution
        return out - torch.exp(log_scale.to(out.dtype)) * torch.sign(u) * torch.log1p(
            -2.0 * u.abs()
        )


# name -> (decoder output, sigma_x) -> torch.distributions object of p(x | z): the independent
# oracle of each
ORACLES = {
    "bernoulli": lambda out, sigma: torch.distributions.Bernoulli(logits=out),
    "gaussian": lambda out, sigma: torch.distributions.Normal(out, sigma),
    "laplace": lambda out, sigma: torch.distributions.Laplace(out, sigma),
}


@pytest.fixture
def laplace():
    LIKELIHOODS.register(Laplace())
    yield "laplace"
    LIKELIHOODS.unregister("laplace")


@pytest.fixture(params=[*LIKELIHOODS.names(), "laplace"])
def name(request):
    """Every built-in likelihood, and the test's own Laplace (registered for the test only)."""
    if request.param == "laplace":
        LIKELIHOODS.register(Laplace())
        yield "laplace"
        LIKELIHOODS.unregister("laplace")
    else:
        yield request.param


def data(name, n=120, D=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, D, generator=g, dtype=torch.float64)
    return torch.bernoulli(x, generator=g) if LIKELIHOODS.get(name).unit_interval else x


def scale_kwargs(name, learn=False):
    return {"sigma_x": 0.3, "learn_sigma_x": learn} if LIKELIHOODS.scale(name) else {}


def test_declared_facts_equal_the_objects():
    """vaelib.registry declares the built-ins' help and scale without importing torch; they must be
    the objects'."""
    for n in LIKELIHOODS.names():
        obj = LIKELIHOODS.get(n)
        assert (obj.name, obj.help, obj.scale) == (n, LIKELIHOODS.help(n), LIKELIHOODS.scale(n))


def test_unknown_names_and_incomplete_objects_are_refused():
    with pytest.raises(
        ValueError, match=r"likelihood must be one of 'bernoulli', 'gaussian', got 'poisson'"
    ):
        LIKELIHOODS.get("poisson")
    with pytest.raises(TypeError, match=r"a registered thing needs a 'scale' attribute"):
        Registry("thing").register(type("NoScale", (), {"name": "x", "help": ""})())


def test_log_prob_mean_and_sample_match_torch_distributions(name):
    """log_prob against torch.distributions (summed over pixels), the mean, and draws whose mean and
    mean absolute deviation match the oracle's to 5 standard errors (20,000 draws per pixel,
    seeded)."""
    lik = LIKELIHOODS.get(name)
    g = torch.Generator().manual_seed(1)
    out = torch.randn(3, 4, dtype=torch.float64, generator=g)  # (B, D) decoder output
    log_sigma = torch.log(torch.tensor([0.2, 0.5, 1.0, 2.0], dtype=torch.float64))  # per pixel
    oracle = ORACLES[name](out, torch.exp(log_sigma))
    x = oracle.sample((2,))  # (2, B, D)
    torch.testing.assert_close(
        lik.log_prob(x, out, log_sigma), oracle.log_prob(x).sum(-1), rtol=0, atol=1e-12
    )
    torch.testing.assert_close(lik.mean(out), oracle.mean, rtol=0, atol=1e-15)
    n = 20000
    draws = lik.sample(
        out.expand(n, 3, 4), log_sigma, lambda fn: fn(n, 3, 4, generator=g, dtype=torch.float64)
    )  # (n, B, D)
    ref = oracle.sample((n,))
    for stat in (lambda t: t, lambda t: (t - oracle.mean).abs()):
        se = stat(ref).std(0) / math.sqrt(n)
        assert (
            (stat(draws).mean(0) - stat(ref).mean(0)).abs() <= 5 * math.sqrt(2) * se + 1e-12
        ).all()


def test_a_registered_likelihood_reaches_model_fit_evaluation_and_checkpoints(name, tmp_path):
    """By its name alone: the model's log p(x | z) is the oracle's, fit trains it (binarizing only
    when the likelihood says so), test_elbo and the IWAE estimate agree with the model's own bound,
    and a checkpoint rebuilds the same model, scale included."""
    x = data(name)
    torch.manual_seed(0)
    model = VAE(64, 2, (16,), likelihood=name, **scale_kwargs(name, learn=True)).double()
    assert hasattr(model.decoder, LIKELIHOODS.get(name).output)
    z = torch.randn(5, 120, 2, dtype=torch.float64)  # (K, B, k)
    out = model.decode(z)
    sigma = model.sigma_x if LIKELIHOODS.scale(name) else None
    torch.testing.assert_close(
        model.log_likelihood(x, z), ORACLES[name](out, sigma).log_prob(x).sum(-1), rtol=0, atol=1e-9
    )
    history = train.fit(
        model, x, 2, batch_size=40, seed=1, valid_x=x[:20], progress=False, device="cpu"
    )
    assert history["epoch"] == [1, 2] and all(
        math.isfinite(v) for v in history["elbo"] + history["valid_elbo"]
    )
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(
            evaluate.test_elbo(model, x, generator=g()),
            model.elbo(x, generator=g()),
            rtol=0,
            atol=0,
        )
    iwae = evaluate.iwae_log_likelihood(model, x, K=50, generator=g())
    assert (
        iwae.mean() >= evaluate.test_elbo(model, x, n_samples=50, generator=g()).mean()
    )  # IWAE_50 >= ELBO
    path = checkpoints.save_checkpoint(tmp_path / "m.pt", model, history=history)
    ck = checkpoints.load_checkpoint(path, with_state=True)
    assert ck.model.config == model.config and ck.model.likelihood == name
    torch.testing.assert_close(
        ck.model.log_likelihood(x, z), model.log_likelihood(x, z), rtol=0, atol=0
    )
    more = train.fit(
        ck.model,
        x,
        1,
        batch_size=40,
        seed=1,
        valid_x=x[:20],
        progress=False,
        device="cpu",
        history=ck.history,
    )
    assert more["epoch"] == [1, 2, 3]
    ae = Autoencoder(64, 2, (16,), likelihood=name, **scale_kwargs(name)).double()
    torch.testing.assert_close(
        ae.loss_terms(x).loss, -ae.reconstruction_log_likelihood(x).mean(), rtol=0, atol=0
    )


def test_a_registered_likelihood_reaches_the_command_line(name, tmp_path, capsys):
    """--likelihood offers it, train writes a model with it (sigma_x learned when it has a scale),
    evaluate reads it back; the choices are read from the registry when the parser is built."""
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--likelihood",
            name,
            "--epochs",
            "1",
            "--latent-dim",
            "2",
            "--hidden",
            "16",
            "--no-progress",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    model = checkpoints.load_checkpoint(out / "model.pt")
    assert model.likelihood == name
    # the one default (issue 22): sigma_x at its closed-form optimum where there is one, else
    # learned by gradient; no sigma_x without a scale
    lik = LIKELIHOODS.get(name)
    assert model.config["learn_sigma_x"] == (
        False if lik.scale is None else ("optimal" if lik.has_optimal_scale() else True)
    )
    rc = main(
        [
            "evaluate",
            str(out / "model.pt"),
            "--K",
            "5",
            "--limit",
            "20",
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    printed = capsys.readouterr()
    assert rc == 0 and "IWAE log-likelihood (K=5)" in printed.out, printed.err


def test_learn_sigma_x_needs_a_likelihood_with_a_scale(laplace):
    with pytest.raises(
        ValueError, match=r"needs likelihood='gaussian' or likelihood='laplace' \(a Bernoulli"
    ):
        VAE(4, 2, likelihood="bernoulli", learn_sigma_x=True)
