"""Monte Carlo estimators of the evidence, the ELBO, the IWAE bound and of gradients of E_q[f(z)].

q is always a diagonal Gaussian N(mu, diag(exp(logvar))) (`logvar` = log sigma^2). A `log_joint`
argument is a callable (x (B, d), z (K, B, k)) -> log p(x, z) (K, B), e.g.
`toy.LinearGaussian(...).log_joint`. Extra Monte Carlo samples live on a leading dimension K;
per-example results have shape (B,). All values in nats.
"""

import math
from typing import NamedTuple

import torch

from vaelib import _validate
from vaelib.distributions import _log_normal, _sample_normal


class EvidenceEstimate(NamedTuple):
    """A Monte Carlo estimate of log p(x) per example, with its standard error (delta method)."""

    log_px: torch.Tensor  # (B,)
    stderr: torch.Tensor  # (B,) standard error of log_px


def log_mean_exp(log_w, dim=0):
    """log (1/K sum_k exp(log_w_k)) along `dim`, computed stably as logsumexp(log_w) - log K.

    Args:
        log_w: (..., K, ...) log-weights; -inf entries are allowed (weight 0), NaN is not.
        dim: the dimension to average over (an int; negative counts from the end); it must not be
            empty.
    Returns:
        log_w with `dim` removed.
    """
    _validate.tensor("log_w", log_w, min_dim=1, finite=False)
    dim = _validate.dim("dim", dim, log_w.dim())
    if log_w.shape[dim] == 0:
        raise ValueError(
            f"log_w must hold at least one log-weight along dim {dim}, got shape "
            f"{tuple(log_w.shape)}"
        )
    if bool(torch.isnan(log_w).any()):
        raise ValueError(f"log_w contains NaN values (shape {tuple(log_w.shape)})")
    if bool((log_w == float("inf")).any()):
        raise ValueError("log_w contains +inf: a weight is infinite")
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


def _check_q(x, mu, logvar):
    _validate.tensor("x", x, min_dim=1)
    _validate.tensor("mu", mu, min_dim=1)
    _validate.tensor("logvar", logvar, min_dim=1)
    if mu.shape != logvar.shape:
        raise ValueError(
            f"mu and logvar must have the same shape (B, k), got {tuple(mu.shape)} and "
            f"{tuple(logvar.shape)}"
        )
    _validate.sampleable_logvar("logvar", logvar)
    if mu.shape[:-1] != x.shape[:-1]:
        raise ValueError(
            f"mu must have the batch shape of x: x {tuple(x.shape)} -> mu (..., k) with batch "
            f"{tuple(x.shape[:-1])}, got mu {tuple(mu.shape)}"
        )


def _log_weights(log_joint, x, mu, logvar, K, generator):
    """log w = log p(x, z) - log q(z | x) for K samples z ~ q.  Returns (K, B)."""
    z = _sample_normal(mu, logvar, K, generator)  # (K, B, k)
    log_pxz = log_joint(x, z)
    if not isinstance(log_pxz, torch.Tensor) or log_pxz.shape != z.shape[:-1]:
        got = tuple(log_pxz.shape) if isinstance(log_pxz, torch.Tensor) else type(log_pxz).__name__
        raise ValueError(
            f"log_joint(x, z) must return shape {tuple(z.shape[:-1])} for z {tuple(z.shape)}, got "
            f"{got}"
        )
    return log_pxz - _log_normal(z, mu, logvar)  # (K, B)


def _estimate(log_w):
    """Evidence estimate and its delta-method standard error from log-weights (K, B)."""
    K = log_w.shape[0]
    log_px = torch.logsumexp(log_w, 0) - math.log(K)
    # Normalised weights w_k / mean(w): the relative std of mean(w) is std(w) / (mean(w) sqrt(K)),
    # and by the delta method that is the standard error of log mean(w).
    w_rel = torch.exp(log_w - log_px)  # (K, B), mean 1
    stderr = (
        w_rel.std(0, correction=1) / math.sqrt(K)
        if K > 1
        else torch.full_like(log_px, float("inf"))
    )
    return EvidenceEstimate(log_px, stderr)


