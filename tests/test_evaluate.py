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
from conftest import linear_gaussian
from test_models import linear_vae
from torch.distributions import Normal

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
    # q = p(z|x): every weight p(x, z)/q(z|x) equals p(x), so the estimate is log p(x) for any K and
    # draw.
    vae = linear_vae(lg)
    ll = evaluate.iwae_log_likelihood(
        vae, lg_x, K=50, chunk_size=7, generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(ll, lg.log_evidence(lg_x), rtol=0, atol=1e-10)


def test_iwae_converges_to_log_evidence_within_monte_carlo_error(lg, lg_x):
    """K = 5000 with a deliberately poor q: the estimate is within 4 standard errors plus the O(1/K)
    bias.

    Standard error: the delta-method error of log mean(w) from estimators.importance_log_evidence
    (an independent draw, same K). Bias of log mean(w): about -Var(w/p(x))/(2K) = -(K se^2)/(2K) =
    -se^2/2. The ELBO lies below by KL(q || p(z|x)), computed in closed form, which the IWAE must
    close.
    """
    vae = linear_vae(lg, perturb=0.5)
    K = 5000
    ll = evaluate.iwae_log_likelihood(
        vae, lg_x, K=K, batch_size=3, chunk_size=999, generator=torch.Generator().manual_seed(2)
    )
    log_px = lg.log_evidence(lg_x)
    with torch.no_grad():
        mu, logvar = vae.encode(lg_x)
        se = estimators.importance_log_evidence(
            vae.log_joint, lg_x, mu, logvar, K, generator=torch.Generator().manual_seed(3)
        ).stderr
        post_mean, post_cov = lg.posterior(lg_x)
        gap = kl_mvnormal(
            mu, torch.diag_embed(torch.exp(logvar)), post_mean, post_cov
        )  # log p(x) - ELBO
    assert bool((gap > 0.1).all())  # a real gap for the IWAE to close ...
    assert bool(((ll - log_px).abs() <= 4 * se + se**2 / 2).all()), (
        ll - log_px,
        se,
    )  # ... and it does
    assert float(se.max()) < 0.1  # K = 5000 makes the check sharp: ~0.05 nats against a 2.6-nat gap


def test_chunked_running_logsumexp_equals_one_piece_with_the_same_samples(lg, lg_x):
    vae = linear_vae(lg, perturb=0.3)
    K, chunk = 23, 5
    ll = evaluate.iwae_log_likelihood(
        vae, lg_x, K=K, batch_size=100, chunk_size=chunk, generator=torch.Generator().manual_seed(4)
    )
    # Oracle: draw the same chunks from the same seed, compute every log-weight with
    # torch.distributions, concatenate all K, and take log-mean-exp once.
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        mu, logvar = vae.encode(lg_x)
        std = torch.exp(0.5 * logvar)
        eps = torch.cat(
            [
                torch.randn(min(chunk, K - s), *mu.shape, generator=g, dtype=torch.float64)
                for s in range(0, K, chunk)
            ]
        )  # (K, B, 2)
        z = mu + std * eps
        log_w = (
            Normal(vae.decode(z), 0.5).log_prob(lg_x).sum(-1)
            + Normal(0.0, 1.0).log_prob(z).sum(-1)
            - Normal(mu, std).log_prob(z).sum(-1)
        )  # (K, B)
        oracle = torch.logsumexp(log_w, 0) - math.log(K)
    torch.testing.assert_close(ll, oracle, rtol=0, atol=1e-10)
    # One chunk holding all K samples draws exactly what estimators.iwae_bound draws.
    one = evaluate.iwae_log_likelihood(
        vae, lg_x, K=K, chunk_size=K, generator=torch.Generator().manual_seed(5)
    )
    with torch.no_grad():
        ref = estimators.iwae_bound(
            vae.log_joint, lg_x, mu, logvar, K, generator=torch.Generator().manual_seed(5)
        )
    torch.testing.assert_close(one, ref, rtol=0, atol=1e-10)


def test_test_elbo_matches_the_exact_elbo_and_the_model(lg, lg_x):
    vae = linear_vae(lg, perturb=0.4)
    n = 2000
    elbo = evaluate.test_elbo(
        vae, lg_x, batch_size=3, n_samples=n, generator=torch.Generator().manual_seed(6)
    )
    with torch.no_grad():
        mu, logvar = vae.encode(lg_x)
        post_mean, post_cov = lg.posterior(lg_x)
        exact = lg.log_evidence(lg_x) - kl_mvnormal(
            mu, torch.diag_embed(torch.exp(logvar)), post_mean, post_cov
        )
        # standard error of the n-sample mean: std of single-sample values / sqrt(n), from 2000
        # draws
        single = vae.elbo(lg_x.repeat(n, 1), generator=torch.Generator().manual_seed(7)).reshape(
            n, -1
        )
    se = single.std(0) / math.sqrt(n)
    assert bool(((elbo - exact).abs() <= 4 * se).all()), (elbo - exact, se)
    one_batch = evaluate.test_elbo(
        vae, lg_x, batch_size=100, generator=torch.Generator().manual_seed(8)
    )
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


def test_iwae_does_not_decrease_with_K_and_bounds_the_elbo(digits_model):
    """ELBO <= IWAE_1... in expectation IWAE_K increases with K (Burda et al. 2016, theorem 1).

    Averaged over 100 examples the increase from K=1 to 10 to 200 is far larger than the Monte Carlo
    noise.
    """
    model, x = digits_model
    g = torch.Generator().manual_seed(9)
    elbo = evaluate.test_elbo(model, x, n_samples=10, generator=g).mean()
    iwae = [
        evaluate.iwae_log_likelihood(model, x, K=K, chunk_size=64, generator=g).mean()
        for K in (1, 10, 200)
    ]
    assert float(elbo) < float(iwae[1]) < float(iwae[2])
    assert float(iwae[0]) < float(iwae[1])
    assert float(iwae[0]) == pytest.approx(float(elbo), abs=1.0)  # IWAE_1 is an ELBO estimate


def test_active_units_against_the_data_covariance():
    """Linear encoder mu = W x + c: Var_x(mu_u) = w_u^T Cov(x) w_u exactly (numpy's covariance, N -
    1)."""
    x, _ = data.load("digits", "train")
    x = x.double()
    cov = torch.from_numpy(np.cov(x.numpy().T, ddof=1))  # (64, 64)
    g = torch.Generator().manual_seed(1)
    W = torch.randn(5, 64, generator=g, dtype=torch.float64)
    # Scale the rows to chosen variances: 1, 0.005 (below 0.01), 0.02, then a zero row, then a row
    # that reads only pixels that never change in the data set (digits' blank corners): both ignore
    # x.
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
        (
            lambda m, x: evaluate.test_elbo(torch.nn.Linear(2, 2), x),
            TypeError,
            r"model must be a vaelib.models.VAE",
        ),
        (
            lambda m, x: evaluate.iwae_log_likelihood(Autoencoder(6, 2), x),
            TypeError,
            r"model must be a vaelib.models.VAE, got Autoencoder",
        ),
        (lambda m, x: evaluate.test_elbo(m, x[:, :5]), ValueError, r"x must have shape \(B, 6\)"),
        (
            lambda m, x: evaluate.iwae_log_likelihood(m, x * float("nan")),
            ValueError,
            r"x contains NaN",
        ),
        (lambda m, x: evaluate.iwae_log_likelihood(m, x, K=0), ValueError, r"K must be >= 1"),
        (
            lambda m, x: evaluate.iwae_log_likelihood(m, x, chunk_size=0),
            ValueError,
            r"chunk_size must be >= 1",
        ),
        (
            lambda m, x: evaluate.test_elbo(m, x, batch_size=0),
            ValueError,
            r"batch_size must be >= 1",
        ),
        (
            lambda m, x: evaluate.test_elbo(m, x, generator="seed"),
            TypeError,
            r"generator must be a torch.Generator",
        ),
        (
            lambda m, x: evaluate.active_units(m, x, threshold=-1.0),
            ValueError,
            r"threshold must be a finite positive",
        ),
        (lambda m, x: evaluate.active_units(m, x[:1]), ValueError, r"at least 2 examples"),
    ],
    ids=[
        "not-a-model",
        "autoencoder-iwae",
        "shape",
        "nan",
        "K",
        "chunk",
        "batch",
        "generator",
        "threshold",
        "one-example",
    ],
)
def test_bad_input(lg, lg_x, call, error, match):
    with pytest.raises(error, match=match):
        call(linear_vae(lg), lg_x)


