"""The VAE's priors p(z): one torch module each, registered by name in `vaelib.registry.PRIORS`.

    normal   N(0, I_k), the default: no parameters, and KL(q(z | x) || p(z)) has a closed form
    mog      a learned mixture of C Gaussians: weights, means and log-variances (`logvar` = log
             sigma^2) are parameters
    vamp     the VampPrior, the mixture of the encoder's own posteriors at C learned pseudo-inputs
             u_c: p(z) = (1/C) sum_c q(z | u_c) (Tomczak & Welling 2018, eq. 9)

The VAE builds its prior as `cls(latent_dim, data_dim, unit_interval, **options)` (`unit_interval`:
the likelihood's data lie in [0, 1], so the VampPrior keeps its pseudo-inputs there) and calls

    log_prob(z, encode)       log p(z), z (..., k) -> (...) in nats, every constant kept
    sample(n, encode, draw)   n draws z ~ p(z), (n, k); `draw(fn, *shape)` returns torch.rand or
                              torch.randn noise of that shape from the caller's generator

where `encode` is the model's encoder x (..., D) -> (mu, logvar) (only the VampPrior uses it). Each
prior says `analytic_kl` (True only for "normal": the VAE keeps the closed-form KL; for the others
it estimates KL(q(z | x) || p(z)) by Monte Carlo at the reparameterized draws) and `options`, the
plain values its constructor took (the model's config stores them, so checkpoints rebuild it).

A new prior is one file: subclass `Prior`, then `PRIORS.register(MyPrior)` (the class: the model
builds one per instance).
"""

import math

import torch
from torch import nn

from vaelib import _memory, _validate
from vaelib.distributions import LOG_2PI


def log_mixture_normal(z, log_w, mu, logvar):
    """Log-density of a mixture of diagonal Gaussians, for many points at once.

    log p(z) = logsumexp_c [log w_c + log N(z; mu_c, diag exp(logvar_c))]. The squared distance is
    expanded, sum_j (z_j - mu_cj)^2 / sigma_cj^2 = z^2 . (1/sigma^2) - 2 z . (mu / sigma^2) +
    sum_j mu_cj^2 / sigma_cj^2, into two matrix products: memory and time scale with P C, not
    P C k (the VampPrior evaluates 500 components at every importance sample). The price is
    rounding: about eps (|z| + |mu|)^2 / sigma^2 nats (float32: 1e-4 for |z| = 3, sigma = 0.1).

    Args:
        z: (..., k) points.
        log_w: (C,) log mixture weights (normalised: logsumexp = 0).
        mu, logvar: (C, k) the components' means and log-variances.
    Returns:
        (...) log p(z) in nats.
    """
    prec = torch.exp(-logvar)  # (C, k) 1 / sigma^2
    const = -0.5 * (LOG_2PI * mu.shape[-1] + logvar.sum(-1) + (mu**2 * prec).sum(-1))  # (C,)
    quad = (z**2) @ prec.T - 2.0 * (z @ (mu * prec).T)  # (..., C)
    return torch.logsumexp(log_w + const - 0.5 * quad, -1)  # (...)


def _sample_mixture(n, log_w, mu, logvar, draw):
    """n draws from the mixture: a component by inverse CDF of a uniform, then its Gaussian."""
    cdf = torch.cumsum(torch.softmax(log_w, 0), 0)  # (C,)
    c = torch.searchsorted(cdf, draw(torch.rand, n, 1)).squeeze(1)  # (n,) component indices
    c = c.clamp(max=mu.shape[0] - 1)  # cdf[-1] can round below the uniform's largest values
    return mu[c] + torch.exp(0.5 * logvar[c]) * draw(torch.randn, n, mu.shape[1])  # (n, k)


class Prior(nn.Module):
    """The contract of a prior p(z) (module docstring); subclasses set the attributes and
    methods."""

    name = None
    help = ""
    scale = None  # a Registry fact; priors have no scale parameter
    analytic_kl = False
    defaults = {}  # option name -> default value

    def __init__(self, latent_dim, data_dim, unit_interval=False, **options):
        super().__init__()
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            known = ", ".join(self.defaults) or "none"
            raise ValueError(
                f"prior_options for prior={self.name!r} take {known}; got unknown {unknown}"
            )
        self.latent_dim, self.data_dim = latent_dim, data_dim
        self.options = {**self.defaults, **options}

    def log_prob(self, z, encode):
        raise NotImplementedError

    def sample(self, n, encode, draw):
        raise NotImplementedError

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


