"""vaelib: the small, tested library behind the vae-notebooks series.

Modules (import what you need; nothing runs at import time):
    distributions  log-densities and closed-form KLs for Gaussians and Bernoullis toy
    latent-variable models with exact evidence and posterior estimators     log_mean_exp, evidence
    estimators, ELBO, IWAE bound, gradient estimators mcmc           random-walk
    Metropolis-Hastings, effective sample size ais            annealed importance sampling, reverse
    AIS (upper bound), importance-weight ESS, Pareto k_hat data           digits (embedded), MNIST
    and Fashion-MNIST (IDX files, checksums, download) plotting       one figure style and
    savefig(fig, name)

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
