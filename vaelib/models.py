"""The Variational Autoencoder and a plain Autoencoder with the same MLP encoder and decoder.

VAE (Kingma & Welling 2013): prior p(z) = N(0, I_k); decoder p(x | z) = Bernoulli(sigmoid(logits(z)))
or N(mean(z), sigma_x^2 I_D); encoder q(z | x) = N(mu(x), diag exp(logvar(x))). `logvar` is always
log sigma^2. Shapes are batch first: x (B, D), z (B, k); extra Monte Carlo samples of z live on a
leading dimension, z (K, B, k), and broadcast against x. Per-example values are summed over pixels
and latent dimensions and returned as (B,); the mean over the batch happens only in `loss`. All values
are in nats with every normalising constant kept (Gaussian: -1/2 log 2 pi sigma_x^2 per pixel).

Public methods validate their arguments (type, dtype, shape, finiteness, and x in [0, 1] for a Bernoulli
likelihood); the underscored versions skip the checks and are what `vaelib.train.fit` calls per step.
The constructor arguments are kept in `model.config`, so a checkpoint can rebuild the model
(`vaelib.train.load_checkpoint`).
"""

import math
from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import nn

from vaelib import _validate
from vaelib.distributions import LOG_2PI, _kl_normal, _log_bernoulli, _log_normal, _sample_normal

LIKELIHOODS = ("bernoulli", "gaussian")


class ELBOTerms(NamedTuple):
    """The per-example ELBO and its two parts, each (B,) in nats: elbo = log_px_z - kl."""

    elbo: torch.Tensor  # (B,)
    log_px_z: torch.Tensor  # (B,) Monte Carlo estimate of E_q[log p(x | z)], the reconstruction term
    kl: torch.Tensor  # (B,) closed-form KL(q(z | x) || N(0, I))


def _check_dims(data_dim, latent_dim, hidden_dims):
    _validate.positive_int("data_dim", data_dim)
    _validate.positive_int("latent_dim", latent_dim)
    if isinstance(hidden_dims, (str, bytes)) or not hasattr(hidden_dims, "__iter__"):
        raise TypeError(f"hidden_dims must be a sequence of ints such as (400,), got {type(hidden_dims).__name__}")
    hidden_dims = tuple(hidden_dims)
    for i, h in enumerate(hidden_dims):
        _validate.positive_int(f"hidden_dims[{i}]", h)
    return hidden_dims


def _check_likelihood(likelihood, sigma_x):
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {', '.join(map(repr, LIKELIHOODS))}, got {likelihood!r}")
    return _validate.positive_scalar("sigma_x", sigma_x)


def _mlp(sizes, prefix):
    """Linear + ReLU for each consecutive pair of sizes: hidden1, relu1, hidden2, relu2, ..."""
    layers = OrderedDict()
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        layers[f"{prefix}{i}"] = nn.Linear(n_in, n_out)
        layers[f"relu{i}"] = nn.ReLU()
    return layers


