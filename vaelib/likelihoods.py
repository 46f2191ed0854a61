"""The decoder's likelihoods p(x | z): one object each, registered by name in
`vaelib.registry.LIKELIHOODS`.

A likelihood turns the decoder output `out` (..., D) (logits or a mean, as the likelihood says)
into::

    log_prob(x, out, log_scale)   log p(x | z) summed over the D pixels, (...,) in nats, every
    constant kept mean(out)                     E[x | z], (..., D): what a sample shown as an image
    is sample(out, log_scale, noise) a draw x ~ p(x | z), (..., D); noise(fn) returns fn-distributed
    noise shaped like out

and says what the rest of vaelib needs to know about it::

    name, help      its registry name and one line for the command line's help scale           the
    name of its scale parameter ("sigma_x", held by the model as log_sigma_x, shared () or per
                    pixel (D,), fixed or learned), or None when it has none; `log_scale` is None
                    then
    output          the name of the MLP decoder's last layer ("to_logits", "to_mean"), a key of the
    state dict unit_interval   data must lie in [0, 1] (checked where data enter) binarize
    fit's default: a fresh Bernoulli draw of the data each epoch (dynamic binarization)

A new likelihood is one file: subclass `Likelihood`, then `LIKELIHOODS.register(MyLikelihood())`;
the model, `fit`, `vaelib.evaluate`, the checkpoints and the command line (`--likelihood`) find it
by name.
"""

import torch

from vaelib.distributions import _log_bernoulli, _log_normal


class Likelihood:
    """The contract of a likelihood p(x | z) (module docstring); subclasses set the attributes and
    the methods."""

    name = None
    help = ""
    scale = None
    output = "to_mean"
    unit_interval = False
    binarize = False

    def log_prob(self, x, out, log_scale):
        raise NotImplementedError

    def mean(self, out):
        return out

    def sample(self, out, log_scale, noise):
        raise NotImplementedError

    def optimal_log_scale(self, x, out, dims):
        """log of the scale that maximises sum log p(x | z) over `dims` for this decoder output
        (learn_sigma_x="optimal"); a likelihood without a closed form leaves it out."""
        raise NotImplementedError

    def has_optimal_scale(self):
        return type(self).optimal_log_scale is not Likelihood.optimal_log_scale

    def __repr__(self):
        return f"{type(self).__name__}()"


class Bernoulli(Likelihood):
    """p(x | z) = prod_d Bernoulli(x_d; sigmoid(logits_d)); the decoder returns logits.

    log p(x | z) = sum_d [x_d logits_d - softplus(logits_d)]  (the cross-entropy with logits, stable
    in log space).
    """

    name = "bernoulli"
    help = "Bernoulli(sigmoid(logits)) per pixel, x in [0, 1] (dynamically binarized in training)"
    output = "to_logits"
    unit_interval = True
    binarize = True

    def log_prob(self, x, out, log_scale=None):
        return _log_bernoulli(x, out)

    def mean(self, out):
        return torch.sigmoid(out)

    def sample(self, out, log_scale, noise):
        mean = self.mean(out)
        return (noise(torch.rand) < mean).to(mean.dtype)  # 1 with probability sigmoid(logits)


class Gaussian(Likelihood):
    """p(x | z) = N(x; mean, diag sigma_x^2); the decoder returns the mean, sigma_x is shared or one
    per pixel.

    log p(x | z) = -1/2 sum_d [log 2 pi + 2 log sigma_x,d + (x_d - mean_d)^2 / sigma_x,d^2].
    """

    name = "gaussian"
    help = "N(mean, sigma_x^2) per pixel, any real x"
    scale = "sigma_x"

    def log_prob(self, x, out, log_scale):
        return _log_normal(x, out, 2.0 * log_scale.to(out.dtype))

    def sample(self, out, log_scale, noise):
        return out + torch.exp(log_scale.to(out.dtype)) * noise(torch.randn)

    def optimal_log_scale(self, x, out, dims):
        """log sigma* = 1/2 log mean (x - out)^2 over `dims`: d/d sigma of the sum of log N(x; out,
        sigma^2) is zero there (Rybkin et al. 2021, eq. 5). (...) -> the shape left by `dims`."""
        return 0.5 * torch.log(((x - out) ** 2).mean(dims))


# The built-ins, declared by name in vaelib.registry (the command line reads them from there without
# torch).
BERNOULLI = Bernoulli()
GAUSSIAN = Gaussian()
