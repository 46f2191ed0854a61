"""aggregate: ELBO surgery, average KL = I_q(x; z) + KL(q(z) || p(z)), by independent routes, and
    its estimators.

Oracles: closed-form KLs from torch.distributions; scipy.integrate.quad over scipy.stats densities
    (k = 1);
torch.distributions.MixtureSameFamily on a fine grid (k = 2); the exact values log N and 0 of I_q
for separated and identical codes; KL(q(z) || p(z)) = 0 when q(z) = p(z). Codes come from the exact
posteriors of a LinearGaussian toy, so q(z) is the aggregate posterior of a model whose inference is
exact.
"""

import functools
import math

import numpy as np
import pytest
import torch
from conftest import linear_gaussian
from scipy import integrate, stats
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal, kl_divergence

from vaelib import aggregate as A

F64 = torch.float64
CASES = [(1, 20), (2, 4)]  # (k, N): 2-D quadrature costs N^2 per node, so N stays small there
CASE_IDS = ["k=1,N=20", "k=2,N=4"]


def toy_codes(N, k, seed=0):
    """mu, logvar (N, k) of the exact posteriors p(z | x_n) of a LinearGaussian at N draws x_n ~
    p(x)."""
    model = linear_gaussian(d=4, k=k, noise_std=0.7, seed=seed, orthogonal=True)
    x, _ = model.sample(N, generator=torch.Generator().manual_seed(seed + 1))
    mean, cov = model.posterior(x)
    assert torch.allclose(
        cov, torch.diag(torch.diagonal(cov)), atol=1e-12
    )  # diagonal, so a diagonal q is exact
    return mean, torch.log(torch.diagonal(cov)).expand(N, k).clone()


def separated_codes(N, k, spacing=10.0, logvar=-4.0):
    """Components 74 sd apart (sd = e^-2): their overlap is e^-684, so I_q = log N to every float64
    digit."""
    mu = spacing * torch.arange(N, dtype=F64)[:, None].expand(N, k).clone()
    return mu, torch.full((N, k), logvar, dtype=F64)


def mixture(mu, logvar):
    """q(z) = (1/N) sum_n N(mu_n, diag exp(logvar_n)) as a torch.distributions object (the
    oracle)."""
    components = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    return MixtureSameFamily(Categorical(logits=torch.zeros(mu.shape[0], dtype=F64)), components)


@functools.cache
def exact(k, N):
    return A.surgery_quadrature(*toy_codes(N, k))


@pytest.mark.parametrize("chunk_size", [1, 3, 512], ids=["chunk=1", "chunk=3", "chunk=512"])
@pytest.mark.parametrize("k", [1, 2, 5], ids=["k=1", "k=2", "k=5"])
def test_log_qz_matches_mixture_same_family(k, chunk_size):
    g = torch.Generator().manual_seed(k)
    mu, logvar = (
        torch.randn(7, k, generator=g, dtype=F64),
        torch.randn(7, k, generator=g, dtype=F64),
    )
    z = 2.0 * torch.randn(11, k, generator=g, dtype=F64)
    # Same float64 formula by another code path: agreement to round-off (1e-12 on values of a few
    # nats).
    torch.testing.assert_close(
        A.log_qz(z, mu, logvar, chunk_size=chunk_size),
        mixture(mu, logvar).log_prob(z),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("k,N", CASES, ids=CASE_IDS)
def test_identity_holds_to_1e10_with_each_term_by_its_own_route(k, N):
    mu, logvar = toy_codes(N, k)
    s = exact(k, N)
    # Closed-form average KL against torch.distributions' Normal-Normal KL (round-off only).
    want = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1).mean()
    assert abs(s.average_kl - float(want)) < 1e-12
    # The two quadratures converged to atol 1e-12 each (their estimated errors sum to `error`); the
    # boxes' tails add 1e-20. A wrong term (a missing log N, the prior in place of q(z), a sign)
    # moves the sum by 1e-2 or more, while 1e-10 is 50x the quadratures' error.
    assert s.error < 1e-11
    assert abs(s.average_kl - (s.mutual_info + s.marginal_kl)) < 1e-10
    assert 0.0 < s.mutual_info < math.log(N) and s.marginal_kl > 0.0


