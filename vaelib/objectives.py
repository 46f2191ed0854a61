"""Training objectives of a VAE, registered by name in `vaelib.registry.OBJECTIVES`, and the
gradient signal-to-noise ratio that tells them apart.

An objective turns a minibatch into `vaelib.models.LossTerms` (loss, log_px_z (B,), kl (B,)):
`loss` is what `vaelib.train.fit` differentiates, minus the batch mean of the objective's value;
`log_px_z` and `kl` are an ELBO's two parts for the history (nats per example)::

    elbo       -(1/B) sum_b [E_q log p(x_b | z) - beta KL(q || p)]: the model's own `loss_terms`
               (Kingma & Welling 2013), n_samples samples of z per example.
    iwae       -(1/B) sum_b IWAE_K(x_b), IWAE_K = log (1/K) sum_i w_i, w_i = p(x, z_i) / q(z_i | x),
               z_1..z_K ~ q(z | x) reparameterized (Burda et al. 2016, eq. 8).
    iwae-dreg  the same value; the encoder's gradient is the doubly reparameterized one,
               sum_i w~_i^2 (d log w_i / d z_i) (d z_i / d phi) with w~ = w / sum w and q's
               parameters held fixed inside log q (Tucker et al. 2019); the decoder's
               gradient is IWAE's, sum_i w~_i d log w_i / d theta. Unbiased for the IWAE gradient,
               and its SNR does not fall as K grows (Rainforth et al. 2018 show IWAE's does).

For the IWAE objectives `log_px_z` is (1/K) sum_i log p(x | z_i) and `kl` the Monte Carlo
(1/K) sum_i [log q(z_i | x) - log p(z_i)] over the same K draws: log_px_z - kl is an unbiased ELBO
estimate (no extra draws), so the history's "elbo" means the same thing for every objective.

A new objective is one object with `name`, `help`, `scale` (None), `uses_K` (True when it takes
K importance samples) and `loss_terms(model, x, beta, n_samples, K, generator)`, registered with
`OBJECTIVES.register(obj)`.
"""

import math
from typing import NamedTuple

import torch

from vaelib import _validate
from vaelib.distributions import _log_normal, _sample_normal
from vaelib.models import VAE, LossTerms, check_model
from vaelib.registry import OBJECTIVES


class Objective:
    """The contract of a training objective (module docstring)."""

    name = None
    help = ""
    scale = None  # the registry's field for a scale parameter; objectives have none
    uses_K = False

    def loss_terms(self, model, x, beta=1.0, n_samples=1, K=None, generator=None):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


class ELBO(Objective):
    """Minus the (beta-weighted) ELBO: exactly `model.loss_terms(x, beta, n_samples, generator)`."""

    name = "elbo"
    help = "the ELBO (beta-weighted KL; n_samples draws of z in the reconstruction term)"

    def loss_terms(self, model, x, beta=1.0, n_samples=1, K=None, generator=None):
        if K is not None:
            raise ValueError(
                f"K={K!r} is the number of importance samples of the IWAE objectives; the ELBO's "
                "samples of z are n_samples"
            )
        return model.loss_terms(x, beta, n_samples, generator)


def iwae_log_weights(model, x, K, generator=None, detach_q=False):
    """log w_i = log p(x | z_i) + log p(z_i) - log q(z_i | x) for K reparameterized z_i ~ q(z | x).

    Args:
        model: a vaelib.models.VAE.
        x: (B, D) data.
        K: importance samples per example, >= 1.
        generator: optional torch.Generator for the noise.
        detach_q: hold q's parameters fixed inside log q (z still depends on them): DReG's form.
    Returns:
        (log_w (K, B), log_px_z (K, B), log_pz (K, B), log_qz (K, B) with q's parameters live,
        z (K, B, k)).
    """
    mu, logvar = model.encode(x)  # (B, k) each
    z = _sample_normal(mu, logvar, K, generator)  # (K, B, k)
    log_px_z = model.log_likelihood(x, z)  # (K, B)
    log_pz = model.log_prior(z)  # (K, B)
    log_qz = _log_normal(z, mu, logvar)  # (K, B)
    if detach_q:
        log_w = log_px_z + log_pz - _log_normal(z, mu.detach(), logvar.detach())
    else:
        log_w = log_px_z + log_pz - log_qz
    return log_w, log_px_z, log_pz, log_qz, z


