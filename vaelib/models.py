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
from vaelib.distributions import LOG_2PI, _kl_normal, _log_normal, _sample_normal
from vaelib.networks import (
    check_decoder,
    check_encoder,
    check_module,
    device_dtype,
    in_eval_mode,
    mlp,
)
from vaelib.registry import LIKELIHOODS, PRIORS


class LossTerms(NamedTuple):
    """What `loss_terms` returns: the training loss and its per-example parts, (B,) each, in
    nats."""

    loss: torch.Tensor  # 0-dim: -(1/B) sum_b [log_px_z_b - beta kl_b]
    log_px_z: torch.Tensor  # (B,) the reconstruction term
    kl: torch.Tensor  # (B,) KL(q(z | x) || p(z)) as in ELBOTerms; zeros for an Autoencoder


class ELBOTerms(NamedTuple):
    """The per-example ELBO and its two parts, each (B,) in nats: elbo = log_px_z - kl."""

    elbo: torch.Tensor  # (B,)
    log_px_z: (
        torch.Tensor
    )  # (B,) Monte Carlo estimate of E_q[log p(x | z)], the reconstruction term
    kl: torch.Tensor  # (B,) KL(q(z | x) || p(z)): closed form for N(0, I), else Monte Carlo


DEFAULT_HIDDEN_DIMS = (400,)
# sigma_x's floor: one 8-bit level of [0, 1] data, the width of the dequantization noise
# (vaelib.data.dequantize). A learned sigma_x below it rewards reconstructing noise.
SIGMA_X_FLOOR = 1 / 256
# The running sigma_x^2 of learn_sigma_x="optimal": the mean of the first batches' optima, then an
# exponential average with this weight on each new batch (a memory of about 10 steps).
SIGMA_X_MOMENTUM = 0.1
# A fixed sigma_x at least this many times the data's spread around their mean image warns.
SIGMA_X_WARN_RATIO = 2.5
SIGMA_X_RULES = (False, True, "optimal")


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


