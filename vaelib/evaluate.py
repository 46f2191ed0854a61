"""Evaluating a trained model: test ELBO, importance-weighted log-likelihood, active units, and the
gaps between the ELBO and log p(x) (the best Gaussian q per example; approximation and amortization
gaps).

All values are per example, in nats (divide by D log 2 for bits per dimension, `bits_per_dim`).
Functions run without gradients (except inside `optimal_gaussian_elbo`, which climbs the ELBO in q's
own parameters and never changes the model), in minibatches of `batch_size` examples on the model's
device, and return their results on the device of `x`. A Bernoulli model is evaluated on `x` as
given: binarize grey-scale test images first (e.g. `torch.bernoulli(x, generator=...)`, one fixed
draw) to report numbers that compare with published tables for dynamically binarized data.

`x` may be a torch tensor or a numpy array (float32 or float64; e.g. your own data loaded with
np.load):
results are torch tensors either way (on the CPU for numpy input; `.numpy()` converts them back).

(Longer than most modules: each evaluation's argument checks and batching sit beside its formula.)
"""

import math
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from vaelib import _memory, _validate
from vaelib.distributions import _kl_normal, _log_normal, _sample_normal
from vaelib.models import VAE, Autoencoder, check_model
from vaelib.networks import device_dtype, in_eval_mode
from vaelib.registry import LIKELIHOODS


def _check(model, x, batch_size, types=(VAE,)):
    """Check the arguments; return x as a tensor (numpy arrays are converted)."""
    check_model(model, types)
    x = _validate.as_tensor("x", x)
    model.check_x(x, match_model=False)  # batches are converted to the model's dtype and device
    # NaN, inf, the range: scanned once, here
    _validate.values("x", x, unit_interval=LIKELIHOODS.get(model.likelihood).unit_interval)
    _validate.count("batch_size", batch_size)
    return x


def bits_per_dim(log_px, data_dim, levels=None):
    """Convert a log-likelihood in nats per example to bits per dimension: -log_px / (D log 2).

    Which scale: for binary data (Bernoulli) log_px is a log-probability and the result the bits
    per pixel of a code. For a density (Gaussian) the number depends on the data's units and can be
    negative; for 8-bit images dequantized to [0, 1] (`vaelib.data.dequantize`, x = (k + u) / 256)
    pass levels=256: the result is then on the discrete 8-bit scale, -(log_px - D log 256) / (D
    log 2) = the plain value + 8, an upper bound on the bits/dim of the pixel levels k, comparable
    with published tables (Theis, van den Oord & Bethge 2016, sec. 3.1).

    Args:
        log_px: log p(x) in nats: a float tensor or numpy array of any shape, or a number.
        data_dim: D >= 1, the number of dimensions (pixels) per example.
        levels: None (log_px as it is), or the number of levels per pixel of data dequantized to
            [0, 1] (256 for 8 bits): the density's change of scale D log(levels) is added.
    Returns:
        -(log_px - D log levels) / (D log 2), of the same kind and shape as log_px.
    """
    _validate.count("data_dim", data_dim)
    if levels is not None:
        _validate.count("levels", levels, minimum=2)
        shift = data_dim * math.log(levels)  # nats: density on [0, 1]^D -> probability of levels
        return bits_per_dim(log_px, data_dim) + shift / (data_dim * math.log(2.0))
    if isinstance(log_px, torch.Tensor):
        _validate.tensor("log_px", log_px, finite=False)
        if bool(torch.isnan(log_px).any()):
            raise ValueError(f"log_px contains NaN values (shape {tuple(log_px.shape)})")
    elif isinstance(log_px, bool) or not isinstance(
        log_px, (int, float, np.ndarray, np.floating, np.integer)
    ):
        raise TypeError(
            f"log_px must be a tensor, numpy array or number of nats, got {type(log_px).__name__}"
        )
    elif isinstance(log_px, np.ndarray) and log_px.dtype.kind not in "fiu":
        raise TypeError(f"log_px must hold real numbers, got a numpy array of dtype {log_px.dtype}")
    elif bool(np.isnan(log_px).any()):
        raise ValueError(f"log_px contains NaN values (shape {np.shape(log_px)})")
    return -log_px / (data_dim * math.log(2.0))