class IWAE(Objective):
    """Minus the importance-weighted bound IWAE_K, log-mean-exp of K weights (Burda et al. 2016)."""

    name = "iwae"
    help = "the importance-weighted bound IWAE_K (Burda et al. 2016), K samples per example"
    uses_K = True
    dreg = False

    def loss_terms(self, model, x, beta=1.0, n_samples=1, K=None, generator=None):
        check_model(model, (VAE,))
        model.check_x(x)
        _validate.count("K", K)
        if _validate.beta(beta) != 1.0 or n_samples != 1:
            raise ValueError(
                f"objective {self.name!r} trains IWAE_K: beta (got {beta!r}) and n_samples (got "
                f"{n_samples!r}) belong to the ELBO; leave them at 1 and set K"
            )
        log_w, log_px_z, log_pz, log_qz, z = iwae_log_weights(model, x, K, generator, self.dreg)
        bound = torch.logsumexp(log_w, 0) - math.log(K)  # (B,) IWAE_K per example
        if self.dreg and z.requires_grad:
            w_tilde = torch.softmax(log_w.detach(), 0)  # (K, B) normalised weights
            # The decoder's gradient: sum_i w~_i d log w_i (IWAE's). Through z the same surrogate
            # gives w~_i d log w_i / d z_i; the hook multiplies it by w~_i once more (DReG).
            z.register_hook(lambda g: g * w_tilde.unsqueeze(-1))
            surrogate = (w_tilde * log_w).sum(0)  # (B,) a gradient surrogate, not the bound
            bound = bound.detach() + (surrogate - surrogate.detach())  # value: IWAE_K exactly
        kl = (log_qz - log_pz).detach().mean(0)  # (B,) Monte Carlo KL, for the history only
        return LossTerms(-bound.mean(), log_px_z.detach().mean(0), kl)


class IWAEDReG(IWAE):
    """IWAE_K with the doubly reparameterized encoder gradient (Tucker et al. 2019)."""

    name = "iwae-dreg"
    help = "IWAE_K with doubly reparameterized encoder gradients (Tucker et al. 2019)"
    dreg = True


# The objects `vaelib.registry.OBJECTIVES` declares (imported on first use).
ELBO_OBJECTIVE = ELBO()
IWAE_OBJECTIVE = IWAE()
IWAE_DREG_OBJECTIVE = IWAEDReG()


def resolve(model, objective, K, history, *, beta, warmup_epochs, n_samples):
    """fit's (objective, K): the arguments, else the last epoch's of `history`, else "elbo".

    K=None with an IWAE objective takes the history's K when the history's last epoch trained an
    objective that uses K. Raises ValueError for an unknown name, a missing or stray K, and a
    beta, warm-up or n_samples that the IWAE objectives do not use.
    """
    recorded = history.get("objective") or [None]
    recorded_K = history.get("K") or [None]
    if objective is None:
        objective = recorded[-1] or "elbo"
        if K is None and objective == recorded[-1]:
            K = recorded_K[-1]
    if objective not in OBJECTIVES:
        raise ValueError(
            f"objective must be one of {', '.join(map(repr, OBJECTIVES.names()))}, got "
            f"{objective!r}"
        )
    obj = OBJECTIVES.get(objective)
    if not obj.uses_K:
        if K is not None:
            raise ValueError(
                f"K={K!r} is the number of importance samples of an IWAE objective; objective "
                f"{objective!r} takes n_samples"
            )
        return obj, None
    if K is None and recorded[-1] in OBJECTIVES and OBJECTIVES.get(recorded[-1]).uses_K:
        K = recorded_K[-1]
    if K is None:
        raise ValueError(f"objective {objective!r} needs K, the importance samples per example")
    _validate.count("K", K)
    check_model(model, (VAE,))
    if beta != 1.0 or warmup_epochs != 0 or n_samples != 1:
        raise ValueError(
            f"objective {objective!r} trains IWAE_K: beta={beta!r}, "
            f"warmup_epochs={warmup_epochs!r} and n_samples={n_samples!r} weight or sample the "
            "ELBO; leave them at 1, 0 and 1"
        )
    return obj, K