# -- the best Gaussian q per example, and the approximation and amortization gaps
# ---------------------


def vae_with_decoder(lg, seed=0):
    """A linear VAE whose decoder is LinearGaussian `lg` (any W) and whose encoder is left at its
    random start."""
    torch.manual_seed(seed)
    vae = VAE(
        lg.data_dim, lg.latent_dim, hidden_dims=(), likelihood="gaussian", sigma_x=lg.noise_std
    ).double()
    with torch.no_grad():
        vae.decoder.to_mean.weight.copy_(lg.W)
        vae.decoder.to_mean.bias.copy_(lg.b)
    return vae


def log_weight_stderr(vae, x, mu, logvar, n, seed):
    """Standard error of an n-draw mean of log p(x, z) - log q(z), from 2000 independent draws.
    (B,)"""
    z = mu + torch.exp(0.5 * logvar) * torch.randn(
        2000, *mu.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )  # (2000, B, k)
    with torch.no_grad():
        log_w = vae.log_joint(x, z) - Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(
            -1
        )  # (2000, B)
    return log_w.std(0) / math.sqrt(n)


@pytest.mark.parametrize(
    "latent, orthogonal", [(1, False), (2, True)], ids=["k1", "orthogonal-W-k2"]
)
def test_optimal_gaussian_q_is_the_exact_posterior_when_that_is_diagonal(latent, orthogonal):
    """k = 1, or W with orthogonal columns: p(z|x) is a diagonal Gaussian, so the best q is p(z|x)
    itself.

    Oracle: LinearGaussian.kl_to_posterior of the returned q, in closed form. The path-derivative
        gradient is
    exactly zero at the posterior, so the decayed Adam iterates settle on it to round-off (KL ~
    1e-13 here; 1e-8 is the optimisation tolerance). At the posterior every log-weight log p(x, z) -
    log q(z) equals log p(x); the log-weights move at first order in the distance to it, sqrt(KL) ~
    1e-7, so the returned Monte Carlo ELBO is log p(x) to 1e-6 (observed ~2e-8). The encoder's ELBO,
    with the same draws, is checked against its closed form within 4 standard errors of the
    1000-draw mean.
    """
    lg = linear_gaussian(d=6, k=latent, noise_std=0.5, seed=3, orthogonal=orthogonal)
    x = lg.sample(8, generator=torch.Generator().manual_seed(0))[0]  # (8, 6)
    vae = linear_vae(lg, perturb=0.5)  # the encoder misses the posterior
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    out = evaluate.optimal_gaussian_elbo(
        vae,
        x,
        steps=300,
        lr=0.1,
        n_samples=16,
        eval_samples=1000,
        generator=torch.Generator().manual_seed(1),
    )
    assert out.elbo.shape == (8,) and out.mu.shape == out.logvar.shape == (8, latent)
    log_px = lg.log_evidence(x)
    assert float(lg.kl_to_posterior(x, out.mu, out.logvar).max()) < 1e-8
    torch.testing.assert_close(out.elbo, log_px, rtol=0, atol=1e-6)
    with torch.no_grad():
        mu0, logvar0 = vae.encode(x)
    exact_encoder = lg.exact_elbo(x, mu0, logvar0)
    assert bool((log_px - exact_encoder > 0.3).all())  # a real gap for the optimisation to close
    se = log_weight_stderr(vae, x, mu0, logvar0, 1000, seed=2)
    assert bool(((out.elbo_encoder - exact_encoder).abs() <= 4 * se).all()), (
        out.elbo_encoder - exact_encoder,
        se,
    )
    # The model is only read: same weights, no gradients left behind.
    assert all(torch.equal(v, before[k]) for k, v in vae.state_dict().items())
    assert all(p.grad is None for p in vae.parameters())


