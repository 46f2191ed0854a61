"""Evaluating a trained model: test ELBO, importance-weighted log-likelihood, active units.

All values are per example, in nats (divide by D log 2 for bits per dimension, `bits_per_dim`).
Functions run without gradients, in minibatches of `batch_size` examples on the model's device, and
return their results on the device of `x`. A Bernoulli model is evaluated on `x` as given: binarize
grey-scale test images first (e.g. `torch.bernoulli(x, generator=...)`, one fixed draw) to report numbers
that compare with published tables for dynamically binarized data.
"""

import math

import torch
from tqdm.auto import tqdm

from vaelib import _validate
from vaelib.distributions import _log_normal, _sample_normal
from vaelib.models import VAE, Autoencoder


def _check(model, x, batch_size, types=(VAE,)):
    if not isinstance(model, types):
        names = " or ".join(t.__name__ for t in types)
        raise TypeError(f"model must be a vaelib.models.{names}, got {type(model).__name__}")
    model._check_x(x, match_model=False)  # batches are converted to the model's dtype and device
    _validate.positive_int("batch_size", batch_size)


def _device_of(model):
    p = next(model.parameters())
    return p.device, p.dtype


def bits_per_dim(log_px, data_dim):
    """Convert a log-likelihood in nats per example to bits per dimension: -log_px / (D log 2)."""
    return -log_px / (data_dim * math.log(2.0))


@torch.no_grad()
def test_elbo(model, x, batch_size=1000, n_samples=1, generator=None):
    """The VAE's ELBO on each example of `x`: E_q[log p(x | z)] - KL(q(z | x) || N(0, I)).

    Monte Carlo over K = n_samples reparameterized samples of z, closed-form KL (Kingma & Welling 2013, eq. 10).

    Args:
        model: a vaelib.models.VAE.
        x: (N, D) data (binarized for a Bernoulli model, see the module docstring).
        batch_size: examples per forward pass.
        n_samples: K >= 1 samples of z per example.
        generator: optional torch.Generator on the model's device.
    Returns:
        (N,) ELBO per example in nats.
    """
    _check(model, x, batch_size)
    _validate.positive_int("n_samples", n_samples)
    _validate.generator("generator", generator)
    device, dtype = _device_of(model)
    out = [model._elbo_terms(xb.to(device, dtype), n_samples, generator).elbo for xb in x.split(batch_size)]
    return torch.cat(out).to(x.device)


@torch.no_grad()
def iwae_log_likelihood(model, x, k=5000, batch_size=100, chunk_size=500, generator=None, progress=False):
    """Importance-weighted estimate of log p(x) with the encoder as proposal (Burda et al. 2016, eq. 8).

    log p(x) ~= log (1/k) sum_{i=1..k} p(x, z_i) / q(z_i | x),  z_i ~ q(z | x) = N(mu(x), diag exp(logvar(x))).

    The k samples are drawn in chunks of `chunk_size` and combined with a running logsumexp, so memory
    is bounded by one chunk: about chunk_size * batch_size * (D + sum(hidden_dims) + 3 k_latent) numbers
    (activations of one decoder pass), whatever k is. k = 5000 is the usual setting for MNIST-like data;
    the estimate is biased low by about Var(w / p(x)) / (2k) and converges to log p(x) as k grows.

    Args:
        model: a vaelib.models.VAE.
        x: (N, D) data.
        k: importance samples per example (>= 1).
        batch_size: examples per pass.
        chunk_size: samples of z per pass (>= 1); the result does not depend on it beyond float rounding
            for a given sequence of draws.
        generator: optional torch.Generator on the model's device.
        progress: show a tqdm bar over the batches.
    Returns:
        (N,) estimate of log p(x) per example in nats.
    """
    _check(model, x, batch_size)
    _validate.positive_int("k", k)
    _validate.positive_int("chunk_size", chunk_size)
    _validate.generator("generator", generator)
    device, dtype = _device_of(model)
    out = []
    for xb in tqdm(x.split(batch_size), disable=not progress, unit="batch", desc=f"IWAE k={k}"):
        xb = xb.to(device, dtype)  # (B, D)
        mu, logvar = model._encode(xb)  # (B, k_latent) each
        acc = torch.full((xb.shape[0],), -math.inf, dtype=dtype, device=device)  # running log sum_i w_i, (B,)
        for start in range(0, k, chunk_size):
            m = min(chunk_size, k - start)
            z = _sample_normal(mu, logvar, m, generator)  # (m, B, k_latent)
            log_w = model._log_joint(xb, z) - _log_normal(z, mu, logvar)  # (m, B)
            acc = torch.logaddexp(acc, torch.logsumexp(log_w, 0))
        out.append(acc - math.log(k))
    return torch.cat(out).to(x.device)


@torch.no_grad()
def active_units(model, x, threshold=0.01, batch_size=1000):
    """Count the active latent dimensions: A_u = Cov_x(E_{q(u|x)}[u]) > threshold (Burda et al. 2016, sec. 5.2).

    The variance over the data of each coordinate u of the encoder mean mu(x) (the code z for an
    Autoencoder), with the unbiased (N - 1) normaliser. A unit whose mean ignores x is inactive:
    the KL term has pushed q(u | x) onto the prior (posterior collapse).

    Args:
        model: a vaelib.models.VAE or Autoencoder.
        x: (N, D) data, N >= 2.
        threshold: activity threshold (Burda et al. use 0.01).
        batch_size: examples per forward pass.
    Returns:
        count: int, the number of active units.
        variance: (k,) tensor, Cov_x(E_q[u]) for each latent dimension u, on the device of x.
    """
    _check(model, x, batch_size, types=(VAE, Autoencoder))
    if x.shape[0] < 2:
        raise ValueError(f"x must hold at least 2 examples to estimate a variance, got shape {tuple(x.shape)}")
    threshold = _validate.positive_scalar("threshold", threshold)
    device, dtype = _device_of(model)

    def mean_code(xb):
        out = model._encode(xb.to(device, dtype))
        return out[0] if isinstance(model, VAE) else out  # (B, k)

    mu = torch.cat([mean_code(xb) for xb in x.split(batch_size)])  # (N, k)
    variance = mu.var(0, correction=1).to(x.device)  # (k,)
    return int((variance > threshold).sum()), variance
