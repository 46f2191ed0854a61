"""The Variational Autoencoder and a plain Autoencoder with the same MLP encoder and decoder.

VAE (Kingma & Welling 2013): prior p(z) = N(0, I_k); decoder p(x | z) =
    Bernoulli(sigmoid(logits(z)))
or N(mean(z), sigma_x^2 I_D); encoder q(z | x) = N(mu(x), diag exp(logvar(x))). `logvar` is always
log sigma^2. Shapes are batch first: x (B, D), z (B, k); extra Monte Carlo samples of z live on a
leading dimension, z (K, B, k), and broadcast against x. Per-example values are summed over pixels
and latent dimensions and returned as (B,); the mean over the batch happens only in `loss` (and
`loss_terms`). All values are in nats with every normalising constant kept (Gaussian: -1/2 log 2 pi
sigma_x^2 per pixel).

The methods check their arguments' type, dtype, device and shape (cheap, so `vaelib.train.fit` calls
them every step). Values (NaN, inf, x outside [0, 1] for a Bernoulli likelihood) are scanned once
where data enter:
`vaelib.train.fit`, the functions of `vaelib.evaluate` and `vaelib.data.load`. The constructor
arguments are kept in `model.config`, so a checkpoint can rebuild the model
(`vaelib.checkpoints.load_checkpoint`). The likelihood is an object of `vaelib.likelihoods`, found
by its name in `vaelib.registry.LIKELIHOODS`.

What `fit`, `vaelib.evaluate`, the plots and the explorers use, and a model of your own must
provide: `data_dim`, `latent_dim`, `likelihood` (a registered name), `check_x`, `encode`, `decode`,
`decode_mean`, `loss_terms` (and for a VAE `log_joint` and `elbo_terms`).

(Longer than most modules: two models on one base class, every public method with its argument
checks; the MLP and the checks of your own networks live in `vaelib.networks`.)

Your own networks: `VAE(D, k, encoder=module, decoder=module)` (and the same for `Autoencoder`)
replaces the MLP with any torch.nn.Module that keeps this contract, checked once at construction on
a dummy batch:
    encoder: x (B, D) -> (B, 2k) [mu in the first k columns, logvar in the last k] or a pair (mu,
        logvar), (B, k) each
             (an Autoencoder's encoder returns the code, (B, k));
    decoder: z (..., k) -> (..., D) logits (Bernoulli) or means (Gaussian), keeping any leading
        sample
             dimensions: z (K, B, k) -> (K, B, D), each z[i] decoded on its own.
Such a model's config says so (`config["encoder"] == "custom"` and/or `config["decoder"] ==
"custom"`), so it is never mistaken for the MLP it is not; its weights load into a model you build
(`vaelib.checkpoints.load_checkpoint(path, model=...)`).
"""

import math
import os
import sys
import warnings
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from vaelib import _memory, _validate
from vaelib.distributions import LOG_2PI, _kl_normal, _sample_normal
from vaelib.networks import check_decoder, check_encoder, check_module, device_dtype, mlp
from vaelib.registry import LIKELIHOODS


class LossTerms(NamedTuple):
    """What `loss_terms` returns: the training loss and its per-example parts, (B,) each, in
    nats."""

    loss: torch.Tensor  # 0-dim: -(1/B) sum_b [log_px_z_b - beta kl_b]
    log_px_z: torch.Tensor  # (B,) the reconstruction term
    kl: torch.Tensor  # (B,) KL(q(z | x) || N(0, I)); zeros for an Autoencoder


class ELBOTerms(NamedTuple):
    """The per-example ELBO and its two parts, each (B,) in nats: elbo = log_px_z - kl."""

    elbo: torch.Tensor  # (B,)
    log_px_z: (
        torch.Tensor
    )  # (B,) Monte Carlo estimate of E_q[log p(x | z)], the reconstruction term
    kl: torch.Tensor  # (B,) closed-form KL(q(z | x) || N(0, I))


DEFAULT_HIDDEN_DIMS = (400,)


def _default_itemsize():
    return torch.get_default_dtype().itemsize


