"""The aggregate posterior and ELBO surgery: where the average KL of the ELBO goes.

N encoder Gaussians q(z | x_n) = N(mu_n, diag exp(logvar_n)) (`logvar` = log sigma^2; the caller
runs `model.encode`) define the aggregate posterior q(z) = (1/N) sum_n q(z | x_n). With the uniform
distribution over the N data points, the average KL term of the ELBO (the "rate") splits exactly as

    (1/N) sum_n KL(q(z | x_n) || p(z)) = I_q(x; z) + KL(q(z) || p(z)),   p(z) = N(0, I),
    I_q(x; z) = (1/N) sum_n KL(q(z | x_n) || q(z)),   0 <= I_q <= log N

(Hoffman & Johnson 2016, "ELBO surgery", eq. 2; Alemi et al. 2018). `surgery_quadrature` computes
the three terms by independent routes for k in {1, 2}, so the identity is a check; `surgery_mc` and
`surgery_minibatch` estimate I_q and KL(q(z) || p(z)) with Monte Carlo standard errors for any k.
Shapes: mu, logvar (N, k); z (P, k). All values in nats.
"""

import math
from typing import NamedTuple

import numpy as np
import torch

from vaelib import _validate
from vaelib.distributions import LOG_2PI, _log_normal, _sample_normal, kl_normal

# quadrature boxes reach 10 sd past every component: tail mass 2e-23 per side, far below 1e-12 nats
_BOX_SD = 10.0
# quadrature: relative tolerance on top of atol, about 50 float64 epsilons (a KL of 300 nats has no
# 1e-12 digits)
_RTOL = 1e-14


def _log_std_normal(z):
    """log N(z_j; 0, 1) per coordinate, same shape as z."""
    return -0.5 * (LOG_2PI + z**2)


class Surgery(NamedTuple):
    """The three terms of ELBO surgery in nats (floats); `error`: the quadrature's own error
    estimate."""

    average_kl: float  # (1/N) sum_n KL(q(z|x_n) || p(z)), closed form
    mutual_info: float  # I_q(x; z)
    marginal_kl: float  # KL(q(z) || p(z))
    error: float  # sum of the two quadratures' estimated absolute errors


class SurgeryEstimate(NamedTuple):
    """Monte Carlo estimates with standard errors (nats). average_kl is exact; the estimates' bias
    is not in the ``_se`` fields."""

    average_kl: float  # (1/N) sum_n KL(q(z|x_n) || p(z)): closed form over all N for N(0, I),
    # else (surgery_mc's log_prior) the Monte Carlo mean at the same draws
    mutual_info: float
    mutual_info_se: float
    marginal_kl: float
    marginal_kl_se: float
    marginal_kl_per_dim: (
        torch.Tensor
    )  # (k,) KL(q(z_j) || N(0, 1)) of each coordinate's marginal mixture
    marginal_kl_per_dim_se: torch.Tensor  # (k,)


def _check_codes(mu, logvar):
    _validate.tensor("mu", mu, min_dim=2)
    _validate.tensor("logvar", logvar, min_dim=2)
    if mu.dim() != 2 or mu.shape != logvar.shape or mu.shape[0] == 0 or mu.shape[1] == 0:
        raise ValueError(
            f"mu and logvar must both have shape (N, k) with N, k >= 1 (one row per data point), "
            f"got mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)}"
        )
    _validate.sampleable_logvar("logvar", logvar)


def _log_mixture(z, mu, logvar, log_w, chunk_size):
    """log sum_c w_pc N(z_p; mu_c, sigma_c) jointly (P,) and per coordinate (P, k), chunked over
    points and components.

    log_w: a float (the same weight for every component) or a (P, C) tensor. Memory: chunk_size^2 *
        k numbers.
    """
    P, C, k = z.shape[0], mu.shape[0], mu.shape[1]
    joint, per_dim = [], []
    for p0 in range(0, P, chunk_size):
        zc = z[p0 : p0 + chunk_size]
        acc = torch.full(
            (zc.shape[0],), -math.inf, dtype=z.dtype, device=z.device
        )  # running logsumexp
        acc_dim = torch.full((zc.shape[0], k), -math.inf, dtype=z.dtype, device=z.device)
        for c0 in range(0, C, chunk_size):
            c1 = c0 + chunk_size
            # one-dimensional log-densities: the trailing size-1 event dimension makes _log_normal
            # per coordinate
            lnd = _log_normal(
                zc[:, None, :, None], mu[None, c0:c1, :, None], logvar[None, c0:c1, :, None]
            )  # (Pc, Cc, k)
            w = (
                log_w if isinstance(log_w, float) else log_w[p0 : p0 + chunk_size, c0:c1]
            )  # float or (Pc, Cc)
            acc = torch.logaddexp(acc, torch.logsumexp(lnd.sum(-1) + w, 1))
            w_dim = w if isinstance(w, float) else w[..., None]  # (Pc, Cc, 1)
            acc_dim = torch.logaddexp(acc_dim, torch.logsumexp(lnd + w_dim, 1))
        joint.append(acc)
        per_dim.append(acc_dim)
    return torch.cat(joint), torch.cat(per_dim)


