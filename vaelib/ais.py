"""Annealed importance sampling, its reverse for bidirectional Monte Carlo, and importance-weight
diagnostics.

AIS (Neal 2001) moves S chains per example along the geometric path between an initial distribution
p0(z) = N(mu, diag exp(logvar)) (mu = logvar = 0 gives the prior N(0, I)) and the unnormalised
posterior:

    f_t(z) = log p0(z) + beta_t [log p(x, z) - log p0(z)],   0 = beta_0 < beta_1 <= ... <= beta_T =
    1,

    log w = sum_{t=1}^{T} (beta_t - beta_{t-1}) [log p(x, z_{t-1}) - log p0(z_{t-1})],

where z_0 ~ p0 and z_t comes from a transition (HMC or random-walk Metropolis) that leaves f_t
invariant. E[w] = p(x) exactly, so log p_hat = log mean_s w_s is a stochastic lower bound (Jensen).
Reverse AIS runs the same transitions from beta = 1 down to 0, starting from an exact posterior
sample; its weights estimate 1/p(x) without bias, which makes -log mean_s w_s a stochastic upper
bound (Grosse, Ghahramani & Adams 2015).

Shapes: z is (S, B, k), S chains for each of B examples; `log_joint(z)` maps (S', B, k) to log p(x,
    z) of
shape (S', B) for any number of chains S' (for a VAE: `lambda z: model.log_joint(x, z)`). `logvar`
is log sigma^2. Diagnostics of a set of log-weights (S, B): `importance_ess` and PSIS's Pareto k_hat
(`pareto_khat`, `gpd_fit`).

(Longer than most modules: forward AIS, its reverse and the weight diagnostics share the
transitions and the checks of their arguments.)
"""

import math
from typing import NamedTuple

import torch

from vaelib import _validate
from vaelib.distributions import _log_normal, _sample_normal
from vaelib.estimators import _estimate
from vaelib.mcmc import metropolis_hastings

TRANSITIONS = ("hmc", "metropolis")


class AISResult(NamedTuple):
    """What `ais` and `reverse_ais` return.

    log_px: (B,) the estimate of log p(x): a lower bound in expectation (forward), an upper bound
        (reverse).
    stderr: (B,) its delta-method standard error, std(w / mean w) / sqrt(S).
    log_w: (S, B) log-weights (reverse: the weights of 1 / p(x), so log_px = -log_mean_exp(log_w)).
    acceptance_rate: (T - 1, B) fraction of proposals accepted at each intermediate temperature.
    step_size: (T - 1, B) the step size used at each intermediate temperature (pass it to
        `reverse_ais`).
    z: (S, B, k) the final states.
    """

    log_px: torch.Tensor
    stderr: torch.Tensor
    log_w: torch.Tensor
    acceptance_rate: torch.Tensor
    step_size: torch.Tensor
    z: torch.Tensor


def linear_schedule(n_temps):
    """beta_t = t / T for t = 0..T.  Returns a (T + 1,) float64 tensor."""
    _validate.count("n_temps", n_temps)
    return torch.linspace(0.0, 1.0, n_temps + 1, dtype=torch.float64)


def sigmoid_schedule(n_temps, rad=4.0):
    """The sigmoidal schedule of Grosse, Maddison & Salakhutdinov (2013), used by Wu et al. (2017).

    beta~_t = sigmoid(rad (2t / T - 1)),  beta_t = (beta~_t - beta~_0) / (beta~_T - beta~_0),  t =
    0..T:
    dense near both ends of the path, where f_t changes fastest. Returns a (T + 1,) float64 tensor.
    """
    _validate.count("n_temps", n_temps)
    rad = _validate.positive_scalar("rad", rad)
    s = torch.sigmoid(rad * torch.linspace(-1.0, 1.0, n_temps + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])


