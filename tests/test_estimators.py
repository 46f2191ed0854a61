"""estimators: Monte Carlo estimates against exact toy-model values, closed forms and finite
differences."""

import math
import re

import numpy as np
import pytest
import torch
from conftest import linear_gaussian
from hypothesis import given, settings
from hypothesis import strategies as st

from vaelib import distributions as D
from vaelib import estimators as E

f64 = torch.float64


# ---- log_mean_exp ----
@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=20))
def test_log_mean_exp_equals_naive_formula_where_finite(values):
    a = np.array(values)
    got = E.log_mean_exp(torch.tensor(a, dtype=f64)).item()
    assert abs(got - np.log(np.mean(np.exp(a)))) < 1e-12 * max(1.0, abs(got))


def test_log_mean_exp_is_stable_at_extremes_and_handles_minus_inf():
    big = torch.tensor([1000.0, 1000.0], dtype=f64)  # naive: exp overflows to inf
    assert E.log_mean_exp(big).item() == 1000.0
    small = torch.tensor([-1000.0, -1000.0 + math.log(3.0)], dtype=f64)  # naive: log(0) = -inf
    assert abs(E.log_mean_exp(small).item() - (-1000.0 + math.log(2.0))) < 1e-12
    zero_weight = torch.tensor([0.0, -float("inf")], dtype=f64)
    assert abs(E.log_mean_exp(zero_weight).item() - math.log(0.5)) < 1e-15


def test_log_mean_exp_dim_argument():
    x = torch.randn(4, 5, dtype=f64)
    torch.testing.assert_close(E.log_mean_exp(x, dim=1), torch.log(torch.exp(x).mean(1)))


# ---- evidence estimators against the exact log p(x) ----
def test_prior_and_importance_estimates_agree_with_exact_evidence_within_stderr(gen):
    m = linear_gaussian(2, 1, noise_std=0.5)
    x, _ = m.sample(5, gen)
    exact = m.log_evidence(x)
    naive = E.prior_log_evidence(m.log_likelihood, x, 1, 200_000, gen)
    mean, cov = m.posterior(x)
    # A proposal 1.5x wider than the posterior keeps the weights bounded (finite variance).
    imp = E.importance_log_evidence(
        m.log_joint, x, mean, torch.log(2.25 * cov.diagonal()).expand_as(mean), 20_000, gen
    )
    for est in (naive, imp):
        assert est.log_px.shape == (5,) and est.stderr.shape == (5,)
        assert bool(((est.log_px - exact).abs() < 5 * est.stderr).all())
    # Per sample, a proposal near the posterior beats the prior: compare stderr * sqrt(K).
    assert bool((imp.stderr * math.sqrt(20_000) < naive.stderr * math.sqrt(200_000)).all())


def test_importance_estimate_with_exact_posterior_is_exact():
    # With q = p(z|x) every weight equals p(x): zero variance (1-D latent, so q's diagonal is
    # exact).
    m = linear_gaussian(3, 1)
    x, _ = m.sample(4, torch.Generator().manual_seed(0))
    mean, cov = m.posterior(x)
    est = E.importance_log_evidence(
        m.log_joint, x, mean, torch.log(cov.diagonal()).expand_as(mean), 10
    )
    torch.testing.assert_close(est.log_px, m.log_evidence(x), rtol=0, atol=1e-10)
    assert bool((est.stderr < 1e-10).all())


@pytest.mark.parametrize("weights", [[1.0, 3.0], [1.0, 1.0, 1.0, 5.0]], ids=["K=2", "K=4"])
def test_stderr_is_the_delta_method_formula_on_hand_computed_weights(weights):
    # se(log mean w) = sd(w) / (mean(w) sqrt(K)) with the sample sd (K - 1 in its denominator). By
    # hand: w = (1, 3): mean 2, sd sqrt(2), se = sqrt(2) / (2 sqrt 2) = 1/2; w = (1, 1, 1, 5): mean
    # 2, sd 2, se = 2 / (2 * 2) = 1/2. (Dividing by sqrt(K - 1) instead gives 0.707 and 0.577; the
    # spread test above cannot see that at K = 2000.)
    log_w = torch.log(torch.tensor(weights, dtype=f64))[:, None].expand(-1, 3)  # (K, B = 3)
    est = E.prior_log_evidence(lambda x, z: log_w, torch.zeros(3, 2, dtype=f64), 1, len(weights))
    torch.testing.assert_close(
        est.log_px, torch.full((3,), math.log(2.0), dtype=f64), rtol=0, atol=1e-15
    )
    torch.testing.assert_close(est.stderr, torch.full((3,), 0.5, dtype=f64), rtol=0, atol=1e-15)