def test_optimal_gaussian_q_is_the_mean_field_optimum_of_a_correlated_posterior():
    """Correlated p(z|x) = N(m, S) with precision L = S^-1: no diagonal q is exact. The best one
    (Bishop 2006, PRML sec. 10.1.2) has mean m and variances 1/L_jj, and its KL is 1/2 [sum_j log
    L_jj - log det L].

    Its ELBO log p(x) - KL_mf is a hard ceiling (no diagonal q can pass it, so 1e-10 is round-off);
    the optimiser, started from a random encoder (log-variances ~4 away from the answer), must come
    within 1e-2 nats of it, with the mean and log-variances of the closed form. Here the
    path-derivative gradient is not zero at the optimum (q is not p(z|x)), and Adam keeps taking
    steps of about its learning rate until that has decayed: the remaining error is about 1e-3 nats
    (2e-3 at worst over settings tried).
    """
    from vaelib.toy import LinearGaussian

    W = torch.tensor(
        [[1.0, 0.8], [0.5, 0.9], [0.3, -0.2], [0.0, 0.4], [0.2, 0.1], [-0.3, 0.2]],
        dtype=torch.float64,
    )
    lg = LinearGaussian(W, torch.linspace(-1.0, 1.0, 6, dtype=torch.float64), 0.5)
    x = lg.sample(8, generator=torch.Generator().manual_seed(0))[0]
    vae = vae_with_decoder(lg)
    out = evaluate.optimal_gaussian_elbo(
        vae,
        x,
        steps=500,
        lr=0.1,
        n_samples=64,
        eval_samples=1000,
        generator=torch.Generator().manual_seed(1),
    )
    mean, cov = lg.posterior(x)
    precision = torch.linalg.inv(cov)
    kl_mf = 0.5 * (torch.log(torch.diagonal(precision)).sum() - torch.logdet(precision))
    assert float(kl_mf) > 0.2  # strongly correlated: a visible approximation gap
    ceiling = lg.log_evidence(x) - kl_mf
    reached = lg.exact_elbo(x, out.mu, out.logvar)
    assert bool((reached <= ceiling + 1e-10).all())
    assert float((ceiling - reached).max()) < 1e-2
    torch.testing.assert_close(out.mu, mean, rtol=0, atol=0.05)
    torch.testing.assert_close(
        out.logvar, -torch.log(torch.diagonal(precision)).expand_as(out.logvar), rtol=0, atol=0.1
    )
    se = log_weight_stderr(vae, x, out.mu, out.logvar, 1000, seed=2)
    assert bool(((out.elbo - reached).abs() <= 4 * se).all()), (out.elbo - reached, se)