class _EncoderDecoder(nn.Module):
    """Shared parts: the encoder body, the decoder, the likelihood p(x | z), argument checks."""

    def __init__(self, data_dim, latent_dim, hidden_dims, likelihood, sigma_x, learn_sigma_x):
        super().__init__()
        hidden_dims = _check_dims(data_dim, latent_dim, hidden_dims)
        sigma_x = _check_likelihood(likelihood, sigma_x)
        if not isinstance(learn_sigma_x, bool):
            raise TypeError(f"learn_sigma_x must be a bool, got {type(learn_sigma_x).__name__}")
        if learn_sigma_x and likelihood != "gaussian":
            raise ValueError("learn_sigma_x=True needs likelihood='gaussian' (a Bernoulli likelihood has no sigma_x)")
        self.data_dim = data_dim
        self.latent_dim = latent_dim
        self.hidden_dims = hidden_dims
        self.likelihood = likelihood
        width = hidden_dims[-1] if hidden_dims else data_dim
        # encoder: x (..., D) -> h (..., width); the subclasses add the heads (to_mu, to_logvar).
        self.encoder = nn.Sequential(_mlp((data_dim, *hidden_dims), "hidden"))
        # decoder: z (..., k) -> logits or mean (..., D); the hidden layers mirror the encoder's.
        decoder = _mlp((latent_dim, *hidden_dims[::-1]), "hidden")
        out = "to_logits" if likelihood == "bernoulli" else "to_mean"
        decoder[out] = nn.Linear(hidden_dims[0] if hidden_dims else latent_dim, data_dim)
        self.decoder = nn.Sequential(decoder)
        self._width = width
        # log sigma_x of the Gaussian likelihood: a parameter when learned; when fixed, a Python float,
        # which keeps full precision whatever the model's dtype.
        if likelihood == "gaussian" and learn_sigma_x:
            self.log_sigma_x = nn.Parameter(torch.tensor(math.log(sigma_x)))
        else:
            self.log_sigma_x = math.log(sigma_x)
        self._config = {
            "data_dim": data_dim,
            "latent_dim": latent_dim,
            "hidden_dims": list(hidden_dims),
            "likelihood": likelihood,
            "sigma_x": sigma_x,
        }

    @property
    def config(self):
        """The constructor arguments, as a dict of plain values: `type(model)(**model.config)` rebuilds it."""
        return dict(self._config, hidden_dims=list(self._config["hidden_dims"]))

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self._config.items())

    def _param(self):
        return next(self.parameters())

    @property
    def sigma_x(self):
        """sigma_x of the Gaussian likelihood as a float (its current value when learned); None for Bernoulli."""
        if self.likelihood != "gaussian":
            return None
        log_sigma_x = self.log_sigma_x
        return math.exp(log_sigma_x if isinstance(log_sigma_x, float) else log_sigma_x.detach().item())

    # -- checks -------------------------------------------------------------------------------------
    def _check_like_model(self, name, t):
        p = self._param()
        if t.dtype != p.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but the model's parameters are {p.dtype}: "
                            f"convert one of them ({name}.to({p.dtype}) or model.to({t.dtype}))")
        if t.device != p.device:
            raise ValueError(f"{name} is on {t.device} but the model is on {p.device}: move one of them")

    def _check_x(self, x, name="x", event_only=False, match_model=True):
        _validate.tensor(name, x, min_dim=1, finite=False)
        if match_model:
            self._check_like_model(name, x)
        if event_only:
            ok, want = x.shape[-1] == self.data_dim, f"(..., {self.data_dim})"
        else:
            ok, want = x.dim() == 2 and x.shape[1] == self.data_dim, f"(B, {self.data_dim}) = (batch, data_dim)"
        if not ok:
            raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
        _check_values(name, x, unit_interval=self.likelihood == "bernoulli")
        return x

    def _check_z(self, z, name="z"):
        _validate.tensor(name, z, min_dim=1)
        self._check_like_model(name, z)
        if z.shape[-1] != self.latent_dim:
            raise ValueError(f"{name} must have shape (..., {self.latent_dim}) = (..., latent_dim), got {tuple(z.shape)}")
        return z

    # -- decoder and likelihood ---------------------------------------------------------------------
    def _decode(self, z):
        return self.decoder(z)

    def decode(self, z):
        """Decoder output: logits of p(x | z) (Bernoulli) or its mean (Gaussian).

        Args:
            z: (..., k) latent codes.
        Returns:
            (..., D) logits (apply sigmoid for pixel probabilities) or means.
        """
        return self._decode(self._check_z(z))

    def _log_px_z(self, x, out):
        """log p(x | z) from the decoder output `out` (logits or mean), summed over pixels."""
        if self.likelihood == "bernoulli":
            return _log_bernoulli(x, out)
        # log N(x; mean, sigma_x^2 I) = -1/2 sum_d [log 2 pi + 2 log sigma_x + (x_d - mean_d)^2 / sigma_x^2]
        if isinstance(self.log_sigma_x, float):
            return _log_normal(x, out, torch.full((), 2.0 * self.log_sigma_x, dtype=out.dtype, device=out.device))
        return _log_normal(x, out, 2.0 * self.log_sigma_x)

    def _mean_of(self, out):
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out


