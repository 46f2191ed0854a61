"""vaelib.evaluate: test ELBO, importance-weighted log-likelihood and active units against oracles.

Oracles: the exact evidence and posterior of a linear-Gaussian model written into a linear VAE
(test_models.linear_vae), the same importance weights recomputed with torch.distributions and
combined in one piece, vaelib.estimators.iwae_bound, and the variance of a linear encoder's means
from numpy's covariance of the data.
"""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from conftest import linear_gaussian
from test_models import linear_vae
from vaelib import data, estimators, evaluate
from vaelib.distributions import kl_mvnormal
from vaelib.models import VAE, Autoencoder


@pytest.fixture(scope="module")
def lg():
    return linear_gaussian(d=6, k=2, noise_std=0.5, seed=3, orthogonal=True)


@pytest.fixture(scope="module")
def lg_x(lg):
    return lg.sample(8, generator=torch.Generator().manual_seed(0))[0]  # (8, 6)


def test_iwae_is_exact_at_the_exact_posterior(lg, lg_x):
    # q = p(z|x): every weight p(x, z)/q(z|x) equals p(x), so the estimate is log p(x) for any k and draw.
    vae = linear_vae(lg)
    ll = evaluate.iwae_log_likelihood(vae, lg_x, k=50, chunk_size=7, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ll, lg.log_evidence(lg_x), rtol=0, atol=1e-10)


def test_iwae_converges_to_log_evidence_within_monte_carlo_error(lg, lg_x):
    """k = 5000 with a deliberately poor q: the estimate is within 4 standard errors plus the O(1/k) bias.

    Standard error: the delta-method error of log mean(w) from estimators.importance_log_evidence (an
    independent draw, same k). Bias of log mean(w): about -Var(w/p(x))/(2k) = -(k se^2)/(2k) = -se^2/2.
    The ELBO lies below by KL(q || p(z|x)), computed in closed form, which the IWAE must close.
    """
    vae = linear_vae(lg, perturb=0.5)
    k = 5000
    ll = evaluate.iwae_log_likelihood(vae, lg_x, k=k, batch_size=3, chunk_size=999,
                                      generator=torch.Generator().manual_seed(2))
    log_px = lg.log_evidence(lg_x)
    with torch.no_grad():
        mu, logvar = vae.encode(lg_x)
        se = estimators.importance_log_evidence(vae.log_joint, lg_x, mu, logvar, k,
                                                generator=torch.Generator().manual_seed(3)).stderr
        post_mean, post_cov = lg.posterior(lg_x)
        gap = kl_mvnormal(mu, torch.diag_embed(torch.exp(logvar)), post_mean, post_cov)  # log p(x) - ELBO
    assert bool((gap > 0.1).all())  # a real gap for the IWAE to close ...
    assert bool(((ll - log_px).abs() <= 4 * se + se**2 / 2).all()), (ll - log_px, se)  # ... and it does
    assert float(se.max()) < 0.1  # k = 5000 makes the check sharp: ~0.05 nats against a 2.6-nat gap