def test_elbo_gaps_vanish_at_the_exact_posterior():
    """Encoder = p(z|x) (diagonal): q* ends there, every log-weight is log p(x), so the three
    numbers equal log p(x) and both gaps are 0. Adam does wander off: its steps have the size of the
    learning rate whatever the gradient's size, and the gradient at p(z|x) is round-off; the
    decaying learning rate brings it back to sqrt(KL) ~ 1e-7 (see above), hence 1e-6. The encoder's
    ELBO and log_px are round-off exact."""
    lg = linear_gaussian(d=6, k=2, noise_std=0.5, seed=3, orthogonal=True)
    x = lg.sample(8, generator=torch.Generator().manual_seed(0))[0]
    gaps = evaluate.elbo_gaps(
        linear_vae(lg),
        x,
        K=100,
        steps=300,
        eval_samples=100,
        generator=torch.Generator().manual_seed(1),
    )
    log_px = lg.log_evidence(x)
    torch.testing.assert_close(gaps.elbo_encoder, log_px, rtol=0, atol=1e-10)
    torch.testing.assert_close(gaps.log_px, log_px, rtol=0, atol=1e-6)
    torch.testing.assert_close(gaps.elbo_optimal, log_px, rtol=0, atol=1e-6)
    assert float(gaps.approximation_gap.abs().max()) < 1e-6
    assert float(gaps.amortization_gap.abs().max()) < 1e-6


def mixture_log_evidence_stderr(vae, x, qs, K, seed):
    """Delta-method standard error of log (1/K) sum_i w_i for elbo_gaps' mixture proposal r = mean_j
    q_j.  (B,)

    Recomputed independently with torch.distributions from 2000 draws per component (K/2 of the
    estimator's draws come from each q_j): se = sd(w) / (sqrt(K) mean(w)), w = p(x, z) / r(z). The
    pooled sd over both components is at least the stratified estimator's within-component sd, so
    the error is not understated.
    """
    g = torch.Generator().manual_seed(seed)
    qs = [Normal(mu, torch.exp(0.5 * logvar)) for mu, logvar in qs]
    z = torch.cat(
        [
            q.loc + q.scale * torch.randn(2000, *q.loc.shape, generator=g, dtype=torch.float64)
            for q in qs
        ]
    )
    with torch.no_grad():  # z: (4000, B, k)
        log_r = torch.logsumexp(torch.stack([q.log_prob(z).sum(-1) for q in qs]), 0) - math.log(
            len(qs)
        )
        w = torch.exp(vae.log_joint(x, z) - log_r)  # (4000, B)
    return w.std(0) / (math.sqrt(K) * w.mean(0))