def test_stderr_matches_the_spread_of_repeated_estimates(gen):
    # The delta-method standard error should describe the actual scatter of log p_hat: over 400
    # repeats, the empirical std of the estimates has relative error ~ 1/sqrt(2*400) = 3.5%.
    m = linear_gaussian(2, 1, noise_std=0.8)
    x = m.sample(1, gen)[0].expand(400, 2)
    est = E.prior_log_evidence(m.log_likelihood, x, 1, 2000, gen)
    ratio = (est.log_px.std() / est.stderr.mean()).item()
    assert 0.85 < ratio < 1.15


# ---- ELBO ----
def orthogonal_model():
    return linear_gaussian(
        4, 2, orthogonal=True
    )  # W^T W diagonal: the exact posterior has a diagonal covariance


def test_elbo_equals_log_evidence_at_the_exact_posterior():
    m = orthogonal_model()
    x, _ = m.sample(6, torch.Generator().manual_seed(1))
    mean, cov = m.posterior(x)
    assert (
        cov - torch.diag(cov.diagonal())
    ).abs().max() < 1e-14  # diagonal, so a diagonal q can be exact
    logvar = torch.log(cov.diagonal()).expand_as(mean)
    torch.testing.assert_close(
        E.elbo(m.log_joint, x, mean, logvar), m.log_evidence(x), rtol=0, atol=1e-10
    )


def test_gap_is_kl_to_the_posterior(gen):
    # log p(x) - ELBO(q) = KL(q || p(z|x)) for an arbitrary q. Per-sample terms have std ~1 nat,
    # so 100k samples give a standard error ~0.003; we allow 5 standard errors.
    m = linear_gaussian(3, 2)
    x, _ = m.sample(4, gen)
    mu = torch.randn(4, 2, generator=gen, dtype=f64)
    logvar = torch.randn(4, 2, generator=gen, dtype=f64) * 0.5 - 1.0
    z = D.sample_normal(mu, logvar, 100_000, gen)
    terms = m.log_joint(x, z) - D.log_normal(z, mu, logvar)
    se = terms.std(0) / math.sqrt(100_000)
    elbo = E.elbo(
        m.log_joint, x, mu, logvar, n_samples=100_000, generator=torch.Generator().manual_seed(99)
    )
    mean, cov = m.posterior(x)
    kl = D.kl_mvnormal(mu, torch.diag_embed(logvar.exp()), mean, cov)
    assert bool(((m.log_evidence(x) - elbo - kl).abs() < 5 * se).all())
    assert bool((kl > 0).all())


def test_elbo_is_differentiable_and_its_gradient_matches_finite_differences():
    # Same noise (same seed) on both sides of the difference: the estimator is a smooth function of
    # mu.
    m = linear_gaussian(3, 2)
    x, _ = m.sample(2, torch.Generator().manual_seed(0))
    mu = torch.tensor([[0.1, -0.3], [0.4, 0.2]], dtype=f64, requires_grad=True)
    logvar = torch.tensor([[-0.5, -1.0], [0.0, -0.2]], dtype=f64, requires_grad=True)
    f = lambda mu_, lv_: E.elbo(
        m.log_joint, x, mu_, lv_, 16, torch.Generator().manual_seed(7)
    ).sum()
    f(mu, logvar).backward()
    h = 1e-6
    for i in range(2):
        for j in range(2):
            e = torch.zeros(2, 2, dtype=f64)
            e[i, j] = h
            fd_mu = (f(mu.detach() + e, logvar.detach()) - f(mu.detach() - e, logvar.detach())) / (
                2 * h
            )
            fd_lv = (f(mu.detach(), logvar.detach() + e) - f(mu.detach(), logvar.detach() - e)) / (
                2 * h
            )
            assert abs(mu.grad[i, j] - fd_mu) < 1e-7 and abs(logvar.grad[i, j] - fd_lv) < 1e-7


# ---- IWAE ----
def test_iwae_rises_with_K_towards_log_evidence(gen):
    # Averaged over 2000 repeats, IWAE_K is non-decreasing in K (Burda et al. 2016, Thm 1) and
    # approaches log p(x). q is deliberately poor (shifted by 0.3, 1.5x too wide; ELBO gap ~2 nats).
    m = linear_gaussian(3, 2)
    x0, _ = m.sample(1, gen)
    x = x0.expand(2000, 3)
    mean, cov = m.posterior(x)
    mu, logvar = mean + 0.3, torch.log(cov.diagonal() * 1.5).expand_as(mean)
    values = [
        E.iwae_bound(m.log_joint, x, mu, logvar, K, gen).mean().item() for K in (1, 4, 16, 64, 256)
    ]
    exact = m.log_evidence(x0).item()
    assert all(a < b for a, b in zip(values, values[1:]))
    assert values[-1] < exact + 1e-3 and exact - values[-1] < 0.1 * (exact - values[0])