def log_qz(z, mu, logvar, chunk_size=512):
    """Log-density of the aggregate posterior, every component included: exact, cost O(P N k).

    log q(z) = logsumexp_n log N(z; mu_n, diag exp(logvar_n)) - log N   (Hoffman & Johnson 2016)

    Args:
        z: (P, k) points.
        mu, logvar: (N, k) the encoder Gaussians q(z | x_n).
        chunk_size: points and components per block; memory is about chunk_size^2 * k numbers.
    Returns:
        (P,) log q(z) in nats.
    """
    _check_codes(mu, logvar)
    _validate.tensor("z", z, min_dim=2)
    if z.dim() != 2 or z.shape[1] != mu.shape[1]:
        raise ValueError(
            f"z must have shape (P, k) with k={mu.shape[1]} (as mu), got {tuple(z.shape)}"
        )
    _validate.count("chunk_size", chunk_size)
    return _log_mixture(z, mu, logvar, -math.log(mu.shape[0]), chunk_size)[0]


def surgery_quadrature(mu, logvar, atol=1e-12):
    """ELBO surgery for k in {1, 2} with each term by its own route: closed form, and two adaptive
    quadratures.

    average_kl = (1/N) sum_n KL(q_n || N(0, I)) in closed form; marginal_kl = int q(z) [log q(z) -
    log p(z)] dz over z (scipy.integrate.cubature on a box 10 sd past every mean); mutual_info =
    (1/N) sum_n int N(u; 0, I) [log q_n(z) - log q(z)] du with z = mu_n + sigma_n u, over u per
    component. The quadratures use different nodes, so average_kl = mutual_info + marginal_kl holds
    to about the sum of their errors (`error`, about 2 atol when converged) only if every term is
    right (Hoffman & Johnson 2016, eq. 2). A third integral, of q(z) itself, must give 1 (else
    RuntimeError): adaptive rules can step over a narrow component.
    Cost: both quadratures evaluate N Gaussians per node, the mutual information N^2 per node:
        measured on one loaded
    core, k = 1 N = 20 takes 0.5 s; k = 2 N = 5 about 10 s (Gauss-Kronrod product rule).

    Args:
        mu, logvar: (N, k) the encoder Gaussians, k in {1, 2}; computed in float64.
        atol: absolute error asked of each quadrature, in nats (plus 1e-14 relative: float64
            round-off).
    Returns:
        Surgery(average_kl, mutual_info, marginal_kl, error), floats in nats.
    """
    from scipy.integrate import cubature

    _check_codes(mu, logvar)
    N, k = mu.shape
    if k not in (1, 2):
        raise ValueError(
            "surgery_quadrature integrates over z in 1 or 2 dimensions: mu must be (N, 1) or (N, "
            f"2), got {tuple(mu.shape)}"
        )
    atol = _validate.positive_scalar("atol", atol)
    mu, logvar = mu.detach().to("cpu", torch.float64), logvar.detach().to("cpu", torch.float64)
    sd = torch.exp(0.5 * logvar)
    rule = "gk21" if k == 1 else "gk15"

    def marginal_integrand(
        z,
    ):  # z (P, k) numpy -> (P, 2): q(z) [log q(z) - log p(z)], and q(z) to check its mass
        z = torch.from_numpy(z)
        lq = _log_mixture(z, mu, logvar, -math.log(N), 4096)[0]
        q = torch.exp(lq)
        return torch.stack([q * (lq - _log_std_normal(z).sum(-1)), q], -1).numpy()

    def information_integrand(
        u,
    ):  # u (P, k) numpy -> (P,): the average over components of N(u) [log q_n - log q](z)
        u = torch.from_numpy(u)
        z = mu + sd * u[:, None, :]  # (P, N, k): component n's point for node u
        lq = _log_mixture(z.reshape(-1, k), mu, logvar, -math.log(N), 4096)[0].reshape(
            z.shape[:2]
        )  # (P, N)
        log_qn = _log_normal(z, mu, logvar)  # (P, N)
        return (torch.exp(_log_std_normal(u).sum(-1)) * (log_qn - lq).mean(1)).numpy()

    lo, hi = (mu - _BOX_SD * sd).amin(0).numpy(), (mu + _BOX_SD * sd).amax(0).numpy()
    marginal = cubature(marginal_integrand, lo, hi, rule=rule, atol=atol, rtol=_RTOL)
    box = np.full(k, _BOX_SD)
    information = cubature(information_integrand, -box, box, rule=rule, atol=atol, rtol=_RTOL)
    for name, res in (("marginal_kl", marginal), ("mutual_info", information)):
        if res.status != "converged":
            raise RuntimeError(
                f"the quadrature of {name} did not converge to atol={atol:g} (estimated error "
                f"{np.max(res.error):.3g})"
            )
    mass = float(
        marginal.estimate[1]
    )  # int q(z) dz = 1 unless the adaptive rule stepped over a narrow component
    if abs(mass - 1.0) > 1e3 * atol:
        raise RuntimeError(
            f"the quadrature over z found mass {mass:.12f} of q(z), not 1: components too narrow "
            f"for "
            "their spread; use surgery_mc"
        )
    return Surgery(
        average_kl=float(kl_normal(mu, logvar).mean()),
        mutual_info=float(information.estimate),
        marginal_kl=float(marginal.estimate[0]),
        error=float(marginal.error[0]) + float(information.error),
    )