def test_mixture_importance_sampling_equals_the_balance_heuristic_with_the_same_draws(lg, lg_x):
    """elbo_gaps' log p(x) estimate, recomputed in one piece with torch.distributions from the same
    draws.

    K = 23 (odd) split 12 / 11 between the two proposals, drawn in chunks of 5 in that order; every
    draw is weighted by the mixture r = (12/23) q_1 + (11/23) q_2 whatever proposal it came from.
    """
    vae = linear_vae(lg, perturb=0.3)
    K, chunk = 23, 5
    with torch.no_grad():
        mu1, logvar1 = vae.encode(lg_x)
        mu2, logvar2 = mu1 - 0.4, logvar1 - 0.5
        out = evaluate._iwae_mixture(
            vae, lg_x, [(mu1, logvar1), (mu2, logvar2)], K, chunk, torch.Generator().manual_seed(4)
        )
        g = torch.Generator().manual_seed(4)
        z = torch.cat(
            [
                mu
                + torch.exp(0.5 * logvar)
                * torch.randn(min(chunk, n - s), *mu.shape, generator=g, dtype=torch.float64)
                for (mu, logvar), n in (((mu1, logvar1), 12), ((mu2, logvar2), 11))
                for s in range(0, n, chunk)
            ]
        )
        q1, q2 = Normal(mu1, torch.exp(0.5 * logvar1)), Normal(mu2, torch.exp(0.5 * logvar2))
        r = (
            12 / 23 * q1.log_prob(z).sum(-1).exp() + 11 / 23 * q2.log_prob(z).sum(-1).exp()
        )  # (K, B)
        log_w = (
            Normal(vae.decode(z), 0.5).log_prob(lg_x).sum(-1)
            + Normal(0.0, 1.0).log_prob(z).sum(-1)
            - torch.log(r)
        )
        oracle = torch.logsumexp(log_w, 0) - math.log(K)
    torch.testing.assert_close(out, oracle, rtol=0, atol=1e-10)