@in_eval_mode
@torch.no_grad()
def test_elbo(model, x, batch_size=1000, n_samples=1, generator=None):
    """The VAE's ELBO on each example of `x`: E_q[log p(x | z)] - KL(q(z | x) || N(0, I)).

    Monte Carlo over K = n_samples reparameterized samples of z, closed-form KL (Kingma & Welling
    2013, eq. 10).

    Args:
        model: a vaelib.models.VAE.
        x: (N, D) data, tensor or numpy array (binarized for a Bernoulli model, see the module
            docstring).
        batch_size: examples per forward pass.
        n_samples: K >= 1 samples of z per example.
        generator: optional torch.Generator on the model's device.
    Returns:
        (N,) ELBO per example in nats.
    """
    x = _check(model, x, batch_size)
    _validate.count("n_samples", n_samples)
    _validate.generator("generator", generator)
    device, dtype = device_dtype(model)
    out = [
        _elbo_in_chunks(model, xb.to(device, dtype), n_samples, generator)
        for xb in x.split(batch_size)
    ]
    return torch.cat(out).to(x.device)


class RateDistortion(NamedTuple):
    """The ELBO's two terms over a dataset (`rate_distortion`), means per example in nats, with
    their standard errors over the examples: elbo = -(rate + distortion)."""

    rate: float  # mean KL(q(z | x) || p(z)): nats the code spends on each example
    distortion: float  # mean -E_q[log p(x | z)]: what the decoder fails to reconstruct
    elbo: float  # mean ELBO
    rate_se: float  # standard error of `rate`: std over examples (N - 1) / sqrt(N)
    distortion_se: float
    elbo_se: float
    n: int  # examples


@in_eval_mode
@torch.no_grad()
def rate_distortion(model, x, batch_size=1000, n_samples=1, generator=None):
    """Rate and distortion of a VAE on a dataset: the two terms of its ELBO, each with a standard
    error.

    rate R = (1/N) sum_n KL(q(z | x_n) || p(z)) (closed form), distortion D = -(1/N) sum_n
    E_q[log p(x_n | z)] (Monte Carlo over n_samples draws), ELBO = -(R + D) (Alemi et al. 2018,
    "Fixing a Broken ELBO", sec. 2). Standard errors: the sample std over examples (N - 1) divided
    by sqrt(N) (NaN for N = 1). Across a beta sweep, D against R traces the rate-distortion curve
    (`vaelib.plotting.rate_distortion`).

    Args:
        model: a vaelib.models.VAE.
        x: (N, D) data, tensor or numpy array (binarized for a Bernoulli model, module docstring).
        batch_size, n_samples, generator: as in `test_elbo`.
    Returns:
        RateDistortion(rate, distortion, elbo, rate_se, distortion_se, elbo_se, n), floats in nats.
    """
    x = _check(model, x, batch_size)
    _validate.count("n_samples", n_samples)
    _validate.generator("generator", generator)
    if x.shape[0] == 0:
        raise ValueError(f"x must hold at least one example, got shape {tuple(x.shape)}")
    device, dtype = device_dtype(model)
    parts = [
        model.elbo_terms(xb.to(device, dtype), n_samples, generator) for xb in x.split(batch_size)
    ]
    kl = torch.cat([p.kl for p in parts]).double()  # (N,)
    distortion = -torch.cat([p.log_px_z for p in parts]).double()  # (N,)
    n = kl.shape[0]

    def mean_se(v):
        se = v.std(correction=1).item() / math.sqrt(n) if n > 1 else math.nan
        return v.mean().item(), se

    (r, r_se), (d, d_se), (e, e_se) = map(mean_se, (kl, distortion, -(kl + distortion)))
    return RateDistortion(r, d, e, r_se, d_se, e_se, n)