def _check_betas(betas):
    _validate.tensor("betas", betas, min_dim=1)
    if betas.dim() != 1 or betas.shape[0] < 2:
        raise ValueError(f"betas must have shape (T + 1,) with T >= 1, got {tuple(betas.shape)}")
    if (
        float(betas[0]) != 0.0
        or float(betas[-1]) != 1.0
        or not bool((betas[1:] >= betas[:-1]).all())
    ):
        raise ValueError(f"betas must rise from 0 to 1 without decreasing, got {betas.tolist()}")
    return betas.to(torch.float64)


def _check_common(log_joint, mu, logvar, transition, n_leapfrog, generator):
    _validate.function("log_joint", log_joint, "z (S, B, k) -> log p(x, z) (S, B)")
    _validate.tensor("mu", mu, min_dim=2)
    _validate.tensor("logvar", logvar, min_dim=2)
    if mu.dim() != 2 or mu.shape != logvar.shape:
        raise ValueError(
            f"mu and logvar must both have shape (B, k), got {tuple(mu.shape)} and "
            f"{tuple(logvar.shape)}"
        )
    _validate.sampleable_logvar("logvar", logvar)
    if transition not in TRANSITIONS:
        raise ValueError(f"transition must be one of {TRANSITIONS}, got {transition!r}")
    _validate.count("n_leapfrog", n_leapfrog)
    _validate.generator("generator", generator)


def _log_parts(log_joint, z, mu, logvar):
    """(log p(x, z), log p0(z)), each (S, B), checking what log_joint returns."""
    log_pxz = log_joint(z)
    if not isinstance(log_pxz, torch.Tensor) or log_pxz.shape != z.shape[:-1]:
        got = tuple(log_pxz.shape) if isinstance(log_pxz, torch.Tensor) else type(log_pxz).__name__
        raise ValueError(
            f"log_joint(z) must return shape {tuple(z.shape[:-1])} for z {tuple(z.shape)}, got "
            f"{got}"
        )
    return log_pxz.to(z.dtype), _log_normal(z, mu, logvar)


def _hmc(log_joint, z, beta, mu, logvar, step, n_leapfrog, generator):
    """One HMC transition per chain leaving f_beta invariant; returns (z, log p(x, z), accepted (S,
    B) bool).

    Leapfrog in the coordinates u = z / sigma0 (sigma0 = exp(logvar / 2), a fixed diagonal mass
    matrix diag(sigma0^-2)): with e = step * sigma0, r ~ N(0, I),  r += e/2 grad f;  z += e r;  r +=
    e/2 grad f. Accept with probability min(1, exp(H0 - H1)), H = -f_beta(z) + |r|^2 / 2 (Neal 2011,
    "MCMC using Hamiltonian dynamics", section 5.3.3.4 for the mass matrix).
    """

    def value_and_grad(z):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            log_pxz, log_p0 = _log_parts(log_joint, z, mu, logvar)
            f = log_p0 + beta * (log_pxz - log_p0)  # (S, B)
            (grad,) = torch.autograd.grad(f.sum(), z)
        return f.detach(), log_pxz.detach(), grad

    e = step.unsqueeze(-1) * torch.exp(0.5 * logvar)  # (B, k) per-dimension step
    f0, log_pxz0, grad = value_and_grad(z)
    r0 = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)  # (S, B, k)
    z1, r = z, r0 + 0.5 * e * grad
    for i in range(n_leapfrog):
        z1 = z1 + e * r
        f1, log_pxz1, grad = value_and_grad(z1)
        r = (
            r + (e if i < n_leapfrog - 1 else 0.5 * e) * grad
        )  # full momentum steps inside, a half step at the end
    log_accept = (f1 - 0.5 * (r**2).sum(-1)) - (f0 - 0.5 * (r0**2).sum(-1))  # H0 - H1
    log_u = torch.log(
        torch.rand(log_accept.shape, generator=generator, dtype=z.dtype, device=z.device)
    )
    accept = log_u < log_accept  # False for NaN or -inf: such trajectories are rejected
    z = torch.where(accept.unsqueeze(-1), z1, z)
    return z, torch.where(accept, log_pxz1, log_pxz0), accept