def _estimate(average_kl, log_qz_x, log_qz, log_qz_dim, z, groups, log_pz=None):
    """Means and standard errors of log q(z|x) - log q(z) and log q(z) - log p(z), over `groups` iid
    rows; log_pz (P,) of another prior than N(0, I), whose per-coordinate terms are then NaN."""
    log_pz_dim = _log_std_normal(z)  # (P, k) log N(z_j; 0, 1)
    terms = {
        "mi": log_qz_x - log_qz,
        "kl": log_qz - (log_pz_dim.sum(-1) if log_pz is None else log_pz),
        "dim": log_qz_dim - log_pz_dim if log_pz is None else torch.full_like(z, math.nan),
    }
    terms = {
        name: t.reshape(groups, -1, *t.shape[1:]).mean(1) for name, t in terms.items()
    }  # (G,) or (G, k)
    se = {name: t.std(0, correction=1) / math.sqrt(groups) for name, t in terms.items()}
    return SurgeryEstimate(
        average_kl=average_kl,
        mutual_info=float(terms["mi"].mean()),
        mutual_info_se=float(se["mi"]),
        marginal_kl=float(terms["kl"].mean()),
        marginal_kl_se=float(se["kl"]),
        marginal_kl_per_dim=terms["dim"].mean(0),
        marginal_kl_per_dim_se=se["dim"],
    )


@torch.no_grad()
def surgery_mc(mu, logvar, n_samples, generator=None, chunk_size=512, log_prior=None):
    """Unbiased Monte Carlo ELBO surgery with the exact aggregate density (all N components): cost
    O(n_samples N k).

    (n_i, z_i) ~ q(n) q(z | x_n), q(n) = 1/N, i = 1..M;  I_q ~= mean_i [log q(z_i | x_{n_i}) - log
    q(z_i)], KL(q(z) || p(z)) ~= mean_i [log q(z_i) - log p(z_i)], log q by `log_qz`; standard
    errors std / sqrt(M). Each term is also given per coordinate j: KL(q(z_j) || N(0, 1)) with the
    one-dimensional marginal mixture (their sum falls short of marginal_kl by the total correlation;
    Chen et al. 2018, eq. 2).

    Another prior (a learned one, `vaelib.priors`): pass `log_prior`, z (M, k) -> log p(z) (M,);
    then average_kl is the Monte Carlo mean of log q(z_i | x_{n_i}) - log p(z_i) at the same draws
    (equal to mutual_info + marginal_kl), and the per-coordinate fields are NaN (a learned prior
    need not factorise).

    Args:
        mu, logvar: (N, k) the encoder Gaussians.
        n_samples: M >= 2 draws of (n, z).
        generator: optional torch.Generator on mu's device.
        chunk_size: points and components per block (memory about chunk_size^2 * k numbers).
        log_prior: None for p(z) = N(0, I), or a callable z (M, k) -> log p(z) (M,) in nats.
    Returns:
        SurgeryEstimate; average_kl in closed form for N(0, I).
    """
    _check_codes(mu, logvar)
    _validate.count("n_samples", n_samples, minimum=2)
    _validate.generator("generator", generator)
    _validate.count("chunk_size", chunk_size)
    if log_prior is not None:
        _validate.function("log_prior", log_prior, "z (M, k) -> log p(z) (M,)")
    N = mu.shape[0]
    n = torch.randint(N, (n_samples,), generator=generator, device=mu.device)  # (M,)
    z = _sample_normal(mu[n], logvar[n], generator=generator)  # (M, k)
    log_qz_all, log_qz_dim = _log_mixture(z, mu, logvar, -math.log(N), chunk_size)
    log_qz_x = _log_normal(z, mu[n], logvar[n])  # (M,)
    if log_prior is None:
        log_pz, average_kl = None, float(kl_normal(mu, logvar).mean())
    else:
        log_pz = log_prior(z)
        if not isinstance(log_pz, torch.Tensor) or log_pz.shape != log_qz_x.shape:
            raise ValueError(
                f"log_prior(z) must return a tensor of shape {tuple(log_qz_x.shape)} for z "
                f"{tuple(z.shape)}, got {getattr(log_pz, 'shape', type(log_pz).__name__)}"
            )
        log_pz = log_pz.to(z.dtype)
        average_kl = float((log_qz_x - log_pz).mean())
    return _estimate(average_kl, log_qz_x, log_qz_all, log_qz_dim, z, n_samples, log_pz)