def test_iwae_with_K1_averages_to_the_exact_elbo():
    # IWAE_1 = log w for one z ~ q, whose expectation is the ELBO; oracle:
    # LinearGaussian.exact_elbo, the ELBO in closed form (no sampling). q is off the posterior
    # (shifted by 0.3, 1.5x too wide: a 2.04-nat gap). One log w has std 2.44 nats here, so 20k
    # repeats give a standard error of 0.017; 4 allowed.
    m = linear_gaussian(3, 2)
    x, _ = m.sample(3, torch.Generator().manual_seed(0))
    mean, cov = m.posterior(x)
    mu, logvar = mean + 0.3, torch.log(cov.diagonal() * 1.5).expand_as(mean)
    n = 20_000
    iwae1 = E.iwae_bound(
        m.log_joint,
        x.repeat(n, 1),
        mu.repeat(n, 1),
        logvar.repeat(n, 1),
        1,
        torch.Generator().manual_seed(5),
    ).reshape(n, 3)
    se = iwae1.std(0) / math.sqrt(n)
    exact = m.exact_elbo(x, mu, logvar)
    assert bool(((iwae1.mean(0) - exact).abs() < 4 * se).all()), (iwae1.mean(0), exact, se)
    assert bool(
        (m.log_evidence(x) - exact > 1.0).all()
    )  # IWAE_1 must not close the gap the way IWAE_K does


def test_iwae_bound_is_log_mean_exp_of_hand_computed_weights():
    # The same draws (same seed, same (K, B, k) shape) weighted by hand with torch.distributions:
    # log w = log N(x; W z + b, s^2 I) + log N(z; 0, I) - log N(z; mu, diag(sigma^2)), then log
    # (1/K) sum exp.
    from torch.distributions import Normal

    m = linear_gaussian(3, 2)
    x, _ = m.sample(4, torch.Generator().manual_seed(0))
    mu = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=f64)
    logvar = 0.3 * torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=f64)
    K = 7
    got = E.iwae_bound(m.log_joint, x, mu, logvar, K, torch.Generator().manual_seed(5))
    sigma = torch.exp(0.5 * logvar)
    z = mu + sigma * torch.randn(
        K, 4, 2, generator=torch.Generator().manual_seed(5), dtype=f64
    )  # (K, B, 2)
    log_w = (
        Normal(z @ m.W.T + m.b, m.noise_std).log_prob(x).sum(-1)
        + Normal(0.0, 1.0).log_prob(z).sum(-1)
        - Normal(mu, sigma).log_prob(z).sum(-1)
    )  # (K, B)
    oracle = torch.tensor(
        np.log(np.exp(log_w.numpy()).mean(0)), dtype=f64
    )  # log w in [-311, -2]: within float64 exp
    torch.testing.assert_close(got, oracle, rtol=0, atol=1e-12)


# ---- gradient estimators of E_q[f(z)] ----
def quadratic(z):
    return (z**2).sum(-1)  # E_q = sum(mu^2 + sigma^2): d/dmu = 2 mu, d/dlogvar = sigma^2


def sine(z):
    return torch.sin(z).sum(
        -1
        # E_q = sum(sin(mu) e^{-sigma^2/2}): d/dmu = cos(mu) e^{-s2/2}, d/dlogvar = -sin(mu) s2/2
        # e^{-s2/2}
    )


def exact_grads(name, mu, logvar):
    s2 = logvar.exp()
    if name == "quadratic":
        return 2 * mu, s2
    damp = torch.exp(-s2 / 2)
    return torch.cos(mu) * damp, -torch.sin(mu) * s2 / 2 * damp


@pytest.mark.parametrize(
    "estimator", [E.score_function_grad, E.pathwise_grad], ids=["score", "pathwise"]
)
@pytest.mark.parametrize(
    "name,f", [("quadratic", quadratic), ("sine", sine)], ids=["quadratic", "sine"]
)
def test_gradient_estimators_are_unbiased(estimator, name, f, gen):
    mu = torch.tensor([[0.5, -1.0, 0.2]], dtype=f64)
    logvar = torch.tensor([[-0.3, 0.2, -1.0]], dtype=f64)
    per = estimator(f, mu, logvar, 200_000, gen, reduce=False)
    want_mu, want_lv = exact_grads(name, mu, logvar)
    for got, want in ((per.grad_mu, want_mu), (per.grad_logvar, want_lv)):
        assert got.shape == (200_000, 1, 3)
        se = got.std(0) / math.sqrt(200_000)
        assert bool(((got.mean(0) - want).abs() < 5 * se + 1e-12).all())


