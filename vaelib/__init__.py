"""vaelib: the small, tested library behind the vae-notebooks series.

Modules (import what you need; nothing runs at import time):
    models         VAE and Autoencoder (encoder, decoder, ELBO terms, loss, sampling)
    networks       the MLP, checks on your own encoder/decoder, the eval-mode context
    likelihoods    p(x | z): Bernoulli, Gaussian (registered in `registry.LIKELIHOODS`)
    priors         p(z): N(0, I), a learned mixture of Gaussians, the VampPrior (`registry.PRIORS`)
    objectives     training objectives: the ELBO, IWAE_K, IWAE_K with DReG (`registry.OBJECTIVES`)
    registry       the registries above, readable without importing torch
    train          fit (minibatch Adam, validation, resume), kl_weight
    history        the declared per-epoch history of a fit
    checkpoints    save/load of models with their history, digest-checked
    evaluate       test ELBO, IWAE log-likelihood, active units, KL per unit
    estimators     log_mean_exp, evidence and ELBO estimators, gradient estimators
    distributions  log-densities and closed-form KLs for Gaussians and Bernoullis
    toy            latent-variable models with exact evidence and posterior
    aggregate      the aggregate posterior q(z) and ELBO surgery (I_q + marginal KL)
    ais            annealed importance sampling, reverse AIS (upper bound), ESS, Pareto k_hat
    mcmc           random-walk Metropolis-Hastings, effective sample size
    data           digits (embedded), MNIST and Fashion-MNIST (IDX files, checksums, download)
    plotting       one figure style, image grids, savefig(fig, name)
    widgets        the notebooks' interactive explorers
    quiz           the notebooks' check-yourself questions and their feedback

Conventions: `logvar` is always log sigma^2; batch dimensions come first; every
per-example quantity is summed over its event (last) dimension; all values are in nats.
"""

import os

__version__ = "0.1.0"


def quick_mode() -> bool:
    """True when the environment variable VAELIB_QUICK is set to a true value (make test sets it).

    Notebooks cut training to seconds in quick mode; numbers printed by check cells must not depend
    on it.
    """
    return os.environ.get("VAELIB_QUICK", "").strip().lower() not in ("", "0", "false", "no")