def prior_log_evidence(log_likelihood, x, latent_dim, n_samples, generator=None):
    """Naive Monte Carlo evidence: log p(x) ~= log (1/K) sum_k p(x | z_k) with z_k ~ p(z) = N(0, I).

    Unbiased for p(x), but its variance explodes when the posterior is narrow compared with the
    prior.

    Args:
        log_likelihood: callable (x (B, d), z (K, B, k)) -> log p(x | z) (K, B).
        x: (B, d) observations.
        latent_dim: k.
        n_samples: K >= 1 prior samples per example.
        generator: optional torch.Generator.
    Returns:
        EvidenceEstimate(log_px (B,), stderr (B,)).
    """
    _validate.function(
        "log_likelihood", log_likelihood, "(x (B, d), z (K, B, k)) -> log p(x | z) (K, B)"
    )
    _validate.tensor("x", x, min_dim=1)
    _validate.count("latent_dim", latent_dim)
    _validate.count("n_samples", n_samples)
    _validate.generator("generator", generator)
    zeros = torch.zeros(*x.shape[:-1], latent_dim, dtype=x.dtype, device=x.device)
    z = _sample_normal(zeros, zeros, n_samples, generator)  # (K, B, k)
    log_w = log_likelihood(x, z)  # (K, B)
    return _estimate(log_w)


def importance_log_evidence(log_joint, x, mu, logvar, n_samples, generator=None):
    """Importance-sampling evidence: log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k) with z_k ~ q =
    N(mu, diag exp(logvar)).

    Args:
        log_joint: callable (x (B, d), z (K, B, k)) -> log p(x, z) (K, B).
        x: (B, d) observations.
        mu, logvar: (B, k) the proposal q(z | x).
        n_samples: K >= 1.
        generator: optional torch.Generator.
    Returns:
        EvidenceEstimate(log_px (B,), stderr (B,)).
    """
    _validate.function("log_joint", log_joint, "(x (B, d), z (K, B, k)) -> log p(x, z) (K, B)")
    _check_q(x, mu, logvar)
    _validate.count("n_samples", n_samples)
    _validate.generator("generator", generator)
    return _estimate(_log_weights(log_joint, x, mu, logvar, n_samples, generator))


def elbo(log_joint, x, mu, logvar, n_samples=1, generator=None):
    """Monte Carlo ELBO: E_q[log p(x, z) - log q(z | x)] ~= (1/K) sum_k [log p(x, z_k) - log q(z_k |
    x)].

    z_k = mu + exp(logvar / 2) eps_k is reparameterized, so the result is differentiable in mu and
    logvar (Kingma & Welling 2013, eq. 6-7).

    Args:
        log_joint: callable (x (B, d), z (K, B, k)) -> log p(x, z) (K, B).
        x: (B, d) observations.
        mu, logvar: (B, k) parameters of q(z | x).
        n_samples: K >= 1 samples per example.
        generator: optional torch.Generator.
    Returns:
        (B,) the ELBO estimate per example in nats.
    """
    _validate.function("log_joint", log_joint, "(x (B, d), z (K, B, k)) -> log p(x, z) (K, B)")
    _check_q(x, mu, logvar)
    _validate.count("n_samples", n_samples)
    _validate.generator("generator", generator)
    return _log_weights(log_joint, x, mu, logvar, n_samples, generator).mean(0)


def iwae_bound(log_joint, x, mu, logvar, K=None, generator=None, *, k=None):
    """Importance-weighted bound IWAE_K = E[log (1/K) sum_i p(x, z_i) / q(z_i | x)] (Burda et al.
    2016, eq. 8).

    One draw of the K-sample bound: ELBO = IWAE_1 <= IWAE_K <= IWAE_{K+1} <= log p(x) in
    expectation.

    Args:
        log_joint: callable (x (B, d), z (K, B, k)) -> log p(x, z) (K, B).
        x: (B, d) observations.
        mu, logvar: (B, k) parameters of q(z | x).
        K: number of importance samples, >= 1 (required).
        generator: optional torch.Generator.
        k: the former name of K, still accepted (k is the latent size everywhere else in vaelib).
    Returns:
        (B,) the bound per example in nats.
    """
    K = _validate.renamed("K", K, "k", k)
    if K is None:
        raise TypeError("iwae_bound() missing the number of importance samples K")
    _validate.function("log_joint", log_joint, "(x (B, d), z (K, B, k)) -> log p(x, z) (K, B)")
    _check_q(x, mu, logvar)
    _validate.count("K", K)
    _validate.generator("generator", generator)
    return log_mean_exp(_log_weights(log_joint, x, mu, logvar, K, generator), 0)


class GradientEstimate(NamedTuple):
    """Per-sample or averaged estimates of d/dmu and d/dlogvar of E_q[f(z)]."""

    grad_mu: torch.Tensor
    grad_logvar: torch.Tensor


def _check_grad_args(f, mu, logvar, n_samples, generator, reduce):
    _validate.function("f", f, "(K, ..., D) -> (K, ...)")
    _validate.flag("reduce", reduce)
    _validate.tensor("mu", mu, min_dim=1)
    _validate.tensor("logvar", logvar, min_dim=1)
    if mu.shape != logvar.shape:
        raise ValueError(
            f"mu and logvar must have the same shape (..., D), got {tuple(mu.shape)} and "
            f"{tuple(logvar.shape)}"
        )
    _validate.sampleable_logvar("logvar", logvar)
    _validate.count("n_samples", n_samples)
    _validate.generator("generator", generator)