def _metropolis(log_joint, z, beta, mu, logvar, step, generator):
    """One random-walk Metropolis step z' = z + step sigma0 eps leaving f_beta invariant, by
    mcmc.metropolis_hastings.

    Run on u = z / (step sigma0) with unit step: a fixed linear change of variables (its Jacobian
    cancels in the acceptance ratio). Returns (z, log p(x, z), accepted (S, B) bool).
    """
    S, B, k = z.shape
    scale = step.unsqueeze(-1) * torch.exp(0.5 * logvar)  # (B, k)

    def log_f(u):  # (S * B, k) -> (S * B,)
        zz = u.reshape(S, B, k) * scale
        log_pxz, log_p0 = _log_parts(log_joint, zz, mu, logvar)
        return (log_p0 + beta * (log_pxz - log_p0)).reshape(-1)

    u = metropolis_hastings(log_f, (z / scale).reshape(S * B, k), 1, 1.0, generator=generator)
    z_new = u.samples[0].reshape(S, B, k) * scale
    accept = u.acceptance_rate.reshape(S, B) > 0
    return z_new, _log_parts(log_joint, z_new, mu, logvar)[0], accept


def _step(step_size, mu, rows=None):
    """step_size (a positive number, a (B,) tensor, or with rows a (rows, B) tensor) as (B,), or
    (rows, B), like mu."""
    shape = (mu.shape[0],) if rows is None else (rows, mu.shape[0])
    if isinstance(step_size, torch.Tensor) and step_size.dim() > 0:
        _validate.tensor("step_size", step_size)
        if tuple(step_size.shape) not in (shape, shape[-1:]) or not bool((step_size > 0).all()):
            raise ValueError(
                f"step_size must be a positive number or a positive tensor of shape {shape} or "
                f"{shape[-1:]}, got shape {tuple(step_size.shape)}"
            )
        return step_size.to(mu.dtype).expand(shape)
    return torch.full(
        shape, _validate.positive_scalar("step_size", step_size), dtype=mu.dtype, device=mu.device
    )


def _anneal(
    log_joint,
    z,
    betas,
    mu,
    logvar,
    steps,
    transition,
    n_leapfrog,
    generator,
    n_weighted,
    target_accept,
):
    """Run the transitions along `betas` (in the order given); returns (log_w (S, B), accept (T-1,
    B), steps (T-1, B), z).

    steps: (T - 1, B) one step size per intermediate temperature; or, with target_accept set, (B,)
        the first
    step, after which the first `n_weighted` chains are weighted and the rest are adaptation chains:
    their acceptance at temperature t sets the step at t + 1 (log step += acceptance -
    target_accept, per example). The weighted chains never influence the step sizes, so given the
    adaptation chains every kernel is fixed and each weight stays exactly unbiased. Adapting from
    the weighted chains' own past would not be: the kernel at t would depend on z_{t-1} through the
    acceptances, a state-dependent mixture of f_t-invariant kernels, which in general is not
    f_t-invariant (the bias is small but nonzero).
    """
    log_pxz, log_p0 = _log_parts(log_joint, z, mu, logvar)
    log_w = torch.zeros_like(log_pxz)
    used, rates = [], []
    step = steps if target_accept is not None else None
    for t in range(1, len(betas)):
        log_w = log_w + (betas[t] - betas[t - 1]) * (log_pxz - log_p0)
        if t == len(betas) - 1:
            break
        if target_accept is None:
            step = steps[t - 1]
        used.append(step)
        if transition == "hmc":
            z, log_pxz, accept = _hmc(
                log_joint, z, float(betas[t]), mu, logvar, step, n_leapfrog, generator
            )
        else:
            z, log_pxz, accept = _metropolis(
                log_joint, z, float(betas[t]), mu, logvar, step, generator
            )
        log_p0 = _log_normal(z, mu, logvar)
        accept = accept.to(z.dtype)
        rates.append(accept[:n_weighted].mean(0))
        if target_accept is not None and z.shape[0] > n_weighted:
            step = step * torch.exp(accept[n_weighted:].mean(0) - target_accept)
    rates, used = (
        torch.stack(xs) if xs else z.new_empty((0, z.shape[1])) for xs in (rates, used)
    )  # (T - 1, B)
    return log_w[:n_weighted], rates, used, z[:n_weighted]


