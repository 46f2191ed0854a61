"""Log-densities and closed-form KL divergences for Gaussians and Bernoullis.

`logvar` is always log sigma^2 (the log of the variance). Shapes are batch first: `(..., D)` means
any leading batch shape with the event dimension D last. Every function sums over the event
dimension and returns the batch shape `(...)`. Values are in nats and keep every normalising
constant (-1/2 log 2 pi per dimension), so they compare with exact log-evidences.

Public functions validate their arguments (floating dtype, broadcastable shapes, finite values);
the underscored versions skip the checks for hot loops whose inputs were checked once.
"""

import math

import torch
import torch.nn.functional as F

from vaelib import _validate

LOG_2PI = math.log(2.0 * math.pi)


def _sq_over_var(diff, logvar):
    """diff^2 / exp(logvar), elementwise, finite wherever the result is representable.

    The direct form diff^2 * exp(-logvar) overflows exp(-logvar) for logvar below about -88
    (float32) or -709 (float64) and then gives 0 * inf = NaN at diff = 0; in log space, exp(2
    log|diff| - logvar), it overflows only when the result itself does. diff = 0 gives 0 with
    gradient 0 (no log 0 or exp overflow in the graph).
    """
    zero = diff == 0
    log_ratio = 2.0 * torch.log(torch.where(zero, 1.0, diff).abs()) - logvar
    return torch.exp(
        log_ratio.masked_fill(zero, -math.inf)
    )  # exp(-inf) = 0, and its gradient 0 too


def _log_normal(x, mu, logvar):
    return -0.5 * (LOG_2PI + logvar + _sq_over_var(x - mu, logvar)).sum(-1)


def log_normal(x, mu, logvar):
    """Log-density of a diagonal Gaussian, summed over the last dimension.

    log N(x; mu, diag(exp(logvar))) = -1/2 sum_d [log 2 pi + logvar_d + (x_d - mu_d)^2 /
    exp(logvar_d)]

    Args:
        x: (..., D) points.
        mu: (..., D) means (broadcast against x).
        logvar: (..., D) log-variances log sigma^2 (broadcast against x).
    Returns:
        (...) log-density in nats.
    """
    for name, t in (("x", x), ("mu", mu), ("logvar", logvar)):
        _validate.tensor(name, t, min_dim=1)
    _validate.broadcast(x=x, mu=mu, logvar=logvar)
    return _log_normal(x, mu, logvar)


def _log_bernoulli(x, logits):
    # x * log sigmoid(l) + (1 - x) * log sigmoid(-l) = x * l - softplus(l), stable for any l.
    return (x * logits - F.softplus(logits)).sum(-1)


def log_bernoulli(x, logits):
    """Log-probability of x under independent Bernoullis given by logits, summed over the last
    dimension.

    log p(x) = sum_d [x_d log sigmoid(l_d) + (1 - x_d) log sigmoid(-l_d)] = sum_d [x_d l_d -
    softplus(l_d)] (minus the binary cross-entropy with logits; for x in (0, 1) it is the same
    expression, the "continuous Bernoulli" without its normaliser, as commonly used on grey-scale
    images).

    Args:
        x: (..., D) values in [0, 1].
        logits: (..., D) log-odds log(p / (1 - p)) (broadcast against x).
    Returns:
        (...) log-probability in nats.
    """
    _validate.tensor("x", x, min_dim=1)
    _validate.tensor("logits", logits, min_dim=1)
    _validate.broadcast(x=x, logits=logits)
    if bool((x < 0).any()) or bool((x > 1).any()):
        raise ValueError(
            f"x must lie in [0, 1] for a Bernoulli likelihood, got values in "
            f"[{x.min().item():.4g}, {x.max().item():.4g}]"
        )
    return _log_bernoulli(x, logits)


def _kl_normal(mu_q, logvar_q, mu_p=None, logvar_p=None):
    if mu_p is None and logvar_p is None:
        return 0.5 * (torch.exp(logvar_q) + mu_q**2 - 1.0 - logvar_q).sum(-1)
    if mu_p is None:
        mu_p = torch.zeros_like(mu_q)
    if logvar_p is None:
        logvar_p = torch.zeros_like(logvar_q)
    return 0.5 * (
        logvar_p
        - logvar_q
        + torch.exp(logvar_q - logvar_p)
        + _sq_over_var(mu_q - mu_p, logvar_p)
        - 1.0
    ).sum(-1)


def kl_normal(mu_q, logvar_q, mu_p=None, logvar_p=None):
    """Closed-form KL(N_q || N_p) between diagonal Gaussians, summed over the last dimension.

    KL = 1/2 sum_d [logvar_p - logvar_q + exp(logvar_q - logvar_p) + (mu_q - mu_p)^2 / exp(logvar_p)
    - 1] With mu_p = logvar_p = None, N_p is the standard normal N(0, I):
    KL = 1/2 sum_d [exp(logvar_q) + mu_q^2 - 1 - logvar_q]   (Kingma & Welling 2013, appendix B).

    Args:
        mu_q, logvar_q: (..., D) mean and log-variance of q.
        mu_p, logvar_p: (..., D) mean and log-variance of p, or None for 0 (mean) and 0
            (log-variance).
    Returns:
        (...) KL in nats, >= 0.
    """
    _validate.tensor("mu_q", mu_q, min_dim=1)  # q is required; only p's parameters may be None
    _validate.tensor("logvar_q", logvar_q, min_dim=1)
    named = {"mu_q": mu_q, "logvar_q": logvar_q, "mu_p": mu_p, "logvar_p": logvar_p}
    named = {k: v for k, v in named.items() if v is not None}
    for name, t in named.items():
        _validate.tensor(name, t, min_dim=1)
    _validate.broadcast(**named)
    return _kl_normal(mu_q, logvar_q, mu_p, logvar_p)