@torch.no_grad()
def surgery_minibatch(mu, logvar, batch_size, n_batches, generator=None, weighting="importance"):
    """Minibatch ELBO surgery: log q(z) from the M components of a random minibatch only, cost
    O(n_batches M^2 k).

    A batch is M indices drawn without replacement, z_i ~ q(z | x_i) for each, and
    q(z_i) ~= w_own q(z_i | x_i) + w_other sum_{j != i} q(z_i | x_j):

    - weighting="importance": w_own = 1/N, w_other = (N - 1) / (N (M - 1)). The estimate of q(z_i)
      is unbiased (the M - 1 others are a uniform sample of the N - 1 other components), so by
      Jensen E[log q-hat] <= log q:
      I_q is biased up and KL(q(z) || p(z)) down, both by the same amount, shrinking as M grows
      (exact at M = N); I_q-hat <= log N holds for every draw. This is the aim of Chen et al. 2018's
      minibatch stratified sampling (appendix C), whose weights assume a stratified batch; these
      weights are for a uniformly random batch.
    - weighting="uniform": w_own = w_other = 1/M, the plain minibatch mixture. It over-weights each
      point's own component N/M times, so I_q-hat <= log M for every draw: with separated codes it
      reports log M, not log N.

    Standard errors: the spread of the n_batches batch means (MC noise only; the bias above is not
    in them).

    Args:
        mu, logvar: (N, k) the encoder Gaussians.
        batch_size: M, 2 <= M <= N.
        n_batches: >= 2 independent minibatches.
        generator: optional torch.Generator on mu's device.
        weighting: "importance" or "uniform".
    Returns:
        SurgeryEstimate; average_kl in closed form over all N.
    """
    _check_codes(mu, logvar)
    N = mu.shape[0]
    M = _validate.count("batch_size", batch_size, minimum=2)
    if M > N:
        raise ValueError(f"batch_size must be at most N={N} (the rows of mu), got {M}")
    _validate.count("n_batches", n_batches, minimum=2)
    _validate.generator("generator", generator)
    if weighting not in ("importance", "uniform"):
        raise ValueError(f'weighting must be "importance" or "uniform", got {weighting!r}')
    if weighting == "uniform":
        log_w = torch.full((M, M), -math.log(M), dtype=mu.dtype, device=mu.device)
    else:
        log_w = torch.full(
            (M, M), math.log((N - 1) / (N * (M - 1))), dtype=mu.dtype, device=mu.device
        )
        log_w.fill_diagonal_(-math.log(N))
    rows = {"log_qz_x": [], "log_qz": [], "log_qz_dim": [], "z": []}
    for _ in range(n_batches):
        idx = torch.randperm(N, generator=generator, device=mu.device)[:M]  # (M,)
        z = _sample_normal(mu[idx], logvar[idx], generator=generator)  # (M, k)
        log_qz_b, log_qz_dim = _log_mixture(z, mu[idx], logvar[idx], log_w, M)
        for name, t in zip(rows, (_log_normal(z, mu[idx], logvar[idx]), log_qz_b, log_qz_dim, z)):
            rows[name].append(t)
    rows = {
        name: torch.cat(t) for name, t in rows.items()
    }  # batch after batch: (n_batches * M, ...)
    return _estimate(float(kl_normal(mu, logvar).mean()), *rows.values(), n_batches)