@torch.no_grad()
def ais(
    log_joint,
    mu,
    logvar,
    n_chains,
    betas,
    *,
    transition="hmc",
    n_leapfrog=10,
    step_size=0.1,
    target_accept=None,
    adapt_chains=16,
    generator=None,
):
    """Annealed importance sampling estimate of log p(x) from p0 = N(mu, diag exp(logvar)) (Neal
    2001, eq. 3-5).

    log p_hat(x) = log (1/S) sum_s w_s,  log w_s = sum_t (beta_t - beta_{t-1}) [log p(x, z_{t-1}) -
    log p0(z_{t-1})]. E[w_s] = p(x), so E[log p_hat] <= log p(x); with T = 1 it is importance
    sampling from p0.

    Args:
        log_joint: callable z (S', B, k) -> log p(x, z) (S', B), differentiable in z for HMC.
        mu, logvar: (B, k) the initial distribution p0 (zeros: the prior N(0, I); or q(z|x) from an
            encoder).
        n_chains: S >= 1 weighted chains per example.
        betas: (T + 1,) schedule from 0 to 1, e.g. `sigmoid_schedule(T)`.
        transition: "hmc" (n_leapfrog leapfrog steps per temperature) or "metropolis" (one
            proposal).
        step_size: initial step, relative to p0's standard deviation: a number or a (B,) tensor.
        target_accept: acceptance rate the step adapts toward (default 0.65 for HMC, 0.3 for
            Metropolis).
        adapt_chains: extra unweighted chains per example that drive the adaptation; 0 keeps
            step_size fixed.
        generator: optional torch.Generator.
    Returns:
        AISResult (see its docstring), log_px (B,) in nats.
    """
    _check_common(log_joint, mu, logvar, transition, n_leapfrog, generator)
    _validate.count("n_chains", n_chains)
    _validate.count("adapt_chains", adapt_chains, minimum=0)
    betas = _check_betas(betas)
    step = _step(step_size, mu)
    if target_accept is None:
        target_accept = 0.65 if transition == "hmc" else 0.3
    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"target_accept must lie in (0, 1), got {target_accept!r}")
    z = _sample_normal(
        mu, logvar, n_chains, generator
    )  # (S, B, k), drawn first: T = 1 is importance sampling
    # The step adapts from A extra chains whose weights are dropped: adapting from the weighted
    # chains' own acceptances would make each kernel depend on their states and bias the weights
    # (see _anneal).
    if adapt_chains and len(betas) > 2:
        z = torch.cat([z, _sample_normal(mu, logvar, adapt_chains, generator)])  # (S + A, B, k)
    log_w, rates, steps, z = _anneal(
        log_joint,
        z,
        betas,
        mu,
        logvar,
        step,
        transition,
        n_leapfrog,
        generator,
        n_chains,
        target_accept,
    )
    est = _estimate(log_w)
    return AISResult(est.log_px, est.stderr, log_w, rates, steps, z)