def test_elbo_gaps_of_a_poor_encoder_are_all_amortization():
    """Encoder off the (diagonal) posterior: the Gaussian family contains p(z|x), so the
    approximation gap is 0 and the amortization gap is the whole KL(q_phi(z|x) || p(z|x)), known in
    closed form.

    Tolerances: the amortization gap is elbo_optimal (exact at the posterior) minus the encoder's
        1000-draw
    ELBO: 4 of that mean's standard errors. log_px is the importance-sampling estimate with the
        proposal
    1/2 (q_phi + q*): unbiased for p(x) but noisy, so log_px and the approximation gap (log_px minus
    the exact elbo_optimal) are within 4 delta-method standard errors (plus the O(se^2 / 2) bias of
    the log) of the exact log p(x) and 0.
    """
    lg = linear_gaussian(d=6, k=2, noise_std=0.5, seed=3, orthogonal=True)
    x = lg.sample(8, generator=torch.Generator().manual_seed(0))[0]
    vae = linear_vae(lg, perturb=0.5)
    gaps = evaluate.elbo_gaps(
        vae, x, K=1000, steps=300, eval_samples=1000, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        mu, logvar = vae.encode(x)
        post_mean, post_cov = lg.posterior(x)
    post_logvar = torch.log(torch.diagonal(post_cov, dim1=-2, dim2=-1)).expand_as(post_mean)
    is_se = mixture_log_evidence_stderr(
        vae, x, [(mu, logvar), (post_mean, post_logvar)], 1000, seed=3
    )
    kl = lg.kl_to_posterior(x, mu, logvar)
    assert float(kl.min()) > 1.0  # a real amortization gap
    se = log_weight_stderr(vae, x, mu, logvar, 1000, seed=2)
    assert bool(((gaps.amortization_gap - kl).abs() <= 4 * se).all()), (
        gaps.amortization_gap - kl,
        se,
    )
    tol = 4 * is_se + is_se**2 / 2 + 1e-6  # 1e-6: q* is p(z|x) to sqrt(KL) ~ 1e-7, see above
    assert bool(((gaps.log_px - lg.log_evidence(x)).abs() <= tol).all()), (
        gaps.log_px - lg.log_evidence(x),
        is_se,
    )
    assert bool((gaps.approximation_gap.abs() <= tol).all()), (gaps.approximation_gap, is_se)
    assert (
        float(is_se.max()) < 0.05
    )  # sharp enough to matter: ~0.03 nats against a KL of several nats


def test_elbo_gaps_log_px_is_unbiased_for_the_evidence():
    """The estimate of p(x) behind log_px is unbiased, so log_px is a lower bound in expectation.

    One x of a correlated linear-Gaussian posterior (neither the random encoder's q nor q* is
    exact), copied into 1000 rows, so each row is an independent repeat (its own q* optimisation and
    its own K = 4 draws; small K makes the estimates noisy enough for a bias to show). Oracle: the
    exact log p(x). The mean of exp(log_px - log p(x)) must be 1 within 4 standard errors over the
    repeats, and the mean of log_px - log p(x) at most 3 standard errors above 0 (it is below 0 by
    Jensen's inequality). Taking the larger of two IWAE estimates per row (the earlier elbo_gaps)
    fails both: with these seeds its mean ratio was 1.369 +- 0.039 and its log_px 0.185 +- 0.015
    nats above log p(x) on average (this
    estimator: 0.991 +- 0.012, and 0.087 +- 0.013 nats below).
    """
    from vaelib.toy import LinearGaussian

    W = torch.tensor(
        [[1.0, 0.8], [0.5, 0.9], [0.3, -0.2], [0.0, 0.4], [0.2, 0.1], [-0.3, 0.2]],
        dtype=torch.float64,
    )
    lg = LinearGaussian(W, torch.linspace(-1.0, 1.0, 6, dtype=torch.float64), 0.5)
    x1 = lg.sample(1, generator=torch.Generator().manual_seed(0))[0]  # (1, 6)
    n = 1000
    gaps = evaluate.elbo_gaps(
        vae_with_decoder(lg),
        x1.expand(n, 6).contiguous(),
        K=4,
        steps=200,
        eval_samples=200,
        generator=torch.Generator().manual_seed(1),
    )
    d = gaps.log_px - lg.log_evidence(x1)  # (n,)
    ratio = torch.exp(d)  # estimate of p(x) / p(x)
    assert abs(float(ratio.mean()) - 1.0) <= 4 * float(ratio.std()) / math.sqrt(n), (
        ratio.mean(),
        ratio.std(),
    )
    assert float(d.mean()) <= 3 * float(d.std()) / math.sqrt(n), (d.mean(), d.std())
    assert float(d.std()) > 0.2  # the repeats are noisy: an upward bias of the maximum would show


def test_elbo_gaps_of_a_trained_digits_vae_are_nonnegative(digits_model):
    """A non-linear Bernoulli VAE (no exact answer): both gaps >= 0 up to Monte Carlo error, and on
    average clearly positive. Per example the Monte Carlo error of each number is about 0.6 /
    sqrt(400) = 0.03 nats (the spread of one log-weight is ~0.6 nats for this model), so -0.15 nats
    is 5 standard errors."""
    model, x = digits_model
    x = x[:24]
    gaps = evaluate.elbo_gaps(
        model, x, K=400, steps=200, eval_samples=400, generator=torch.Generator().manual_seed(1)
    )
    assert bool((gaps.amortization_gap >= -0.15).all()) and bool(
        (gaps.approximation_gap >= -0.15).all()
    )
    assert (
        float(gaps.amortization_gap.mean()) > 0.05 and float(gaps.approximation_gap.mean()) > 0.05
    )
    with torch.no_grad():
        elbo = evaluate.test_elbo(
            model, x, n_samples=400, generator=torch.Generator().manual_seed(2)
        )
    assert (
        abs(float((gaps.elbo_encoder - elbo).mean())) < 0.1
    )  # the same ELBO as test_elbo's estimator
    # log_px against an independent estimate of log p(x): IWAE_5000 with the encoder's q alone. Both
    # are within a few hundredths of log p(x) here (per example ~0.03 nats of Monte Carlo error for
    # log_px, less for the IWAE; observed: mean difference 0.004, largest 0.05 nats).
    with torch.no_grad():
        iwae = evaluate.iwae_log_likelihood(
            model, x, K=5000, generator=torch.Generator().manual_seed(2)
        )
    assert abs(float((gaps.log_px - iwae).mean())) < 0.03
    assert float((gaps.log_px - iwae).abs().max()) < 0.15


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda m, x: evaluate.optimal_gaussian_elbo(Autoencoder(6, 2).double(), x),
            TypeError,
            r"model must be a vaelib.models.VAE",
        ),
        (
            lambda m, x: evaluate.optimal_gaussian_elbo(m, x, steps=0),
            ValueError,
            r"steps must be >= 1",
        ),
        (
            lambda m, x: evaluate.optimal_gaussian_elbo(m, x, lr=0.0),
            ValueError,
            r"lr must be a finite positive",
        ),
        (
            lambda m, x: evaluate.optimal_gaussian_elbo(m, x, n_samples=0),
            ValueError,
            r"n_samples must be >= 1",
        ),
        (
            lambda m, x: evaluate.optimal_gaussian_elbo(m, x, eval_samples=0),
            ValueError,
            r"eval_samples must be >= 1",
        ),
        (
            lambda m, x: evaluate.optimal_gaussian_elbo(m, x[:, :5]),
            ValueError,
            r"x must have shape \(B, 6\)",
        ),
        (lambda m, x: evaluate.elbo_gaps(m, x, K=0), ValueError, r"K must be >= 1"),
        (
            lambda m, x: evaluate.elbo_gaps(m, x, generator=1),
            TypeError,
            r"generator must be a torch.Generator",
        ),
    ],
    ids=["autoencoder", "steps", "lr", "n-samples", "eval-samples", "shape", "K", "generator"],
)
def test_gap_functions_reject_bad_input(lg, lg_x, call, error, match):
    with pytest.raises(error, match=match):
        call(linear_vae(lg), lg_x)