def test_chunked_running_logsumexp_equals_one_piece_with_the_same_samples(lg, lg_x):
    vae = linear_vae(lg, perturb=0.3)
    k, chunk = 23, 5
    ll = evaluate.iwae_log_likelihood(vae, lg_x, k=k, batch_size=100, chunk_size=chunk,
                                      generator=torch.Generator().manual_seed(4))
    # Oracle: draw the same chunks from the same seed, compute every log-weight with torch.distributions,
    # concatenate all k, and take log-mean-exp once.
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        mu, logvar = vae.encode(lg_x)
        std = torch.exp(0.5 * logvar)
        eps = torch.cat([torch.randn(min(chunk, k - s), *mu.shape, generator=g, dtype=torch.float64)
                         for s in range(0, k, chunk)])  # (k, B, 2)
        z = mu + std * eps
        log_w = (Normal(vae.decode(z), 0.5).log_prob(lg_x).sum(-1) + Normal(0.0, 1.0).log_prob(z).sum(-1)
                 - Normal(mu, std).log_prob(z).sum(-1))  # (k, B)
        oracle = torch.logsumexp(log_w, 0) - math.log(k)
    torch.testing.assert_close(ll, oracle, rtol=0, atol=1e-10)
    # One chunk holding all k samples draws exactly what estimators.iwae_bound draws.
    one = evaluate.iwae_log_likelihood(vae, lg_x, k=k, chunk_size=k, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = estimators.iwae_bound(vae.log_joint, lg_x, mu, logvar, k, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(one, ref, rtol=0, atol=1e-10)


def test_test_elbo_matches_the_exact_elbo_and_the_model(lg, lg_x):
    vae = linear_vae(lg, perturb=0.4)
    n = 2000
    elbo = evaluate.test_elbo(vae, lg_x, batch_size=3, n_samples=n, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        mu, logvar = vae.encode(lg_x)
        post_mean, post_cov = lg.posterior(lg_x)
        exact = lg.log_evidence(lg_x) - kl_mvnormal(mu, torch.diag_embed(torch.exp(logvar)), post_mean, post_cov)
        # standard error of the n-sample mean: std of single-sample values / sqrt(n), from 2000 draws
        single = vae.elbo(lg_x.repeat(n, 1), generator=torch.Generator().manual_seed(7)).reshape(n, -1)
    se = single.std(0) / math.sqrt(n)
    assert bool(((elbo - exact).abs() <= 4 * se).all()), (elbo - exact, se)
    one_batch = evaluate.test_elbo(vae, lg_x, batch_size=100, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        direct = vae.elbo(lg_x, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(one_batch, direct, rtol=0, atol=0)


@pytest.fixture(scope="module")
def digits_model():
    """A small VAE briefly trained on digits (binarized test images to evaluate)."""
    from vaelib import train

    x, _ = data.load("digits", "train")
    torch.manual_seed(0)
    model = VAE(64, 4, (32,))
    train.fit(model, x, epochs=8, batch_size=64, lr=3e-3, progress=False)
    xt, _ = data.load("digits", "test")
    return model, torch.bernoulli(xt[:100], generator=torch.Generator().manual_seed(0))


def test_iwae_does_not_decrease_with_k_and_bounds_the_elbo(digits_model):
    """ELBO <= IWAE_1... in expectation IWAE_k increases with k (Burda et al. 2016, theorem 1).

    Averaged over 100 examples the increase from k=1 to 10 to 200 is far larger than the Monte Carlo noise.
    """
    model, x = digits_model
    g = torch.Generator().manual_seed(9)
    elbo = evaluate.test_elbo(model, x, n_samples=10, generator=g).mean()
    iwae = [evaluate.iwae_log_likelihood(model, x, k=k, chunk_size=64, generator=g).mean() for k in (1, 10, 200)]
    assert float(elbo) < float(iwae[1]) < float(iwae[2])
    assert float(iwae[0]) < float(iwae[1])
    assert float(iwae[0]) == pytest.approx(float(elbo), abs=1.0)  # IWAE_1 is an ELBO estimate


def test_active_units_against_the_data_covariance():
    """Linear encoder mu = W x + c: Var_x(mu_u) = w_u^T Cov(x) w_u exactly (numpy's covariance, N - 1)."""
    x, _ = data.load("digits", "train")
    x = x.double()
    cov = torch.from_numpy(np.cov(x.numpy().T, ddof=1))  # (64, 64)
    g = torch.Generator().manual_seed(1)
    W = torch.randn(5, 64, generator=g, dtype=torch.float64)
    # Scale the rows to chosen variances: 1, 0.005 (below 0.01), 0.02, then a zero row, then a row that
    # reads only pixels that never change in the data set (digits' blank corners): both ignore x.
    constant = torch.nonzero(torch.diagonal(cov) == 0).flatten()
    assert len(constant) >= 2
    for u, t in enumerate([1.0, 0.005, 0.02]):
        W[u] *= math.sqrt(t / float(W[u] @ cov @ W[u]))
    W[3] = 0.0
    W[4] = 0.0
    W[4, constant] = 3.0
    targets = [1.0, 0.005, 0.02, 0.0, 0.0]
    torch.manual_seed(0)
    vae = VAE(64, 5, hidden_dims=()).double()
    with torch.no_grad():
        vae.to_mu.weight.copy_(W)
    count, variance = evaluate.active_units(vae, x, batch_size=333)
    np.testing.assert_allclose(variance.numpy(), targets, rtol=1e-8, atol=1e-12)
    assert count == 2  # 1.0 and 0.02 are above 0.01; 0.005 and the two that ignore x are not
    assert evaluate.active_units(vae, x, threshold=0.5)[0] == 1
    ae = Autoencoder(64, 5, hidden_dims=()).double()
    with torch.no_grad():
        ae.to_mu.weight.copy_(W)
    assert evaluate.active_units(ae, x)[0] == 2


def test_bits_per_dim():
    assert evaluate.bits_per_dim(-64 * math.log(2.0), 64) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m, x: evaluate.test_elbo(torch.nn.Linear(2, 2), x), TypeError, r"model must be a vaelib.models.VAE"),
        (lambda m, x: evaluate.iwae_log_likelihood(Autoencoder(6, 2), x), TypeError, r"model must be a vaelib.models.VAE, got Autoencoder"),
        (lambda m, x: evaluate.test_elbo(m, x[:, :5]), ValueError, r"x must have shape \(B, 6\)"),
        (lambda m, x: evaluate.iwae_log_likelihood(m, x * float("nan")), ValueError, r"x contains NaN"),
        (lambda m, x: evaluate.iwae_log_likelihood(m, x, k=0), ValueError, r"k must be >= 1"),
        (lambda m, x: evaluate.iwae_log_likelihood(m, x, chunk_size=0), ValueError, r"chunk_size must be >= 1"),
        (lambda m, x: evaluate.test_elbo(m, x, batch_size=0), ValueError, r"batch_size must be >= 1"),
        (lambda m, x: evaluate.test_elbo(m, x, generator="seed"), TypeError, r"generator must be a torch.Generator"),
        (lambda m, x: evaluate.active_units(m, x, threshold=-1.0), ValueError, r"threshold must be a finite positive"),
        (lambda m, x: evaluate.active_units(m, x[:1]), ValueError, r"at least 2 examples"),
    ],
    ids=["not-a-model", "autoencoder-iwae", "shape", "nan", "k", "chunk", "batch", "generator", "threshold", "one-example"],
)
def test_bad_input(lg, lg_x, call, error, match):
    with pytest.raises(error, match=match):
        call(linear_vae(lg), lg_x)