def _check_score_logvar(logvar):
    # The score (z - mu) / exp(logvar) divides by the variance: below -log(max float) (-88.7 in
    # float32, -709.8 in float64) exp(-logvar) overflows, and 0 * inf gave a silent NaN. No finite
    # answer is right there: the estimate's variance grows like exp(-logvar) (f(mu)^2 / sigma^2 per
    # sample), so it is not representable either.
    limit = math.log(torch.finfo(logvar.dtype).max)
    low = float(logvar.detach().min()) if logvar.numel() else 0.0
    if not low > -limit:
        raise ValueError(
            f"logvar must be above {-limit:.1f} for {logvar.dtype} in score_function_grad: the "
            f"score divides by "
            "exp(logvar) and the estimate's variance grows like exp(-logvar), both overflow below "
            f"that; got a "
            f"minimum of {low:.4g} (shape {tuple(logvar.shape)}). pathwise_grad has no lower limit"
        )


def _check_samples(z):
    # exp(logvar / 2) is finite (checked), but mu + sigma eps can still overflow: f(+-inf) may be
    # finite (exp(-z^2)), and the score or the pathwise term then multiplies 0 by inf.
    if not bool(torch.isfinite(z).all()):
        raise ValueError(
            f"the samples z = mu + exp(logvar / 2) eps overflow {z.dtype} in "
            f"{int((~torch.isfinite(z)).sum())} of "
            f"{z.numel()} entries: mu or logvar is too large for that precision (use float64 or a "
            f"smaller logvar)"
        )
    return z


def _f_values(f, z):
    fz = f(z)
    if not isinstance(fz, torch.Tensor) or fz.shape != z.shape[:-1]:
        got = tuple(fz.shape) if isinstance(fz, torch.Tensor) else type(fz).__name__
        raise ValueError(
            f"f(z) must return shape {tuple(z.shape[:-1])} for z {tuple(z.shape)}, got {got}"
        )
    if not bool(torch.isfinite(fz).all()):
        bad = "NaN" if bool(torch.isnan(fz).any()) else "inf"
        raise ValueError(
            f"f(z) returned {bad} for {int((~torch.isfinite(fz)).sum())} of {fz.numel()} samples; "
            "a gradient estimate needs finite values of f"
        )
    return fz


def score_function_grad(f, mu, logvar, n_samples, generator=None, reduce=True):
    """Score-function (REINFORCE) estimate of the gradient of E_q[f(z)], q = N(mu, diag
    exp(logvar)).

    grad = E_q[f(z) grad log q(z)], with d log q / d mu = (z - mu) / sigma^2 and d log q / d logvar
    = ((z - mu)^2 / sigma^2 - 1) / 2  (Williams 1992; Mohamed et al. 2020, section 4). Needs only
    values of f, never its gradient.

    Args:
        f: callable (K, ..., D) -> (K, ...); need not be differentiable.
        mu, logvar: (..., D) parameters of q; logvar above -log(max float) (-88.7 in float32, -709.8
            in float64), so that 1 / sigma^2 is finite.
        n_samples: K >= 1.
        generator: optional torch.Generator.
        reduce: True averages over the K samples; False returns the K single-sample estimates (a
            bool).
    Returns:
        GradientEstimate with grad_mu, grad_logvar of shape (..., D), or (K, ..., D) when
        reduce=False.
    """
    _check_grad_args(f, mu, logvar, n_samples, generator, reduce)
    _check_score_logvar(logvar)
    with torch.no_grad():
        mu, logvar = mu.detach(), logvar.detach()
        z = _check_samples(_sample_normal(mu, logvar, n_samples, generator))  # (K, ..., D)
        fz = _f_values(f, z).unsqueeze(-1)  # (K, ..., 1)
        # The score through the standardised draw (z - mu) / sigma, then f times it: (z - mu)^2 and
        # f (z - mu) overflow for a wide q (and (z - mu)^2 / sigma^2 was inf * 0 = NaN) where the
        # score itself does not.
        inv_sd = torch.exp(-0.5 * logvar)
        eps = (z - mu) * inv_sd
        g_mu = fz * (eps * inv_sd)
        g_logvar = fz * (0.5 * (eps**2 - 1.0))
        if not bool(torch.isfinite(g_mu).all() and torch.isfinite(g_logvar).all()):
            raise ValueError(
                f"f(z) times the score overflows {g_mu.dtype}: |f(z)| reaches "
                f"{float(fz.abs().max()):.4g}; "
                "the estimate (and the mean of +inf and -inf terms, NaN) would be meaningless"
            )
    if reduce:
        return GradientEstimate(g_mu.mean(0), g_logvar.mean(0))
    return GradientEstimate(g_mu, g_logvar)


