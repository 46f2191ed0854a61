"""Tests for vaelib.mcmc: the sampler against known targets, the diagnostics against known
processes.

Monte Carlo checks use a seeded torch.Generator and tolerances of a few Monte Carlo standard errors,
where the standard error of a chain average is sd / sqrt(ESS) (the ESS from vaelib.mcmc itself,
which is checked separately against the AR(1) closed form below).
"""

import math

import numpy as np
import pytest
import scipy.signal
import scipy.stats
import torch

from vaelib.mcmc import MCMCResult, autocorrelation, effective_sample_size, metropolis_hastings

DTYPE = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def log_std_normal(z):
    return -0.5 * (z**2).sum(-1)


def mcse_check(values, target, n_se=4.0):
    """Assert that chain averages of `values` (n, C, m) match `target` (m,) within n_se standard
    errors.

    Standard error = sd / sqrt(ESS) per column; ESS counts all chains.
    """
    n, C, m = values.shape
    mean = values.mean((0, 1))
    sd = values.reshape(n * C, m).std(0)
    se = sd / torch.sqrt(effective_sample_size(values))
    z = (mean - target) / se
    assert bool((z.abs() < n_se).all()), (
        f"estimate {mean.tolist()} vs {target.tolist()}: z-scores {z.tolist()}"
    )


# ----------------------------------------------------------------------------- a correlated 2-D
# Gaussian

MEAN = torch.tensor([1.0, -2.0], dtype=DTYPE)
SD = torch.tensor([1.0, 2.0], dtype=DTYPE)
CORR = 0.8
COV = torch.tensor([[1.0, CORR * 2.0], [CORR * 2.0, 4.0]], dtype=DTYPE)
PRECISION = torch.linalg.inv(COV)


def log_gauss_2d(z):
    d = z - MEAN  # (C, 2)
    return -0.5 * (d @ PRECISION * d).sum(-1)  # unnormalised: constants dropped on purpose


@pytest.fixture(scope="module")
def gauss_run():
    g = gen(1)
    z0 = MEAN + 3 * SD * torch.randn(8, 2, generator=g, dtype=DTYPE)  # overdispersed starts, (8, 2)
    # Per-dimension steps proportional to the marginal sds (about 2.4 / sqrt(2) * sd, shrunk for the
    # correlation).
    return metropolis_hastings(log_gauss_2d, z0, 6000, 0.9 * SD, generator=g, burn_in=1000)


def test_gaussian_mean_and_covariance_match_within_mc_error(gauss_run):
    # Means and the three covariance entries are chain averages of f(z) = z and f(z) = (z - m)(z -
    # m)^T (centred at the true mean, which we know). Each must lie within 4 Monte Carlo standard
    # errors sd(f) / sqrt(ESS(f)) of the truth: with 5 checks, a correct sampler fails with
    # probability about 5 * 6e-5 for a fresh seed; a wrong covariance or mean (e.g. a missing
    # Hastings correction) shifts the estimate by many standard errors (ESS here is about 1800 for
    # the means and 2500-3000 for the second moments, out of 40000 draws).
    z = gauss_run.samples  # (n, C, 2)
    mcse_check(z, MEAN)
    d = z - MEAN
    second = torch.stack([d[..., 0] ** 2, d[..., 1] ** 2, d[..., 0] * d[..., 1]], -1)  # (n, C, 3)
    mcse_check(second, torch.stack([COV[0, 0], COV[1, 1], COV[0, 1]]))


def test_gaussian_marginal_ks_against_scipy(gauss_run):
    # Thin to draws 3 integrated autocorrelation times apart (tau is about 22 steps here, so about
    # 580 draws remain), so the KS test's independence assumption roughly holds; p > 0.01 at this
    # fixed seed (over seeds 0-5 the p-values were 0.07-0.8).
    z = gauss_run.samples  # (n, C, 2)
    n, C, _ = z.shape
    tau = (n * C / effective_sample_size(z)).max().item()
    lag = 3 * math.ceil(tau)
    x = z[::lag, :, 1].reshape(-1).numpy()
    result = scipy.stats.kstest(x, scipy.stats.norm(loc=MEAN[1].item(), scale=SD[1].item()).cdf)
    assert len(x) > 500
    assert result.pvalue > 0.01