def test_pathwise_has_lower_variance_than_score_function(gen):
    mu, logvar = torch.zeros(1, 5, dtype=f64) + 0.3, torch.zeros(1, 5, dtype=f64) - 0.5
    sf = E.score_function_grad(quadratic, mu, logvar, 20_000, gen, reduce=False)
    pw = E.pathwise_grad(quadratic, mu, logvar, 20_000, gen, reduce=False)
    assert bool((pw.grad_mu.var(0) < sf.grad_mu.var(0)).all())


def test_pathwise_single_sample_matches_finite_differences():
    # With eps fixed, the pathwise estimate is d/dtheta f(mu + exp(logvar/2) eps): a plain
    # derivative.
    mu = torch.tensor([[0.3, -0.7]], dtype=f64)
    logvar = torch.tensor([[0.1, -0.4]], dtype=f64)
    est = E.pathwise_grad(sine, mu, logvar, 1, torch.Generator().manual_seed(3), reduce=False)
    eps = torch.randn(1, 1, 2, generator=torch.Generator().manual_seed(3), dtype=f64)
    g = lambda m_, l_: sine(m_ + torch.exp(l_ / 2) * eps).item()
    h = 1e-6
    for j in range(2):
        e = torch.zeros(1, 2, dtype=f64)
        e[0, j] = h
        fd_mu = (g(mu + e, logvar) - g(mu - e, logvar)) / (2 * h)
        fd_lv = (g(mu, logvar + e) - g(mu, logvar - e)) / (2 * h)
        assert abs(est.grad_mu[0, 0, j].item() - fd_mu) < 1e-8
        assert abs(est.grad_logvar[0, 0, j].item() - fd_lv) < 1e-8


# ---- issue 21: extreme variances in the gradient estimators (found by
# test_gradient_estimators_fuzz) ----
def plus_one(z):
    return 1.0 + z.sum(
        -1
    )  # f near 1 wherever q is narrow: the score-function terms are about eps / sigma


def naive_score_terms(f, z, mu, logvar):
    """f(z) grad log q(z) by the textbook formula, in float64 from the same draws (finite wherever
    it is used here)."""
    z, mu, logvar = z.double(), mu.double(), logvar.double()
    fz = f(z).unsqueeze(-1)
    return fz * (z - mu) / torch.exp(logvar), fz * 0.5 * ((z - mu) ** 2 / torch.exp(logvar) - 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_score_function_grad_refuses_a_variance_whose_inverse_overflows(dtype):
    # logvar = -1e30 gave 0 * inf = NaN without an error. Below -log(max float) the score (z - mu) /
    # sigma^2 and the estimate's variance (f(mu)^2 / sigma^2 per sample) both overflow: no finite
    # answer is right, so it is an error.
    limit = math.log(torch.finfo(dtype).max)  # 88.72 for float32, 709.78 for float64
    mu = torch.zeros(2, 3, dtype=dtype)
    for low in (-1e30, -limit - 0.01):
        logvar = torch.zeros(2, 3, dtype=dtype)
        logvar[1, 2] = low
        with pytest.raises(
            ValueError,
            match=rf"logvar must be above {-limit:.1f} for {dtype} in score_function_grad"
            rf".* got a minimum of {re.escape(f'{low:.4g}')} \(shape \(2, 3\)\)",
        ):
            E.score_function_grad(plus_one, mu, logvar, 4)
    # Just above the limit it works, and each term is the textbook f(z) grad log q(z) of the same
    # draws.
    logvar = torch.full((2, 3), -limit + 0.5, dtype=dtype)
    got = E.score_function_grad(
        plus_one, mu, logvar, 4, torch.Generator().manual_seed(0), reduce=False
    )
    z = D.sample_normal(mu, logvar, 4, torch.Generator().manual_seed(0))
    for g, want in zip(got, naive_score_terms(plus_one, z, mu, logvar)):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(
            g.double(), want, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0
        )


def test_pathwise_grad_of_a_point_mass_is_the_derivative_at_mu():
    # pathwise_grad needs no such limit: sigma = exp(-1e30 / 2) = 0 puts every z at mu, so the
    # estimate is the exact limit sigma -> 0 of the gradient, (f'(mu), 0); for f = sum sin, (cos mu,
    # -sin(mu) sigma^2 / 2 e^{-sigma^2/2}) -> (cos mu, 0).
    mu = torch.tensor([[0.3, -1.2, 2.0]], dtype=f64)
    for dtype in (torch.float32, f64):
        g = E.pathwise_grad(
            sine, mu.to(dtype), torch.full((1, 3), -1e30, dtype=dtype), 5, reduce=False
        )  # (5, 1, 3)
        assert torch.equal(g.grad_mu, torch.cos(mu.to(dtype)).expand(5, 1, 3))
        assert torch.equal(g.grad_logvar, torch.zeros(5, 1, 3, dtype=dtype))


@pytest.mark.parametrize(
    "f, logvar", [(quadratic, 69.0), (sine, 170.0)], ids=["quadratic-69", "sine-170"]
)
def test_score_function_grad_of_a_wide_q_is_finite_in_float32(f, logvar):
    # float32 overflowed in the middle of the product: f(z) (z - mu) ~ sigma^3 = 1e45 for quadratic
    # at logvar 69, and (z - mu)^2 = inf times exp(-170) = 0 for sine at 170 (NaN), while every term
    # itself is finite. Checked against the textbook formula in float64 on the same draws; float32
    # rounding is about 1e-7 relative per operation.
    mu = torch.zeros(1, 3)
    lv = torch.full((1, 3), logvar)
    got = E.score_function_grad(f, mu, lv, 6, torch.Generator().manual_seed(2), reduce=False)
    z = D.sample_normal(mu, lv, 6, torch.Generator().manual_seed(2))
    for g, want in zip(got, naive_score_terms(f, z, mu, lv)):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.double(), want, rtol=1e-5, atol=0)