@torch.no_grad()
def reverse_ais(
    log_joint,
    z_exact,
    mu,
    logvar,
    betas,
    *,
    n_chains=None,
    transition="hmc",
    n_leapfrog=10,
    step_size=0.1,
    generator=None,
):
    """Reverse AIS: a stochastic upper bound on log p(x) from exact posterior samples (Grosse et al.
    2015, sec. 4).

    The chains start at z_T = z_exact ~ p(z | x) and run the transitions from beta = 1 down to 0:
    log w_s = sum_t (beta_{t-1} - beta_t) [log p(x, z_t) - log p0(z_t)],  E[w_s] = 1 / p(x),
    log p_hat_up = -log (1/S) sum_s w_s  >=  log p(x) in expectation (Jensen).

    Valid only when every chain starts from an exact draw of p(z | x) under the same model that
    log_joint
    computes: on data simulated from the model, (x, z) ~ p(z) p(x | z), the z that generated x is
        such a draw
    (Wu et al. 2017); all chains of one example may share it. From an approximate sample (q, or a
    forward AIS end state) on real data the result is no bound at all. The step sizes must not
    depend on these chains:
    pass a number or the forward run's `step_size` (T - 1, B); there is no adaptation here.

    Args:
        log_joint: callable z (S', B, k) -> log p(x, z) (S', B).
        z_exact: (B, k) one exact posterior sample per example (used by all S chains) or (S, B, k).
        mu, logvar: (B, k) the distribution p0 at beta = 0.
        betas: (T + 1,) the schedule from 0 to 1 (run backwards).
        n_chains: S, needed when z_exact is (B, k) (default 1); must match z_exact's S otherwise.
        transition, n_leapfrog, generator: as in `ais`.
        step_size: a number, a (B,) tensor, or a (T - 1, B) tensor with one step per intermediate
            temperature.
    Returns:
        AISResult with log_px (B,) the upper bound, stderr (B,), log_w (S, B) the reverse
        log-weights.
    """
    _check_common(log_joint, mu, logvar, transition, n_leapfrog, generator)
    betas = _check_betas(betas)
    B, k = mu.shape
    _validate.tensor("z_exact", z_exact, min_dim=2)
    if z_exact.dim() == 2 and tuple(z_exact.shape) == (B, k):
        z = z_exact.to(mu.dtype).expand(
            _validate.count("n_chains", 1 if n_chains is None else n_chains), B, k
        )
    elif (
        z_exact.dim() == 3
        and tuple(z_exact.shape[1:]) == (B, k)
        and n_chains in (None, z_exact.shape[0])
    ):
        z = z_exact.to(mu.dtype)
    else:
        raise ValueError(
            f"z_exact must have shape (B, k) = ({B}, {k}) or (S, B, k) with S = n_chains = "
            f"{n_chains}, "
            f"got {tuple(z_exact.shape)}"
        )
    steps = _step(step_size, mu, rows=len(betas) - 2)  # (T - 1, B)
    # Reversed path: betas 1 -> 0, and the intermediate temperature T - 1 - i uses step T - 1 - i,
    # so row i of the reversed steps; _anneal's increments (beta_t - beta_{t-1}) then come out as
    # the reverse weights.
    log_w, rates, _, z = _anneal(
        log_joint,
        z,
        betas.flip(0),
        mu,
        logvar,
        steps.flip(0),
        transition,
        n_leapfrog,
        generator,
        z.shape[0],
        None,
    )
    est = _estimate(log_w)
    return AISResult(-est.log_px, est.stderr, log_w, rates.flip(0), steps, z)


# ----------------------------------------------------------------------------- importance-weight
# diagnostics


def _check_log_w(log_w):
    _validate.tensor("log_w", log_w, min_dim=1, finite=False)
    if bool(torch.isnan(log_w).any()) or bool((log_w == math.inf).any()):
        raise ValueError(f"log_w must not contain NaN or +inf (shape {tuple(log_w.shape)})")
    if bool((log_w == -math.inf).all(0).any()):
        raise ValueError("log_w has an example whose weights are all zero (-inf)")
    return log_w


def importance_ess(log_w):
    """Effective sample size of self-normalised importance weights (Kong 1992; Owen 2013, eq. 9.13).

    ESS = 1 / sum_s w~_s^2 = (sum_s w_s)^2 / sum_s w_s^2,  in log space: exp(2 logsumexp(log_w) -
    logsumexp(2 log_w)).

    Args:
        log_w: (S, ...) log-weights, S on the first dimension; -inf (weight 0) allowed.
    Returns:
        (...) ESS in [1, S].
    """
    _check_log_w(log_w)
    return torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))