def test_log_prob_returned_matches_target(gauss_run):
    assert torch.allclose(
        gauss_run.log_prob, log_gauss_2d(gauss_run.samples), rtol=1e-12, atol=1e-12
    )


# ----------------------------------------------------------------------------- a bimodal target

W_RIGHT = 0.7  # mixture 0.3 N(-3, 1) + 0.7 N(3, 1)
LOG_W = torch.tensor([math.log(1 - W_RIGHT), math.log(W_RIGHT)], dtype=DTYPE)
MODES = torch.tensor([-3.0, 3.0], dtype=DTYPE)


def log_mixture(z):
    return torch.logsumexp(
        LOG_W - 0.5 * (z - MODES) ** 2, -1
    )  # z (C, 1) against MODES (2,): (C, 2) -> (C,)


def test_bimodal_modes_visited_in_proportion():
    g = gen(2)
    z0 = torch.full((8, 1), -3.0, dtype=DTYPE)  # every chain starts in the light mode
    run = metropolis_hastings(log_mixture, z0, 5000, 5.0, generator=g, burn_in=500)
    right = (run.samples > 0).to(DTYPE)  # (n, C, 1)
    # P(z > 0) exactly: each component contributes its mass above 0.
    p_right = (1 - W_RIGHT) * scipy.stats.norm.sf(0, loc=-3) + W_RIGHT * scipy.stats.norm.sf(
        0, loc=3
    )
    mcse_check(right, torch.tensor([p_right], dtype=DTYPE))
    per_chain = right.mean((0, 2))
    assert bool(((per_chain > 0.5) & (per_chain < 0.9)).all()), (
        per_chain
    )  # every chain crosses, often


def test_ess_flags_chains_stuck_in_different_modes():
    # With a small step, chains started in different modes of a well-separated mixture never cross.
    # Each chain alone looks well mixed, but the between-chain variance makes the multi-chain ESS
    # tiny.
    def log_far_mixture(z):
        x = z[..., 0:1]
        return torch.logsumexp(-0.5 * (x - torch.tensor([-6.0, 6.0], dtype=z.dtype)) ** 2, -1)

    z0 = torch.tensor([[-6.0], [-6.0], [6.0], [6.0]], dtype=DTYPE)
    run = metropolis_hastings(log_far_mixture, z0, 2000, 1.0, generator=gen(3))
    within = sum(effective_sample_size(run.samples[:, c]).item() for c in range(4))
    assert within > 500
    assert effective_sample_size(run.samples).item() < 20


# ----------------------------------------------------------------------------- acceptance rate


def test_acceptance_tends_to_one_for_tiny_steps_and_zero_for_huge_steps():
    z0 = torch.randn(16, 1, generator=gen(4), dtype=DTYPE)
    tiny = metropolis_hastings(log_std_normal, z0, 500, 1e-4, generator=gen(4))
    huge = metropolis_hastings(log_std_normal, z0, 500, 1e3, generator=gen(4))
    assert tiny.acceptance_rate.min().item() > 0.99
    assert huge.acceptance_rate.mean().item() < 0.01


@pytest.mark.parametrize("step", [0.5, 2.4, 6.0], ids=lambda s: f"step={s}")
def test_acceptance_rate_matches_closed_form_for_1d_normal(step):
    # In stationarity, random-walk Metropolis on N(0, 1) with proposal N(z, s^2) accepts with
    # probability E[min(1, exp(-(z'^2 - z^2)/2))] = (2/pi) arctan(2/s) (integrate over z ~ N(0,1),
    # z' - z ~ N(0, s^2)). s = 2.4 gives 0.442, the optimal ~0.44 of Gelman, Roberts & Gilks 1996.
    # Chains start in stationarity, so no burn-in is needed. The acceptance indicators are only
    # weakly correlated (across 20 seeds their mean varied by 1.2x the i.i.d. standard error), so 6
    # i.i.d. standard errors is about 5 true ones.
    C, n = 16, 4000
    z0 = torch.randn(C, 1, generator=gen(5), dtype=DTYPE)
    run = metropolis_hastings(log_std_normal, z0, n, step, generator=gen(5))
    p = 2 / math.pi * math.atan(2 / step)
    tol = 6 * math.sqrt(p * (1 - p) / (C * n))
    assert abs(run.acceptance_rate.mean().item() - p) < tol


