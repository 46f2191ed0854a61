"""Random-walk Metropolis-Hastings and the diagnostics that go with it.

A sampler that needs only an unnormalised log-density, the alternative to a variational q that
notebook 05 compares against. Shapes: `z` is (C, k) for C independent chains in k dimensions, run
side by side; samples come back as (n, C, k), draws first. Works in float32 and float64.

    metropolis_hastings    random-walk Metropolis with a Gaussian proposal, vectorised over chains
    autocorrelation        normalised autocorrelation along the first dimension, by FFT
    effective_sample_size  multi-chain ESS with Geyer's initial monotone sequence (as in Stan)
"""

import math
from typing import NamedTuple

import torch

from vaelib import _validate


class MCMCResult(NamedTuple):
    """What `metropolis_hastings` returns.

    samples: (n_kept, C, k) the kept states, draws first.
    log_prob: (n_kept, C) log_prob at each kept state (no need to evaluate it again).
    acceptance_rate: (C,) fraction of accepted proposals per chain, over the steps after burn-in.
    """

    samples: torch.Tensor
    log_prob: torch.Tensor
    acceptance_rate: torch.Tensor


def _step_size(step_size, k, like):
    """Return step_size as a scalar float or a (k,) tensor with the dtype and device of `like`."""
    if isinstance(step_size, torch.Tensor) and step_size.numel() != 1:
        _validate.tensor("step_size", step_size)
        if tuple(step_size.shape) != (k,):
            raise ValueError(
                f"step_size must be a positive number or a tensor of shape (k,) = ({k},), "
                f"got shape {tuple(step_size.shape)}"
            )
        if not bool((step_size > 0).all()):
            raise ValueError(
                f"step_size must be positive in every dimension, got {step_size.tolist()}"
            )
        return step_size.to(dtype=like.dtype, device=like.device)
    return _validate.positive_scalar("step_size", step_size)


@torch.no_grad()
def metropolis_hastings(log_prob, z0, n_steps, step_size, generator=None, burn_in=0, thin=1):
    """Random-walk Metropolis sampling from an unnormalised density, C chains at once.

    z' = z + step_size * eps, eps ~ N(0, I);  accept with probability min(1, exp(log_prob(z') -
    log_prob(z)))

    The proposal is symmetric, so the Hastings ratio q(z | z') / q(z' | z) is 1 and only the target
    ratio remains; the test is made in log space (log u < log_prob(z') - log_prob(z), u ~ U(0, 1)).
    A proposal whose log_prob is NaN or -inf is rejected. Each of the n_steps transitions produces
    one state (z0 itself is not returned); the states after the first `burn_in` are kept, every
    `thin`-th. Metropolis et al. 1953; Hastings 1970 (symmetric-proposal case).

    Args:
        log_prob: callable mapping (C, k) states to (C,) log-densities; a normalising constant may
            be missing.
        z0: (C, k) starting states of C independent chains, or (k,) for one chain. float32 or
            float64. Each must have a finite log_prob.
        n_steps: int >= 1, number of transitions per chain, burn-in included.
        step_size: positive number, or (k,) tensor of positive per-dimension proposal standard
            deviations.
        generator: optional torch.Generator for reproducible runs.
        burn_in: int in [0, n_steps), number of initial states discarded.
        thin: int >= 1, keep every `thin`-th state after burn-in.
    Returns:
        MCMCResult(samples (n_kept, C, k), log_prob (n_kept, C), acceptance_rate (C,)),
        with n_kept = ceil((n_steps - burn_in) / thin); a (k,) z0 gives C = 1.
    """
    if not callable(log_prob):
        raise TypeError(
            "log_prob must be a callable mapping (C, k) states to (C,), got "
            f"{type(log_prob).__name__}"
        )
    _validate.tensor("z0", z0, min_dim=1)
    if z0.dim() > 2:
        raise ValueError(f"z0 must have shape (C, k) or (k,), got {tuple(z0.shape)}")
    _validate.count("n_steps", n_steps)
    _validate.count("burn_in", burn_in, minimum=0)
    if burn_in >= n_steps:
        raise ValueError(
            f"burn_in must be < n_steps = {n_steps} so that some states are kept, got {burn_in}"
        )
    _validate.count("thin", thin)
    _validate.generator("generator", generator)
    z = z0.reshape(1, -1) if z0.dim() == 1 else z0  # (C, k)
    C, k = z.shape
    step = _step_size(step_size, k, z)

    lp = log_prob(z)
    if not isinstance(lp, torch.Tensor) or tuple(lp.shape) != (C,):
        got = f"shape {tuple(lp.shape)}" if isinstance(lp, torch.Tensor) else type(lp).__name__
        raise ValueError(f"log_prob must map z of shape ({C}, {k}) to shape ({C},), got {got}")
    lp = lp.to(z.dtype)
    bad = ~torch.isfinite(lp)
    if bool(bad.any()):
        chains = torch.nonzero(bad).flatten().tolist()
        raise ValueError(
            f"log_prob(z0) is {lp[bad][0].item()} for chain(s) {chains}; start each chain where "
            f"log_prob is finite"
        )

    n_kept = len(range(burn_in, n_steps, thin))
    samples = z.new_empty((n_kept, C, k))
    log_probs = z.new_empty((n_kept, C))
    n_accepted = torch.zeros(C, dtype=z.dtype, device=z.device)
    for t in range(n_steps):
        eps = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)  # (C, k)
        z_prop = z + step * eps
        lp_prop = log_prob(z_prop).to(z.dtype)
        log_u = torch.log(torch.rand(C, generator=generator, dtype=z.dtype, device=z.device))
        accept = (
            log_u < lp_prop - lp
        )  # False when lp_prop is NaN or -inf: such proposals are rejected
        z = torch.where(accept.unsqueeze(-1), z_prop, z)
        lp = torch.where(accept, lp_prop, lp)
        if t >= burn_in:
            n_accepted += accept
            if (t - burn_in) % thin == 0:
                i = (t - burn_in) // thin
                samples[i] = z
                log_probs[i] = lp
    return MCMCResult(samples, log_probs, n_accepted / (n_steps - burn_in))


