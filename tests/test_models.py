"""vaelib.models: the VAE's ELBO and the Autoencoder's loss against independent oracles.

Oracles: torch's binary_cross_entropy_with_logits, torch.distributions (Normal KL, Bernoulli and
    Normal
log-probabilities), scipy.stats.norm, the exact evidence and posterior of a linear-Gaussian model
(vaelib.toy.LinearGaussian) written into a linear VAE, and vaelib.estimators.elbo (Monte Carlo KL).
Float64 throughout unless a test says otherwise.
"""

import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from conftest import linear_gaussian
from torch.distributions import Bernoulli, Normal, kl_divergence

from vaelib import estimators, evaluate, train
from vaelib.distributions import kl_mvnormal
from vaelib.models import VAE, Autoencoder

D, K = 12, 3


def make_vae(likelihood="bernoulli", hidden=(10, 7), seed=0, **kw):
    torch.manual_seed(seed)
    return VAE(D, K, hidden, likelihood=likelihood, **kw).double()


def grey(B=5, seed=1):
    """Grey-scale data in (0, 1): exercises the Bernoulli formula on non-binary targets too."""
    return torch.rand(B, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def linear_vae(lg, perturb=0.0):
    """A linear VAE whose decoder is LinearGaussian `lg` and whose encoder is its exact posterior.

    lg must have orthogonal columns of W so the exact posterior covariance is diagonal
    (representable by q). perturb > 0 moves q away from the posterior (mean shift and wider
    variance), so the ELBO is strictly below log p(x) by KL(q || p(z|x)).
    """
    d, k = lg.data_dim, lg.latent_dim
    vae = VAE(d, k, hidden_dims=(), likelihood="gaussian", sigma_x=lg.noise_std).double()
    s2 = lg.noise_std**2
    eye = torch.eye(k, dtype=torch.float64)
    cov = torch.linalg.inv(eye + lg.W.T @ lg.W / s2)
    assert torch.allclose(cov, torch.diag(torch.diagonal(cov)), atol=1e-12)  # diagonal posterior
    with torch.no_grad():
        vae.decoder.to_mean.weight.copy_(lg.W)  # (d, k)
        vae.decoder.to_mean.bias.copy_(lg.b)
        A = cov @ lg.W.T / s2  # posterior mean = A (x - b), (k, d)
        vae.to_mu.weight.copy_(A)
        vae.to_mu.bias.copy_(-A @ lg.b + perturb)
        vae.to_logvar.weight.zero_()
        vae.to_logvar.bias.copy_(torch.log(torch.diagonal(cov)) + perturb)
    return vae


# -- the ELBO against hand-written formulas
# ---------------------------------------------------------


def test_bernoulli_elbo_equals_hand_written_bce_and_closed_form_kl():
    model, x = make_vae(), grey()

    def oracle(n):
        """The same noise eps (same seed, same draw shape (n, B, K)), then BCE with logits and
        torch.distributions' Normal-Normal KL, written out independently of vaelib.distributions.
        Returns (log_px_z, kl), each (B,)."""
        eps = torch.randn(
            n, x.shape[0], K, generator=torch.Generator().manual_seed(7), dtype=torch.float64
        )
        h = model.encoder(x)
        mu, logvar = model.to_mu(h), model.to_logvar(h)
        logits = model.decoder(mu + torch.exp(0.5 * logvar) * eps)  # (n, B, D)
        log_px_z = (
            -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
            .sum(-1)
            .mean(0)
        )
        return log_px_z, kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(
            -1
        )

    # float64 sums of 12 terms: agreement to ~1e-14; 1e-10 leaves room for different summation
    # order.
    terms = model.elbo_terms(x, n_samples=4, generator=torch.Generator().manual_seed(7))
    log_px_z, kl = oracle(4)
    torch.testing.assert_close(terms.log_px_z, log_px_z, rtol=0, atol=1e-10)
    torch.testing.assert_close(terms.kl, kl, rtol=0, atol=1e-10)
    torch.testing.assert_close(terms.elbo, log_px_z - kl, rtol=0, atol=1e-10)
    # model.elbo against the oracle too, with n_samples = 1 (drawn without a sample dimension) and
    # 4.
    for n in (1, 4):
        log_px_z, kl = oracle(n)
        elbo = model.elbo(x, n_samples=n, generator=torch.Generator().manual_seed(7))
        assert elbo.shape == (5,)
        torch.testing.assert_close(elbo, log_px_z - kl, rtol=0, atol=1e-10)


@pytest.mark.parametrize("learn", [False, True], ids=["fixed-sigma", "learned-sigma"])
def test_gaussian_elbo_keeps_every_constant(learn):
    model, x = make_vae("gaussian", sigma_x=0.3, learn_sigma_x=learn), grey()
    terms = model.elbo_terms(x, n_samples=2, generator=torch.Generator().manual_seed(3))
    eps = torch.randn(
        2, x.shape[0], K, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    with torch.no_grad():
        mu, logvar = model.encode(x)
        mean = model.decode(mu + torch.exp(0.5 * logvar) * eps).numpy()  # (2, B, D)
    # scipy's normal log-density includes -1/2 log(2 pi sigma^2) per pixel. A learned sigma_x starts
    # from float32(log 0.3), so use the model's current value; a fixed one is exactly 0.3.
    sigma = model.sigma_x
    assert sigma == (pytest.approx(0.3, rel=1e-7) if learn else 0.3)
    log_px_z = scipy.stats.norm.logpdf(x.numpy(), mean, sigma).sum(-1).mean(0)
    np.testing.assert_allclose(terms.log_px_z.detach().numpy(), log_px_z, rtol=0, atol=1e-10)


def test_learned_sigma_gradient_matches_the_formula():
    """d log N(x; m, s^2) / d log s = sum_d [(x_d - m_d)^2 / s^2 - 1]: autograd against the
    derivative by hand."""
    model, x = make_vae("gaussian", sigma_x=0.5, learn_sigma_x=True), grey()
    loss = model.loss(x, generator=torch.Generator().manual_seed(5))
    (grad,) = torch.autograd.grad(loss, model.log_sigma_x)
    eps = torch.randn(
        1, x.shape[0], K, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    with torch.no_grad():
        mu, logvar = model.encode(x)
        mean = model.decode(mu + torch.exp(0.5 * logvar) * eps)[0]  # (B, D)
        s2 = model.sigma_x**2  # float32(log 0.5) made float64: 0.25 up to ~1e-8
        expected = -(((x - mean) ** 2 / s2 - 1.0).sum(-1)).mean()  # loss = -mean ELBO
    assert grad.item() == pytest.approx(expected.item(), rel=1e-10)


def test_loss_is_minus_batch_mean_of_the_beta_weighted_elbo():
    model, x = make_vae(), grey()
    g = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    terms = model.elbo_terms(x, generator=g())
    assert model.loss(x, generator=g()).item() == pytest.approx(
        -terms.elbo.mean().item(), abs=1e-12
    )
    beta_loss = -(terms.log_px_z - 0.25 * terms.kl).mean()
    assert model.loss(x, beta=0.25, generator=g()).item() == pytest.approx(
        beta_loss.item(), abs=1e-12
    )


def test_log_joint_against_torch_distributions():
    model = make_vae()
    x = torch.bernoulli(
        grey(4), generator=torch.Generator().manual_seed(2)
    )  # binary: a true Bernoulli pmf
    z = torch.randn(
        6, 4, K, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )  # (K, B, k)
    with torch.no_grad():
        log_joint = model.log_joint(x, z)
        oracle = Bernoulli(logits=model.decode(z)).log_prob(x).sum(-1) + Normal(0.0, 1.0).log_prob(
            z
        ).sum(-1)
    assert log_joint.shape == (6, 4)
    torch.testing.assert_close(log_joint, oracle, rtol=0, atol=1e-10)
    torch.testing.assert_close(
        model.log_prior(z), Normal(0.0, 1.0).log_prob(z).sum(-1), rtol=0, atol=1e-12
    )


# -- the ELBO against the exact answer of a linear-Gaussian model
# ------------------------------------


def test_linear_vae_at_the_exact_posterior_has_elbo_equal_to_log_evidence():
    """linear_vae's encoder is p(z|x), checked by Bayes' rule rather than by the posterior formula
    it was built from: log q(z|x) = log p(x, z) - log p(x) at random z, with log p(x, z) from
    torch.distributions and log p(x) from scipy's multivariate normal N(b, W W^T + sigma^2 I).
    Float64: round-off ~1e-13."""
    lg = linear_gaussian(d=5, k=2, noise_std=0.6, orthogonal=True)
    vae = linear_vae(lg)
    x, _ = lg.sample(4, generator=torch.Generator().manual_seed(0))
    log_px = lg.log_evidence(x)
    marginal = scipy.stats.multivariate_normal(
        lg.b.numpy(), (lg.W @ lg.W.T).numpy() + 0.6**2 * np.eye(5)
    )
    scipy_log_px = torch.from_numpy(marginal.logpdf(x.numpy()))  # (4,)
    z = 2 * torch.randn(
        6, 4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )  # (K, B, k)
    log_pxz = Normal(z @ lg.W.T + lg.b, 0.6).log_prob(x).sum(-1) + Normal(0.0, 1.0).log_prob(z).sum(
        -1
    )  # (K, B)
    with torch.no_grad():
        mu, logvar = vae.encode(x)
        log_q = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)  # (K, B)
        torch.testing.assert_close(log_q, log_pxz - scipy_log_px, rtol=0, atol=1e-10)
        # q = p(z|x): every importance weight equals p(x), so one sample of log w is log p(x)
        # exactly.
        log_w = vae.log_joint(x, vae.encode(x)[0].unsqueeze(0)) - Normal(
            mu, torch.exp(0.5 * logvar)
        ).log_prob(mu).sum(-1)
        torch.testing.assert_close(log_w[0], log_px, rtol=0, atol=1e-10)


@pytest.mark.parametrize("perturb", [0.0, 0.4], ids=["exact-q", "perturbed-q"])
def test_monte_carlo_elbo_matches_log_evidence_minus_posterior_kl(perturb):
    """E[VAE.elbo] = log p(x) - KL(q || p(z|x)), both sides exact for the linear model; the MC mean
    of the closed-form-KL ELBO (VAE.elbo) and of the Monte Carlo-KL ELBO (estimators.elbo with the
    model's log_joint) must each match within 4 standard errors."""
    lg = linear_gaussian(d=5, k=2, noise_std=0.6, orthogonal=True)
    vae = linear_vae(lg, perturb)
    x, _ = lg.sample(3, generator=torch.Generator().manual_seed(1))
    M = 4000
    with torch.no_grad():
        mu, logvar = vae.encode(x)
        post_mean, post_cov = lg.posterior(x)
        exact = lg.log_evidence(x) - kl_mvnormal(
            mu, torch.diag_embed(torch.exp(logvar)), post_mean, post_cov
        )
        xr = x.repeat(M, 1)  # (M*B, d): M independent single-sample estimates per example
        a = vae.elbo(xr, generator=torch.Generator().manual_seed(2)).reshape(M, 3)
        b = estimators.elbo(
            vae.log_joint,
            xr,
            mu.repeat(M, 1),
            logvar.repeat(M, 1),
            generator=torch.Generator().manual_seed(3),
        ).reshape(M, 3)
    for est in (a, b):
        se = est.std(0) / math.sqrt(M)
        assert bool((est.mean(0) - exact).abs().le(4 * se + 1e-9).all()), (est.mean(0), exact, se)
    if perturb:
        assert bool(
            (exact < lg.log_evidence(x) - 0.01).all()
        )  # the perturbation costs a visible gap


# -- sampling, the Autoencoder, configuration ------------------------------------------------------


def test_sample_decodes_prior_draws_to_probabilities():
    model = make_vae()
    s = model.sample(7, generator=torch.Generator().manual_seed(4))
    z = torch.randn(7, K, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        expected = torch.sigmoid(model.decode(z))
    torch.testing.assert_close(s, expected, rtol=0, atol=0)
    assert s.shape == (7, D) and not s.requires_grad
    assert bool(((s > 0) & (s < 1)).all())
    g = make_vae("gaussian").sample(3, generator=torch.Generator().manual_seed(4))
    assert g.shape == (3, D)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_autoencoder_loss_is_reconstruction_nll(likelihood):
    torch.manual_seed(0)
    ae = Autoencoder(D, K, (9,), likelihood=likelihood, sigma_x=0.5).double()
    x = grey()
    with torch.no_grad():
        z = ae.to_mu(torch.relu(ae.encoder.hidden1(x)))  # the code, written out layer by layer
        out = ae.decoder(z)
        if likelihood == "bernoulli":
            oracle = -F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)
        else:
            oracle = torch.from_numpy(scipy.stats.norm.logpdf(x.numpy(), out.numpy(), 0.5).sum(-1))
        ll = ae.reconstruction_log_likelihood(x)
    torch.testing.assert_close(ae.encode(x), z, rtol=0, atol=0)
    torch.testing.assert_close(ll, oracle, rtol=0, atol=1e-10)
    assert ae.loss(x).item() == pytest.approx(-oracle.mean().item(), abs=1e-12)


def test_architecture_names_and_config_rebuild():
    model = make_vae("gaussian", hidden=(10, 7), sigma_x=0.5, learn_sigma_x=True)
    names = dict(model.named_modules())
    assert isinstance(names["to_mu"], torch.nn.Linear) and isinstance(
        names["to_logvar"], torch.nn.Linear
    )
    assert names["encoder.hidden1"].in_features == D and names["encoder.hidden2"].out_features == 7
    assert names["decoder.hidden1"].in_features == K and names["decoder.to_mean"].out_features == D
    assert "decoder.to_logits" in dict(make_vae().named_modules())
    config = model.config
    assert config == {
        "data_dim": D,
        "latent_dim": K,
        "hidden_dims": [10, 7],
        "likelihood": "gaussian",
        "sigma_x": 0.5,
        "learn_sigma_x": True,
    }
    config["hidden_dims"].append(99)  # a copy: changing it does not change the model
    rebuilt = VAE(**model.config).double()
    rebuilt.load_state_dict(model.state_dict())
    x = grey()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    torch.testing.assert_close(
        rebuilt.elbo(x, generator=g()), model.elbo(x, generator=g()), rtol=0, atol=0
    )
    assert Autoencoder(**Autoencoder(D, K, (5,)).config).config["hidden_dims"] == [5]


def test_float32_by_default():
    torch.manual_seed(0)
    model = VAE(D, K, (8,))
    x = grey().float()
    assert model.elbo(x).dtype == torch.float32 and model.sample(2).dtype == torch.float32


# -- bad input
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x, error, match",
    [
        ([[0.5] * D], TypeError, r"x must be a torch.Tensor, got list"),
        (
            torch.ones(2, D, dtype=torch.int64),
            TypeError,
            r"x must be a floating-point tensor.*int64",
        ),
        (
            torch.full((2, D + 1), 0.5, dtype=torch.float64),
            ValueError,
            r"x must have shape \(B, 12\).*got \(2, 13\)",
        ),
        (
            torch.full((D,), 0.5, dtype=torch.float64),
            ValueError,
            r"x must have shape \(B, 12\).*got \(12,\)",
        ),
    ],
    ids=["list", "int", "wrong-D", "1-d"],
)
def test_elbo_and_loss_reject_bad_x(x, error, match):
    model = make_vae()
    with pytest.raises(error, match=match):
        model.elbo(x)
    with pytest.raises(error, match=match):
        model.loss(x)


@pytest.mark.parametrize(
    "value, match",
    [
        (float("nan"), r"contains NaN"),
        (float("inf"), r"contains inf"),
        (1.5, r"must lie in \[0, 1\].*Bernoulli"),
    ],
    ids=["nan", "inf", "out-of-range"],
)
def test_bad_values_are_refused_where_data_enter(value, match):
    """The model's methods check types and shapes only (cheap, every training step); values are
    scanned once by fit and the evaluate functions, which every dataset passes through."""
    model = make_vae()
    x = grey().double()
    x[1, 3] = value
    with pytest.raises(ValueError, match="x " + match):
        evaluate.test_elbo(model, x)
    with pytest.raises(ValueError, match="x " + match):
        evaluate.iwae_log_likelihood(model, x, 5)
    with pytest.raises(ValueError, match="train_x " + match):
        train.fit(model, x, 1, progress=False)


def test_gaussian_accepts_values_outside_unit_interval():
    assert make_vae("gaussian").elbo(torch.full((2, D), 3.0, dtype=torch.float64)).shape == (2,)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m, x: m.elbo(x, n_samples=0), ValueError, r"n_samples must be >= 1"),
        (lambda m, x: m.elbo(x, generator=1), TypeError, r"generator must be a torch.Generator"),
        (lambda m, x: m.loss(x, beta=-1.0), ValueError, r"beta must be a finite number >= 0"),
        (lambda m, x: m.loss(x, beta="1"), TypeError, r"beta must be a number"),
        (
            lambda m, x: m.decode(torch.zeros(2, K + 1, dtype=torch.float64)),
            ValueError,
            r"z must have shape \(\.\.\., 3\)",
        ),
        (
            lambda m, x: m.log_joint(x, torch.zeros(4, 2, 1, dtype=torch.float64)),
            ValueError,
            r"z must have shape",
        ),
        (
            lambda m, x: m.encode(torch.zeros(2, 5, dtype=torch.float64)),
            ValueError,
            r"x must have shape \(\.\.\., 12\)",
        ),
        (lambda m, x: m.sample(0), ValueError, r"n must be >= 1"),
        (
            lambda m, x: m.elbo(x.float()),
            TypeError,
            r"x has dtype torch.float32 but the model's parameters are torch.float64",
        ),
        (
            lambda m, x: m.decode(torch.zeros(2, K)),
            TypeError,
            r"z has dtype torch.float32 but the model's",
        ),
    ],
    ids=[
        "n_samples",
        "generator",
        "beta-negative",
        "beta-type",
        "decode-z",
        "log_joint-z",
        "encode-x",
        "sample-n",
        "x-dtype",
        "z-dtype",
    ],
)
def test_other_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call(make_vae(), grey(2))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(data_dim=0, latent_dim=2), ValueError, r"data_dim must be >= 1"),
        (dict(data_dim=4, latent_dim=2.0), TypeError, r"latent_dim must be an int"),
        (
            dict(data_dim=4, latent_dim=2, hidden_dims="400"),
            TypeError,
            r"hidden_dims must be a sequence of ints",
        ),
        (
            dict(data_dim=4, latent_dim=2, hidden_dims=(8, 0)),
            ValueError,
            r"hidden_dims\[1\] must be >= 1",
        ),
        (
            dict(data_dim=4, latent_dim=2, likelihood="poisson"),
            ValueError,
            r"likelihood must be one of 'bernoulli', 'gaussian'",
        ),
        (
            dict(data_dim=4, latent_dim=2, likelihood="gaussian", sigma_x=0.0),
            ValueError,
            r"sigma_x must be a finite positive",
        ),
        (
            dict(data_dim=4, latent_dim=2, learn_sigma_x=True),
            ValueError,
            r"learn_sigma_x=True needs likelihood='gaussian'",
        ),
    ],
    ids=[
        "data_dim",
        "latent_dim",
        "hidden-str",
        "hidden-zero",
        "likelihood",
        "sigma_x",
        "learn-bernoulli",
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        VAE(**kwargs)


# -- the linear VAE learns probabilistic PCA
# -----------------------------------------------------------


def test_linear_vae_trained_by_fit_reaches_the_ppca_maximum_likelihood():
    """VAE(d, k, hidden_dims=(), likelihood="gaussian", learn_sigma_x=True) is probabilistic PCA
    with a linear
    encoder: its decoder is a LinearGaussian (W = to_mean.weight, b = to_mean.bias, sigma =
        sigma_x), and pPCA's
    posterior is Gaussian with a covariance that is diagonal once W's columns are orthogonal (a
    rotation of the maximum-likelihood W, Tipping & Bishop 1999), so the ELBO can reach the maximum
    log-likelihood exactly (Lucas et al. 2019, "Don't Blame the ELBO!").

    Oracle: LinearGaussian.fit_ml, the closed-form maximum (tested in test_toy). The trained model's
        ELBO is
    computed exactly (LinearGaussian.exact_elbo with the encoder's q), so no Monte Carlo error
    enters. Hard
    inequalities: ELBO <= log p_theta(x) (a KL >= 0) <= the maximum, to round-off. Tolerance: 100
        epochs at
    lr 1e-2 and 50 at 1e-3 leave the ELBO ~0.004 nats below the maximum (seeds 0-4 on this problem:
    0.003 to 0.004; the untrained model starts 5-10 nats below), mostly Adam's jitter under
    one-sample gradients; 0.05 nats is ten times that. The learned W has nearly orthogonal columns:
    posterior correlation < 0.1.
    """
    from vaelib.toy import LinearGaussian
    from vaelib.train import fit

    truth = linear_gaussian(d=6, k=2, noise_std=0.5, seed=1)
    x, _ = truth.sample(500, generator=torch.Generator().manual_seed(2))  # (500, 6)
    best = LinearGaussian.fit_ml(x, 2).log_evidence(x).mean().item()
    torch.manual_seed(0)
    vae = VAE(6, 2, hidden_dims=(), likelihood="gaussian", learn_sigma_x=True).double()
    history = fit(vae, x, 100, batch_size=50, lr=1e-2, seed=0, progress=False, device="cpu")
    fit(
        vae,
        x,
        50,
        batch_size=50,
        lr=1e-3,
        seed=0,
        progress=False,
        device="cpu",
        history=history,
        optimizer_state=history.optimizer_state,
        rng_state=history.rng_state,
    )
    with torch.no_grad():
        decoder = vae.decoder.to_mean
        learned = LinearGaussian(decoder.weight.clone(), decoder.bias.clone(), vae.sigma_x)
        mu, logvar = vae.encode(x)
        elbo = learned.exact_elbo(x, mu, logvar).mean().item()
        log_px = learned.log_evidence(x).mean().item()
        _, cov = learned.posterior(x)
    assert elbo <= log_px + 1e-10 and log_px <= best + 1e-10
    assert best - elbo < 0.05, (best, log_px, elbo)
    assert abs(cov[0, 1].item()) / math.sqrt(cov[0, 0].item() * cov[1, 1].item()) < 0.1


# -- your own encoder and decoder
# -------------------------------------------------------------------


class SplitEncoder(torch.nn.Module):
    """x (B, D) -> (B, 2k): mu in the first k columns, logvar in the last k."""

    def __init__(self, pair=False):
        super().__init__()
        self.net, self.pair = torch.nn.Linear(D, 2 * K), pair

    def forward(self, x):
        out = self.net(x)
        return (out[:, :K], out[:, K:]) if self.pair else out


class Decoder(torch.nn.Module):
    """z (..., k) -> (..., D); `flatten` reproduces the classic bug: the sample dimension merged
    into the batch."""

    def __init__(self, flatten=False, mix=False):
        super().__init__()
        self.net, self.flatten, self.mix = (
            torch.nn.Sequential(torch.nn.Linear(K, 8), torch.nn.Tanh(), torch.nn.Linear(8, D)),
            flatten,
            mix,
        )

    def forward(self, z):
        if self.flatten:
            return self.net(z.reshape(-1, K))  # (S*B, D): wrong for z (S, B, k)
        if self.mix and z.dim() == 3:
            return self.net(z.transpose(0, 1).reshape(z.shape)).reshape(
                *z.shape[:-1], D
            )  # right shape, wrong rows
        return self.net(z)


def custom_vae(pair=False, likelihood="bernoulli", **kw):
    torch.manual_seed(0)
    return VAE(
        D, K, likelihood=likelihood, encoder=SplitEncoder(pair), decoder=Decoder(), **kw
    ).double()


@pytest.mark.parametrize("pair", [False, True], ids=["2k-columns", "mu-logvar-pair"])
def test_custom_modules_give_the_hand_written_elbo(pair):
    model = custom_vae(pair)
    x = torch.bernoulli(
        grey(), generator=torch.Generator().manual_seed(2)
    )  # binary: a true Bernoulli pmf
    terms = model.elbo_terms(x, n_samples=3, generator=torch.Generator().manual_seed(7))
    eps = torch.randn(
        3, x.shape[0], K, generator=torch.Generator().manual_seed(7), dtype=torch.float64
    )
    with torch.no_grad():
        out = model.encoder.net(x)
        mu, logvar = out[:, :K], out[:, K:]  # the contract: first k columns mu, last k logvar
        logits = model.decoder.net(mu + torch.exp(0.5 * logvar) * eps)  # (3, B, D)
        log_px_z = Bernoulli(logits=logits).log_prob(x).sum(-1).mean(0)
        kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(terms.log_px_z, log_px_z, rtol=0, atol=1e-10)
    torch.testing.assert_close(terms.kl, kl, rtol=0, atol=1e-10)
    # encode() takes any leading dimensions even though the module itself takes (B, D) only.
    mu3, logvar3 = model.encode(x.expand(2, *x.shape))  # (2, B, k) each
    torch.testing.assert_close(mu3[1], mu, rtol=0, atol=0)
    torch.testing.assert_close(logvar3[0], logvar, rtol=0, atol=0)
    assert not hasattr(model, "to_mu") and not hasattr(model, "to_logvar")


def test_custom_model_config_marks_the_modules_and_cannot_pose_as_an_mlp():
    model = custom_vae(likelihood="gaussian", sigma_x=0.5)
    assert model.config == {
        "data_dim": D,
        "latent_dim": K,
        "hidden_dims": None,
        "likelihood": "gaussian",
        "sigma_x": 0.5,
        "learn_sigma_x": False,
        "encoder": "custom",
        "decoder": "custom",
    }
    assert model.hidden_dims is None
    with pytest.raises(
        ValueError,
        match=r"encoder='custom' marks a model built with your own encoder.*load_checkpoint",
    ):
        VAE(**model.config)
    torch.manual_seed(0)
    half = VAE(
        D, K, (6,), decoder=Decoder()
    )  # MLP encoder, your decoder: hidden_dims describes the encoder
    assert half.config["hidden_dims"] == [6] and (
        half.config["encoder"],
        half.config["decoder"],
    ) == ("mlp", "custom")
    assert (
        "encoder" not in make_vae().config
    )  # the MLP model's config is unchanged: it rebuilds the model


def test_custom_autoencoder():
    class Code(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(D, K)

        def forward(self, x):
            return self.net(x)

    torch.manual_seed(0)
    ae = Autoencoder(D, K, encoder=Code(), decoder=Decoder()).double()
    x = torch.bernoulli(
        grey(), generator=torch.Generator().manual_seed(2)
    )  # binary: a true Bernoulli pmf
    with torch.no_grad():
        oracle = Bernoulli(logits=ae.decoder.net(ae.encoder.net(x))).log_prob(x).sum(-1)
        torch.testing.assert_close(ae.reconstruction_log_likelihood(x), oracle, rtol=0, atol=1e-10)
    assert ae.config["encoder"] == "custom" and ae.config["hidden_dims"] is None
    with pytest.raises(
        ValueError,
        match=r"encoder \(SplitEncoder\) must map x of shape \(B, D\) = \(3, 12\) to the code, "
        r"a tensor \(B, k\) = \(3, 3\); got a tensor of shape \(3, 6\)",
    ):
        Autoencoder(D, K, encoder=SplitEncoder(), decoder=Decoder())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            dict(decoder=Decoder(flatten=True)),
            ValueError,
            r"decoder \(Decoder\) must map z of shape \(\.\.\., k\) to \(\.\.\., D\).*z of shape "
            r"\(2, 3, 3\) gave a tensor of "
            r"shape \(6, 12\), expected \(2, 3, 12\) \(it flattens the sample dimension",
        ),
        (
            dict(decoder=Decoder(mix=True)),
            ValueError,
            r"decoder \(Decoder\).*differs from decoding each z\[i\].*mixes",
        ),
        (
            dict(decoder=torch.nn.Linear(K, D + 1)),
            ValueError,
            r"decoder \(Linear\).*z of shape \(3, 3\) gave a tensor of shape \(3, 13\)",
        ),
        (
            dict(decoder=torch.nn.Linear(K + 1, D)),
            ValueError,
            r"decoder \(Linear\) failed on a dummy batch z of shape \(3, 3\): RuntimeError",
        ),
        (
            dict(encoder=torch.nn.Linear(D, K)),
            ValueError,
            r"encoder \(Linear\) must map x of shape \(B, D\) = \(3, 12\) to a tensor \(B, 2k\) = "
            r"\(3, 6\).*got a tensor of shape \(3, 3\)",
        ),
        (
            dict(encoder=lambda x: x),
            TypeError,
            r"encoder must be a torch.nn.Module \(or None for the MLP\), got function",
        ),
        (dict(encoder="custom"), ValueError, r"encoder='custom' marks a model"),
        (
            dict(encoder=SplitEncoder(), decoder=Decoder(), hidden_dims=(400,)),
            ValueError,
            r"hidden_dims=\(400,\) describes the MLP.*leave hidden_dims out",
        ),
    ],
    ids=[
        "flattening-decoder",
        "mixing-decoder",
        "wrong-D",
        "decoder-raises",
        "encoder-k-not-2k",
        "not-a-module",
        "custom-marker",
        "hidden-dims-with-both-custom",
    ],
)
def test_bad_custom_modules_are_caught_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        VAE(D, K, **kwargs)