def _check_dims(data_dim, latent_dim, hidden_dims):
    _validate.count("data_dim", data_dim)
    _validate.count("latent_dim", latent_dim)
    if hidden_dims is None:
        return DEFAULT_HIDDEN_DIMS
    if isinstance(hidden_dims, (str, bytes)) or not hasattr(hidden_dims, "__iter__"):
        raise TypeError(
            "hidden_dims must be a sequence of ints such as (400,), got "
            f"{type(hidden_dims).__name__}"
        )
    hidden_dims = tuple(hidden_dims)
    for i, h in enumerate(hidden_dims):
        _validate.count(f"hidden_dims[{i}]", h)
    return hidden_dims


def _check_sigma_x(sigma_x, data_dim):
    """sigma_x as a float (shared by all pixels) or a float64 CPU tensor (D,) (one per pixel)."""
    if isinstance(sigma_x, (list, tuple, np.ndarray)) or (
        isinstance(sigma_x, torch.Tensor) and sigma_x.dim() > 0
    ):
        try:
            vec = torch.as_tensor(
                np.asarray(
                    sigma_x.detach().cpu() if isinstance(sigma_x, torch.Tensor) else sigma_x,
                    dtype=np.float64,
                )
            )
        except (TypeError, ValueError):
            raise TypeError(
                f"sigma_x must be a number or a sequence of {data_dim} numbers, got {sigma_x!r:.80}"
            ) from None
        if vec.shape != (data_dim,):
            raise ValueError(
                f"sigma_x must be a number or have shape (D,) = ({data_dim},), got shape "
                f"{tuple(vec.shape)}"
            )
        if not bool(((vec > 0) & torch.isfinite(vec)).all()):
            raise ValueError(
                f"sigma_x must be finite and positive in every dimension, got values in "
                f"[{vec.min().item():.4g}, {vec.max().item():.4g}]"
            )
        return vec
    return _validate.positive_scalar("sigma_x", sigma_x)