def gpd_fit(y, prior=True):
    """Fit a generalized Pareto distribution (location 0) to exceedances y: Zhang & Stephens (2009),
    as in PSIS.

    GPD: P(Y > y) = (1 + k y / sigma)^(-1/k) (scipy.stats.genpareto with c = k; k > 0 is a heavy
        tail).
    theta_j = 1/y_(n) + (1 - sqrt(m / (j - 1/2))) / (3 y_(n/4)), j = 1..m = 30 + floor(sqrt(n));
    l(theta) = n [log(-theta / k(theta)) - k(theta) - 1] with k(theta) = mean log(1 - theta y);
    theta_hat = sum_j theta_j softmax(l)_j,  k = mean log(1 - theta_hat y),  sigma = -k / theta_hat.
    prior=True shrinks k toward 0.5 like a weakly informative prior, k <- (n k + 5) / (n + 10)
    (Vehtari et al. 2024, "Pareto smoothed importance sampling", JMLR, section 3; loo's gpdfit).

    Args:
        y: (n, ...) nonnegative exceedances, n >= 5, on the first dimension; not all zero.
        prior: apply the weakly informative prior (a bool).
    Returns:
        (k (...), sigma (...)).
    """
    _validate.tensor("y", y, min_dim=1)
    _validate.flag("prior", prior)
    n = y.shape[0]
    if n < 5 or bool((y < 0).any()) or bool((y.amax(0) == 0).any()):
        raise ValueError(
            "y must hold n >= 5 nonnegative exceedances, not all 0, on dim 0; got shape "
            f"{tuple(y.shape)}"
        )
    y = torch.sort(y, 0).values  # (n, ...)
    m = 30 + math.isqrt(n)
    j = torch.arange(1, m + 1, dtype=y.dtype, device=y.device).reshape(
        m, *([1] * (y.dim() - 1))
    )  # (m, 1..)
    y_star = y[int(n / 4 + 0.5) - 1]  # first quartile
    y_star = torch.where(
        y_star > 0, y_star, torch.where(y > 0, y, math.inf).amin(0)
    )  # ties at 0: smallest positive
    theta = 1 / y[-1] + (1 - torch.sqrt(m / (j - 0.5))) / (3 * y_star)  # (m, ...), all < 1 / max(y)
    k_theta = torch.log1p(-theta.unsqueeze(1) * y).mean(1)  # (m, ...)
    log_lik = n * (torch.log(-theta / k_theta) - k_theta - 1)  # profile log-likelihood
    theta_hat = (theta * torch.softmax(log_lik, 0)).sum(0)
    k = torch.log1p(-theta_hat * y).mean(0)
    sigma = -k / theta_hat
    if prior:
        k = (n * k + 10 * 0.5) / (n + 10)
    return k, sigma


def pareto_khat(log_w):
    """The Pareto k_hat diagnostic of importance weights (PSIS, Vehtari et al. 2024, section 3).

    Fit a GPD (`gpd_fit`, with its prior) to the M = ceil(min(S / 5, 3 sqrt(S))) largest weights
    minus the largest weight below them. k_hat < 0.5: finite variance; 0.5-0.7: usable; > 0.7: the
    estimate is unreliable (and needs about S > 10^(k / (1 - k)) samples); > 1: the mean of the
    weights is not finite.

    Args:
        log_w: (S, ...) log-weights, S >= 25 on the first dimension.
    Returns:
        (...) k_hat; -inf where the M + 1 largest weights are all equal (no tail at all).
    """
    _check_log_w(log_w)
    S = log_w.shape[0]
    M = math.ceil(min(0.2 * S, 3 * math.sqrt(S)))
    if M < 5:
        raise ValueError(
            "log_w must hold S >= 25 weights on dim 0 for a tail of 5, got shape "
            f"{tuple(log_w.shape)}"
        )
    top = torch.topk(
        log_w - log_w.amax(0), M + 1, dim=0
    ).values  # (M + 1, ...) descending, largest 0
    y = torch.exp(top[:M]) - torch.exp(top[M])  # (M, ...) exceedances over the cutoff
    flat = y.reshape(M, -1)  # (M, N) every example
    k = torch.full((flat.shape[1],), -math.inf, dtype=y.dtype, device=y.device)
    has_tail = flat.amax(0) > 0
    if bool(has_tail.any()):
        k[has_tail] = gpd_fit(flat[:, has_tail])[0]
    return k.reshape(y.shape[1:])
