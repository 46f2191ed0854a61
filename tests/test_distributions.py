"""distributions: each formula against scipy.stats or torch.distributions, plus two-route
identities."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from vaelib import distributions as D

SHAPES = [(5,), (4, 5), (3, 4, 5)]
IDS = ["D", "B,D", "K,B,D"]
DTYPES = [torch.float32, torch.float64]
# float64 agrees with scipy to round-off (1e-12 relative); float32 to ~1e-5 relative.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-4), torch.float64: dict(rtol=1e-12, atol=1e-10)}


def rand(shape, dtype, seed, scale=1.0):
    return scale * torch.randn(
        shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    ).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_log_normal_matches_scipy(shape, dtype):
    x, mu, logvar = rand(shape, dtype, 0), rand(shape, dtype, 1), rand(shape, dtype, 2)
    got = D.log_normal(x, mu, logvar)
    want = stats.norm.logpdf(x.double(), mu.double(), np.exp(0.5 * logvar.double().numpy())).sum(-1)
    assert got.shape == shape[:-1] and got.dtype == dtype
    np.testing.assert_allclose(got.double().numpy(), want, **TOL[dtype])


def test_log_normal_matches_torch_distributions_with_broadcasting():
    x = rand((7, 3, 4), torch.float64, 0)  # (K, B, D) samples against (B, D) parameters
    mu, logvar = rand((3, 4), torch.float64, 1), rand((3, 4), torch.float64, 2)
    ref = torch.distributions.Independent(
        torch.distributions.Normal(mu, torch.exp(0.5 * logvar)), 1
    )
    torch.testing.assert_close(D.log_normal(x, mu, logvar), ref.log_prob(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_log_bernoulli_matches_scipy_on_binary_data(shape, dtype):
    logits = rand(shape, dtype, 3, scale=3.0)
    x = (rand(shape, dtype, 4) > 0).to(dtype)
    p = torch.sigmoid(logits.double()).numpy()
    want = stats.bernoulli.logpmf(x.double().numpy(), p).sum(-1)
    np.testing.assert_allclose(D.log_bernoulli(x, logits).double().numpy(), want, **TOL[dtype])


def test_log_bernoulli_is_minus_bce_with_logits_on_grey_values():
    logits = rand((6, 10), torch.float64, 5, scale=4.0)
    x = torch.rand(6, 10, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    want = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(
        -1
    )
    torch.testing.assert_close(D.log_bernoulli(x, logits), want, rtol=1e-12, atol=1e-12)


def test_log_bernoulli_is_stable_at_extreme_logits():
    # log sigmoid(-200) = -200 - log(1 + e^-200) = -200 to double precision; sigmoid-then-log gives
    # -inf.
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    logits = torch.tensor([[-200.0, 200.0, 200.0, -200.0]], dtype=torch.float64)
    torch.testing.assert_close(
        D.log_bernoulli(x, logits), torch.tensor([-400.0], dtype=torch.float64)
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_kl_normal_matches_torch_distributions(shape, dtype):
    mq, lq, mp, lp = (rand(shape, dtype, s) for s in range(4))
    Nq = torch.distributions.Normal(mq.double(), torch.exp(0.5 * lq.double()))
    Np = torch.distributions.Normal(mp.double(), torch.exp(0.5 * lp.double()))
    want = torch.distributions.kl_divergence(Nq, Np).sum(-1)
    got = D.kl_normal(mq, lq, mp, lp)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want, **TOL[dtype])


def test_kl_normal_default_prior_is_standard_normal():
    mq, lq = rand((4, 3), torch.float64, 0), rand((4, 3), torch.float64, 1)
    zeros = torch.zeros(4, 3, dtype=torch.float64)
    torch.testing.assert_close(
        D.kl_normal(mq, lq), D.kl_normal(mq, lq, zeros, zeros), rtol=1e-14, atol=1e-14
    )
    torch.testing.assert_close(
        D.kl_normal(mq, lq), D.kl_normal(mq, lq, mu_p=zeros), rtol=1e-14, atol=1e-14
    )


def test_kl_normal_matches_monte_carlo(gen):
    # KL = E_q[log q - log p]; 200k samples of a 3-D term with std ~1.5 give a standard error
    # ~0.004.
    mq, lq = (
        torch.tensor([0.5, -1.0, 0.2], dtype=torch.float64),
        torch.tensor([-0.5, 0.3, 0.0], dtype=torch.float64),
    )
    z = D.sample_normal(mq, lq, n=200_000, generator=gen)
    terms = D.log_normal(z, mq, lq) - D.log_normal(
        z, torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    )
    se = terms.std() / math.sqrt(terms.numel())
    assert abs(terms.mean() - D.kl_normal(mq[None], lq[None])[0]) < 4 * se


def test_kl_normal_sum_of_per_dimension_kls():
    mq, lq = rand((2, 6), torch.float64, 0), rand((2, 6), torch.float64, 1)
    per_dim = sum(D.kl_normal(mq[:, i : i + 1], lq[:, i : i + 1]) for i in range(6))
    torch.testing.assert_close(D.kl_normal(mq, lq), per_dim, rtol=1e-13, atol=1e-13)


finite = st.floats(-5, 5, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(finite, finite, finite, finite), min_size=1, max_size=6))
def test_kl_normal_is_nonnegative_and_zero_only_at_equality(rows):
    mq, lq, mp, lp = (
        torch.tensor([r[i] for r in rows], dtype=torch.float64)[None] for i in range(4)
    )
    assert D.kl_normal(mq, lq, mp, lp).item() >= -1e-12
    assert abs(D.kl_normal(mq, lq, mq, lq).item()) < 1e-12


def test_sample_normal_shape_moments_and_gradient(gen):
    mu = torch.tensor([[1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    logvar = torch.tensor([[0.0, math.log(4.0)]], dtype=torch.float64, requires_grad=True)
    z = D.sample_normal(mu, logvar, n=100_000, generator=gen)
    assert z.shape == (100_000, 1, 2)
    # Mean has standard error sigma / sqrt(n) <= 2 / 316 = 0.0063; 4 SE = 0.025.
    torch.testing.assert_close(z.mean(0), mu.detach(), atol=0.025, rtol=0)
    # Variance of the sample variance is 2 sigma^4 / n: SE(var) <= 4 * sqrt(2 / 1e5) = 0.018.
    torch.testing.assert_close(z.var(0), torch.exp(logvar.detach()), atol=0.08, rtol=0)
    z.sum().backward()  # dz/dmu = 1; dz/dlogvar = (z - mu) / 2
    torch.testing.assert_close(mu.grad, torch.full_like(mu, 100_000.0))
    torch.testing.assert_close(logvar.grad, ((z.detach() - mu.detach()) / 2).sum(0))


def test_sample_normal_is_reproducible_and_n_none_keeps_shape():
    mu, logvar = torch.zeros(3, 2), torch.zeros(3, 2)
    a = D.sample_normal(mu, logvar, generator=torch.Generator().manual_seed(0))
    b = D.sample_normal(mu, logvar, generator=torch.Generator().manual_seed(0))
    assert a.shape == (3, 2) and a.dtype == torch.float32
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "mu_dtype, logvar_dtype",
    [(torch.float32, torch.float64), (torch.float64, torch.float32)],
    ids=["mu32-logvar64", "mu64-logvar32"],
)
def test_sample_normal_of_mixed_precision_draws_its_noise_in_the_promoted_dtype(
    mu_dtype, logvar_dtype
):
    # Two routes to the same draws: mixed-precision arguments, or both promoted to float64 first.
    # Same seed, same float64 noise, so the same samples: bit for bit when logvar is float64; to
    # float32 rounding of sigma = exp(logvar / 2) (computed in logvar's dtype, 6e-8 relative, |sigma
    # eps| < 15 here) when it is float32. Noise drawn in mu's dtype (float32) would be other
    # numbers, each one a float32 value: 24 bits instead of 53.
    mu, logvar = rand((4, 3), torch.float64, 0), rand((4, 3), torch.float64, 1).clamp(-2, 2)
    mu, logvar = mu.to(mu_dtype), logvar.to(logvar_dtype)
    mixed = D.sample_normal(mu, logvar, 1000, torch.Generator().manual_seed(5))
    promoted = D.sample_normal(mu.double(), logvar.double(), 1000, torch.Generator().manual_seed(5))
    assert mixed.dtype == torch.float64
    torch.testing.assert_close(
        mixed, promoted, rtol=0, atol=0 if logvar_dtype == torch.float64 else 1e-6
    )
    eps = (mixed - mu.double()) * torch.exp(
        -0.5 * logvar.double()
    )  # the noise, up to float64 rounding
    assert (eps.float().double() != eps).float().mean() > 0.99  # not float32 numbers


def spd(d, seed):
    A = rand((d, d), torch.float64, seed)
    return A @ A.T + 0.5 * torch.eye(d, dtype=torch.float64)


def test_log_mvnormal_matches_scipy_and_diagonal_route():
    x, mean, cov = rand((5, 3), torch.float64, 0), rand((3,), torch.float64, 1), spd(3, 2)
    want = stats.multivariate_normal(mean.numpy(), cov.numpy()).logpdf(x.numpy())
    np.testing.assert_allclose(D.log_mvnormal(x, mean, cov).numpy(), want, rtol=1e-12)
    logvar = rand((3,), torch.float64, 3)
    torch.testing.assert_close(
        D.log_mvnormal(x, mean, torch.diag(torch.exp(logvar))), D.log_normal(x, mean, logvar)
    )


def test_kl_mvnormal_matches_torch_and_diagonal_route():
    mq, mp = rand((4, 3), torch.float64, 0), rand((3,), torch.float64, 1)
    cq, cp = spd(3, 2), spd(3, 3)
    MVN = torch.distributions.MultivariateNormal
    want = torch.distributions.kl_divergence(MVN(mq, cq), MVN(mp, cp))
    torch.testing.assert_close(D.kl_mvnormal(mq, cq, mp, cp), want, rtol=1e-11, atol=1e-11)
    lq, lp = rand((3,), torch.float64, 4), rand((3,), torch.float64, 5)
    torch.testing.assert_close(
        D.kl_mvnormal(mq, torch.diag(lq.exp()), mp, torch.diag(lp.exp())),
        D.kl_normal(mq, lq, mp, lp),
        rtol=1e-12,
        atol=1e-12,
    )


# ---- bad input: each names the argument and what was expected ----
def test_bad_input_errors():
    good = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"logvar contains NaN"):
        D.log_normal(good, good, torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match=r"mu_q contains inf"):
        D.kl_normal(torch.full((2, 3), float("inf")), good)
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor.*int64"):
        D.log_normal(torch.zeros(2, 3, dtype=torch.int64), good, good)
    with pytest.raises(TypeError, match=r"mu must be a torch.Tensor, got ndarray"):
        D.log_normal(good, np.zeros((2, 3)), good)
    with pytest.raises(ValueError, match=r"do not broadcast: x \(2, 3\), mu \(4, 3\)"):
        D.log_normal(good, torch.zeros(4, 3), good)
    with pytest.raises(ValueError, match=r"at least 1 dimension"):
        D.log_normal(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0))
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
        D.log_bernoulli(torch.full((2, 3), 1.5), good)
    with pytest.raises(ValueError, match=r"n must be >= 1, got 0"):
        D.sample_normal(good, good, n=0)
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator"):
        D.sample_normal(good, good, generator=0)
    with pytest.raises(ValueError, match=r"cov must be symmetric positive-definite"):
        D.log_mvnormal(good, good, -torch.eye(3))
    with pytest.raises(ValueError, match=r"cov must have shape \(D, D\) with D=3"):
        D.log_mvnormal(good, good, torch.eye(2))


# ---- extreme log-variances: exp(-logvar) overflows, the density does not ----
# Oracle: scipy.stats.norm.logpdf in float64 with scale = exp(logvar / 2), which stays representable
# (exp(-100) for logvar = -200, exp(-400) for logvar = -800) where exp(-logvar) itself overflows
# (float32 beyond logvar = -88.7, float64 beyond -709.8).
@pytest.mark.parametrize(
    "dtype, logvar, diff",
    [
        (torch.float32, -200.0, 0.0),  # was NaN: 0 * exp(200) = 0 * inf
        (torch.float32, -200.0, 1e-30),  # was inf, the true value is about -3.6e26
        (torch.float32, -100.0, 1e-30),
        (torch.float64, -800.0, 0.0),  # was NaN
        (torch.float64, -800.0, 1e-170),  # was -inf
        (torch.float64, -200.0, 1e-90),
    ],
    ids=lambda v: str(v).replace("torch.", ""),
)
def test_log_normal_with_extreme_logvar_is_finite_and_exact(dtype, logvar, diff):
    mu = torch.tensor([[0.25, -1.5, 3.0]], dtype=dtype)
    x = mu + torch.tensor(diff, dtype=dtype)
    lv = torch.full_like(mu, logvar)
    got = D.log_normal(x, mu, lv)
    ref = stats.norm.logpdf(x.double().numpy(), mu.double().numpy(), np.exp(logvar / 2)).sum(-1)
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(
        got.double().numpy(), ref, rtol=1e-6 if dtype == torch.float32 else 1e-12
    )


def test_extreme_logvar_keeps_gradients_finite():
    # At x = mu the gradient of -(x - mu)^2 / (2 var) in mu is 0, not 0 * inf.
    mu = torch.zeros(2, 3, requires_grad=True)
    lv = torch.full((2, 3), -200.0, requires_grad=True)
    D.log_normal(torch.zeros(2, 3), mu, lv).sum().backward()
    assert torch.equal(mu.grad, torch.zeros(2, 3))
    torch.testing.assert_close(lv.grad, torch.full((2, 3), -0.5))  # d/dlogvar of -logvar/2


def test_kl_normal_with_extreme_prior_logvar():
    # KL(N(m, e^lq) || N(m, e^lp)) with equal means = 1/2 (lp - lq + e^(lq - lp) - 1) per dimension.
    m = torch.tensor([[0.3, -2.0]])
    lq, lp = torch.full((1, 2), -199.0), torch.full((1, 2), -200.0)
    expected = 2 * 0.5 * (-1.0 + math.exp(1.0) - 1.0)
    torch.testing.assert_close(
        D.kl_normal(m, lq, m, lp), torch.tensor([expected]), rtol=1e-5, atol=0
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_is_refused_by_name(dtype):
    good = torch.zeros(2, 3, dtype=torch.float64)
    half = torch.zeros(2, 3, dtype=dtype)
    msg = (
        rf"must be a floating-point tensor \(float32 or float64\), got dtype {dtype}.*half "
        rf"precision"
    )
    with pytest.raises(TypeError, match="x " + msg):
        D.log_normal(half, good, good)
    with pytest.raises(TypeError, match="mean " + msg):
        D.log_mvnormal(good, half, torch.eye(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="cov " + msg):
        D.log_mvnormal(good, good, torch.eye(3, dtype=dtype))
    with pytest.raises(TypeError, match="mu_q " + msg):
        D.kl_normal(half, good)


def test_log_mvnormal_refuses_a_non_symmetric_covariance():
    good = torch.zeros(2, 3, dtype=torch.float64)
    cov = torch.tensor([[2.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"cov must be symmetric, got max \|cov - cov\^T\| = 0.5 \(shape \(3, 3\)"
    ):
        D.log_mvnormal(
            good, good, cov
        )  # used to read the lower triangle only: a silent wrong density
    with pytest.raises(ValueError, match=r"cov_q must be symmetric"):
        D.kl_mvnormal(good, cov, good, torch.eye(3, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_log_mvnormal_accepts_rounding_asymmetry(dtype):
    # A computed covariance A A^T + I is symmetric only up to rounding; the result is that of the
    # symmetrised matrix (scipy.stats.multivariate_normal in float64 as the oracle).
    g = torch.Generator().manual_seed(3)
    A = torch.randn(5, 5, generator=g, dtype=torch.float64)
    cov64 = A @ A.T + torch.eye(5, dtype=torch.float64)
    cov = cov64.to(dtype)
    cov = (
        cov + torch.triu(torch.full_like(cov, 4 * torch.finfo(dtype).eps), 1) * cov.abs().max()
    )  # tiny asymmetry
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    ref = stats.multivariate_normal(np.zeros(5), (0.5 * (cov + cov.T)).double().numpy()).logpdf(
        x.numpy()
    )
    got = D.log_mvnormal(x.to(dtype), torch.zeros(5, dtype=dtype), cov)
    np.testing.assert_allclose(
        got.double().numpy(), ref, rtol=1e-4 if dtype == torch.float32 else 1e-10
    )