# -- the gradient's signal-to-noise ratio
# ------------------------------------------------------------


class GradientSNR(NamedTuple):
    """What `gradient_snr` returns: per parameter element, |mean| / std of the gradient over draws.

    encoder, decoder: (P_enc,), (P_dec,) SNRs, NaN where a gradient is 0 in every draw.
    encoder_mean, decoder_mean, encoder_std, decoder_std: the means and standard deviations.
    """

    encoder: torch.Tensor
    decoder: torch.Tensor
    encoder_mean: torch.Tensor
    decoder_mean: torch.Tensor
    encoder_std: torch.Tensor
    decoder_std: torch.Tensor


def gradient_snr(
    model, x, objective="iwae", K=None, n_draws=100, n_samples=1, beta=1.0, generator=None
):
    """The signal-to-noise ratio of an objective's minibatch gradient, per parameter element.

    SNR(theta_j) = |E[g_j]| / std(g_j), g = d loss / d theta on the batch x, over n_draws
    independent draws of the Monte Carlo noise (Rainforth et al. 2018, eq. 5). The encoder's
    parameters are all but the decoder's (`model.decoder` and a learned log sigma_x). Means and
    variances are accumulated in float64 (Welford), so memory is a few copies of the parameters.
    Summarise with a median over elements (`torch.nanmedian`): a few elements with mean near 0
    have SNR near 0 whatever the estimator.

    Args:
        model: a vaelib.models.VAE (its weights are not changed; .grad is not touched).
        x: (B, D) a minibatch, in the model's dtype and on its device (binarized for Bernoulli).
        objective: a name in vaelib.registry.OBJECTIVES.
        K: importance samples of an IWAE objective (None for "elbo").
        n_draws: independent gradient draws, >= 2.
        n_samples, beta: the ELBO's samples and KL weight (objective "elbo").
        generator: optional torch.Generator for the noise.
    Returns:
        GradientSNR (see its docstring).
    """
    check_model(model, (VAE,))
    model.check_x(x)
    _validate.nonempty_batch("x", x)
    _validate.count("n_draws", n_draws, minimum=2)
    _validate.generator("generator", generator)
    obj = OBJECTIVES.get(objective)
    if obj.uses_K and K is None:
        raise ValueError(f"objective {objective!r} needs K, the importance samples per example")
    if obj.uses_K:
        _validate.count("K", K)
    decoder_ids = {id(p) for p in model.decoder.parameters()}
    if isinstance(model.log_sigma_x, torch.nn.Parameter):
        decoder_ids.add(id(model.log_sigma_x))
    params = [p for p in model.parameters() if p.requires_grad]
    is_decoder = torch.cat(
        [torch.full((p.numel(),), id(p) in decoder_ids, dtype=torch.bool) for p in params]
    ).to(params[0].device)  # (P,)
    mean = torch.zeros(is_decoder.shape, dtype=torch.float64, device=is_decoder.device)  # (P,)
    m2 = torch.zeros_like(mean)  # (P,) sum of squared deviations
    for r in range(1, n_draws + 1):
        loss = obj.loss_terms(model, x, beta, n_samples, K, generator).loss
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        g = torch.cat(
            [
                (torch.zeros_like(p) if gi is None else gi).reshape(-1)
                for p, gi in zip(params, grads)
            ]
        ).to(torch.float64)  # (P,)
        delta = g - mean
        mean += delta / r
        m2 += delta * (g - mean)
    std = torch.sqrt(m2 / (n_draws - 1))  # (P,)
    snr = torch.where(std > 0, mean.abs() / std, torch.where(mean != 0, math.inf, math.nan))
    return GradientSNR(
        snr[~is_decoder],
        snr[is_decoder],
        mean[~is_decoder],
        mean[is_decoder],
        std[~is_decoder],
        std[is_decoder],
    )