def test_score_function_grad_refuses_terms_that_overflow():
    # f(z) = 1e300 times a score near e^300 overflows float64: the mean of +inf and -inf terms would
    # be NaN.
    mu, logvar = torch.zeros(3, dtype=f64), torch.full((3,), -600.0, dtype=f64)
    with pytest.raises(
        ValueError,
        match=r"f\(z\) times the score overflows torch.float64: \|f\(z\)\| reaches 1e\+300",
    ):
        E.score_function_grad(lambda z: torch.full(z.shape[:-1], 1e300, dtype=f64), mu, logvar, 8)


@pytest.mark.parametrize(
    "estimator", [E.score_function_grad, E.pathwise_grad], ids=["score", "pathwise"]
)
def test_gradient_estimators_refuse_samples_that_overflow(estimator):
    # Found by a grid over extreme (mu, logvar): float32 logvar = 177 has a finite sigma = e^88.5 =
    # 2.9e38, but sigma eps overflows for |eps| > 1.2; f = exp(-z^2) is 0 there, finite, and the
    # score or the pathwise term then multiplied 0 by inf: NaN. The same logvar in float64 is fine.
    def bump(z):
        return torch.exp(-(z**2).sum(-1))

    mu, logvar = torch.zeros(2, 3), torch.full((2, 3), 177.0)
    with pytest.raises(
        ValueError,
        match=r"the samples z = mu \+ exp\(logvar / 2\) eps overflow torch.float32 in \d+ of 24",
    ):
        estimator(bump, mu, logvar, 4, torch.Generator().manual_seed(0))
    assert all(torch.isfinite(g).all() for g in estimator(bump, mu.double(), logvar.double(), 4))


def test_pathwise_grad_needs_f_differentiable_in_z():
    mu = torch.zeros(3, dtype=f64)
    # f that ignores z (or leaves autograd) was torch's "element 0 of tensors does not require grad"
    with pytest.raises(
        ValueError,
        match=r"f\(z\) does not depend on z through torch autograd: pathwise_grad differentiates f",
    ):
        E.pathwise_grad(lambda z: torch.zeros(z.shape[:-1], dtype=f64), mu, mu, 4)
    assert torch.equal(
        E.score_function_grad(lambda z: torch.zeros(z.shape[:-1], dtype=f64), mu, mu, 4).grad_mu,
        torch.zeros(3, dtype=f64),
    )  # the score-function estimate needs only values: 0 for f = 0
    # an infinite derivative where q puts its samples (sqrt |z| at z = mu = 0, sigma = 0) was a
    # silent NaN
    with pytest.raises(
        ValueError,
        match=r"the gradient of f\(z\) \(or it times z - mu\) is not finite in torch.float64",
    ):
        E.pathwise_grad(lambda z: z.abs().sqrt().sum(-1), mu, torch.full((3,), -1e30, dtype=f64), 4)