def _sample_normal(mu, logvar, n=None, generator=None):
    shape = (
        mu.shape if mu.shape == logvar.shape else torch.broadcast_shapes(mu.shape, logvar.shape)
    )  # fast path
    if n is not None:
        shape = (n, *shape)
    dtype = torch.promote_types(mu.dtype, logvar.dtype)
    eps = torch.randn(shape, generator=generator, dtype=dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


def sample_normal(mu, logvar, n=None, generator=None):
    """Reparameterized sample z = mu + exp(logvar / 2) * eps with eps ~ N(0, I).

    Gradients flow to mu and logvar (Kingma & Welling 2013, section 2.4).

    Args:
        mu: (..., D) means.
        logvar: (..., D) log-variances (broadcast against mu).
        n: None for one sample with the broadcast shape, or an int >= 1 for n samples on a new
            leading dimension: (n, ..., D).
        generator: optional torch.Generator for reproducible draws.
    Returns:
        (..., D) or (n, ..., D) samples.
    """
    _validate.tensor("mu", mu, min_dim=1)
    _validate.tensor("logvar", logvar, min_dim=1)
    _validate.broadcast(mu=mu, logvar=logvar)
    _validate.sampleable_logvar("logvar", logvar)
    if n is not None:
        _validate.count("n", n)
    _validate.generator("generator", generator)
    return _sample_normal(mu, logvar, n, generator)


def log_mvnormal(x, mean, cov):
    """Log-density of a full-covariance Gaussian N(x; mean, cov).

    log N = -1/2 [D log 2 pi + log det cov + (x - mean)^T cov^{-1} (x - mean)], via a Cholesky
    factor.

    Args:
        x: (..., D) points.
        mean: (..., D) mean (broadcast against x).
        cov: (D, D) symmetric positive-definite covariance (symmetric up to rounding, else a
            ValueError).
    Returns:
        (...) log-density in nats.
    """
    _validate.tensor("x", x, min_dim=1)
    _validate.tensor("mean", mean, min_dim=1)
    L = _cholesky("cov", cov, x.shape[-1])
    _validate.broadcast(x=x, mean=mean)
    diff = (x - mean).unsqueeze(-1)  # (..., D, 1)
    sol = torch.linalg.solve_triangular(
        L.expand(*diff.shape[:-2], *L.shape), diff, upper=False
    ).squeeze(-1)
    log_det = 2.0 * torch.log(torch.diagonal(L)).sum()
    return -0.5 * (x.shape[-1] * LOG_2PI + log_det + (sol**2).sum(-1))


def kl_mvnormal(mean_q, cov_q, mean_p, cov_p):
    """Closed-form KL(N(mean_q, cov_q) || N(mean_p, cov_p)) between full-covariance Gaussians.

    KL = 1/2 [tr(cov_p^{-1} cov_q) + (m_p - m_q)^T cov_p^{-1} (m_p - m_q) - D + log det cov_p - log
    det cov_q]

    Args:
        mean_q, mean_p: (..., D) means.
        cov_q, cov_p: (D, D) covariances (shared across the batch), or (..., D, D) for cov_q.
    Returns:
        (...) KL in nats.
    """
    _validate.tensor("mean_q", mean_q, min_dim=1)
    _validate.tensor("mean_p", mean_p, min_dim=1)
    D = mean_q.shape[-1]
    Lp = _cholesky("cov_p", cov_p, D)
    Lq = _cholesky("cov_q", cov_q, D, batched=True)
    _validate.broadcast(mean_q=mean_q, mean_p=mean_p)
    inv_Lp_Lq = torch.linalg.solve_triangular(
        Lp.expand_as(Lq) if Lq.dim() > 2 else Lp, Lq, upper=False
    )
    trace = (inv_Lp_Lq**2).sum((-2, -1))
    diff = (mean_p - mean_q).unsqueeze(-1)  # (..., D, 1)
    sol = torch.linalg.solve_triangular(
        Lp.expand(*diff.shape[:-2], D, D), diff, upper=False
    ).squeeze(-1)
    log_det_p = 2.0 * torch.log(torch.diagonal(Lp)).sum()
    log_det_q = 2.0 * torch.log(torch.diagonal(Lq, dim1=-2, dim2=-1)).sum(-1)
    return 0.5 * (trace + (sol**2).sum(-1) - D + log_det_p - log_det_q)


def _cholesky(name, cov, D, batched=False):
    _validate.tensor(name, cov, min_dim=2)
    if cov.shape[-2:] != (D, D) or (cov.dim() > 2 and not batched):
        want = "(..., D, D)" if batched else "(D, D)"
        raise ValueError(f"{name} must have shape {want} with D={D}, got {tuple(cov.shape)}")
    cov = _validate.symmetric(
        name, cov
    )  # Cholesky reads only the lower triangle: refuse a silent half
    L, info = torch.linalg.cholesky_ex(cov)
    if bool((info != 0).any()):
        raise ValueError(
            f"{name} must be symmetric positive-definite; its Cholesky factorisation failed"
        )
    return L