def _elbo_in_chunks(model, xb, n_samples, generator):
    """model.elbo_terms(xb, n_samples).elbo, with the K samples split into chunks that fit in a
    quarter of the memory when all K at once would not: log_px_z = sum_chunks k_c log_px_z_c / K."""
    per_sample = model._elbo_bytes(xb.shape[0], 1, xb.element_size())
    chunk = max(1, _memory.limit_bytes() // 4 // per_sample)
    if n_samples <= chunk:
        return model.elbo_terms(xb, n_samples, generator).elbo
    log_px_z, kl, done = 0.0, 0.0, 0
    while done < n_samples:
        k = min(chunk, n_samples - done)
        terms = model.elbo_terms(xb, k, generator)
        log_px_z = log_px_z + terms.log_px_z * k  # (B,)
        kl = kl + terms.kl * k  # (B,) the same for every chunk with the closed-form KL; a Monte
        done += k  # Carlo KL (a learned prior) is averaged over all the draws like log_px_z
    return (log_px_z - kl) / n_samples


@in_eval_mode
@torch.no_grad()
def iwae_log_likelihood(
    model, x, K=5000, batch_size=100, chunk_size=500, generator=None, progress=False, *, k=None
):
    """Importance-weighted estimate of log p(x) with the encoder as proposal (Burda et al. 2016, eq.
    8).

    log p(x) ~= log (1/K) sum_{i=1..K} p(x, z_i) / q(z_i | x),  z_i ~ q(z | x) = N(mu(x), diag
    exp(logvar(x))).

    The K samples are drawn in chunks of `chunk_size` and combined with a running logsumexp, so
    memory is bounded by one chunk, whatever K is: the peak is about
        chunk_size * batch_size * max(4.5 D, 2 D + 2 h) numbers (4 bytes each in float32, 8 in
        float64),
    h the widest hidden layer: the log-likelihood's temporaries over the decoder output (B, D), or a
    hidden layer's pre- and post-activation. Measured (peak RSS increase, resource.getrusage, D =
    784, h = 400, batch_size = 100, chunk_size = 500, float32): 612 MB Bernoulli, 650 MB Gaussian;
    the formula gives 706 MB, and came within 0.86-1.0x of the measurement for D in {64, 784}, h in
    {0, 200, 400, 1000}. Lower batch_size or chunk_size to fit. K = 5000 is the usual setting for
    MNIST-like data; the estimate is biased low by about Var(w / p(x)) / (2K) and converges to log
    p(x) as K grows. chunk_size changes the random draws, not the estimator: torch fills normal
    samples in blocks, so K samples drawn in chunks of another size can be other numbers from the
    same generator (a different result of the same IWAE_K estimator, differing by Monte Carlo
    noise).

    Args:
        model: a vaelib.models.VAE.
        x: (N, D) data, tensor or numpy array.
        K: importance samples per example (>= 1).
        batch_size: examples per pass.
        chunk_size: samples of z per pass (>= 1); sets the memory (above). For a given sequence of
            draws the result does not depend on it beyond float rounding, but it can change the
            draws.
        generator: optional torch.Generator on the model's device.
        progress: show a tqdm bar over the batches.
        k: the same as K (an alias; k is the latent size everywhere else in vaelib).
    Returns:
        (N,) estimate of log p(x) per example in nats.
    """
    K = _validate.renamed("K", K, "k", k, default=5000)
    x = _check(model, x, batch_size)
    _validate.count("K", K)
    _validate.count("chunk_size", chunk_size)
    _validate.generator("generator", generator)
    device, dtype = device_dtype(model)
    out = []
    for xb in tqdm(x.split(batch_size), disable=not progress, unit="batch", desc=f"IWAE K={K}"):
        xb = xb.to(device, dtype)  # (B, D)
        mu, logvar = model.encode(xb)  # (B, k) each
        out.append(_iwae(model, xb, mu, logvar, K, chunk_size, generator))
    return torch.cat(out).to(x.device)


def _iwae(model, xb, mu, logvar, K, chunk_size, generator):
    """log (1/K) sum_i p(xb, z_i) / q(z_i) with z_i ~ q = N(mu, diag exp(logvar)), in chunks of
    samples.  (B,)"""
    acc = torch.full(
        (xb.shape[0],), -math.inf, dtype=mu.dtype, device=mu.device
    )  # running log sum_i w_i, (B,)
    for start in range(0, K, chunk_size):
        m = min(chunk_size, K - start)
        z = _sample_normal(mu, logvar, m, generator)  # (m, B, k)
        log_w = model.log_joint(xb, z) - _log_normal(z, mu, logvar)  # (m, B)
        acc = torch.logaddexp(acc, torch.logsumexp(log_w, 0))
    return acc - math.log(K)


@in_eval_mode
@torch.no_grad()
def active_units(model, x, threshold=0.01, batch_size=1000):
    """Count the active latent dimensions: A_u = Cov_x(E_{q(u|x)}[u]) > threshold (Burda et al.
    2016, sec. 5.2).

    The variance over the data of each coordinate u of the encoder mean mu(x) (the code z for an
    Autoencoder), with the unbiased (N - 1) normaliser. A unit whose mean ignores x is inactive:
    the KL term has pushed q(u | x) onto the prior (posterior collapse).

    Args:
        model: a vaelib.models.VAE or Autoencoder.
        x: (N, D) data, N >= 2, tensor or numpy array.
        threshold: activity threshold (Burda et al. use 0.01).
        batch_size: examples per forward pass.
    Returns:
        count: int, the number of active units.
        variance: (k,) tensor, Cov_x(E_q[u]) for each latent dimension u, on the device of x.
    """
    x = _check(model, x, batch_size, types=(VAE, Autoencoder))
    if x.shape[0] < 2:
        raise ValueError(
            f"x must hold at least 2 examples to estimate a variance, got shape {tuple(x.shape)}"
        )
    threshold = _validate.positive_scalar("threshold", threshold)
    device, dtype = device_dtype(model)

    def mean_code(xb):
        out = model.encode(xb.to(device, dtype))
        return out[0] if isinstance(model, VAE) else out  # (B, k)

    mu = torch.cat([mean_code(xb) for xb in x.split(batch_size)])  # (N, k)
    variance = mu.var(0, correction=1).to(x.device)  # (k,)
    return int((variance > threshold).sum()), variance


@in_eval_mode
@torch.no_grad()
def kl_per_unit(model, x, batch_size=1000):
    """The KL term per latent unit, averaged over the data: which units carry information about x.

    KL_j = (1/N) sum_n 1/2 [exp(logvar_nj) + mu_nj^2 - 1 - logvar_nj],  (mu_n, logvar_n) =
    encoder(x_n); the units' KL_j add up to the mean KL(q(z | x) || N(0, I)) of the ELBO (Kingma &
    Welling 2013, app. B). A unit with KL_j near 0 has collapsed onto the prior (see also
    `active_units`).

    Only for the prior N(0, I): a learned prior (`VAE(prior="vamp")`, "mog") does not factorise
    over the units, so its KL term does not split into per-unit parts, and this function raises
    ValueError rather than return the KL to N(0, I), which would not add up to the model's KL.
    `active_units` works with every prior.

    Args:
        model: a vaelib.models.VAE with the prior N(0, I).
        x: (N, D) data, tensor or numpy array (binarized for a Bernoulli model, see the module
            docstring).
        batch_size: examples per forward pass.
    Returns:
        (k,) tensor of KL_j in nats, on the device of x (the CPU for numpy input).
    """
    x = _check(model, x, batch_size)
    if not model.prior.analytic_kl:  # the models' own test for a closed-form KL to N(0, I)
        raise ValueError(
            f"kl_per_unit needs the prior N(0, I); this model's prior is "
            f"{model.config.get('prior')!r}, which does not factorise over the latent units, so "
            "its KL term has no per-unit split (use active_units, which works with every prior, "
            "or the model's whole KL: model.elbo_terms)"
        )
    if x.shape[0] == 0:
        raise ValueError(f"x must hold at least one example, got shape {tuple(x.shape)}")
    device, dtype = device_dtype(model)
    total = torch.zeros(model.latent_dim, dtype=dtype, device=device)  # (k,) sum over examples
    for xb in x.split(batch_size):
        mu, logvar = model.encode(xb.to(device, dtype))  # (B, k) each
        total += _kl_normal(mu[..., None], logvar[..., None]).sum(
            0
        )  # KL per unit (B, k, 1) -> (B, k) -> (k,)
    return (total / x.shape[0]).to(x.device)


# -- the gaps between the ELBO and log p(x)
# ----------------------------------------------------------


class OptimalGaussian(NamedTuple):
    """What `optimal_gaussian_elbo` returns: the best Gaussian q of each example and two ELBOs, in
    nats."""

    elbo: torch.Tensor  # (N,) ELBO of the optimised q (Monte Carlo, eval_samples draws)
    mu: torch.Tensor  # (N, k) means of the optimised q
    logvar: torch.Tensor  # (N, k) log-variances of the optimised q
    elbo_encoder: (
        torch.Tensor
    )  # (N,) ELBO of the starting q (the encoder's), with the same draws as `elbo`


class ELBOGaps(NamedTuple):
    """What `elbo_gaps` returns, each (N,) in nats: log_px - elbo_encoder = approximation_gap +
    amortization_gap."""

    log_px: (
        torch.Tensor
    )  # importance-sampling estimate of log p(x), proposal 1/2 (encoder's q + q*) (`elbo_gaps`)
    elbo_encoder: torch.Tensor  # ELBO of the encoder's q(z | x)
    elbo_optimal: torch.Tensor  # ELBO of the best diagonal Gaussian q for each example
    approximation_gap: (
        torch.Tensor
    )  # log_px - elbo_optimal: the price of a diagonal Gaussian family
    amortization_gap: (
        torch.Tensor
    )  # elbo_optimal - elbo_encoder: the price of one encoder for all x


def _mc_elbos(model, xb, qs, n_samples, chunk_size, generator):
    """ELBO = mean_s [log p(xb, z_s) - log q(z_s)] for each q = (mu, logvar) in `qs`, all with the
    same eps.  [(B,)]"""
    sums = [torch.zeros(xb.shape[0], dtype=xb.dtype, device=xb.device) for _ in qs]
    for start in range(0, n_samples, chunk_size):
        m = min(chunk_size, n_samples - start)
        eps = torch.randn(
            m, *qs[0][0].shape, generator=generator, dtype=xb.dtype, device=xb.device
        )  # (m, B, k)
        for i, (mu, logvar) in enumerate(qs):
            z = mu + torch.exp(0.5 * logvar) * eps  # (m, B, k)
            sums[i] += (model.log_joint(xb, z) - _log_normal(z, mu, logvar)).sum(
                0
            )  # (m, B) -> (B,)
    return [s / n_samples for s in sums]


@in_eval_mode
def optimal_gaussian_elbo(
    model,
    x,
    steps=500,
    lr=0.1,
    n_samples=16,
    eval_samples=1000,
    batch_size=1000,
    chunk_size=250,
    generator=None,
):
    """The ELBO of the best diagonal Gaussian q for each example, with the decoder held fixed.

    ELBO*(x_i) = max over (mu_i, logvar_i) of E_q[log p(x_i | z)] - KL(q || N(0, I)),  q = N(mu_i,
    diag exp(logvar_i)):
    one free q per example instead of the encoder's q(z | x_i) (the optimal q* of Cremer, Li &
    Duvenaud 2018, "Inference Suboptimality in Variational Autoencoders", table 1). Each q starts at
    the encoder's output and climbs the ELBO with Adam: reparameterized path-derivative gradients
    (Roeder, Wu & Duvenaud 2017, "Sticking the Landing"; n_samples draws of z per step), which are
    exactly zero at the true posterior, and a learning rate decaying linearly from lr to 0, so the
    final q does not jitter. Adam's update is elementwise and the objective a sum over examples, so
    the N optimisations run side by side without interacting. Only q's parameters move: the model's
    weights and their .grad are untouched. The final ELBOs average log p(x, z) - log q(z) over
    eval_samples fresh draws (the estimator of `vaelib.estimators.elbo`, exact when q is the
    posterior); the encoder's q is evaluated with the same standard-normal draws, so `elbo -
    elbo_encoder` (the amortization gap) carries less Monte Carlo noise than two independent
    estimates.

    Args:
        model: a vaelib.models.VAE.
        x: (N, D) data (binarized for a Bernoulli model, see the module docstring).
        steps: Adam steps per example (>= 1).
        lr: initial Adam learning rate (> 0): the first steps move each mu_j and logvar_j by about
            lr.
        n_samples: draws of z per example and step (>= 1).
        eval_samples: draws of z per example for the final ELBOs (>= 1).
        batch_size: examples optimised together (memory only: the examples do not interact).
        chunk_size: draws of z per decoder pass in the final evaluation.
        generator: optional torch.Generator on the model's device.
    Returns:
        OptimalGaussian(elbo (N,), mu (N, k), logvar (N, k), elbo_encoder (N,)), on the device of x.
    """
    x = _check(model, x, batch_size)
    _validate.count("steps", steps)
    lr = _validate.positive_scalar("lr", lr)
    _validate.count("n_samples", n_samples)
    _validate.count("eval_samples", eval_samples)
    _validate.count("chunk_size", chunk_size)
    _validate.generator("generator", generator)
    device, dtype = device_dtype(model)
    outs = []
    for xb in x.split(batch_size):
        xb = xb.to(device, dtype)  # (B, D)
        with torch.no_grad():
            mu0, logvar0 = model.encode(xb)  # (B, k) each: the starting point
        mu = mu0.clone().requires_grad_(True)
        logvar = logvar0.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([mu, logvar], lr=lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0 - t / steps)
        with torch.enable_grad():
            for _ in range(steps):
                z = _sample_normal(mu, logvar, n_samples, generator)  # (S, B, k), reparameterized
                # log p(x, z) - log q(z) with q's parameters detached inside log q: the path
                # derivative ("sticking the landing", Roeder, Wu & Duvenaud 2017), an unbiased
                # gradient of the ELBO whose variance vanishes when q equals the posterior. Not the
                # ELBO's value: only its gradient is used.
                surrogate = (
                    model.log_joint(xb, z) - _log_normal(z, mu.detach(), logvar.detach())
                ).mean(0)  # (B,)
                grad_mu, grad_logvar = torch.autograd.grad(-surrogate.sum(), (mu, logvar))
                mu.grad, logvar.grad = grad_mu, grad_logvar
                optimizer.step()
                schedule.step()
        mu, logvar = mu.detach(), logvar.detach()
        with torch.no_grad():
            qs = [
                (mu, logvar),
                (mu0, logvar0),
            ]  # the optimised q and the starting q, evaluated with the same eps
            elbo, elbo_encoder = _mc_elbos(model, xb, qs, eval_samples, chunk_size, generator)
        outs.append((elbo, mu, logvar, elbo_encoder))
    return OptimalGaussian(*(torch.cat(parts).to(x.device) for parts in zip(*outs)))


def _iwae_mixture(model, xb, qs, K, chunk_size, generator):
    """log (1/K) sum_i p(xb, z_i) / r(z_i), r = sum_j (K_j / K) q_j, with K_j of the K draws from
    each q_j.  (B,)

    Multiple importance sampling with the balance heuristic (Veach & Guibas 1995): the K draws are
    split as evenly as possible between the proposals q_j = N(mu_j, diag exp(logvar_j)) in `qs`, and
    every draw is weighted by the mixture density r, whatever component it came from. The average
    weight is then unbiased for p(xb), so its log is a lower bound in expectation (Jensen); each
    weight is at most p(xb, z) / ((K_j / K) q_j(z)) for every j, so the estimate is never much worse
    than the better proposal's.
    """
    counts = [K // len(qs) + (j < K % len(qs)) for j in range(len(qs))]  # K_j, summing to K
    log_frac = [math.log(c / K) if c > 0 else -math.inf for c in counts]
    acc = torch.full(
        (xb.shape[0],), -math.inf, dtype=qs[0][0].dtype, device=qs[0][0].device
    )  # log sum_i w_i, (B,)
    for (mu, logvar), count in zip(qs, counts):
        for start in range(0, count, chunk_size):
            m = min(chunk_size, count - start)
            z = _sample_normal(mu, logvar, m, generator)  # (m, B, k)
            log_r = torch.logsumexp(
                torch.stack(
                    [
                        f + _log_normal(z, mu_j, logvar_j)
                        for f, (mu_j, logvar_j) in zip(log_frac, qs)
                        if f > -math.inf
                    ]
                ),
                0,
            )  # (m, B)
            acc = torch.logaddexp(acc, torch.logsumexp(model.log_joint(xb, z) - log_r, 0))
    return acc - math.log(K)


@in_eval_mode
def elbo_gaps(
    model,
    x,
    K=1000,
    steps=500,
    lr=0.1,
    n_samples=16,
    eval_samples=1000,
    batch_size=1000,
    chunk_size=250,
    generator=None,
    *,
    k=None,
):
    """Split log p(x) - ELBO into the approximation gap and the amortization gap (Cremer et al.
    2018, table 1)::

        log p(x) - ELBO[q_phi(z|x)] = (log p(x) - ELBO[q*]) + (ELBO[q*] - ELBO[q_phi(z|x)])
                                    =  approximation gap    +  amortization gap,

    where q* is the best diagonal Gaussian for each example (`optimal_gaussian_elbo`). log p(x) is
    estimated by importance sampling with the mixture proposal r = 1/2 (q_phi(z|x) + q*), K/2 draws
    from each and every draw weighted by p(x, z) / r(z) (the balance heuristic, Veach & Guibas
    1995)::

        log_px = log (1/K) sum_i p(x, z_i) / r(z_i).

    The average weight is unbiased for p(x), so log_px is a lower bound in expectation, like IWAE_K,
    and the mixture covers the posterior wherever either proposal does (q* fits the posterior's main
    mode more closely, the encoder's q is often wider). Taking the larger of two separate IWAE
    estimates instead would be biased upward: the maximum of two noisy estimates is not a bound.

    Args:
        model: a vaelib.models.VAE.
        x: (N, D) data (binarized for a Bernoulli model).
        K: importance samples per example for the log p(x) estimate (ceil(K/2) from the encoder's q,
            the rest from q*).
        steps, lr, n_samples, eval_samples, batch_size, chunk_size, generator: as in
            `optimal_gaussian_elbo` (chunk_size also for the importance sampling).
        k: the same as K (an alias; k is the latent size everywhere else in vaelib).
    Returns:
        ELBOGaps(log_px, elbo_encoder, elbo_optimal, approximation_gap, amortization_gap), each
        (N,), on the device of x. Both gaps are >= 0 up to Monte Carlo and optimisation error.
    """
    K = _validate.renamed("K", K, "k", k, default=1000)
    _validate.count("K", K)
    x = _validate.as_tensor("x", x)
    opt = optimal_gaussian_elbo(
        model,
        x,
        steps=steps,
        lr=lr,
        n_samples=n_samples,
        eval_samples=eval_samples,
        batch_size=batch_size,
        chunk_size=chunk_size,
        generator=generator,
    )
    device, dtype = device_dtype(model)
    log_px = []
    with torch.no_grad():
        for xb, mub, logvarb in zip(
            x.split(batch_size), opt.mu.split(batch_size), opt.logvar.split(batch_size)
        ):
            xb = xb.to(device, dtype)  # (B, D)
            qs = [
                model.encode(xb),
                (mub.to(device, dtype), logvarb.to(device, dtype)),
            ]  # encoder's q, q*: (B, k) each
            log_px.append(_iwae_mixture(model, xb, qs, K, chunk_size, generator))
    log_px = torch.cat(log_px).to(x.device)
    return ELBOGaps(
        log_px, opt.elbo_encoder, opt.elbo, log_px - opt.elbo, opt.elbo - opt.elbo_encoder
    )