# ---- bad input ----
def test_bad_inputs():
    m = linear_gaussian(3, 2)
    x, mu, lv = (
        torch.zeros(4, 3, dtype=f64),
        torch.zeros(4, 2, dtype=f64),
        torch.zeros(4, 2, dtype=f64),
    )
    with pytest.raises(ValueError, match=r"K must be >= 1, got 0"):
        E.iwae_bound(m.log_joint, x, mu, lv, 0)
    with pytest.raises(TypeError, match=r"K must be an int"):
        E.iwae_bound(m.log_joint, x, mu, lv, 2.0)
    with pytest.raises(ValueError, match=r"mu and logvar must have the same shape"):
        E.elbo(m.log_joint, x, mu, torch.zeros(4, 3, dtype=f64))
    with pytest.raises(ValueError, match=r"mu must have the batch shape of x"):
        E.elbo(m.log_joint, x, torch.zeros(5, 2, dtype=f64), torch.zeros(5, 2, dtype=f64))
    with pytest.raises(ValueError, match=r"logvar contains NaN"):
        E.elbo(m.log_joint, x, mu, torch.full((4, 2), float("nan"), dtype=f64))
    with pytest.raises(ValueError, match=r"n_samples must be >= 1"):
        E.importance_log_evidence(m.log_joint, x, mu, lv, 0)
    with pytest.raises(ValueError, match=r"log_joint\(x, z\) must return shape \(3, 4\)"):
        E.elbo(lambda x_, z_: z_.sum(), x, mu, lv, 3)
    with pytest.raises(ValueError, match=r"log_w contains NaN"):
        E.log_mean_exp(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match=r"f\(z\) must return shape \(10, 4\)"):
        E.pathwise_grad(lambda z: z, mu, lv, 10)
    with pytest.raises(TypeError, match=r"f must be a callable"):
        E.score_function_grad(3, mu, lv, 10)


# ---- issue 14: bad arguments that used to give obscure errors or silent results ----
@pytest.mark.parametrize("shape, dim", [((0,), 0), ((3, 0), 1), ((3, 0), -1)])
def test_log_mean_exp_of_nothing_is_an_error(shape, dim):
    with pytest.raises(
        ValueError,
        match=rf"log_w must hold at least one log-weight along dim "
        rf"{dim % 2 if len(shape) == 2 else 0}",
    ):
        E.log_mean_exp(torch.zeros(shape, dtype=torch.float64), dim)


def test_log_mean_exp_over_a_non_empty_dim_of_an_empty_tensor_is_empty():
    out = E.log_mean_exp(
        torch.zeros(3, 0, dtype=torch.float64), 0
    )  # 3 weights for each of 0 examples
    assert out.shape == (0,)


@pytest.mark.parametrize(
    "dim, error, message",
    [
        (2, ValueError, r"dim must be in \[-2, 1\] for a tensor with 2 dimension\(s\), got 2"),
        (-3, ValueError, r"dim must be in \[-2, 1\]"),
        (0.5, TypeError, r"dim must be an int, got float"),
        ("0", TypeError, r"dim must be an int, got str"),
        (True, TypeError, r"dim must be an int, got bool"),
        (None, TypeError, r"dim must be an int, got NoneType"),
    ],
)
def test_log_mean_exp_bad_dim(dim, error, message):
    with pytest.raises(error, match=message):
        E.log_mean_exp(torch.zeros(2, 3, dtype=torch.float64), dim)


def test_log_mean_exp_negative_dim_counts_from_the_end():
    log_w = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(E.log_mean_exp(log_w, -1), torch.log(torch.exp(log_w).mean(1)))


@pytest.mark.parametrize("estimator", ["elbo", "iwae_bound", "importance_log_evidence"])
@pytest.mark.parametrize("bad", [None, 3.0, "log_joint"], ids=["None", "float", "str"])
def test_log_joint_must_be_callable(estimator, bad):
    x, mu, logvar = (
        torch.zeros(2, 3, dtype=torch.float64),
        torch.zeros(2, 1, dtype=torch.float64),
        torch.zeros(2, 1, dtype=torch.float64),
    )
    with pytest.raises(
        TypeError,
        match=rf"log_joint must be a callable \(x \(B, d\), z \(K, B, k\)\) -> log p\(x, z\) \(K, "
        rf"B\), got {type(bad).__name__}",
    ):
        getattr(E, estimator)(bad, x, mu, logvar, 2)


def test_log_likelihood_must_be_callable():
    with pytest.raises(TypeError, match=r"log_likelihood must be a callable .* got int"):
        E.prior_log_evidence(1, torch.zeros(2, 3, dtype=torch.float64), 1, 2)