# ----------------------------------------------------------------------------- support constraints


def test_proposals_with_minus_inf_are_rejected_uniform_target():
    # Uniform on [0, 1]: log_prob = 0 inside, -inf outside. Every proposal outside is rejected, and
    # the chain is exactly uniform: KS against scipy's uniform on thinned draws.
    def log_uniform(z):
        x = z[..., 0]
        inside = (x >= 0) & (x <= 1)
        return torch.where(inside, torch.zeros_like(x), torch.full_like(x, -math.inf))

    run = metropolis_hastings(
        log_uniform, torch.full((8, 1), 0.5, dtype=DTYPE), 4000, 0.5, generator=gen(6)
    )
    x = run.samples[:, :, 0]
    assert bool(((x >= 0) & (x <= 1)).all())
    assert scipy.stats.kstest(x[::10].reshape(-1).numpy(), "uniform").pvalue > 0.01


def test_proposals_with_nan_log_prob_are_rejected():
    # Half-normal written with sqrt, which returns NaN for negative z: those proposals must be
    # rejected.
    def log_half_normal(z):
        x = z[..., 0]
        return -0.5 * torch.sqrt(x) ** 4

    run = metropolis_hastings(
        log_half_normal, torch.ones(8, 1, dtype=DTYPE), 3000, 1.0, generator=gen(7)
    )
    assert bool((run.samples >= 0).all())
    assert torch.isfinite(run.log_prob).all()
    assert run.acceptance_rate.max().item() < 0.9


# ----------------------------------------------------------------------------- shapes, bookkeeping,
# dtypes


def test_single_chain_vector_start_and_burn_in_thin_bookkeeping():
    z0 = torch.zeros(3, dtype=DTYPE)
    full = metropolis_hastings(log_std_normal, z0, 101, 0.8, generator=gen(8))
    thinned = metropolis_hastings(
        log_std_normal, z0, 101, 0.8, generator=gen(8), burn_in=10, thin=7
    )
    assert isinstance(full, MCMCResult)
    assert full.samples.shape == (101, 1, 3) and full.log_prob.shape == (101, 1)
    assert thinned.samples.shape == (math.ceil((101 - 10) / 7), 1, 3)
    # Thinning does not change the random stream: the kept states are a slice of the full run.
    assert torch.equal(thinned.samples, full.samples[10::7])
    assert torch.equal(thinned.log_prob, full.log_prob[10::7])
    # The acceptance rate counts every step after burn-in: recover it from state changes.
    moved = (full.samples[1:] != full.samples[:-1]).any(-1)  # (100, 1)
    assert thinned.acceptance_rate.item() == pytest.approx(
        moved[9:].to(DTYPE).mean().item(), abs=1e-12
    )


def test_step_size_is_the_proposal_sd_per_dimension():
    # On a flat target every proposal is accepted, so each increment is step_size * eps exactly: the
    # increments' sd per dimension must equal step_size (4000 x 8 increments: relative standard
    # error of an sd is 1 / sqrt(2 * 32000) = 0.4%, so 2% is 5 standard errors).
    step = torch.tensor([0.1, 1.0, 10.0], dtype=DTYPE)
    run = metropolis_hastings(
        lambda z: torch.zeros(z.shape[0], dtype=z.dtype),
        torch.zeros(8, 3, dtype=DTYPE),
        4001,
        step,
        generator=gen(17),
    )
    assert bool((run.acceptance_rate == 1).all())
    increments = (run.samples[1:] - run.samples[:-1]).reshape(-1, 3)  # (4000 * 8, 3)
    assert torch.allclose(increments.std(0), step, rtol=0.02)
    # A (k,) tensor of equal steps is the same run as the scalar step.
    a = metropolis_hastings(
        log_std_normal,
        torch.zeros(2, 3, dtype=DTYPE),
        50,
        torch.full((3,), 0.7, dtype=DTYPE),
        generator=gen(18),
    )
    b = metropolis_hastings(
        log_std_normal, torch.zeros(2, 3, dtype=DTYPE), 50, 0.7, generator=gen(18)
    )
    assert torch.equal(a.samples, b.samples)