class StandardNormal(Prior):
    """p(z) = N(0, I_k): log p(z) = -1/2 sum_j [log 2 pi + z_j^2] (Kingma & Welling 2013)."""

    name = "normal"
    help = "N(0, I), the standard normal (closed-form KL)"
    analytic_kl = True

    def log_prob(self, z, encode=None):
        return -0.5 * (LOG_2PI + z**2).sum(-1)

    def sample(self, n, encode, draw):
        return draw(torch.randn, n, self.latent_dim)  # (n, k)


class MixtureOfGaussians(Prior):
    """p(z) = sum_c w_c N(z; mu_c, diag exp(logvar_c)), w = softmax(logits), all learned.

    Options: n_components C (default 10). Initial values: means drawn N(0, I) from torch's global
    generator (seed before building the model), log-variances 0, equal weights.
    """

    name = "mog"
    help = "a learned mixture of Gaussians (weights, means, variances)"
    defaults = {"n_components": 10}

    def __init__(self, latent_dim, data_dim, unit_interval=False, **options):
        super().__init__(latent_dim, data_dim, unit_interval, **options)
        C = _validate.count("prior_options['n_components']", self.options["n_components"])
        self.logits = nn.Parameter(torch.zeros(C))  # (C,)
        self.mu = nn.Parameter(torch.randn(C, latent_dim))  # (C, k)
        self.logvar = nn.Parameter(torch.zeros(C, latent_dim))  # (C, k)

    def log_prob(self, z, encode=None):
        return log_mixture_normal(z, torch.log_softmax(self.logits, 0), self.mu, self.logvar)

    def sample(self, n, encode, draw):
        return _sample_mixture(n, self.logits, self.mu, self.logvar, draw)


class VampPrior(Prior):
    """p(z) = (1/C) sum_c q(z | u_c): the encoder's Gaussians at C learned pseudo-inputs u_c.

    (Tomczak & Welling 2018, eq. 9.) The pseudo-inputs are parameters (C, D); with data in [0, 1]
    the encoder sees them clipped to [0, 1] (hardtanh, as in the authors' code). Options:
    n_components C (default 500, the paper's), init_mean and init_std of the pseudo-inputs' initial
    normal draw (default 0.05 and 0.01, the authors' for binary images; torch's global generator).
    Each evaluation runs the encoder on all C pseudo-inputs.
    """

    name = "vamp"
    help = "VampPrior: a mixture of the encoder's posteriors at learned pseudo-inputs"
    defaults = {"n_components": 500, "init_mean": 0.05, "init_std": 0.01}

    def __init__(self, latent_dim, data_dim, unit_interval=False, **options):
        super().__init__(latent_dim, data_dim, unit_interval, **options)
        C = _validate.count("prior_options['n_components']", self.options["n_components"])
        mean = self.options["init_mean"]
        if isinstance(mean, bool) or not isinstance(mean, (int, float)) or not math.isfinite(mean):
            raise ValueError(f"prior_options['init_mean'] must be a finite number, got {mean!r}")
        std = _validate.positive_scalar("prior_options['init_std']", self.options["init_std"])
        self.unit_interval = bool(unit_interval)
        # the pseudo-inputs are C more images, with their gradients and Adam's two moments
        _memory.check(
            "prior_options['n_components']",
            4 * C * data_dim * 4,
            f"a VampPrior of {C} pseudo-inputs of {data_dim} values with their gradients and Adam "
            "state",
            "lower prior_options['n_components'] (--prior-components on the command line)",
        )
        self.pseudo_inputs = nn.Parameter(mean + std * torch.randn(C, data_dim))  # (C, D)

    def inputs(self):
        """The pseudo-inputs as the encoder sees them, (C, D): clipped to [0, 1] for such data."""
        u = self.pseudo_inputs
        return u.clamp(0.0, 1.0) if self.unit_interval else u

    def components(self, encode):
        """(mu, logvar) of the C mixture components q(z | u_c), (C, k) each."""
        return encode(self.inputs())

    def log_prob(self, z, encode):
        mu, logvar = self.components(encode)
        log_w = torch.full((mu.shape[0],), -math.log(mu.shape[0]), dtype=mu.dtype, device=mu.device)
        return log_mixture_normal(z, log_w, mu, logvar)

    def sample(self, n, encode, draw):
        mu, logvar = self.components(encode)
        return _sample_mixture(n, torch.zeros_like(mu[:, 0]), mu, logvar, draw)
