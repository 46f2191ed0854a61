"""Tests for vaelib.ais: AIS and reverse AIS against exact log p(x) on the toy models, the
transitions against the exact posterior, and the importance-weight diagnostics against closed forms
and scipy.stats.genpareto.

Monte Carlo checks average over B examples, each with its own exact log p(x): the error e_b = log
p_hat_b - log p(x_b) has a mean whose standard error is sd(e) / sqrt(B), and the tolerances are 4
such standard errors (a false alarm about once in 16,000 runs for a Gaussian mean), unless a test
says otherwise. Every run is seeded.
"""

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
import torch

from vaelib.ais import (
    ais,
    gpd_fit,
    importance_ess,
    linear_schedule,
    pareto_khat,
    reverse_ais,
    sigmoid_schedule,
)
from vaelib.estimators import importance_log_evidence, prior_log_evidence
from vaelib.models import VAE
from vaelib.toy import LinearGaussian, NonlinearGaussian

DTYPE = torch.float64
B = 32  # examples per Monte Carlo check


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def mean_se(e):
    """Mean of a (B,) tensor of errors and its standard error."""
    return float(e.mean()), float(e.std() / math.sqrt(e.numel()))


@pytest.fixture(scope="module")
def linear():
    """A 2-D latent, 6-D data LinearGaussian with a posterior ~10x narrower than the prior, and B
    simulated (x, z)."""
    g = gen(0)
    model = LinearGaussian(
        torch.randn(6, 2, generator=g, dtype=DTYPE), torch.randn(6, generator=g, dtype=DTYPE), 0.3
    )
    x, z = model.sample(B, generator=g)
    return model, x, z, model.log_evidence(x)


def prior_of(x, k=2):
    zeros = torch.zeros(x.shape[0], k, dtype=DTYPE)
    return zeros, zeros


# ----------------------------------------------------------------------------- schedules


def test_schedules_against_their_formulas():
    T = 7
    t = np.arange(T + 1)
    np.testing.assert_allclose(linear_schedule(T).numpy(), t / T, rtol=0, atol=1e-15)
    s = scipy.special.expit(4.0 * (2 * t / T - 1))  # Grosse et al. 2013, with rad = 4
    np.testing.assert_allclose(
        sigmoid_schedule(T, rad=4.0).numpy(), (s - s[0]) / (s[-1] - s[0]), rtol=0, atol=1e-15
    )


# ----------------------------------------------------------------------------- forward AIS