def test_quadrature_terms_match_scipy_quad_k1():
    mu, logvar = toy_codes(6, 1, seed=3)
    s = A.surgery_quadrature(mu, logvar)
    m, sd = mu[:, 0].numpy(), np.exp(0.5 * logvar[:, 0].numpy())

    def log_q(z):  # scipy.stats and numpy: no code shared with vaelib
        return np.logaddexp.reduce(stats.norm.logpdf(z, m, sd)) - math.log(len(m))

    opts = dict(epsabs=1e-13, epsrel=1e-13, limit=200)
    lo, hi = (m - 12 * sd).min(), (m + 12 * sd).max()
    marginal, _ = integrate.quad(
        lambda z: math.exp(log_q(z)) * (log_q(z) - stats.norm.logpdf(z)), lo, hi, points=m, **opts
    )
    kls = [
        integrate.quad(
            lambda z: stats.norm.pdf(z, mn, sn) * (stats.norm.logpdf(z, mn, sn) - log_q(z)),
            mn - 12 * sn,
            mn + 12 * sn,
            **opts,
        )[0]
        for mn, sn in zip(m, sd)
    ]
    # quad's requested 1e-13 and cubature's 1e-12, with 12- and 10-sd boxes (tails below 1e-20):
    # 1e-10 is loose.
    assert abs(s.marginal_kl - marginal) < 1e-10
    assert abs(s.mutual_info - np.mean(kls)) < 1e-10


def test_quadrature_terms_match_mixture_same_family_on_a_grid_k2():
    mu, logvar = toy_codes(4, 2)
    s = exact(2, 4)
    sd = torch.exp(0.5 * logvar)
    # Rectangle rule on a uniform grid, step sd_min / 6, 11 sd past every mean: for smooth
    # integrands that decay like Gaussians it converges geometrically (error ~ exp(-2 pi^2 sd^2 /
    # h^2) = e^-700 for the Gaussian factor), far below the 1e-10 asked; torch.distributions
    # supplies every density.
    h = float(sd.min()) / 6
    axes = [
        torch.arange(
            float((mu - 11 * sd)[:, j].min()), float((mu + 11 * sd)[:, j].max()), h, dtype=F64
        )
        for j in range(2)
    ]
    z = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)  # (G, 2)
    log_q = mixture(mu, logvar).log_prob(z)  # (G,)
    log_p = Independent(Normal(torch.zeros(2, dtype=F64), 1.0), 1).log_prob(z)
    log_qn = Independent(Normal(mu, sd), 1).log_prob(z[:, None, :])  # (G, N)
    marginal = float((torch.exp(log_q) * (log_q - log_p)).sum() * h**2)
    information = float((torch.exp(log_qn) * (log_qn - log_q[:, None])).mean(1).sum() * h**2)
    assert abs(s.marginal_kl - marginal) < 1e-10
    assert abs(s.mutual_info - information) < 1e-10


@pytest.mark.parametrize("k,N", CASES, ids=CASE_IDS)
def test_full_mixture_monte_carlo_matches_quadrature(k, N, gen):
    mu, logvar = toy_codes(N, k)
    s, e = (
        exact(k, N),
        A.surgery_mc(mu, logvar, 20000, generator=gen, chunk_size=64),
    )  # 64 < 20000: chunks over points
    # Unbiased estimators (exact log q(z)): within 4 standard errors (a 6e-5 chance of a false
    # alarm; the seed is fixed). A missing log N shifts log q by log N = 3.0 or 1.4 nats, hundreds
    # of standard errors.
    assert e.average_kl == s.average_kl
    assert abs(e.mutual_info - s.mutual_info) < 4 * e.mutual_info_se
    assert abs(e.marginal_kl - s.marginal_kl) < 4 * e.marginal_kl_se
    assert (
        1e-3 < e.mutual_info_se < 0.05 and 1e-3 < e.marginal_kl_se < 0.05
    )  # a standard error, not 0 or a std
    if k == 1:  # one coordinate: its marginal is q(z) itself
        torch.testing.assert_close(
            e.marginal_kl_per_dim, torch.tensor([e.marginal_kl], dtype=F64), rtol=1e-12, atol=1e-12
        )
    # each coordinate against its own 1-D quadrature; their sum falls short of KL(q(z)||p(z)) by the
    # total correlation
    else:
        per_dim = [
            A.surgery_quadrature(mu[:, j : j + 1], logvar[:, j : j + 1]).marginal_kl
            for j in range(k)
        ]
        assert all(
            abs(e.marginal_kl_per_dim[j] - per_dim[j]) < 4 * e.marginal_kl_per_dim_se[j]
            for j in range(k)
        )
        assert sum(per_dim) <= s.marginal_kl