def test_the_construction_check_leaves_rng_and_training_mode_alone():
    """The dummy batch uses a private generator and eval mode; the global RNG and each submodule's
    mode survive."""
    decoder = torch.nn.Sequential(torch.nn.Linear(K, D), torch.nn.Dropout(0.5))
    decoder[1].eval()  # a submodule in a different mode from its parent must keep it
    torch.manual_seed(3)
    VAE(
        D, K, (5,), decoder=decoder
    )  # dropout in train mode would fail the consistency check: eval mode is used
    after_check = torch.rand(1)
    assert decoder.training and not decoder[1].training
    # Only the MLP's initialisation draws from the global RNG: the same layers built by hand leave
    # it in the same state.
    torch.manual_seed(3)
    [
        torch.nn.Linear(D, 5),
        torch.nn.Linear(5, K),
        torch.nn.Linear(5, K),
    ]  # encoder.hidden1, to_mu, to_logvar
    assert torch.equal(after_check, torch.rand(1))


def test_iwae_and_elbo_with_a_custom_decoder_have_one_value_per_example():
    from vaelib import evaluate

    model, x = custom_vae(), torch.bernoulli(grey(4), generator=torch.Generator().manual_seed(0))
    ll = evaluate.iwae_log_likelihood(
        model, x, K=7, chunk_size=3, generator=torch.Generator().manual_seed(1)
    )
    assert ll.shape == (4,)
    # K = 1 IWAE is a one-sample ELBO with a Monte Carlo KL: its mean over many draws matches the
    # ELBO's.
    xr = x.repeat(2000, 1)
    a = evaluate.iwae_log_likelihood(
        model, xr, K=1, batch_size=8000, generator=torch.Generator().manual_seed(2)
    )
    b = model.elbo(xr, generator=torch.Generator().manual_seed(3)).detach()
    a, b = a.reshape(2000, 4), b.reshape(2000, 4)
    se = torch.sqrt(a.var(0) / 2000 + b.var(0) / 2000)
    assert bool(((a.mean(0) - b.mean(0)).abs() < 4 * se).all())