class _EncoderDecoder(nn.Module):
    """Shared parts: the encoder body, the decoder, the likelihood p(x | z), argument checks."""

    def __init__(
        self,
        data_dim,
        latent_dim,
        hidden_dims,
        likelihood,
        sigma_x,
        learn_sigma_x,
        encoder,
        decoder,
    ):
        super().__init__()
        custom_encoder, custom_decoder = (
            check_module("encoder", encoder),
            check_module("decoder", decoder),
        )
        both_custom = custom_encoder is not None and custom_decoder is not None
        if both_custom and hidden_dims is not None:
            raise ValueError(
                f"hidden_dims={hidden_dims!r} describes the MLP encoder and decoder; with your own "
                f"encoder "
                "and decoder there is no MLP: leave hidden_dims out"
            )
        hidden_dims = _check_dims(data_dim, latent_dim, hidden_dims)
        if not both_custom:  # the MLP's weights, gradients and Adam moments must fit in memory
            _memory.check(
                "hidden_dims",
                _memory.mlp_bytes(data_dim, latent_dim, hidden_dims, _default_itemsize()),
                f"a model with hidden_dims {list(hidden_dims)} (data_dim {data_dim})",
            )
        lik = LIKELIHOODS.get(likelihood)
        sigma_x = _check_sigma_x(sigma_x, data_dim)
        if not isinstance(learn_sigma_x, bool):
            raise TypeError(f"learn_sigma_x must be a bool, got {type(learn_sigma_x).__name__}")
        if learn_sigma_x and lik.scale is None:
            scaled = " or ".join(
                f"likelihood={n!r}" for n in LIKELIHOODS.names() if LIKELIHOODS.scale(n)
            )
            raise ValueError(
                f"learn_sigma_x=True needs {scaled} (a {likelihood.capitalize()} likelihood has no "
                f"sigma_x)"
            )
        self.data_dim = data_dim
        self.latent_dim = latent_dim
        self.hidden_dims = None if both_custom else hidden_dims
        self.likelihood = likelihood  # the registered name; the object is self._lik
        self._lik = lik
        self.custom_encoder = custom_encoder is not None
        self.custom_decoder = custom_decoder is not None
        width = hidden_dims[-1] if hidden_dims else data_dim
        if custom_encoder is None:
            # encoder: x (..., D) -> h (..., width); the subclasses add the heads (to_mu,
            # to_logvar).
            self.encoder = nn.Sequential(mlp((data_dim, *hidden_dims), "hidden"))
        else:
            self.encoder = custom_encoder  # checked by the subclass, whose contract it is
        if custom_decoder is None:
            # decoder: z (..., k) -> logits or mean (..., D); the hidden layers mirror the
            # encoder's.
            layers = mlp((latent_dim, *hidden_dims[::-1]), "hidden")
            layers[lik.output] = nn.Linear(hidden_dims[0] if hidden_dims else latent_dim, data_dim)
            self.decoder = nn.Sequential(layers)
        else:
            check_decoder(custom_decoder, data_dim, latent_dim)
            self.decoder = custom_decoder
        self._width = width
        # log sigma_x of a likelihood with a scale (Gaussian), shared () or per pixel (D,): a
        # parameter when learned; when fixed, a float64 buffer (kept out of the state dict: the
        # config holds sigma_x; `_apply` keeps it float64 through model.float() / .double() /
        # .to()), cast to the data's dtype where it is used. Bernoulli: none.
        vector = isinstance(sigma_x, torch.Tensor)
        log_sigma = (
            torch.log(sigma_x) if vector else torch.tensor(math.log(sigma_x), dtype=torch.float64)
        )
        if lik.scale is not None and learn_sigma_x:
            self.log_sigma_x = nn.Parameter(log_sigma.to(torch.get_default_dtype()))
        elif lik.scale is not None:
            self.register_buffer("log_sigma_x", log_sigma, persistent=False)
            self._log_sigma_x64 = log_sigma  # the exact value, for _apply
        else:
            self.log_sigma_x = None
        # A fixed sigma_x = 1 on data in [0, 1] lets the KL term win (notebook 07): the model warns
        # once, at the first data, while this is True. Set it to False when sigma_x = 1 is what you
        # mean (a demonstration of the collapse).
        self.warn_unit_sigma_x = (
            lik.scale is not None
            and not learn_sigma_x
            and bool((torch.as_tensor(sigma_x) == 1.0).all())
        )
        self._config = {
            "data_dim": data_dim,
            "latent_dim": latent_dim,
            "hidden_dims": None if both_custom else list(hidden_dims),
            "likelihood": likelihood,
            "sigma_x": sigma_x.tolist() if vector else sigma_x,
        }

    def _finish_config(self, learn_sigma_x):
        self._config["learn_sigma_x"] = learn_sigma_x
        if (
            self.custom_encoder or self.custom_decoder
        ):  # absent for the MLP model: its config rebuilds it
            self._config["encoder"] = "custom" if self.custom_encoder else "mlp"
            self._config["decoder"] = "custom" if self.custom_decoder else "mlp"

    def _apply(self, fn, *args, **kwargs):
        """What .to() / .float() / .double() / .cuda() call: a fixed sigma_x follows the device, and
        stays float64."""
        super()._apply(fn, *args, **kwargs)
        if hasattr(self, "_log_sigma_x64"):
            self.log_sigma_x = self._log_sigma_x64.to(self.log_sigma_x.device)
        return self

    @property
    def config(self):
        """The constructor arguments as a dict of plain values: `type(model)(**model.config)`
        rebuilds an MLP model.

        A model with your own encoder or decoder has config["encoder"] / config["decoder"] set to
        "custom" (the other one "mlp"), and hidden_dims None when both are custom: the config
        describes it but cannot rebuild it (load its weights into a model you build:
        `vaelib.checkpoints.load_checkpoint(path, model=...)`). sigma_x is a float or a list of D
        floats (the initial value when learned).
        """
        out = dict(self._config)
        for key in ("hidden_dims", "sigma_x"):
            if isinstance(out[key], list):
                out[key] = list(out[key])
        return out

    def extra_repr(self):
        return ", ".join(
            f"{k}={v!r}"
            if k != "sigma_x" or not isinstance(v, list)
            else f"sigma_x=<{len(v)} values>"
            for k, v in self._config.items()
        )

    @property
    def sigma_x(self):
        """sigma_x of the Gaussian likelihood (its current value when learned); None for Bernoulli.

        A float when shared by all pixels; a float64 CPU tensor (D,) (a copy) when per pixel.
        """
        if self.log_sigma_x is None:
            return None
        sigma = torch.exp(self.log_sigma_x.detach().to("cpu", torch.float64))
        return sigma.item() if sigma.dim() == 0 else sigma

    # -- checks
    # -------------------------------------------------------------------------------------
    def _check_like_model(self, name, t):
        device, dtype = device_dtype(self)
        if t.dtype != dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but the model's parameters are {dtype}: "
                f"convert one of them ({name}.to({dtype}) or model.to({t.dtype}))"
            )
        if t.device != device:
            raise ValueError(
                f"{name} is on {t.device} but the model is on {device}: move one of them"
            )

    def check_x(self, x, name="x", event_only=False, match_model=True):
        """Check the type and shape of data x for this model; return x.

        x must be a float tensor of shape (B, D) ((..., D) with event_only); with match_model, in
        the model's dtype and on its device (without, half precision is accepted too: the caller
        converts). Values (NaN, inf, the range) are not scanned here: `fit` and `vaelib.evaluate`
        scan them once where data enter. Raises TypeError or ValueError naming `name`.
        """
        _validate.tensor(
            name, x, min_dim=1, finite=False, allow_half=not match_model
        )  # converted when not matched
        if match_model:
            self._check_like_model(name, x)
        if event_only:
            ok, want = x.shape[-1] == self.data_dim, f"(..., {self.data_dim})"
        else:
            ok, want = (
                x.dim() == 2 and x.shape[1] == self.data_dim,
                f"(B, {self.data_dim}) = (batch, data_dim)",
            )
        if not ok:
            raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
        return x

    def _check_z(self, z, name="z"):
        _validate.tensor(name, z, min_dim=1, finite=False)
        self._check_like_model(name, z)
        if z.shape[-1] != self.latent_dim:
            raise ValueError(
                f"{name} must have shape (..., {self.latent_dim}) = (..., latent_dim), got "
                f"{tuple(z.shape)}"
            )
        return z

    # -- decoder and likelihood
    # ---------------------------------------------------------------------
    def decode(self, z):
        """Decoder output: logits of p(x | z) (Bernoulli) or its mean (Gaussian).

        Args:
            z: (..., k) latent codes.
        Returns:
            (..., D) logits (apply sigmoid for pixel probabilities) or means.
        """
        return self.decoder(self._check_z(z))

    def decode_mean(self, z):
        """E[x | z], the mean of p(x | z): pixel probabilities sigmoid(logits) (Bernoulli) or the
        mean (Gaussian).

        Args:
            z: (..., k) latent codes.
        Returns:
            (..., D).
        """
        return self._lik.mean(self.decode(z))

    def _log_px_z(self, x, out):
        """log p(x | z) from the decoder output `out` (logits or mean), summed over pixels."""
        if self.warn_unit_sigma_x:
            self._warn_about_sigma_x(x)
        return self._lik.log_prob(x, out, self.log_sigma_x)

    def _warn_about_sigma_x(self, x):
        self.warn_unit_sigma_x = False  # once per model, at the first data it sees
        if x.numel() and 0.0 <= x.min().item() and x.max().item() <= 1.0:
            warnings.warn(
                f"{type(self).__name__} has a fixed sigma_x = 1 on data in [0, 1], where a "
                f"{self.likelihood.capitalize()} likelihood barely "
                "rewards reconstruction and the model collapses to the prior (notebook 07): pass a "
                "smaller sigma_x "
                "(e.g. 0.1) or learn_sigma_x=True.",
                UserWarning,
                stacklevel=_caller_outside_vaelib(),
            )