def test_minibatch_of_all_n_is_the_full_mixture(gen):
    mu, logvar = toy_codes(20, 1)
    runs = [
        A.surgery_minibatch(mu, logvar, 20, 500, torch.Generator().manual_seed(5), weighting=w)
        for w in ("importance", "uniform")
    ]
    # M = N: both weightings are 1/N for every component, the exact q(z); same draws, same numbers.
    assert (
        abs(runs[0].mutual_info - runs[1].mutual_info) < 1e-12
        and abs(runs[0].marginal_kl - runs[1].marginal_kl) < 1e-12
    )
    s = exact(1, 20)
    assert abs(runs[0].mutual_info - s.mutual_info) < 4 * runs[0].mutual_info_se
    assert abs(runs[0].marginal_kl - s.marginal_kl) < 4 * runs[0].marginal_kl_se


def test_minibatch_bias_has_the_documented_direction():
    mu, logvar = toy_codes(20, 1)
    s = exact(1, 20)
    imp = A.surgery_minibatch(
        mu, logvar, 5, 1500, torch.Generator().manual_seed(6), weighting="importance"
    )
    uni = A.surgery_minibatch(
        mu, logvar, 5, 1500, torch.Generator().manual_seed(6), weighting="uniform"
    )
    # importance weights: q-hat(z) unbiased, so E log q-hat < log q (Jensen): I_q over,
    # KL(q(z)||p(z)) under, by the same amount (their sum is the unbiased estimate of the average
    # KL). More than 3 standard errors on these codes.
    assert imp.mutual_info > s.mutual_info + 3 * imp.mutual_info_se
    assert imp.marginal_kl < s.marginal_kl - 3 * imp.marginal_kl_se
    assert abs(imp.mutual_info + imp.marginal_kl - s.average_kl) < 4 * math.hypot(
        imp.mutual_info_se, imp.marginal_kl_se
    )
    # uniform weights over-weight each point's own component (1/M for 1/N): I_q under on these
    # overlapping codes.
    assert uni.mutual_info < s.mutual_info - 3 * uni.mutual_info_se
    assert uni.mutual_info <= math.log(5)


def test_mutual_info_is_log_n_for_separated_codes_and_zero_for_identical(gen):
    N = 3
    s = A.surgery_quadrature(*separated_codes(N, 1))
    assert abs(s.mutual_info - math.log(N)) < 1e-10  # every digit: the overlap is e^-684
    assert abs(s.average_kl - s.mutual_info - s.marginal_kl) < 1e-10
    mu, logvar = separated_codes(8, 2)
    e = A.surgery_mc(mu, logvar, 200, generator=gen)
    assert (
        abs(e.mutual_info - math.log(8)) < 1e-12 and e.mutual_info_se < 1e-12
    )  # log q(z|x) - log q(z) = log N per draw
    uni = A.surgery_minibatch(mu, logvar, 4, 50, gen, weighting="uniform")
    imp = A.surgery_minibatch(mu, logvar, 4, 50, gen, weighting="importance")
    assert abs(uni.mutual_info - math.log(4)) < 1e-12  # the uniform minibatch cannot see past log M
    assert abs(imp.mutual_info - math.log(8)) < 1e-12  # importance weights recover log N
    same = torch.full((6, 2), 0.7, dtype=F64), torch.full((6, 2), -0.3, dtype=F64)
    assert abs(A.surgery_quadrature(same[0][:, :1], same[1][:, :1]).mutual_info) < 1e-12
    e = A.surgery_mc(*same, 100, generator=gen)
    assert (
        abs(e.mutual_info) < 1e-12 and abs(e.marginal_kl - e.average_kl) < 0.2
    )  # all the rate is marginal KL