# -- sigma_x per pixel, learned, and the sigma_x = 1 warning
# ----------------------------------------


@pytest.mark.parametrize("learn", [False, True], ids=["fixed", "learned"])
def test_per_pixel_sigma_x_against_torch_normal(learn):
    sigma = torch.linspace(0.2, 1.4, D, dtype=torch.float64)
    model, x = make_vae("gaussian", sigma_x=sigma.numpy(), learn_sigma_x=learn), grey()
    terms = model.elbo_terms(x, n_samples=2, generator=torch.Generator().manual_seed(3))
    eps = torch.randn(
        2, x.shape[0], K, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    with torch.no_grad():
        mu, logvar = model.encode(x)
        mean = model.decode(mu + torch.exp(0.5 * logvar) * eps)  # (2, B, D)
    # A learned sigma_x starts from float32 log sigma (the default dtype), so compare with the
    # model's value.
    current = model.sigma_x
    assert current.shape == (D,) and current.dtype == torch.float64
    torch.testing.assert_close(current, sigma, rtol=(1e-6 if learn else 0), atol=0)
    oracle = Normal(mean, current).log_prob(x).sum(-1).mean(0)
    torch.testing.assert_close(terms.log_px_z.detach(), oracle, rtol=0, atol=1e-10)
    assert model.config["sigma_x"] == pytest.approx(sigma.tolist(), abs=0)
    if learn:
        assert model.log_sigma_x.shape == (D,)


def test_learned_per_pixel_sigma_gradient_matches_the_formula():
    """d loss / d log s_d = -(1/B) sum_b [(x_bd - m_bd)^2 / s_d^2 - 1], pixel by pixel."""
    model, x = make_vae("gaussian", sigma_x=[0.5] * D, learn_sigma_x=True), grey()
    loss = model.loss(x, generator=torch.Generator().manual_seed(5))
    (grad,) = torch.autograd.grad(loss, model.log_sigma_x)
    eps = torch.randn(
        1, x.shape[0], K, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    with torch.no_grad():
        mu, logvar = model.encode(x)
        mean = model.decode(mu + torch.exp(0.5 * logvar) * eps)[0]  # (B, D)
        expected = -((x - mean) ** 2 / model.sigma_x**2 - 1.0).mean(0)  # (D,)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_per_pixel_sigma_config_rebuilds_and_fixed_vector_survives_dtype_moves():
    sigma = np.linspace(0.1, 0.9, D)
    model = make_vae("gaussian", sigma_x=sigma)
    rebuilt = VAE(**model.config).double()
    rebuilt.load_state_dict(model.state_dict())
    x, g = grey(), lambda: torch.Generator().manual_seed(0)  # noqa: E731
    torch.testing.assert_close(
        rebuilt.elbo(x, generator=g()), model.elbo(x, generator=g()), rtol=0, atol=0
    )
    assert (
        model.float().elbo(x.float()).dtype == torch.float32
    )  # the float64 sigma follows the model's dtype


def test_learned_sigma_for_the_autoencoder():
    torch.manual_seed(0)
    ae = Autoencoder(D, K, (9,), likelihood="gaussian", sigma_x=0.4, learn_sigma_x=True).double()
    assert isinstance(ae.log_sigma_x, torch.nn.Parameter) and ae.config["learn_sigma_x"] is True
    x = grey()
    loss = ae.loss(x)
    (grad,) = torch.autograd.grad(loss, ae.log_sigma_x)
    with torch.no_grad():
        mean = ae.decode(ae.encode(x))
        expected = -((x - mean) ** 2 / ae.sigma_x**2 - 1.0).sum(-1).mean()
    assert grad.item() == pytest.approx(expected.item(), rel=1e-10)


@pytest.mark.parametrize(
    "sigma_x, match",
    [
        (
            [0.5] * (D - 1),
            r"sigma_x must be a number or have shape \(D,\) = \(12,\), got shape \(11,\)",
        ),
        ([0.5] * (D - 1) + [0.0], r"sigma_x must be finite and positive in every dimension"),
        (
            [0.5] * (D - 1) + [float("nan")],
            r"sigma_x must be finite and positive in every dimension",
        ),
    ],
    ids=["length", "zero", "nan"],
)
def test_bad_per_pixel_sigma(sigma_x, match):
    with pytest.raises(ValueError, match=match):
        VAE(D, K, likelihood="gaussian", sigma_x=sigma_x)


def test_fixed_unit_sigma_on_unit_interval_data_warns_once():
    model = make_vae("gaussian", sigma_x=1.0)  # fixed (the default is now the optimal sigma_x)
    with pytest.warns(
        UserWarning, match=r"fixed sigma_x = 1 on data in \[0, 1\].*collapses.*learn_sigma_x=True"
    ) as rec:
        model.elbo(grey())
    assert rec[0].filename == __file__  # the warning points at the caller's line, not inside vaelib
    model.elbo(grey())  # once per model: no second warning (filterwarnings = error would fail here)
    make_vae("gaussian", sigma_x=1.0).elbo(
        grey() * 4 - 2
    )  # standardised data: sigma_x = 1 is a reasonable choice, no warning
    make_vae("gaussian", sigma_x=0.3).elbo(grey())
    make_vae("gaussian", learn_sigma_x=True).elbo(grey())
    with pytest.warns(UserWarning, match=r"Autoencoder has a fixed sigma_x = 1"):
        Autoencoder(D, K, (5,), likelihood="gaussian", sigma_x=1.0).double().loss(grey())


def test_fit_warns_about_unit_sigma_on_unit_interval_data():
    from vaelib.train import fit

    model = make_vae("gaussian", sigma_x=[1.0] * D)  # a vector of ones is the same trap
    with pytest.warns(UserWarning, match=r"fixed sigma_x = 1") as rec:
        fit(model, grey(20), 1, batch_size=10, progress=False, device="cpu")
    assert rec[0].filename == __file__


@pytest.mark.parametrize("sigma_x", [0.1, [0.1, 0.3] * (D // 2)])
def test_a_fixed_sigma_x_keeps_its_exact_value_through_dtype_changes(sigma_x):
    """float32 and back must not round sigma_x (1/sigma^2 magnifies a rounded log sigma: 1e-5 nats
    at D = 12)."""
    model = make_vae("gaussian", sigma_x=sigma_x)
    x = grey()
    before = model.elbo_terms(x, generator=torch.Generator().manual_seed(0)).log_px_z
    model.float().double()
    after = model.elbo_terms(x, generator=torch.Generator().manual_seed(0)).log_px_z
    want = torch.log(torch.as_tensor(sigma_x, dtype=torch.float64))
    assert model.log_sigma_x.dtype == torch.float64 and torch.equal(model.log_sigma_x, want)
    assert torch.equal(before, after)
    assert torch.allclose(
        torch.as_tensor(model.sigma_x, dtype=torch.float64),
        torch.as_tensor(sigma_x, dtype=torch.float64),
        rtol=1e-15,
        atol=0,
    )


# -- noisy samples
# ------------------------------------------------------------------------------------


def test_noisy_gaussian_samples_are_mean_plus_sigma_times_noise():
    sigma = torch.linspace(0.2, 1.4, D, dtype=torch.float64)
    model = make_vae("gaussian", sigma_x=sigma)
    s = model.sample(6, generator=torch.Generator().manual_seed(4), noisy=True)
    g = torch.Generator().manual_seed(4)
    z = torch.randn(6, K, generator=g, dtype=torch.float64)
    eps = torch.randn(
        6, D, generator=g, dtype=torch.float64
    )  # drawn after z from the same generator
    with torch.no_grad():
        expected = model.decode(z) + sigma * eps
    torch.testing.assert_close(s, expected, rtol=0, atol=1e-12)
    mean = model.sample(6, generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(s, mean)


def test_noisy_gaussian_samples_have_the_likelihood_spread():
    """With the decoder's mean subtracted, noisy samples are N(0, sigma_x^2): per-pixel std within 5
    SE."""
    model = make_vae("gaussian", sigma_x=0.3)
    n = 20000
    s = model.sample(n, generator=torch.Generator().manual_seed(0), noisy=True)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        mean = model.decode(torch.randn(n, K, generator=g, dtype=torch.float64))
    std = (s - mean).std(0)  # (D,)
    assert bool(
        ((std - 0.3).abs() < 5 * 0.3 / math.sqrt(2 * n)).all()
    )  # SE of a normal sample std: sigma / sqrt(2n)


def test_noisy_bernoulli_samples_are_binary_draws_with_the_decoder_probabilities():
    model = make_vae()
    n = 4000
    s = model.sample(n, generator=torch.Generator().manual_seed(1), noisy=True)
    assert set(torch.unique(s).tolist()) <= {0.0, 1.0}
    g = torch.Generator().manual_seed(1)
    z = torch.randn(n, K, generator=g, dtype=torch.float64)
    u = torch.rand(n, D, generator=g, dtype=torch.float64)
    with torch.no_grad():
        p = torch.sigmoid(model.decode(z))
    torch.testing.assert_close(s, (u < p).double(), rtol=0, atol=0)
    with pytest.raises(TypeError, match="noisy must be a bool"):
        model.sample(2, noisy=1)