class VAE(_EncoderDecoder):
    """Variational Autoencoder with an MLP encoder q(z | x) and decoder p(x | z) (Kingma & Welling 2013).

    ELBO(x) = E_q(z|x)[log p(x | z)] - KL(q(z | x) || N(0, I))  (Kingma & Welling 2013, eq. 10).

    Encoder: x -> [Linear, ReLU] per hidden layer -> `to_mu`, `to_logvar` (Linear heads, (B, k) each).
    Decoder: z -> [Linear, ReLU] per hidden layer (reversed) -> `decoder.to_logits` (Bernoulli) or
    `decoder.to_mean` (Gaussian). `hidden_dims=()` gives linear maps: the linear VAE
    `VAE(D, k, hidden_dims=(), likelihood="gaussian", learn_sigma_x=True)` has probabilistic PCA as its decoder
    (Tipping & Bishop 1999), and its ELBO can reach pPCA's maximum log-likelihood (Lucas et al. 2019; notebook 10).

    Args:
        data_dim: D, pixels per example.
        latent_dim: k, latent dimensions.
        hidden_dims: widths of the encoder's hidden layers (the decoder mirrors them).
        likelihood: "bernoulli" (x in [0, 1], decoder returns logits) or "gaussian" (decoder returns the mean).
        sigma_x: the Gaussian likelihood's standard deviation (its initial value when learned).
        learn_sigma_x: learn log sigma_x as a parameter (Gaussian only).
    Seed torch's global generator (torch.manual_seed) before constructing for reproducible initial weights.
    """

    def __init__(self, data_dim, latent_dim, hidden_dims=(400,), likelihood="bernoulli", sigma_x=1.0, learn_sigma_x=False):
        super().__init__(data_dim, latent_dim, hidden_dims, likelihood, sigma_x, learn_sigma_x)
        self.to_mu = nn.Linear(self._width, latent_dim)
        self.to_logvar = nn.Linear(self._width, latent_dim)
        self._config["learn_sigma_x"] = learn_sigma_x

    # -- encoder ------------------------------------------------------------------------------------
    def _encode(self, x):
        h = self.encoder(x)
        return self.to_mu(h), self.to_logvar(h)

    def encode(self, x):
        """Parameters of q(z | x) = N(mu, diag exp(logvar)).

        Args:
            x: (..., D) data.
        Returns:
            mu, logvar: (..., k) each.
        """
        return self._encode(self._check_x(x, event_only=True))

    # -- densities ----------------------------------------------------------------------------------
    def _log_likelihood(self, x, z):
        return self._log_px_z(x, self._decode(z))

    def log_likelihood(self, x, z):
        """log p(x | z), summed over pixels.

        Args:
            x: (B, D) data.
            z: (..., B, k) latent codes, e.g. (K, B, k) for K samples per example.
        Returns:
            (..., B) in nats.
        """
        self._check_x(x)
        self._check_z(z)
        return self._log_likelihood(x, z)

    def log_prior(self, z):
        """log p(z) = log N(z; 0, I_k) = -1/2 sum_j [log 2 pi + z_j^2].  z: (..., k) -> (...)."""
        self._check_z(z)
        return -0.5 * (LOG_2PI + z**2).sum(-1)

    def _log_joint(self, x, z):
        return self._log_likelihood(x, z) - 0.5 * (LOG_2PI + z**2).sum(-1)

    def log_joint(self, x, z):
        """log p(x, z) = log p(x | z) + log p(z), in the form `vaelib.estimators` expects.

        Args:
            x: (B, D) data.
            z: (K, B, k) latent samples (any leading shape that broadcasts against x's batch).
        Returns:
            (K, B) in nats.
        """
        self._check_x(x)
        self._check_z(z)
        return self._log_joint(x, z)

    # -- the bound ----------------------------------------------------------------------------------
    def _elbo_terms(self, x, n_samples=1, generator=None):
        mu, logvar = self._encode(x)  # (B, k) each
        if n_samples == 1:  # the common case, without a sample dimension (the same draws as K = 1)
            z = _sample_normal(mu, logvar, None, generator)  # (B, k)
            log_px_z = self._log_px_z(x, self._decode(z))  # (B,)
        else:
            z = _sample_normal(mu, logvar, n_samples, generator)  # (K, B, k)
            log_px_z = self._log_px_z(x, self._decode(z)).mean(0)  # (K, B) -> (B,)
        kl = _kl_normal(mu, logvar)  # (B,)
        return ELBOTerms(log_px_z - kl, log_px_z, kl)

    def _check_elbo_args(self, x, n_samples, generator):
        self._check_x(x)
        _validate.positive_int("n_samples", n_samples)
        _validate.generator("generator", generator)

    def elbo_terms(self, x, n_samples=1, generator=None):
        """The per-example ELBO and its parts: reconstruction term and closed-form KL.

        elbo = log_px_z - kl, log_px_z = (1/K) sum_k log p(x | z_k) with z_k = mu + exp(logvar/2) eps_k,
        kl = 1/2 sum_j [exp(logvar_j) + mu_j^2 - 1 - logvar_j]  (Kingma & Welling 2013, eq. 10 and app. B).

        Args:
            x: (B, D) data (in [0, 1] for a Bernoulli likelihood).
            n_samples: K >= 1 reparameterized samples of z per example.
            generator: optional torch.Generator (on the model's device) for the noise eps.
        Returns:
            ELBOTerms(elbo, log_px_z, kl), each (B,) in nats.
        """
        self._check_elbo_args(x, n_samples, generator)
        return self._elbo_terms(x, n_samples, generator)

    def elbo(self, x, n_samples=1, generator=None):
        """Per-example ELBO in nats: E_q[log p(x | z)] - KL(q(z | x) || N(0, I)), see `elbo_terms`.

        Args:
            x: (B, D) data.
            n_samples: K >= 1 reparameterized samples of z per example.
            generator: optional torch.Generator (on the model's device).
        Returns:
            (B,) ELBO per example, differentiable in the parameters.
        """
        return self.elbo_terms(x, n_samples, generator).elbo

    def _loss(self, x, beta=1.0, n_samples=1, generator=None):
        terms = self._elbo_terms(x, n_samples, generator)
        return -(terms.log_px_z - beta * terms.kl).mean(), terms

    def loss(self, x, beta=1.0, n_samples=1, generator=None):
        """Training loss: minus the batch mean of the per-example ELBO (of the beta-weighted objective).

        loss = -(1/B) sum_b [log_px_z_b - beta kl_b]; with beta = 1 (the default) this is -elbo(x).mean().
        beta != 1 weights the KL as in the beta-VAE (Higgins et al. 2017); that objective is not a bound.

        Args:
            x: (B, D) data.
            beta: KL weight >= 0.
            n_samples: K >= 1 samples of z per example.
            generator: optional torch.Generator (on the model's device).
        Returns:
            0-dim tensor.
        """
        self._check_elbo_args(x, n_samples, generator)
        beta = _check_beta(beta)
        return self._loss(x, beta, n_samples, generator)[0]

    # -- generation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n, generator=None):
        """Ancestral samples shown as images: z ~ N(0, I_k), then the decoder's mean E[x | z].

        Returns pixel probabilities sigmoid(logits) (Bernoulli) or the Gaussian mean, not a noisy draw.

        Args:
            n: number of samples >= 1.
            generator: optional torch.Generator (its device is used for z, then z moves to the model's).
        Returns:
            (n, D) tensor, no gradient.
        """
        _validate.positive_int("n", n)
        _validate.generator("generator", generator)
        p = self._param()
        device = generator.device if generator is not None else p.device
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=p.dtype, device=device).to(p.device)  # (n, k)
        return self._mean_of(self._decode(z))