class VAE(_EncoderDecoder):
    """Variational Autoencoder with an MLP (or your own) encoder q(z | x) and decoder p(x | z)
    (Kingma & Welling 2013).

    ELBO(x) = E_q(z|x)[log p(x | z)] - KL(q(z | x) || N(0, I))  (Kingma & Welling 2013, eq. 10).

    Encoder: x -> [Linear, ReLU] per hidden layer -> `to_mu`, `to_logvar` (Linear heads, (B, k)
        each).
    Decoder: z -> [Linear, ReLU] per hidden layer (reversed) -> `decoder.to_logits` (Bernoulli) or
    `decoder.to_mean` (Gaussian). `hidden_dims=()` gives linear maps: the linear VAE `VAE(D, k,
    hidden_dims=(), likelihood="gaussian", learn_sigma_x=True)` has probabilistic PCA as its decoder
    (Tipping & Bishop 1999), and its ELBO can reach pPCA's maximum log-likelihood (Lucas et al.
    2019; notebook 10).

    Args:
        data_dim: D, pixels per example.
        latent_dim: k, latent dimensions.
        hidden_dims: widths of the encoder's hidden layers (the decoder mirrors them); None means
            (400,).
        likelihood: "bernoulli" (x in [0, 1], decoder returns logits) or "gaussian" (decoder returns
            the mean).
        sigma_x: the Gaussian likelihood's standard deviation (its initial value when learned): a
            number shared by all pixels, or a sequence/array/tensor of D numbers, one per pixel. A
            fixed sigma_x = 1 on data in [0, 1] warns (UserWarning) the first time the model sees
            data: the model collapses (notebook 07).
        learn_sigma_x: learn log sigma_x as a parameter, shared or per pixel as sigma_x is (Gaussian
            only).
        encoder: None for the MLP, or your own nn.Module x (B, D) -> (B, 2k) or (mu, logvar) (module
            docstring).
        decoder: None for the MLP, or your own nn.Module z (..., k) -> (..., D), keeping leading
            dimensions.
    Seed torch's global generator (torch.manual_seed) before constructing for reproducible initial
    weights.
    """

    def __init__(
        self,
        data_dim,
        latent_dim,
        hidden_dims=None,
        likelihood="bernoulli",
        sigma_x=1.0,
        learn_sigma_x=False,
        encoder=None,
        decoder=None,
    ):
        super().__init__(
            data_dim, latent_dim, hidden_dims, likelihood, sigma_x, learn_sigma_x, encoder, decoder
        )
        if self.custom_encoder:
            check_encoder(self.encoder, data_dim, latent_dim, pair_allowed=True)
        else:
            self.to_mu = nn.Linear(self._width, latent_dim)
            self.to_logvar = nn.Linear(self._width, latent_dim)
        self._finish_config(learn_sigma_x)

    # -- encoder
    # ------------------------------------------------------------------------------------
    def encode(self, x):
        """Parameters of q(z | x) = N(mu, diag exp(logvar)).

        Args:
            x: (..., D) data.
        Returns:
            mu, logvar: (..., k) each.
        """
        self.check_x(x, event_only=True)
        if not self.custom_encoder:
            h = self.encoder(x)
            return self.to_mu(h), self.to_logvar(h)
        out = self.encoder(
            x.reshape(-1, self.data_dim)
        )  # your encoder takes (B, D): leading dimensions flattened
        mu, logvar = (
            tuple(out) if isinstance(out, (tuple, list)) else out.chunk(2, dim=-1)
        )  # (B, 2k) -> 2 x (B, k)
        return mu.reshape(*x.shape[:-1], -1), logvar.reshape(*x.shape[:-1], -1)

    # -- densities
    # ----------------------------------------------------------------------------------
    def log_likelihood(self, x, z):
        """log p(x | z), summed over pixels.

        Args:
            x: (B, D) data.
            z: (..., B, k) latent codes, e.g. (K, B, k) for K samples per example.
        Returns:
            (..., B) in nats.
        """
        self.check_x(x)
        return self._log_px_z(x, self.decode(z))

    def log_prior(self, z):
        """log p(z) = log N(z; 0, I_k) = -1/2 sum_j [log 2 pi + z_j^2].  z: (..., k) -> (...)."""
        self._check_z(z)
        return -0.5 * (LOG_2PI + z**2).sum(-1)

    def log_joint(self, x, z):
        """log p(x, z) = log p(x | z) + log p(z), in the form `vaelib.estimators` expects.

        Args:
            x: (B, D) data.
            z: (K, B, k) latent samples (any leading shape that broadcasts against x's batch).
        Returns:
            (K, B) in nats.
        """
        return self.log_likelihood(x, z) + self.log_prior(z)

    # -- the bound
    # ----------------------------------------------------------------------------------
    def elbo_terms(self, x, n_samples=1, generator=None):
        """The per-example ELBO and its parts: reconstruction term and closed-form KL.

        elbo = log_px_z - kl, log_px_z = (1/K) sum_k log p(x | z_k) with z_k = mu + exp(logvar/2)
        eps_k, kl = 1/2 sum_j [exp(logvar_j) + mu_j^2 - 1 - logvar_j]  (Kingma & Welling 2013, eq.
        10 and app. B).

        Args:
            x: (B, D) data (in [0, 1] for a Bernoulli likelihood).
            n_samples: K >= 1 reparameterized samples of z per example.
            generator: optional torch.Generator (on the model's device) for the noise eps.
        Returns:
            ELBOTerms(elbo, log_px_z, kl), each (B,) in nats.
        """
        self.check_x(x)
        n_samples = _validate.count("n_samples", n_samples)
        _validate.generator("generator", generator)
        _memory.check(
            "n_samples",
            3
            * n_samples
            * x.shape[0]
            * (self.data_dim + self._width + 2 * self.latent_dim)
            * x.element_size(),
            f"the ELBO with n_samples={n_samples} for {x.shape[0]} examples",
            "lower n_samples, or evaluate fewer examples at once (vaelib.evaluate.test_elbo "
            "splits large n_samples into chunks)",
        )
        mu, logvar = self.encode(x)  # (B, k) each
        if n_samples == 1:  # the common case, without a sample dimension (the same draws as K = 1)
            z = _sample_normal(mu, logvar, None, generator)  # (B, k)
            log_px_z = self._log_px_z(x, self.decoder(z))  # (B,)
        else:
            z = _sample_normal(mu, logvar, n_samples, generator)  # (K, B, k)
            log_px_z = self._log_px_z(x, self.decoder(z)).mean(0)  # (K, B) -> (B,)
        kl = _kl_normal(mu, logvar)  # (B,)
        return ELBOTerms(log_px_z - kl, log_px_z, kl)

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

    def loss_terms(self, x, beta=1.0, n_samples=1, generator=None):
        """The training loss and its per-example parts: what `fit` calls every step and the
        validation uses.

        loss = -(1/B) sum_b [log_px_z_b - beta kl_b], with log_px_z and kl from `elbo_terms`.

        Args:
            x: (B, D) data; n_samples, generator: as in `elbo_terms`; beta: KL weight >= 0.
        Returns:
            LossTerms(loss 0-dim, log_px_z (B,), kl (B,)).
        """
        terms = self.elbo_terms(x, n_samples, generator)
        return LossTerms(
            -(terms.log_px_z - _validate.beta(beta) * terms.kl).mean(), terms.log_px_z, terms.kl
        )

    def loss(self, x, beta=1.0, n_samples=1, generator=None):
        """Training loss: minus the batch mean of the per-example ELBO (of the beta-weighted
        objective).

        loss = -(1/B) sum_b [log_px_z_b - beta kl_b]; with beta = 1 (the default) this is
        -elbo(x).mean(). beta != 1 weights the KL as in the beta-VAE (Higgins et al. 2017); that
        objective is not a bound.

        Args:
            x: (B, D) data.
            beta: KL weight >= 0.
            n_samples: K >= 1 samples of z per example.
            generator: optional torch.Generator (on the model's device).
        Returns:
            0-dim tensor.
        """
        _validate.nonempty_batch("x", self.check_x(x))  # the mean over an empty batch is NaN
        return self.loss_terms(x, beta, n_samples, generator).loss

    # -- generation
    # ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n, generator=None, noisy=False):
        """Ancestral samples: z ~ N(0, I_k), then the decoder's mean E[x | z], or a draw x ~ p(x |
        z).

        noisy=False (the default, what one shows as images): pixel probabilities sigmoid(logits)
        (Bernoulli) or the Gaussian mean. noisy=True: a draw from p(x | z): mean + sigma_x * eps
        with eps ~ N(0, I) (Gaussian), or binary pixels, 1 with probability sigmoid(logits)
        (Bernoulli).

        Args:
            n: number of samples >= 1.
            generator: optional torch.Generator (its device is used for the draws, which then move
                to the model's).
            noisy: return draws from p(x | z) instead of its mean.
        Returns:
            (n, D) tensor, no gradient.
        """
        n = _validate.count("n", n)
        _validate.generator("generator", generator)
        if not isinstance(noisy, bool):
            raise TypeError(f"noisy must be a bool, got {type(noisy).__name__}")
        model_device, dtype = device_dtype(self)
        _memory.check(
            "n",
            2 * n * (2 * self.data_dim + self._width + self.latent_dim) * dtype.itemsize,
            f"sample({n}) ({n} x {self.data_dim} values)",
            "draw fewer samples at once (lower n, or --n on the command line)",
        )
        device = generator.device if generator is not None else model_device

        def draw(fn, *shape):  # on the generator's device, then moved to the model's
            return fn(*shape, generator=generator, dtype=dtype, device=device).to(model_device)

        z = draw(torch.randn, n, self.latent_dim)  # (n, k)
        out = self.decoder(z)  # (n, D) logits or mean
        if not noisy:
            return self._lik.mean(out)
        return self._lik.sample(
            out, self.log_sigma_x, lambda fn: draw(fn, n, self.data_dim)
        )  # (n, D)