def _autocovariance(x):
    """Biased autocovariance along dim 0 by FFT: acov_t = 1/n sum_{s < n - t} (x_s - xbar)(x_{s+t} -
    xbar)."""
    n = x.shape[0]
    x = x - x.mean(0)
    n_fft = 2 ** math.ceil(
        math.log2(2 * n)
    )  # zero-pad to >= 2n so the circular correlation does not wrap
    f = torch.fft.rfft(x, n=n_fft, dim=0)
    return torch.fft.irfft(f * f.conj(), n=n_fft, dim=0)[:n] / n  # (n, ...)


def autocorrelation(x):
    """Normalised autocorrelation of a sequence along its first dimension, computed by FFT.

    rho_t = sum_{s < n - t} (x_s - xbar)(x_{s+t} - xbar) / sum_s (x_s - xbar)^2,  so rho_0 = 1

    Uses the biased (divide-by-n) estimator, the usual choice: it is positive semi-definite and
    shrinks the noisy long lags. A constant sequence has no autocorrelation and gives NaN.

    Args:
        x: (n, ...) sequence with n >= 2, e.g. samples (n, C, k) from one or many chains.
    Returns:
        (n, ...) autocorrelation at lags 0 .. n - 1, separately for every trailing index.
    """
    _validate.nonempty("x", _validate.tensor("x", x, min_dim=1))
    if x.shape[0] < 2:
        raise ValueError(f"x must have at least 2 entries along dim 0, got shape {tuple(x.shape)}")
    x = _validate.unit_scale(x, 0)  # exact rescaling: squares of huge values would overflow
    acov = _autocovariance(x)
    return acov / acov[0]


def effective_sample_size(samples):
    """Effective sample size of MCMC draws, summed over chains, for each dimension.

    ESS = C n / tau,  tau = -1 + 2 sum_{m=0}^{M} (rho_{2m} + rho_{2m+1})   (integrated
    autocorrelation time)

    The multi-chain estimator of Stan (Gelman et al. 2013, BDA3 section 11.5; Vehtari et al. 2021),
    without rank-normalisation or splitting chains in half. Per-chain autocovariances acov_t (by
    FFT) are averaged over chains and combined with the between-chain variance:
    rho_t = 1 - (W - mean_c acov_t) / var_plus for t >= 1 and rho_0 = 1, with W the mean
    within-chain variance and var_plus = W (n - 1) / n + var(chain means), so chains stuck in
    different modes get a small ESS. The sum is truncated by Geyer's initial positive sequence (stop
    before the first pair sum rho_{2m} + rho_{2m+1} that is not positive) and the pair sums are made
    non-increasing (initial monotone sequence), Geyer 1992. As in Stan, tau is floored at 1 /
    log10(C n); Stan's extra term for antithetic chains (the positive even lag of the first rejected
    pair) is left out. Constant samples give NaN.

    Args:
        samples: (n, C, k) draws from C chains, or (n, k) from one chain, or (n,) for one scalar
            chain; n >= 4.
    Returns:
        (k,) ESS per dimension, or a 0-dim tensor for (n,) input.
    """
    _validate.nonempty("samples", _validate.tensor("samples", samples, min_dim=1))
    if samples.dim() > 3:
        raise ValueError(
            f"samples must have shape (n, C, k), (n, k) or (n,), got {tuple(samples.shape)}"
        )
    n = samples.shape[0]
    if n < 4:
        raise ValueError(
            f"samples must hold at least 4 draws along dim 0, got shape {tuple(samples.shape)}"
        )
    samples = _validate.unit_scale(
        samples, tuple(range(samples.dim() - 1)) or 0
    )  # exact, ESS is scale-free
    x = samples.reshape(n, 1, -1) if samples.dim() < 3 else samples  # (n, C, k)
    C = x.shape[1]

    acov = _autocovariance(x).mean(1)  # (n, k) averaged over chains
    W = acov[0] * n / (n - 1)  # mean within-chain variance (unbiased per chain)
    B_over_n = x.mean(0).var(0) if C > 1 else torch.zeros_like(W)  # variance of the chain means
    var_plus = W * (n - 1) / n + B_over_n
    rho = 1 - (W - acov) / var_plus  # (n, k)
    # Stan sets rho_0 = 1 exactly: the formula above gives 1 - W / (n var_plus) at lag 0, not 1,
    # because acov_0 is the biased (divide-by-n) variance while W is the unbiased one.
    rho[0] = 1.0  # (constant samples still give NaN: rho_1 is 0 / 0)

    M = n // 2
    pairs = rho[0 : 2 * M : 2] + rho[1 : 2 * M : 2]  # (M, k) Gamma_m = rho_2m + rho_2m+1
    initial_positive = torch.cumprod((pairs > 0).to(x.dtype), 0)  # 1 up to the first pair sum <= 0
    monotone = torch.cummin(pairs, 0).values  # Gamma_m <- min(Gamma_0 .. Gamma_m)
    tau = -1 + 2 * (monotone * initial_positive).sum(0)  # (k,)
    tau = torch.clamp(tau, min=1 / math.log10(C * n))
    ess = C * n / tau
    return ess.reshape(()) if samples.dim() == 1 else ess