class Autoencoder(_EncoderDecoder):
    """A deterministic autoencoder with the VAE's encoder and decoder, trained by maximum likelihood.

    loss = -(1/B) sum_b log p(x_b | z_b),  z_b = to_mu(encoder(x_b)): the same likelihood as the VAE,
    so its reconstruction term compares with the VAE's E_q[log p(x | z)] (there is no KL and no prior).

    Args:
        data_dim: D, pixels per example.
        latent_dim: k, size of the code.
        hidden_dims: widths of the encoder's hidden layers (the decoder mirrors them).
        likelihood: "bernoulli" or "gaussian".
        sigma_x: the Gaussian likelihood's standard deviation (fixed).
    The code layer is called `to_mu` (the layer where the VAE puts its mean), so the two models' state
    dicts share every key except the VAE's `to_logvar`.
    """

    def __init__(self, data_dim, latent_dim, hidden_dims=(400,), likelihood="bernoulli", sigma_x=1.0):
        super().__init__(data_dim, latent_dim, hidden_dims, likelihood, sigma_x, False)
        self.to_mu = nn.Linear(self._width, latent_dim)

    def _encode(self, x):
        return self.to_mu(self.encoder(x))

    def encode(self, x):
        """The code z = to_mu(encoder(x)).  x: (..., D) -> z: (..., k)."""
        return self._encode(self._check_x(x, event_only=True))

    def _reconstruction_log_likelihood(self, x):
        return self._log_px_z(x, self._decode(self._encode(x)))

    def reconstruction_log_likelihood(self, x):
        """log p(x | z = encode(x)) per example, summed over pixels.

        Args:
            x: (B, D) data (in [0, 1] for a Bernoulli likelihood).
        Returns:
            (B,) in nats.
        """
        return self._reconstruction_log_likelihood(self._check_x(x))

    def _loss(self, x):
        log_px_z = self._reconstruction_log_likelihood(x)
        return -log_px_z.mean(), log_px_z

    def loss(self, x):
        """Minus the batch mean of the reconstruction log-likelihood: -(1/B) sum_b log p(x_b | z_b).

        Args:
            x: (B, D) data.
        Returns:
            0-dim tensor.
        """
        return self._loss(self._check_x(x))[0]


MODELS = {"VAE": VAE, "Autoencoder": Autoencoder}


def _check_values(name, x, unit_interval):
    """Finite values (and in [0, 1] if `unit_interval`), in one pass over x: min and max propagate NaN."""
    if x.numel() == 0:
        return
    lo, hi = torch.stack(torch.aminmax(x)).tolist()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = "NaN" if math.isnan(lo) else "inf"
        raise ValueError(f"{name} contains {bad} values (shape {tuple(x.shape)}); expected finite numbers")
    if unit_interval and (lo < 0 or hi > 1):
        raise ValueError(
            f"{name} must lie in [0, 1] for a Bernoulli likelihood or binarization, got values in "
            f"[{lo:.4g}, {hi:.4g}] (shape {tuple(x.shape)})"
        )


def _check_beta(beta):
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"beta must be a number, got {type(beta).__name__}")
    beta = float(beta)
    if not (beta >= 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    return beta