# -- numpy input and kl_per_unit
# -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_numpy_arrays_give_the_same_numbers_as_tensors(lg, lg_x, dtype):
    """Two routes to one number: the same data as a tensor and as a numpy array, the same seeded
    draws."""
    vae = linear_vae(lg, perturb=0.3)
    x_np = lg_x.numpy().astype(dtype)
    x_t = torch.from_numpy(x_np.copy())
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    pairs = [
        (
            evaluate.test_elbo(vae, x_np, n_samples=3, generator=g()),
            evaluate.test_elbo(vae, x_t, n_samples=3, generator=g()),
        ),
        (
            evaluate.iwae_log_likelihood(vae, x_np, K=20, generator=g()),
            evaluate.iwae_log_likelihood(vae, x_t, K=20, generator=g()),
        ),
        (evaluate.active_units(vae, x_np)[1], evaluate.active_units(vae, x_t)[1]),
        (evaluate.kl_per_unit(vae, x_np), evaluate.kl_per_unit(vae, x_t)),
    ]
    for from_numpy, from_tensor in pairs:
        assert isinstance(from_numpy, torch.Tensor)
        torch.testing.assert_close(from_numpy, from_tensor, rtol=0, atol=0)
    assert evaluate.active_units(vae, x_np)[0] == evaluate.active_units(vae, x_t)[0]


def test_numpy_integer_data_is_rejected_with_advice(lg):
    with pytest.raises(TypeError, match=r"x must be a floating-point array.*uint8.*astype"):
        evaluate.test_elbo(linear_vae(lg), np.zeros((3, 6), dtype=np.uint8))


def test_kl_per_unit_sums_to_the_mean_kl_of_the_elbo():
    """Two routes: kl_per_unit summed over units equals distributions.kl_normal (the ELBO's KL,
    summed over units per example) averaged over examples; and each unit's value against
    torch.distributions' Normal KL."""
    from vaelib.distributions import kl_normal

    torch.manual_seed(0)
    vae = VAE(12, 4, hidden_dims=(9,), likelihood="gaussian", sigma_x=0.3).double()
    x = torch.rand(50, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kl = evaluate.kl_per_unit(vae, x, batch_size=17)  # batches of 17, 17, 16: a ragged last batch
    with torch.no_grad():
        mu, logvar = vae.encode(x)
        total = kl_normal(mu, logvar).mean()
        oracle = torch.distributions.kl_divergence(
            Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)
        ).mean(0)
    assert kl.shape == (4,)
    assert kl.sum().item() == pytest.approx(total.item(), rel=1e-12)
    torch.testing.assert_close(kl, oracle, rtol=1e-12, atol=1e-14)
    assert bool((kl > 0).all())