def _sigma_x_rule(lik, sigma_x, learn_sigma_x, sigma_x_floor):
    """(sigma_x, learn_sigma_x, sigma_x_floor) with their defaults resolved and the rule checked.

    The one default, in Python and on the command line: no sigma_x given and learn_sigma_x None
    means "optimal" (the closed-form optimum per batch, shared, starting at 1; True for a
    registered likelihood without a closed form); a sigma_x given alone is fixed;
    learn_sigma_x=True learns it by gradient from sigma_x (default 1).
    """
    if learn_sigma_x is None and (sigma_x is not None or lik.scale is None):
        learn_sigma_x = False
    elif learn_sigma_x is None:  # a likelihood without a closed form learns its scale by gradient
        learn_sigma_x = "optimal" if lik.has_optimal_scale() else True
    if isinstance(learn_sigma_x, str) and learn_sigma_x != "optimal":
        raise ValueError(f"learn_sigma_x must be False, True or 'optimal', got {learn_sigma_x!r}")
    if not isinstance(learn_sigma_x, (bool, str)):
        raise TypeError(
            f"learn_sigma_x must be a bool or 'optimal', got {type(learn_sigma_x).__name__}"
        )
    if learn_sigma_x == "optimal" and lik.scale is not None and not lik.has_optimal_scale():
        raise ValueError(
            f"learn_sigma_x='optimal' needs a likelihood with a closed-form optimal scale; "
            f"{lik.name!r} has none: use learn_sigma_x=True"
        )
    floor = SIGMA_X_FLOOR if sigma_x_floor is None else sigma_x_floor
    floor = _validate.positive_scalar("sigma_x_floor", floor)
    return (1.0 if sigma_x is None else sigma_x), learn_sigma_x, floor


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
        sigma_x_floor=None,
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
        sigma_x, learn_sigma_x, sigma_x_floor = _sigma_x_rule(
            lik, sigma_x, learn_sigma_x, sigma_x_floor
        )
        sigma_x = _check_sigma_x(sigma_x, data_dim)
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
        self._sigma_rule = learn_sigma_x
        self.sigma_x_floor = sigma_x_floor  # the least sigma_x a learned one takes (SIGMA_X_FLOOR)
        if lik.scale is not None and learn_sigma_x == "optimal":
            # the running optimum (persistent: checkpoints keep it) and how many batches made it
            self.register_buffer("log_sigma_x", log_sigma.to(torch.get_default_dtype()))
            self.register_buffer("sigma_x_updates", torch.zeros((), dtype=torch.long))
        elif lik.scale is not None and learn_sigma_x:
            self.log_sigma_x = nn.Parameter(log_sigma.to(torch.get_default_dtype()))
        elif lik.scale is not None:
            self.register_buffer("log_sigma_x", log_sigma, persistent=False)
            self._log_sigma_x64 = log_sigma  # the exact value, for _apply
        else:
            self.log_sigma_x = None
        # A fixed sigma_x large against the data's spread lets the KL term win (notebook 07): the
        # model checks once, at the first data, while this is True. Set it to False when such a
        # sigma_x is what you mean (a demonstration of the collapse).
        self.warn_unit_sigma_x = lik.scale is not None and learn_sigma_x is False
        self._config = {
            "data_dim": data_dim,
            "latent_dim": latent_dim,
            "hidden_dims": None if both_custom else list(hidden_dims),
            "likelihood": likelihood,
            "sigma_x": sigma_x.tolist() if vector else sigma_x,
        }
        if sigma_x_floor != SIGMA_X_FLOOR:  # absent at the default: older checkpoints still match
            self._config["sigma_x_floor"] = sigma_x_floor

    def _finish_config(self, learn_sigma_x):
        self._config["learn_sigma_x"] = self._sigma_rule  # resolved: False, True or "optimal"
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
        if "prior_options" in out:
            out["prior_options"] = dict(out["prior_options"])
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
        sigma = torch.exp(self._log_scale().detach().to("cpu", torch.float64))
        return sigma.item() if sigma.dim() == 0 else sigma

    @property
    def sigma_x_rule(self):
        """How sigma_x is set: False (fixed), True (learned by gradient with the weights) or
        "optimal" (the closed-form optimum, `_log_px_z`); None for a likelihood without a scale."""
        return None if self.log_sigma_x is None else self._sigma_rule

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
        if self.sigma_x_rule == "optimal" and self.training:
            return self._lik.log_prob(x, out, self._calibrate_sigma_x(x, out))
        return self._lik.log_prob(x, out, self._log_scale())

    def _log_scale(self):
        """log sigma_x as used: the fixed value, or a learned one held at or above the floor."""
        if self.log_sigma_x is None or self.sigma_x_rule is False:
            return self.log_sigma_x
        return self.log_sigma_x.clamp(min=math.log(self.sigma_x_floor))

    def _calibrate_sigma_x(self, x, out):
        """learn_sigma_x="optimal" in train mode: sigma_x of this batch at its closed-form optimum.

        sigma_x^2 = mean of (x - mean(z))^2 over the batch and the K samples of z (and the pixels
        when shared): the sigma_x that maximises the batch's reconstruction term for the current
        decoder (Rybkin, Daniilidis & Levine 2021, "Simple and Effective VAE Training with
        Calibrated Decoders", sec. 3), floored at `sigma_x_floor`. The running sigma_x^2 (what eval
        mode, sampling and checkpoints use) averages the batch optima: their plain mean over the
        first 1 / SIGMA_X_MOMENTUM batches, then an exponential average. Returns the batch's log
        sigma_x, () or (D,), without gradient.
        """
        with torch.no_grad():
            per_pixel = self.log_sigma_x.dim() == 1
            dims = tuple(range(out.dim() - 1)) if per_pixel else tuple(range(out.dim()))
            log_batch = self._lik.optimal_log_scale(x, out, dims)  # () or (D,)
            n = int(self.sigma_x_updates)
            weight = max(1.0 / (n + 1), SIGMA_X_MOMENTUM)
            running = torch.exp(2 * self.log_sigma_x.double())
            var = (1 - weight) * running + weight * torch.exp(2 * log_batch.double())
            self.log_sigma_x.copy_(0.5 * torch.log(var))
            self.sigma_x_updates += 1
            return log_batch.clamp(min=math.log(self.sigma_x_floor))

    def _warn_about_sigma_x(self, x):
        """Warn once when a fixed sigma_x is SIGMA_X_WARN_RATIO times the data's spread or more.

        The spread is sqrt(mean_d Var(x_d)) over the first batch the model sees: the sigma_x of a
        decoder that ignores z and predicts the mean image. A fixed sigma_x that large leaves the
        reconstruction term less to gain than the KL costs: the model collapses to the prior.
        """
        flat = x.detach().reshape(-1, x.shape[-1]).double()  # (B, D)
        spread = flat.var(0, correction=0).mean().sqrt().item() if flat.shape[0] > 1 else 0.0
        if not spread > 0:
            return  # one example (or copies of one) has no spread: check at the next data
        self.warn_unit_sigma_x = False  # once per model, at the first data with a spread
        sigma = self.log_sigma_x.double().min().exp().item()  # the smallest, when per pixel
        if not sigma >= SIGMA_X_WARN_RATIO * spread:
            return
        where = (
            "data in [0, 1]" if 0.0 <= flat.min().item() and flat.max().item() <= 1.0 else "data"
        )
        warnings.warn(
            f"{type(self).__name__} has a fixed sigma_x = {sigma:.3g} on {where} whose pixels "
            f"spread by {spread:.3g} around their mean image (sqrt of the mean pixel variance), "
            f"where a {self.likelihood.capitalize()} likelihood barely rewards reconstruction and "
            "the model collapses to the prior (notebook 07): leave sigma_x out (its closed-form "
            "optimum, learn_sigma_x='optimal'), pass a smaller sigma_x, or learn_sigma_x=True.",
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
            number shared by all pixels, or a sequence/array/tensor of D numbers, one per pixel.
            None (the default): 1, and learned by the "optimal" rule. A fixed sigma_x at least
            SIGMA_X_WARN_RATIO = 2.5 times the data's spread around their mean image warns
            (UserWarning) the first time the model sees data: the model collapses (notebook 07).
        learn_sigma_x: how sigma_x is set, shared or per pixel as sigma_x is (Gaussian only):
            "optimal" (the default when sigma_x is not given): in train mode, each batch's
            closed-form optimum sigma_x^2 = mean (x - mean(z))^2 (Rybkin et al. 2021, "sigma-VAE"),
            whose running average is what eval mode, samples and checkpoints use; True: a parameter
            learned by gradient with the weights (slow: it moves at the weights' learning rate);
            False (the default when sigma_x is given): fixed.
        sigma_x_floor: the least value a learned or optimal sigma_x takes (default SIGMA_X_FLOOR =
            1/256, one 8-bit level of [0, 1] data): without it a per-pixel sigma_x collapses on
            pixels that are constant in the training images, and the test ELBO pays for it.
        encoder: None for the MLP, or your own nn.Module x (B, D) -> (B, 2k) or (mu, logvar) (module
            docstring).
        decoder: None for the MLP, or your own nn.Module z (..., k) -> (..., D), keeping leading
            dimensions.
        prior: p(z), a name in `vaelib.registry.PRIORS`: "normal" (N(0, I), the default, with the
            closed-form KL), "mog" (a learned mixture of Gaussians) or "vamp" (the VampPrior); the
            module is `model.prior` (`vaelib.priors`). With a prior other than "normal" the KL term
            is the Monte Carlo estimate log q(z | x) - log p(z) at the reparameterized draws.
        prior_options: a dict of the prior's options (e.g. {"n_components": 500}), or None.
    Seed torch's global generator (torch.manual_seed) before constructing for reproducible initial
    weights.
    """

    def __init__(
        self,
        data_dim,
        latent_dim,
        hidden_dims=None,
        likelihood="bernoulli",
        sigma_x=None,
        learn_sigma_x=None,
        encoder=None,
        decoder=None,
        prior="normal",
        prior_options=None,
        sigma_x_floor=None,
    ):
        super().__init__(
            data_dim,
            latent_dim,
            hidden_dims,
            likelihood,
            sigma_x,
            learn_sigma_x,
            encoder,
            decoder,
            sigma_x_floor,
        )
        if self.custom_encoder:
            check_encoder(self.encoder, data_dim, latent_dim, pair_allowed=True)
        else:
            self.to_mu = nn.Linear(self._width, latent_dim)
            self.to_logvar = nn.Linear(self._width, latent_dim)
        self._finish_config(learn_sigma_x)
        if prior_options is not None and not (
            isinstance(prior_options, dict) and all(isinstance(k, str) for k in prior_options)
        ):
            raise TypeError(
                f"prior_options must be a dict of option names to values or None, got "
                f"{prior_options!r:.80}"
            )
        # p(z): built after the networks, so the default prior leaves their initial weights as
        # they were; a prior other than "normal" is named in the config (the normal one is not,
        # so configs and checkpoints from before priors existed stay equal)
        self.prior = PRIORS.get(prior)(
            latent_dim, data_dim, self._lik.unit_interval, **(prior_options or {})
        )
        if prior != "normal":
            self._config["prior"] = prior
            self._config["prior_options"] = dict(self.prior.options)

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
        """log p(z) of the model's prior: log N(z; 0, I_k) = -1/2 sum_j [log 2 pi + z_j^2] for the
        default; `vaelib.priors` for the learned ones.  z: (..., k) -> (...)."""
        self._check_z(z)
        if self.prior.analytic_kl:
            return -0.5 * (LOG_2PI + z**2).sum(-1)
        return self.prior.log_prob(z, self.encode)

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
    def _elbo_bytes(self, batch, n_samples, itemsize):
        """Bytes the ELBO of `batch` examples with `n_samples` draws plans to hold (its activations,
        about three copies): what `elbo_terms` checks and `evaluate.test_elbo` chunks by."""
        return (
            3 * n_samples * batch * (self.data_dim + self._width + 2 * self.latent_dim) * itemsize
        )

    def elbo_terms(self, x, n_samples=1, generator=None):
        """The per-example ELBO and its parts: reconstruction term and closed-form KL.

        elbo = log_px_z - kl, log_px_z = (1/K) sum_k log p(x | z_k) with z_k = mu + exp(logvar/2)
        eps_k, kl = 1/2 sum_j [exp(logvar_j) + mu_j^2 - 1 - logvar_j]  (Kingma & Welling 2013, eq.
        10 and app. B). With a learned prior (`prior` other than "normal") the KL has no closed
        form: kl = (1/K) sum_k [log q(z_k | x) - log p(z_k)] at the same draws z_k (Tomczak &
        Welling 2018, eq. 5), an unbiased estimate.

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
            self._elbo_bytes(x.shape[0], n_samples, x.element_size()),
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
        if self.prior.analytic_kl:
            kl = _kl_normal(mu, logvar)  # (B,)
        else:  # Monte Carlo: log q(z | x) - log p(z) at the same draws, averaged over the K
            kl = _log_normal(z, mu, logvar) - self.prior.log_prob(z, self.encode)  # (B,) or (K, B)
            kl = kl if n_samples == 1 else kl.mean(0)  # (B,)
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
    @in_eval_mode
    @torch.no_grad()
    def sample(self, n, generator=None, noisy=False):
        """Ancestral samples: z ~ p(z) (N(0, I_k) by default), then the decoder's mean E[x | z], or
        a draw x ~ p(x | z).

        Runs in eval mode (`vaelib.networks.eval_mode`), the model's mode restored afterwards.
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

        if self.prior.analytic_kl:
            z = draw(torch.randn, n, self.latent_dim)  # (n, k)
        else:
            z = self.prior.sample(n, self.encode, draw)  # (n, k)
        out = self.decoder(z)  # (n, D) logits or mean
        if not noisy:
            return self._lik.mean(out)
        return self._lik.sample(
            out, self._log_scale(), lambda fn: draw(fn, n, self.data_dim)
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
        sigma_x, learn_sigma_x, sigma_x_floor: the Gaussian likelihood's standard deviation and
            how it is set, as for VAE (default: its closed-form optimum per batch).
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
        sigma_x=None,
        learn_sigma_x=None,
        encoder=None,
        decoder=None,
        sigma_x_floor=None,
    ):
        super().__init__(
            data_dim,
            latent_dim,
            hidden_dims,
            likelihood,
            sigma_x,
            learn_sigma_x,
            encoder,
            decoder,
            sigma_x_floor,
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