@pytest.mark.parametrize(
    "estimator", [E.score_function_grad, E.pathwise_grad], ids=["score", "pathwise"]
)
@pytest.mark.parametrize("reduce", ["no", 0, None, "False"])
def test_reduce_must_be_a_bool(estimator, reduce):
    mu = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(
        TypeError, match=rf"reduce must be True or False, got {type(reduce).__name__}"
    ):
        estimator(lambda z: (z**2).sum(-1), mu, mu, 4, reduce=reduce)  # "no" used to mean True


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_is_refused(dtype):
    lg = linear_gaussian(d=3, k=1)
    x = torch.zeros(2, 3, dtype=dtype)
    with pytest.raises(
        TypeError,
        match=rf"x must be a floating-point tensor \(float32 or float64\), got dtype {dtype}",
    ):
        E.elbo(lg.log_joint, x, torch.zeros(2, 1, dtype=dtype), torch.zeros(2, 1, dtype=dtype))
    with pytest.raises(
        TypeError, match=rf"log_w must be a floating-point tensor .* got dtype {dtype}"
    ):
        E.log_mean_exp(torch.zeros(4, dtype=dtype))


def test_iwae_bound_takes_K_and_its_former_name_k():
    """K (importance samples) was called k, the letter of the latent size: k= still works, and means
    K."""
    m = linear_gaussian(3, 2)
    x, mu, lv = (
        torch.zeros(4, 3, dtype=f64),
        torch.zeros(4, 2, dtype=f64),
        torch.zeros(4, 2, dtype=f64),
    )
    runs = [
        E.iwae_bound(m.log_joint, x, mu, lv, 5, torch.Generator().manual_seed(1)),
        E.iwae_bound(m.log_joint, x, mu, lv, K=5, generator=torch.Generator().manual_seed(1)),
        E.iwae_bound(m.log_joint, x, mu, lv, k=5, generator=torch.Generator().manual_seed(1)),
    ]
    assert all(torch.equal(r, runs[0]) for r in runs)
    # K = 5 and K = 1 draw different numbers of samples, so they give different values: k is not
    # ignored
    assert not torch.equal(
        E.iwae_bound(m.log_joint, x, mu, lv, k=1, generator=torch.Generator().manual_seed(1)),
        runs[0],
    )
    with pytest.raises(TypeError, match=r"K=5 and k=3 given; k is the former name of K"):
        E.iwae_bound(m.log_joint, x, mu, lv, K=5, k=3)
    with pytest.raises(TypeError, match=r"missing the number of importance samples K"):
        E.iwae_bound(m.log_joint, x, mu, lv)


# ---- stl_elbo: the path-derivative ("sticking the landing") gradient, Roeder, Wu & Duvenaud 2017
# ----
def per_sample_grads(estimator, log_joint, x, mu, logvar, n, seed):
    """n independent one-sample gradients of `estimator` in (mu, logvar), each (n, B, k): n copies
    of the batch."""
    B, k = mu.shape
    mu_n = mu.repeat(n, 1).requires_grad_(True)  # (n B, k): copy i of example b is row i B + b
    lv_n = logvar.repeat(n, 1).requires_grad_(True)
    value = estimator(
        log_joint, x.repeat(n, 1), mu_n, lv_n, 1, torch.Generator().manual_seed(seed)
    )  # (n B,)
    g_mu, g_lv = torch.autograd.grad(
        value.sum(), (mu_n, lv_n)
    )  # each copy's value depends only on its own row
    return g_mu.reshape(n, B, k), g_lv.reshape(n, B, k)


def test_stl_elbo_has_the_value_of_elbo_on_the_same_draws():
    m = linear_gaussian(3, 2)
    x, _ = m.sample(4, torch.Generator().manual_seed(0))
    mu = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=f64)
    logvar = 0.3 * torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=f64)
    got = E.stl_elbo(m.log_joint, x, mu, logvar, 9, torch.Generator().manual_seed(3))
    want = E.elbo(m.log_joint, x, mu, logvar, 9, torch.Generator().manual_seed(3))
    assert got.shape == (4,) and torch.equal(got, want)  # detaching changes gradients, never values


def nonlinear_1d():
    from vaelib.toy import NonlinearGaussian

    return NonlinearGaussian(
        torch.tensor([[1.0]], dtype=f64), torch.zeros(1, dtype=f64), 0.3, curvature=1.0
    )