def test_float32_runs_in_float32():
    z0 = torch.zeros(16, 2, dtype=torch.float32)
    run = metropolis_hastings(log_std_normal, z0, 2000, 1.7, generator=gen(9), burn_in=200)
    assert run.samples.dtype == run.log_prob.dtype == run.acceptance_rate.dtype == torch.float32
    assert effective_sample_size(run.samples).dtype == torch.float32
    mcse_check(run.samples.double(), torch.zeros(2, dtype=DTYPE))


def test_same_seed_same_samples_different_seed_different_samples():
    z0 = torch.zeros(4, 2, dtype=DTYPE)
    a = metropolis_hastings(log_std_normal, z0, 200, 1.0, generator=gen(10))
    b = metropolis_hastings(log_std_normal, z0, 200, 1.0, generator=gen(10))
    c = metropolis_hastings(log_std_normal, z0, 200, 1.0, generator=gen(11))
    assert torch.equal(a.samples, b.samples) and torch.equal(a.acceptance_rate, b.acceptance_rate)
    assert not torch.equal(a.samples, c.samples)


# ----------------------------------------------------------------------------- ESS and
# autocorrelation


def ar1(rho, n, C, seed):
    """C stationary AR(1) chains x_t = rho x_{t-1} + sqrt(1 - rho^2) e_t, shape (n, C)."""
    g = gen(seed)
    e = torch.randn(n, C, generator=g, dtype=DTYPE).numpy()
    x_prev = torch.randn(
        C, generator=g, dtype=DTYPE
    ).numpy()  # x_{-1} ~ N(0, 1): stationary from the start
    x, _ = scipy.signal.lfilter(
        [math.sqrt(1 - rho**2)], [1.0, -rho], e, axis=0, zi=(rho * x_prev)[None, :]
    )
    return torch.from_numpy(x)


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9], ids=lambda r: f"rho={r}")
def test_ess_of_ar1_matches_integrated_autocorrelation_time(rho):
    # AR(1) has rho_t = rho^t, so tau = 1 + 2 sum_t rho^t = (1 + rho) / (1 - rho) and ESS = C n (1 -
    # rho) / (1 + rho). rho = 0 is i.i.d. normals, ESS = C n. The estimator's relative error is
    # largest for rho = 0.9, where the truncation lag is longest: over 10 seeds with 4 chains of
    # 10000 its sd was 7%, so we use 8 chains of 20000 (sd about 3.5%) and 15% is about 4 sds.
    n, C = 20000, 8
    x = ar1(rho, n, C, seed=12).unsqueeze(-1)  # (n, C, 1)
    expected = C * n * (1 - rho) / (1 + rho)
    assert effective_sample_size(x).item() == pytest.approx(expected, rel=0.15)


def test_ess_input_shapes():
    x = ar1(0.5, 2000, 3, seed=13)  # (n, C)
    one_chain = x[:, 0]
    scalar = effective_sample_size(one_chain)
    assert scalar.shape == ()
    assert torch.equal(
        effective_sample_size(one_chain.unsqueeze(-1)), scalar.reshape(1)
    )  # (n, 1): one chain, k = 1
    per_column = torch.stack([effective_sample_size(x[:, j]) for j in range(3)])
    assert torch.equal(effective_sample_size(x), per_column)  # (n, k): one chain, k dimensions
    assert effective_sample_size(x.unsqueeze(-1)).shape == (1,)  # (n, C, 1): C chains pooled


def test_autocorrelation_of_ar1_is_rho_to_the_lag():
    # Sample autocorrelation at lag t has standard error about sqrt((1 + rho^2) / (1 - rho^2) / n)
    # (Bartlett); with n = 40000 (4 chains of 10000 averaged) that is < 0.01 for rho = 0.6, so 0.03
    # is > 3 standard errors.
    rho = 0.6
    x = ar1(rho, 10000, 4, seed=14)  # (n, C)
    acf = autocorrelation(x).mean(1)  # (n,)
    assert acf[0].item() == pytest.approx(1.0, abs=1e-12)
    for t in range(1, 5):
        assert acf[t].item() == pytest.approx(rho**t, abs=0.03)