@pytest.mark.parametrize("k", [1, 2], ids=["k=1", "k=2"])
def test_marginal_kl_is_zero_when_the_aggregate_is_the_prior(k, gen):
    zeros = torch.zeros(1, k, dtype=F64)
    s = A.surgery_quadrature(zeros, zeros)  # N = 1, q(z | x_1) = N(0, I) = p(z)
    assert s.average_kl == 0.0 and abs(s.mutual_info) < 1e-12 and abs(s.marginal_kl) < 1e-12
    e = A.surgery_mc(zeros, zeros, 100, generator=gen)
    assert abs(e.marginal_kl) < 1e-12 and float(e.marginal_kl_per_dim.abs().max()) < 1e-12


def test_exact_posteriors_aggregate_towards_the_prior():
    # Averaged over x ~ p(x), the exact posteriors give back the prior (q(z) = p(z) in the
    # infinite-data limit): the marginal KL of N exact posteriors falls towards 0 as N grows, while
    # the average KL stays (it is I_q).
    small, large = (
        A.surgery_quadrature(*toy_codes(N, 1, seed=2)) for N in (5, 100)
    )  # 0.104 and 0.0032 nats
    assert large.marginal_kl < 0.01 < small.marginal_kl
    assert abs(large.average_kl - large.mutual_info - large.marginal_kl) < 1e-10


def codes():
    return torch.zeros(5, 2, dtype=F64), torch.zeros(5, 2, dtype=F64)


BAD = [
    (
        "1-D mu",
        lambda: A.surgery_mc(torch.zeros(5, dtype=F64), torch.zeros(5, dtype=F64), 10),
        ValueError,
        "mu",
    ),
    (
        "shape mismatch",
        lambda: A.surgery_mc(codes()[0], torch.zeros(5, 3, dtype=F64), 10),
        ValueError,
        "logvar",
    ),
    (
        "NaN logvar",
        lambda: A.surgery_mc(codes()[0], torch.full((5, 2), math.nan, dtype=F64), 10),
        ValueError,
        "logvar contains NaN",
    ),
    (
        "integer mu",
        lambda: A.surgery_mc(torch.zeros(5, 2, dtype=torch.int64), codes()[1], 10),
        TypeError,
        "mu",
    ),
    (
        "k=3 quadrature",
        lambda: A.surgery_quadrature(torch.zeros(5, 3, dtype=F64), torch.zeros(5, 3, dtype=F64)),
        ValueError,
        r"\(N, 1\) or \(N, 2\)",
    ),
    ("one sample", lambda: A.surgery_mc(*codes(), 1), ValueError, "n_samples"),
    ("generator", lambda: A.surgery_mc(*codes(), 10, generator=0), TypeError, "generator"),
    ("batch > N", lambda: A.surgery_minibatch(*codes(), 6, 10), ValueError, "batch_size"),
    ("batch of 1", lambda: A.surgery_minibatch(*codes(), 1, 10), ValueError, "batch_size"),
    ("one batch", lambda: A.surgery_minibatch(*codes(), 2, 1), ValueError, "n_batches"),
    (
        "weighting",
        lambda: A.surgery_minibatch(*codes(), 2, 10, weighting="mws"),
        ValueError,
        "weighting",
    ),
    (
        "z of wrong k",
        lambda: A.log_qz(torch.zeros(3, 1, dtype=F64), *codes()),
        ValueError,
        "z must have shape",
    ),
]


@pytest.mark.parametrize("call,error,match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()