def test_kl_per_unit_is_zero_for_a_unit_on_the_prior():
    """A unit whose mu is 0 and logvar 0 for every x is exactly the prior: its KL is 0 (posterior
    collapse)."""
    torch.manual_seed(0)
    vae = VAE(6, 3, hidden_dims=()).double()
    with torch.no_grad():
        for head in (vae.to_mu, vae.to_logvar):
            head.weight[1].zero_()
            head.bias[1] = 0.0
    kl = evaluate.kl_per_unit(vae, torch.rand(10, 6, dtype=torch.float64))
    assert kl[1].item() == 0.0 and kl[0].item() > 0 and kl[2].item() > 0


@pytest.mark.parametrize("prior", ["vamp", "mog"])
def test_kl_per_unit_refuses_a_prior_that_does_not_factorise(prior):
    """With a learned prior the per-unit KL to N(0, 1) would not add up to the model's KL term (a
    mixture does not factorise over units): a ValueError naming the prior, not a silently wrong
    split; active_units still works."""
    torch.manual_seed(0)
    vae = VAE(6, 3, hidden_dims=(5,), prior=prior, prior_options={"n_components": 4}).double()
    x = torch.rand(10, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"prior is '{prior}', which does not factorise"):
        evaluate.kl_per_unit(vae, x)
    n_active, variance = evaluate.active_units(vae, x)
    assert variance.shape == (3,) and 0 <= n_active <= 3


# ---- issue 14: bits_per_dim arguments ----
@pytest.mark.parametrize(
    "data_dim, error, message",
    [
        (0, ValueError, r"data_dim must be >= 1, got 0"),  # was a division by zero: inf or nan bits
        (-784, ValueError, r"data_dim must be >= 1, got -784"),  # was a negative bits/dim
        (784.0, TypeError, r"data_dim must be an int, got float"),
        (True, TypeError, r"data_dim must be an int, got bool"),
    ],
)
def test_bits_per_dim_bad_data_dim(data_dim, error, message):
    with pytest.raises(error, match=message):
        evaluate.bits_per_dim(torch.tensor([-100.0]), data_dim)


def test_bits_per_dim_bad_log_px():
    with pytest.raises(
        TypeError, match=r"log_px must be a tensor, numpy array or number of nats, got str"
    ):
        evaluate.bits_per_dim("-100", 784)
    with pytest.raises(
        TypeError, match=r"log_px must be a floating-point tensor .* got dtype torch.float16"
    ):
        evaluate.bits_per_dim(torch.tensor([-100.0], dtype=torch.float16), 784)


def test_bits_per_dim_keeps_the_kind_of_its_input():
    # -log p / (D log 2): 64 log 2 nats over 64 dimensions is exactly 1 bit per dimension.
    nats = -64 * math.log(2.0)
    assert evaluate.bits_per_dim(np.array([nats, 2 * nats]), 64).tolist() == pytest.approx(
        [1.0, 2.0]
    )
    torch.testing.assert_close(
        evaluate.bits_per_dim(torch.tensor([nats], dtype=torch.float64), 64),
        torch.tensor([1.0], dtype=torch.float64),
    )


def test_iwae_log_likelihood_and_elbo_gaps_take_K_and_its_former_name_k(lg, lg_x):
    """K (importance samples) was called k, the letter of the latent size: k= still works, and means
    K."""
    vae = linear_vae(lg, perturb=0.5)  # a poor q: the estimate depends on K and on the draws

    def g():
        return torch.Generator().manual_seed(4)

    new = evaluate.iwae_log_likelihood(vae, lg_x, K=7, chunk_size=3, generator=g())
    assert torch.equal(
        evaluate.iwae_log_likelihood(vae, lg_x, k=7, chunk_size=3, generator=g()), new
    )
    assert torch.equal(evaluate.iwae_log_likelihood(vae, lg_x, 7, chunk_size=3, generator=g()), new)
    assert not torch.equal(
        evaluate.iwae_log_likelihood(vae, lg_x, k=6, chunk_size=3, generator=g()), new
    )
    with pytest.raises(TypeError, match=r"K=7 and k=6 given"):
        evaluate.iwae_log_likelihood(vae, lg_x, K=7, k=6)
    gaps = evaluate.elbo_gaps(vae, lg_x[:3], K=6, steps=2, eval_samples=4, generator=g())
    assert torch.equal(
        evaluate.elbo_gaps(vae, lg_x[:3], k=6, steps=2, eval_samples=4, generator=g()).log_px,
        gaps.log_px,
    )