def pathwise_grad(f, mu, logvar, n_samples, generator=None, reduce=True):
    """Pathwise (reparameterization) estimate of the gradient of E_q[f(z)], q = N(mu, diag
    exp(logvar)).

    With z = mu + sigma eps: d f / d mu = f'(z) and d f / d logvar = f'(z) (z - mu) / 2
    (Kingma & Welling 2013, section 2.4). Needs f to be differentiable in z (torch autograd).

    Args:
        f: differentiable callable (K, ..., D) -> (K, ...).
        mu, logvar: (..., D) parameters of q.
        n_samples: K >= 1.
        generator: optional torch.Generator.
        reduce: True averages over the K samples; False returns the K single-sample estimates (a
            bool).
    Returns:
        GradientEstimate with grad_mu, grad_logvar of shape (..., D), or (K, ..., D) when
        reduce=False.
    """
    _check_grad_args(f, mu, logvar, n_samples, generator, reduce)
    mu, logvar = mu.detach(), logvar.detach()
    with torch.no_grad():
        z = _check_samples(_sample_normal(mu, logvar, n_samples, generator))  # (K, ..., D)
    with torch.enable_grad():
        z = z.requires_grad_(True)
        fz = _f_values(f, z)
        if (
            not fz.requires_grad
        ):  # torch's own error here was "element 0 of tensors does not require grad"
            raise ValueError(
                "f(z) does not depend on z through torch autograd: pathwise_grad differentiates f; "
                "score_function_grad needs only its values"
            )
        # The samples are independent, so the gradient of the sum is each sample's own gradient.
        (df_dz,) = torch.autograd.grad(fz.sum(), z)
    g_mu = df_dz
    g_logvar = df_dz * (z.detach() - mu) * 0.5
    if not bool(torch.isfinite(g_mu).all() and torch.isfinite(g_logvar).all()):
        raise ValueError(
            f"the gradient of f(z) (or it times z - mu) is not finite in {g_mu.dtype} at some "
            f"samples: "
            "f must be differentiable with a finite derivative wherever q puts its samples"
        )
    if reduce:
        return GradientEstimate(g_mu.mean(0), g_logvar.mean(0))
    return GradientEstimate(g_mu, g_logvar)


def stl_elbo(log_joint, x, mu, logvar, n_samples=1, generator=None):
    """Monte Carlo ELBO whose gradient in (mu, logvar) is the path derivative ("sticking the
    landing").

    Value: (1/K) sum_k [log p(x, z_k) - log q(z_k | x)] with z_k = mu + exp(logvar / 2) eps_k, the
        same number
    `elbo` returns for the same generator state. Gradient: q's parameters are detached inside log q,
    so autograd drops the score term -d/dphi log q_phi(z) |_(z fixed), whose expectation is 0, and
    keeps only the path through z:
    d/dphi = [d/dz (log p(x, z) - log q(z | x))] dz/dphi (Roeder, Wu & Duvenaud 2017, "Sticking the
    Landing"). It is unbiased for the ELBO's gradient and is exactly 0 for every draw when q = p(z |
    x), where the usual reparameterized gradient still has variance (from the score term). Gradients
    with respect to parameters inside `log_joint` are the usual ones.

    Args:
        log_joint: callable (x (B, d), z (K, B, k)) -> log p(x, z) (K, B).
        x: (B, d) observations.
        mu, logvar: (B, k) parameters of q(z | x).
        n_samples: K >= 1 samples per example.
        generator: optional torch.Generator.
    Returns:
        (B,) the ELBO estimate per example in nats, differentiable in mu and logvar with the
        path-derivative gradient.
    """
    _validate.function("log_joint", log_joint, "(x (B, d), z (K, B, k)) -> log p(x, z) (K, B)")
    _check_q(x, mu, logvar)
    _validate.count("n_samples", n_samples)
    _validate.generator("generator", generator)
    z = _sample_normal(
        mu, logvar, n_samples, generator
    )  # (K, B, k), reparameterized: gradients reach mu, logvar
    log_pxz = log_joint(x, z)
    if not isinstance(log_pxz, torch.Tensor) or log_pxz.shape != z.shape[:-1]:
        got = tuple(log_pxz.shape) if isinstance(log_pxz, torch.Tensor) else type(log_pxz).__name__
        raise ValueError(
            f"log_joint(x, z) must return shape {tuple(z.shape[:-1])} for z {tuple(z.shape)}, got "
            f"{got}"
        )
    return (log_pxz - _log_normal(z, mu.detach(), logvar.detach())).mean(0)  # (B,)