@pytest.mark.parametrize("model", ["linear, correlated posterior", "nonlinear, bimodal posterior"])
def test_stl_gradient_is_unbiased_for_the_exact_elbo_gradient(model):
    # Oracle: autograd through the ELBO in closed form (LinearGaussian.exact_elbo) or by
    # Gauss-Hermite quadrature, exact for this polynomial log-joint (NonlinearGaussian.exact_elbo):
    # no sampling, so independent of both estimators. q is off the posterior (a non-diagonal
    # posterior, or a bimodal one), where the path derivative is not zero. 40k one-sample gradients
    # per example; each mean must be within 4 standard errors.
    if model.startswith("linear"):
        m = linear_gaussian(3, 2)
        x, _ = m.sample(3, torch.Generator().manual_seed(0))
        mean, cov = m.posterior(x)
        mu, logvar = mean + 0.3, torch.log(cov.diagonal() * 1.5).expand_as(mean)
    else:
        m = nonlinear_1d()
        x = torch.tensor([[1.0], [0.2], [2.5]], dtype=f64)
        mu = torch.tensor([[0.5], [-0.4], [1.0]], dtype=f64)
        logvar = torch.tensor([[-2.0], [-1.0], [-3.0]], dtype=f64)
    mu_, lv_ = mu.clone().requires_grad_(True), logvar.clone().requires_grad_(True)
    want_mu, want_lv = torch.autograd.grad(
        m.exact_elbo(x, mu_, lv_).sum(), (mu_, lv_)
    )  # (B, k) each
    n = 40_000
    for estimator, seed in [
        (E.stl_elbo, 11),
        (E.elbo, 12),
    ]:  # the usual reparameterized gradient passes too
        g_mu, g_lv = per_sample_grads(estimator, m.log_joint, x, mu, logvar, n, seed)
        for g, want in [(g_mu, want_mu), (g_lv, want_lv)]:
            se = g.std(0) / math.sqrt(n)
            assert bool(((g.mean(0) - want).abs() < 4 * se).all()), (
                estimator.__name__,
                g.mean(0),
                want,
                se,
            )


def test_stl_gradient_is_zero_at_the_exact_posterior_and_the_reparameterized_one_is_not():
    # At q = p(z|x), log p(x, z) - log q(z|x) = log p(x) for every z, so its z-derivative, the path
    # derivative, is 0 for every draw. The usual reparameterized gradient adds the score term
    # -d/dphi log q(z) at fixed z:
    # -(eps / sigma) for mu and -(eps^2 - 1) / 2 for logvar, mean 0 but variance exactly 1 / sigma^2
    # and 1/2 (the oracle). 20k draws: the relative standard error of a sample variance is
    # sqrt((kurtosis - 1) / n), 1.0 % for eps (kurtosis 3) and 2.6 % for (eps^2 - 1) / 2 (kurtosis
    # 15); 10 % allowed. Orthogonal W: the posterior is diagonal, so a diagonal q can be exact.
    m = orthogonal_model()
    x, _ = m.sample(3, torch.Generator().manual_seed(1))
    mean, cov = m.posterior(x)
    logvar = torch.log(cov.diagonal()).expand_as(mean)
    n = 20_000
    s_mu, s_lv = per_sample_grads(E.stl_elbo, m.log_joint, x, mean, logvar, n, 21)
    assert s_mu.abs().max() < 1e-10 and s_lv.abs().max() < 1e-10
    r_mu, r_lv = per_sample_grads(E.elbo, m.log_joint, x, mean, logvar, n, 21)
    torch.testing.assert_close(r_mu.var(0), torch.exp(-logvar), rtol=0.1, atol=0)
    torch.testing.assert_close(r_lv.var(0), torch.full_like(logvar, 0.5), rtol=0.1, atol=0)


def test_stl_elbo_leaves_gradients_of_the_model_unchanged():
    # Only q's parameters are detached inside log q: d/dW is the usual reparameterized gradient,
    # draw for draw.
    W = torch.tensor([[1.0, 0.3], [0.5, -0.2], [0.1, 0.8]], dtype=f64, requires_grad=True)

    def log_joint(x, z):  # (K, B, 2) -> (K, B): N(x; W z, 0.5^2 I) N(z; 0, I)
        return D.log_normal(x, z @ W.T, torch.full_like(x, math.log(0.25))) + D.log_normal(
            z, torch.zeros_like(z), torch.zeros_like(z)
        )

    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=f64)
    mu, logvar = (
        torch.zeros(4, 2, dtype=f64, requires_grad=True),
        torch.full((4, 2), -1.0, dtype=f64, requires_grad=True),
    )
    grads = [
        torch.autograd.grad(
            est(log_joint, x, mu, logvar, 5, torch.Generator().manual_seed(4)).sum(), W
        )[0]
        for est in (E.stl_elbo, E.elbo)
    ]
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-12)


def test_stl_elbo_validates_like_elbo():
    m = linear_gaussian(3, 2)
    x, mu = torch.zeros(4, 3, dtype=f64), torch.zeros(4, 2, dtype=f64)
    with pytest.raises(ValueError, match=r"mu and logvar must have the same shape"):
        E.stl_elbo(m.log_joint, x, mu, torch.zeros(4, 3, dtype=f64))
    with pytest.raises(ValueError, match=r"log_joint\(x, z\) must return shape \(2, 4\)"):
        E.stl_elbo(lambda x_, z_: z_.sum(), x, mu, mu, 2)