@pytest.mark.parametrize("p0", ["prior", "q"])
def test_one_temperature_is_importance_sampling(linear, p0):
    """With T = 1 there is no transition: log w = log p(x, z) - log p0(z), z ~ p0, the same draws as
    vaelib's importance-sampling estimator with the same seed (two routes to the same number, to
    rounding)."""
    model, x, _, _ = linear
    mean, cov = model.posterior(x)
    mu, logvar = (
        prior_of(x) if p0 == "prior" else (mean, torch.log(torch.diagonal(cov)).expand_as(mean))
    )
    result = ais(
        lambda z: model.log_joint(x, z), mu, logvar, 50, linear_schedule(1), generator=gen(3)
    )
    if p0 == "prior":
        reference = prior_log_evidence(model.log_likelihood, x, 2, 50, generator=gen(3))
    else:
        reference = importance_log_evidence(model.log_joint, x, mu, logvar, 50, generator=gen(3))
    torch.testing.assert_close(result.log_px, reference.log_px, rtol=0, atol=1e-12)
    torch.testing.assert_close(result.stderr, reference.stderr, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def brackets(linear):
    """Forward AIS from the prior and reverse AIS from the generating z, for T in (3, 10, 100)
    temperatures."""
    model, x, z, exact = linear
    mu, logvar = prior_of(x)
    out = {}
    for i, T in enumerate((3, 10, 100)):
        betas = sigmoid_schedule(T)
        fwd = ais(
            lambda zz: model.log_joint(x, zz), mu, logvar, 16, betas, n_leapfrog=5, generator=gen(i)
        )
        rev = reverse_ais(
            lambda zz: model.log_joint(x, zz),
            z,
            mu,
            logvar,
            betas,
            n_chains=16,
            n_leapfrog=5,
            step_size=fwd.step_size,
            generator=gen(10 + i),
        )
        out[T] = (fwd, rev, mean_se(fwd.log_px - exact), mean_se(rev.log_px - exact))
    return out


def test_forward_bias_shrinks_with_temperatures(brackets):
    """E[log p_hat] - log p(x) < 0 (Jensen) and -> 0 as T grows: clearly negative at T = 3, growing
    with T, within 4 standard errors of 0 at T = 100 (measured: -2.95 +- 0.74, -1.01 +- 0.23, -0.12
    +- 0.06 nats)."""
    (m3, s3), (m10, s10), (m100, s100) = (brackets[T][2] for T in (3, 10, 100))
    assert m3 < -2 * s3 and m10 < -4 * s10, (m3, s3, m10, s10)  # T = 3: heavy-tailed errors, 2 SE
    assert m3 < m10 < m100, (m3, m10, m100)
    assert abs(m100) < 4 * s100, (m100, s100)


def test_reverse_upper_bound_converges(brackets):
    """Reverse AIS from the exact (generating) latent: E[log p_hat_up] >= log p(x), -> log p(x) as T
    grows (measured: +2.80 +- 0.21, +1.42 +- 0.17, +0.21 +- 0.08 nats for T = 3, 10, 100)."""
    (m3, s3), (m10, s10), (m100, s100) = (brackets[T][3] for T in (3, 10, 100))
    assert m3 > 4 * s3 and m10 > 4 * s10, (m3, s3, m10, s10)
    assert m3 > m10 > m100, (m3, m10, m100)
    assert abs(m100) < 4 * s100, (m100, s100)


def test_bidirectional_bracket_holds_on_average(brackets):
    """forward <= log p(x) <= reverse, per example on average: the bracket's width is positive (more
    than 4 standard errors for T <= 10; measured 5.75 +- 0.84, 2.43 +- 0.30, 0.33 +- 0.10 nats for T
    = 3, 10, 100) and narrows as T grows."""
    widths = []
    for T, (fwd, rev, _, _) in brackets.items():
        gap = rev.log_px - fwd.log_px  # (B,) width of the bracket
        m, s = mean_se(gap)
        assert m > (4 * s if T <= 10 else 0), (T, m, s)
        widths.append(m)
    assert widths[0] > widths[1] > widths[2], widths


@pytest.mark.parametrize("transition, T", [("hmc", 30), ("metropolis", 200)])
def test_forward_from_q_matches_exact_and_adapts(linear, transition, T):
    """From p0 = q (a Gaussian near the posterior: mean off by 0.5 sd, variance doubled), AIS is
    within 4 standard errors of log p(x); the adapted step brings the acceptance rate to its target
    (within 0.1 over the last half)."""
    model, x, _, exact = linear
    mean, cov = model.posterior(x)
    sd = torch.sqrt(torch.diagonal(cov))
    mu, logvar = mean + 0.5 * sd, torch.log(2 * sd**2).expand_as(mean)
    result = ais(
        lambda z: model.log_joint(x, z),
        mu,
        logvar,
        32,
        sigmoid_schedule(T),
        transition=transition,
        n_leapfrog=5,
        step_size=0.05,
        generator=gen(5),
    )
    m, s = mean_se(result.log_px - exact)
    assert abs(m) < 4 * s, (m, s)
    target = 0.65 if transition == "hmc" else 0.3
    assert abs(float(result.acceptance_rate[T // 2 :].mean()) - target) < 0.1, (
        result.acceptance_rate.mean(1)
    )


# ----------------------------------------------------------------------------- the transitions


@pytest.mark.parametrize("transition", ["hmc", "metropolis"])
def test_transitions_leave_the_posterior_invariant(linear, transition):
    """Started from exact posterior samples, 8 transitions at beta = 1 keep them exact: whitened by
    the posterior (u = L^-1 (z - mean)), the 6,400 independent chains have mean 0 and covariance I
    within 4 standard errors (1 / sqrt(N) for a mean; sqrt(2 / N) for a variance; 1 / sqrt(N) for a
    correlation)."""
    model, x, _, _ = linear
    mean, cov = model.posterior(x)
    L = torch.linalg.cholesky(cov)
    S = 200
    eps = torch.randn(S, B, 2, generator=gen(7), dtype=DTYPE)
    z_exact = mean + eps @ L.T  # (S, B, k)
    # A path whose 8 intermediate temperatures are all 1: reverse_ais runs 8 transitions at beta =
    # 1.
    betas = torch.tensor([0.0] + [1.0] * 9, dtype=DTYPE)
    logvar = torch.log(torch.diagonal(cov)).expand_as(mean)
    result = reverse_ais(
        lambda z: model.log_joint(x, z),
        z_exact,
        mean,
        logvar,
        betas,
        transition=transition,
        n_leapfrog=5,
        step_size=1.0 if transition == "hmc" else 1.5,
        generator=gen(8),
    )
    assert 0.3 < float(result.acceptance_rate.mean()) < 0.95  # the chains do move
    u = torch.linalg.solve_triangular(
        L, (result.z - mean).reshape(-1, 2).T, upper=False
    ).T  # (N, k) whitened
    N = u.shape[0]
    assert bool((u.mean(0).abs() < 4 / math.sqrt(N)).all()), u.mean(0)
    c = torch.cov(u.T)
    assert bool(((torch.diagonal(c) - 1).abs() < 4 * math.sqrt(2 / N)).all()), c
    assert abs(float(c[0, 1])) < 4 / math.sqrt(N), c


# ----------------------------------------------------------------------------- a non-Gaussian
# posterior; a VAE


def test_nonlinear_toy_bracket():
    """NonlinearGaussian (k = 1, h(z) = z + z^2: skewed or bimodal posteriors), exact log p(x) by
    quadrature: forward AIS from the prior is within 4 standard errors of it at T = 50, reverse AIS
    from the generating z is not below it (measured +0.24 +- 0.05 nats at T = 50: the upper bound
    converges more slowly here)."""
    model = NonlinearGaussian(
        torch.tensor([[1.0], [0.5]], dtype=DTYPE), torch.zeros(2, dtype=DTYPE), 0.2
    )
    x, z = model.sample(B, generator=gen(11))
    exact = model.log_evidence(x)
    mu, logvar = prior_of(x, 1)
    betas = sigmoid_schedule(50)
    fwd = ais(
        lambda zz: model.log_joint(x, zz), mu, logvar, 16, betas, n_leapfrog=5, generator=gen(12)
    )
    rev = reverse_ais(
        lambda zz: model.log_joint(x, zz),
        z,
        mu,
        logvar,
        betas,
        n_chains=16,
        n_leapfrog=5,
        step_size=fwd.step_size,
        generator=gen(13),
    )
    (mf, sf), (mr, sr) = mean_se(fwd.log_px - exact), mean_se(rev.log_px - exact)
    assert abs(mf) < 4 * sf and mr > -4 * sr, (mf, sf, mr, sr)
    assert mean_se(rev.log_px - fwd.log_px)[0] > 0


def test_ais_on_a_vae_log_joint():
    """AIS from the encoder's q on VAE.log_joint (a network, float64) matches log p(x) by quadrature
    on a 2-D grid (241^2 points on [-6, 6]^2: the prior's mass outside is below 1e-7), within 4
    standard errors, and leaves no gradient on the parameters."""
    torch.manual_seed(0)
    vae = VAE(16, 2, hidden_dims=(8,)).double()
    x = (torch.rand(8, 16, generator=gen(14), dtype=DTYPE) < 0.5).to(DTYPE)
    axis = torch.linspace(-6, 6, 241, dtype=DTYPE)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 1, 2)  # (G, 1, 2)
    with torch.no_grad():
        exact = torch.logsumexp(vae.log_joint(x, grid), 0) + 2 * math.log(float(axis[1] - axis[0]))
        mu, logvar = vae.encode(x)
    result = ais(
        lambda z: vae.log_joint(x, z),
        mu,
        logvar,
        32,
        sigmoid_schedule(20),
        n_leapfrog=5,
        generator=gen(15),
    )
    m, s = mean_se(result.log_px - exact)
    assert abs(m) < 4 * s + 1e-3, (m, s)
    assert all(p.grad is None for p in vae.parameters())


# ----------------------------------------------------------------------------- diagnostics


def test_importance_ess_against_closed_form():
    """ESS / S -> E[w]^2 / E[w^2] for q = N(m, (1.5 s)^2) against p = N(m, s^2): E_q[(p/q)^2] from
    scipy's quad; exact values for equal and for one dominant weight; invariant to a shift of 1e4 in
    log w."""
    S = torch.tensor([1e4])
    log_w = torch.zeros(100, 3, dtype=DTYPE)
    torch.testing.assert_close(importance_ess(log_w), torch.full((3,), 100.0, dtype=DTYPE))
    log_w[0] = 800.0
    torch.testing.assert_close(importance_ess(log_w), torch.ones(3, dtype=DTYPE))
    p, q = scipy.stats.norm(0, 1), scipy.stats.norm(0, 1.5)
    second_moment = scipy.integrate.quad(
        lambda t: math.exp(2 * p.logpdf(t) - q.logpdf(t)), -np.inf, np.inf
    )[0]
    z = 1.5 * torch.randn(int(S), 40, generator=gen(16), dtype=DTYPE)
    log_w = (
        -0.5 * z**2 + 0.5 * (z / 1.5) ** 2 + math.log(1.5) + 1e4
    )  # log N(z; 0, 1) - log N(z; 0, 1.5^2) + shift
    ratio = importance_ess(log_w) / S
    m, s = mean_se(ratio)
    assert abs(m - 1 / second_moment) < 4 * s, (m, s, 1 / second_moment)


@pytest.mark.parametrize("k", [0.3, 0.7])
def test_gpd_fit_recovers_the_shape(k):
    """On 40 samples of n = 1000 from scipy.stats.genpareto(c=k, scale=2), Zhang-Stephens' k (no
    prior) averages within 4 standard errors of k, its spread is the asymptotic (1 + k) / sqrt(n) of
    the MLE within 25 %, and sigma averages within 4 standard errors of 2."""
    n, R = 1000, 40
    y = scipy.stats.genpareto(c=k, scale=2.0).rvs(
        size=(n, R), random_state=np.random.default_rng(17)
    )
    k_hat, sigma_hat = gpd_fit(torch.from_numpy(y), prior=False)
    m, s = mean_se(k_hat)
    assert abs(m - k) < 4 * s, (m, s)
    assert abs(float(k_hat.std()) / ((1 + k) / math.sqrt(n)) - 1) < 0.25, float(k_hat.std())
    ms, ss = mean_se(sigma_hat)
    assert abs(ms - 2.0) < 4 * ss, (ms, ss)
    # Two routes: Zhang-Stephens approximates the maximum-likelihood fit; scipy's MLE agrees within
    # a tenth of a standard error on each sample (measured: within 0.003).
    mle = np.array([scipy.stats.genpareto.fit(y[:, j], floc=0)[0] for j in range(5)])
    np.testing.assert_allclose(k_hat[:5].numpy(), mle, rtol=0, atol=0.1 * (1 + k) / math.sqrt(n))
    # The weakly informative prior, loo's adjust_k_wip: k n / (n + a) + a 0.5 / (n + a) with a = 10.
    k_prior, _ = gpd_fit(torch.from_numpy(y), prior=True)
    torch.testing.assert_close(k_prior, (k_hat * n + 10 * 0.5) / (n + 10), rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [0.3, 0.7])
def test_pareto_khat_on_exact_pareto_weights(k):
    """Weights with P(w > t) = t^(-1/k) (log w ~ Exponential(rate 1/k)) have exceedances over any
    cutoff that are exactly GPD with shape k; with S = 2000 the tail holds M = 135 and the prior
    pulls the mean to (M k + 5)/(M + 10)."""
    S, R = 2000, 100
    log_w = k * torch.empty(S, R, dtype=DTYPE).exponential_(generator=gen(18))
    k_hat = pareto_khat(log_w)
    m, s = mean_se(k_hat)
    assert abs(m - (135 * k + 5) / 145) < 4 * s, (m, s)


@pytest.mark.parametrize("S", [50, 2000])
def test_pareto_khat_fits_the_psis_tail(S):
    """The tail, built by hand in numpy: the M = ceil(min(S / 5, 3 sqrt(S))) largest weights (scaled
    by the largest) minus the next largest (Vehtari et al. 2024, section 3), fitted with gpd_fit."""
    log_w = 3.0 * torch.randn(S, 6, generator=gen(21), dtype=DTYPE)
    M = int(np.ceil(min(S / 5, 3 * np.sqrt(S))))
    w = np.sort(np.exp(log_w.numpy() - log_w.numpy().max(0)), 0)  # ascending
    tail = w[-M:] - w[-M - 1]  # (M, 6)
    torch.testing.assert_close(
        pareto_khat(log_w), gpd_fit(torch.from_numpy(tail))[0], rtol=0, atol=1e-12
    )


def test_pareto_khat_flags_a_narrow_proposal(linear):
    """q = N(mean, r cov) for the exact posterior of a 1-D toy: w = p / q has tail index 1 - r for r
    < 1 (k = 0.8 at r = 0.2: flagged above 0.7) and is bounded for r > 1 (k_hat well below 0.5)."""
    model = LinearGaussian(torch.tensor([[2.0]], dtype=DTYPE), torch.zeros(1, dtype=DTYPE), 0.5)
    x, _ = model.sample(20, generator=gen(19))
    mean, cov = model.posterior(x)
    k_of = {}
    for r in (0.2, 1.5):
        logvar = torch.log(r * cov[0]).expand_as(mean)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(
            4000, 20, 1, generator=gen(20), dtype=DTYPE
        )
        log_w = model.log_joint(x, z) - (
            -0.5 * (math.log(2 * math.pi) + logvar + (z - mean) ** 2 / logvar.exp())
        ).sum(-1)
        k_of[r] = pareto_khat(log_w)
    assert float(k_of[0.2].mean()) > 0.7, k_of[0.2]
    assert bool((k_of[1.5] < 0.5).all()), k_of[1.5]


# ----------------------------------------------------------------------------- bad input


def _ais_call(**change):
    model = LinearGaussian(torch.ones(3, 2, dtype=DTYPE), torch.zeros(3, dtype=DTYPE), 1.0)
    x = torch.zeros(4, 3, dtype=DTYPE)
    kw = dict(
        log_joint=lambda z: model.log_joint(x, z),
        mu=torch.zeros(4, 2, dtype=DTYPE),
        logvar=torch.zeros(4, 2, dtype=DTYPE),
        n_chains=3,
        betas=linear_schedule(3),
    )
    kw.update(change)
    return ais(**kw)


@pytest.mark.parametrize(
    "change, error, name",
    [
        (dict(log_joint="not callable"), TypeError, "log_joint"),
        (dict(log_joint=lambda z: z.sum()), ValueError, "log_joint"),
        (dict(mu=torch.zeros(4, 3, dtype=DTYPE)), ValueError, "mu"),
        (dict(mu=torch.zeros(4, 2, dtype=torch.int64)), TypeError, "mu"),
        (dict(logvar=torch.full((4, 2), math.nan, dtype=DTYPE)), ValueError, "logvar"),
        (dict(n_chains=0), ValueError, "n_chains"),
        (dict(betas=torch.tensor([0.0, 0.7, 0.5, 1.0], dtype=DTYPE)), ValueError, "betas"),
        (dict(betas=torch.tensor([0.1, 1.0], dtype=DTYPE)), ValueError, "betas"),
        (dict(transition="gibbs"), ValueError, "transition"),
        (dict(step_size=-0.1), ValueError, "step_size"),
        (dict(step_size=torch.ones(5, dtype=DTYPE)), ValueError, "step_size"),
        (dict(target_accept=1.5), ValueError, "target_accept"),
        (dict(generator=0), TypeError, "generator"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_ais_bad_input_names_the_argument(change, error, name):
    with pytest.raises(error, match=name):
        _ais_call(**change)


def test_reverse_and_diagnostics_bad_input_name_the_argument():
    model = LinearGaussian(torch.ones(3, 2, dtype=DTYPE), torch.zeros(3, dtype=DTYPE), 1.0)
    x, zeros = torch.zeros(4, 3, dtype=DTYPE), torch.zeros(4, 2, dtype=DTYPE)
    with pytest.raises(ValueError, match="z_exact"):
        reverse_ais(
            lambda z: model.log_joint(x, z),
            torch.zeros(4, 3, dtype=DTYPE),
            zeros,
            zeros,
            linear_schedule(3),
        )
    with pytest.raises(ValueError, match="step_size"):
        reverse_ais(
            lambda z: model.log_joint(x, z),
            zeros,
            zeros,
            zeros,
            linear_schedule(3),
            step_size=torch.ones(5, 4, dtype=DTYPE),
        )
    with pytest.raises(ValueError, match="log_w"):
        importance_ess(torch.tensor([[0.0], [math.nan]], dtype=DTYPE))
    with pytest.raises(ValueError, match="log_w"):
        pareto_khat(torch.zeros(20, 2, dtype=DTYPE))
    with pytest.raises(ValueError, match="y"):
        gpd_fit(-torch.ones(10, dtype=DTYPE))