def ess_reference(x, monotone=True):
    """The documented ESS algorithm as a plain loop over one dimension, x (n, C) numpy, direct
    autocovariances."""
    n, C = x.shape
    xc = x - x.mean(0)
    acov = np.mean(
        [np.correlate(xc[:, c], xc[:, c], mode="full")[n - 1 :] / n for c in range(C)], 0
    )  # (n,)
    W = acov[0] * n / (n - 1)
    var_plus = W * (n - 1) / n + (x.mean(0).var(ddof=1) if C > 1 else 0.0)
    rho = 1 - (W - acov) / var_plus
    rho[0] = 1.0  # Stan's definition: rho_0 = 1, not the formula's 1 - W / (n var_plus)
    tau, smallest = -1.0, math.inf
    for m in range(n // 2):
        pair = rho[2 * m] + rho[2 * m + 1]
        if pair <= 0:  # initial positive sequence: stop at the first pair sum that is not positive
            break
        smallest = min(smallest, pair) if monotone else pair  # initial monotone sequence
        tau += 2 * smallest
    return C * n / max(tau, 1 / math.log10(C * n))


@pytest.mark.parametrize(
    "n, C, seed", [(40, 1, 20), (61, 3, 19), (200, 1, 23), (500, 4, 17)], ids=str
)
def test_ess_equals_plain_loop_reference(n, C, seed):
    # Two routes to the same number: the vectorised FFT version against a loop with direct sums.
    # Seeds picked (by a scan) so that the AR(1) pair sums are not monotone: the monotone step
    # matters.
    x = ar1(0.7, n, C, seed)  # (n, C)
    expected = ess_reference(x.numpy())
    assert effective_sample_size(x.unsqueeze(-1)).item() == pytest.approx(expected, rel=1e-10)
    assert ess_reference(x.numpy(), monotone=False) != pytest.approx(expected, rel=1e-3)


# Stan's ESS worked by hand (exact fractions) for two tiny inputs. In both the second pair sum is
# negative, so the sum stops after Gamma_0 = rho_0 + rho_1, and the even lag of that rejected pair
# is negative, so Stan's extra antithetic term (left out by vaelib) is 0 as well: these are Stan's
# own numbers. - one chain (3, 3, 2, 1, 0, 0): mean 3/2, acov_0 = 19/12, acov_1 = 23/24, W = acov_0
# * 6/5 = 19/10, var_plus = W * 5/6 = 19/12, rho_1 = 1 - (19/10 - 23/24) / (19/12) = 77/190; rho_2 +
# rho_3 = -151/190 < 0. tau = -1 + 2 (1 + 77/190) = 172/95, ESS = 6 * 95/172 = 285/86. - two chains
# (2, 0, 0, 1, 2, 1), (1, 1, 3, 3, 1, 1): chain means 1 and 5/3, so var(means) = 2/9; mean acov_0 =
# 7/9, mean acov_1 = 2/27, W = 14/15, var_plus = 7/9 + 2/9 = 1, rho_1 = 1 - (14/15 - 2/27) = 19/135;
# rho_2 + rho_3 = -283/540 < 0. tau = -1 + 2 (1 + 19/135) = 173/135, ESS = 12 * 135/173 = 1620/173.
# With rho_0 = 1 - W / (n var_plus) instead of 1 (4/5 and 38/45 here) the ESS would be 285/67 and
# 1620/131.
@pytest.mark.parametrize(
    "chains, expected",
    [([[3, 3, 2, 1, 0, 0]], 285 / 86), ([[2, 0, 0, 1, 2, 1], [1, 1, 3, 3, 1, 1]], 1620 / 173)],
    ids=["one-chain", "two-chains"],
)
def test_ess_matches_stan_formula_by_hand(chains, expected):
    x = torch.tensor(chains, dtype=DTYPE).T.unsqueeze(-1)  # (n, C, 1)
    assert effective_sample_size(x).item() == pytest.approx(expected, rel=1e-12)


def test_autocorrelation_fft_equals_direct_sum():
    x = torch.randn(
        257, 3, generator=gen(15), dtype=DTYPE
    )  # odd length: padding must not wrap around
    xc = (x - x.mean(0)).numpy()
    direct = np.stack(
        [np.correlate(xc[:, j], xc[:, j], mode="full")[256:] for j in range(3)], -1
    )  # (n, 3)
    direct = direct / direct[0]
    assert np.allclose(autocorrelation(x).numpy(), direct, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- bad input


def test_z0_integer_dtype_raises_type_error():
    with pytest.raises(TypeError, match="z0 must be a floating-point tensor"):
        metropolis_hastings(log_std_normal, torch.zeros(2, 3, dtype=torch.int64), 10, 1.0)


BAD_INPUT = {
    "nan-z0": (dict(z0=torch.tensor([[0.0, math.nan]], dtype=DTYPE)), "z0 contains NaN"),
    "z0-3d": (dict(z0=torch.zeros(2, 2, 2, dtype=DTYPE)), r"z0 must have shape \(C, k\)"),
    "n_steps-0": (dict(n_steps=0), "n_steps must be >= 1"),
    "negative-step": (dict(step_size=-0.5), "step_size must be a finite positive number"),
    "zero-step": (dict(step_size=0.0), "step_size must be a finite positive number"),
    "negative-step-vector": (
        dict(step_size=torch.tensor([1.0, -1.0], dtype=DTYPE)),
        "step_size must be positive",
    ),
    "step-wrong-shape": (
        dict(step_size=torch.ones(3, dtype=DTYPE)),
        r"step_size .* shape \(k,\) = \(2,\)",
    ),
    "burn_in-too-big": (dict(burn_in=10), "burn_in must be < n_steps"),
    "burn_in-negative": (dict(burn_in=-1), "burn_in must be >= 0"),
    "thin-0": (dict(thin=0), "thin must be >= 1"),
    "log_prob-wrong-shape": (
        dict(log_prob=lambda z: -0.5 * z**2),
        r"log_prob must map .* to shape \(4,\)",
    ),
    "log_prob-minus-inf": (
        dict(log_prob=lambda z: torch.where(z[:, 0] > 0, 0.0, -math.inf).to(z.dtype)),
        "start each chain where log_prob is finite",
    ),
    "log_prob-nan": (
        dict(log_prob=lambda z: torch.full((z.shape[0],), math.nan, dtype=z.dtype)),
        "log_prob.z0. is nan .*start each chain",
    ),
}


@pytest.mark.parametrize("kwargs, match", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_raises_value_error_naming_the_argument(kwargs, match):
    args = dict(
        log_prob=log_std_normal, z0=torch.zeros(4, 2, dtype=DTYPE), n_steps=10, step_size=1.0
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        metropolis_hastings(**args)


def test_bad_types_raise_type_error():
    z0 = torch.zeros(4, 2, dtype=DTYPE)
    with pytest.raises(TypeError, match="log_prob must be a callable"):
        metropolis_hastings("not a function", z0, 10, 1.0)
    with pytest.raises(TypeError, match="n_steps must be an int"):
        metropolis_hastings(log_std_normal, z0, 10.0, 1.0)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        metropolis_hastings(log_std_normal, z0, 10, 1.0, generator=0)


@pytest.mark.parametrize(
    "samples, match",
    [
        (torch.zeros(10, 2, 2, 2, dtype=DTYPE), r"samples must have shape \(n, C, k\)"),
        (torch.zeros(3, 2, dtype=DTYPE), "at least 4 draws"),
        (torch.tensor([0.0, 1.0, math.inf, 2.0], dtype=DTYPE), "samples contains inf"),
    ],
    ids=["4d", "too-short", "inf"],
)
def test_ess_bad_input(samples, match):
    with pytest.raises(ValueError, match=match):
        effective_sample_size(samples)


# ---- issue 14: half precision is refused by name (torch's FFT has no CPU half kernel) ----
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_is_refused(dtype):
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0)).to(dtype)
    msg = (
        rf"must be a floating-point tensor \(float32 or float64\), got dtype {dtype}.*half "
        rf"precision"
    )
    with pytest.raises(TypeError, match="x " + msg):
        autocorrelation(x)
    with pytest.raises(TypeError, match="samples " + msg):
        effective_sample_size(x)
    with pytest.raises(TypeError, match="z0 " + msg):
        metropolis_hastings(lambda z: -(z.float() ** 2).sum(-1), x[0], 10, 0.5)