class Autoencoder(_EncoderDecoder):
    """A deterministic autoencoder with the VAE's encoder and decoder, trained by maximum
    likelihood.

    loss = -(1/B) sum_b log p(x_b | z_b),  z_b = to_mu(encoder(x_b)): the same likelihood as the
    VAE, so its reconstruction term compares with the VAE's E_q[log p(x | z)] (there is no KL and no
    prior).

    Args:
        data_dim: D, pixels per example.
        latent_dim: k, size of the code.
        hidden_dims: widths of the encoder's hidden layers (the decoder mirrors them); None means
            (400,).
        likelihood: "bernoulli" or "gaussian".
        sigma_x: the Gaussian likelihood's standard deviation: a number, or D numbers (one per
            pixel), as for VAE.
        learn_sigma_x: learn log sigma_x by maximum likelihood (Gaussian only).
        encoder: None for the MLP, or your own nn.Module x (B, D) -> the code (B, k).
        decoder: None for the MLP, or your own nn.Module z (..., k) -> (..., D), keeping leading
            dimensions.
    The code layer is called `to_mu` (the layer where the VAE puts its mean), so the two models'
    state dicts share every key except the VAE's `to_logvar`.
    """

    def __init__(
        self,
        data_dim,
        latent_dim,
        hidden_dims=None,
        likelihood="bernoulli",
        sigma_x=1.0,
        learn_sigma_x=False,
        encoder=None,
        decoder=None,
    ):
        super().__init__(
            data_dim, latent_dim, hidden_dims, likelihood, sigma_x, learn_sigma_x, encoder, decoder
        )
        if self.custom_encoder:
            check_encoder(self.encoder, data_dim, latent_dim, pair_allowed=False)
        else:
            self.to_mu = nn.Linear(self._width, latent_dim)
        self._finish_config(learn_sigma_x)

    def encode(self, x):
        """The code z = to_mu(encoder(x)) (or your encoder's output).  x: (..., D) -> z: (...,
        k)."""
        self.check_x(x, event_only=True)
        if not self.custom_encoder:
            return self.to_mu(self.encoder(x))
        return self.encoder(x.reshape(-1, self.data_dim)).reshape(
            *x.shape[:-1], -1
        )  # your encoder takes (B, D)

    def reconstruction_log_likelihood(self, x):
        """log p(x | z = encode(x)) per example, summed over pixels.

        Args:
            x: (B, D) data (in [0, 1] for a Bernoulli likelihood).
        Returns:
            (B,) in nats.
        """
        self.check_x(x)
        return self._log_px_z(x, self.decoder(self.encode(x)))

    def loss_terms(self, x, beta=1.0, n_samples=1, generator=None):
        """LossTerms(loss, log_px_z, kl) as for the VAE, with kl = 0 (B,): an autoencoder has no KL,
        so beta, n_samples and generator change nothing (there is no sampling). What `fit` calls
        every step."""
        log_px_z = self.reconstruction_log_likelihood(x)
        return LossTerms(-log_px_z.mean(), log_px_z, torch.zeros_like(log_px_z))

    def loss(self, x):
        """Minus the batch mean of the reconstruction log-likelihood: -(1/B) sum_b log p(x_b | z_b).

        Args:
            x: (B, D) data.
        Returns:
            0-dim tensor.
        """
        return self.loss_terms(_validate.nonempty_batch("x", self.check_x(x))).loss


MODELS = {"VAE": VAE, "Autoencoder": Autoencoder}


def check_model(model, types=(VAE, Autoencoder)):
    """Raise TypeError unless `model` is an instance of one of `types`; return it."""
    if not isinstance(model, types):
        names = " or ".join(t.__name__ for t in types)
        raise TypeError(f"model must be a vaelib.models.{names}, got {type(model).__name__}")
    return model


def _caller_outside_vaelib():
    """The warnings.warn stacklevel of the first caller outside the vaelib package (for the function
    calling this)."""
    root, frame, level = os.path.dirname(os.path.abspath(__file__)), sys._getframe(2), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(root + os.sep):
        frame, level = frame.f_back, level + 1
    return level
