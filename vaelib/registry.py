"""Registries of vaelib's extension points, readable without importing torch.

A registry maps a name (what a user types: `likelihood="gaussian"`, `--likelihood gaussian`) to an
object that does the work. The command line builds its choices and help from a registry before any
heavy import, so each entry also carries the few plain facts the command line needs: a one-line
`help` and the name of its `scale` parameter (None when it has none).

Built-in entries are declared below with those facts and the place of their object
("module:attribute"), which is imported on first use; `tests/test_likelihoods.py` checks that the
declared facts equal the object's. A new entry is one file: define the object (with `name`, `help`
and `scale` attributes) and call `LIKELIHOODS.register(obj)`. `LIKELIHOODS` holds p(x | z) given the
decoder output (`vaelib.likelihoods.Likelihood`). `PRIORS` holds p(z): a class per entry
(`vaelib.priors.Prior`), of which each VAE builds its own (a learned prior has parameters); its
`scale` is None. `OBJECTIVES` holds the training objectives that `fit` minimises
(`vaelib.objectives.Objective`, notebook 13: the ELBO, IWAE_K, IWAE_K with DReG).
"""

import importlib


class Registry:
    """Named objects of one kind, each with its help text and scale name; objects of declared
    entries load lazily."""

    def __init__(self, kind):
        self.kind = kind
        self._entries = {}  # name -> {"help", "scale", "object" or None, "where"}

    def declare(self, name, where, help, scale=None):
        """Declare an entry whose object is the attribute `where` = "module:attribute", imported on
        first `get`."""
        self._entries[name] = {"help": help, "scale": scale, "object": None, "where": where}

    def register(self, obj):
        """Add (or replace) the entry `obj.name` with the object itself; return obj."""
        for attr in ("name", "help", "scale"):
            if not hasattr(obj, attr):
                raise TypeError(
                    f"a registered {self.kind} needs a {attr!r} attribute; {type(obj).__name__} "
                    f"has none"
                )
        self._entries[obj.name] = {
            "help": obj.help,
            "scale": obj.scale,
            "object": obj,
            "where": None,
        }
        return obj

    def unregister(self, name):
        """Remove the entry `name` (a test's own entry, for instance)."""
        self._entries.pop(name, None)

    def names(self):
        """The registered names, in the order they were added."""
        return tuple(self._entries)

    def __contains__(self, name):
        return isinstance(name, str) and name in self._entries

    def _entry(self, name):
        if name not in self:
            raise ValueError(
                f"{self.kind} must be one of {', '.join(map(repr, self.names()))}, got {name!r}"
            )
        return self._entries[name]

    def help(self, name):
        return self._entry(name)["help"]

    def scale(self, name):
        """The name of the entry's scale parameter ("sigma_x"), or None; without importing its
        object."""
        return self._entry(name)["scale"]

    def choices_help(self, default):
        """Help text of a command-line option whose choices are this registry's names: "name: help"
        for each entry, then the default."""
        entries = "; ".join(f"{n}: {self.help(n)}" for n in self.names())
        return f"{entries} (default: {default})"

    def get(self, name):
        """The object registered as `name`; ValueError listing the names for an unknown one."""
        entry = self._entry(name)
        if entry["object"] is None:
            module, attr = entry["where"].split(":")
            entry["object"] = getattr(importlib.import_module(module), attr)
        return entry["object"]


LIKELIHOODS = Registry("likelihood")
LIKELIHOODS.declare(
    "bernoulli",
    "vaelib.likelihoods:BERNOULLI",
    scale=None,
    help="Bernoulli(sigmoid(logits)) per pixel, x in [0, 1] (dynamically binarized in training)",
)
LIKELIHOODS.declare(
    "gaussian",
    "vaelib.likelihoods:GAUSSIAN",
    scale="sigma_x",
    help="N(mean, sigma_x^2) per pixel, any real x",
)

PRIORS = Registry("prior")
PRIORS.declare(
    "normal", "vaelib.priors:StandardNormal", help="N(0, I), the standard normal (closed-form KL)"
)
PRIORS.declare(
    "mog",
    "vaelib.priors:MixtureOfGaussians",
    help="a learned mixture of Gaussians (weights, means, variances)",
)
PRIORS.declare(
    "vamp",
    "vaelib.priors:VampPrior",
    help="VampPrior: a mixture of the encoder's posteriors at learned pseudo-inputs",
)

OBJECTIVES = Registry("objective")
OBJECTIVES.declare(
    "elbo",
    "vaelib.objectives:ELBO_OBJECTIVE",
    help="the ELBO (beta-weighted KL; n_samples draws of z in the reconstruction term)",
)
OBJECTIVES.declare(
    "iwae",
    "vaelib.objectives:IWAE_OBJECTIVE",
    help="the importance-weighted bound IWAE_K (Burda et al. 2016), K samples per example",
)
OBJECTIVES.declare(
    "iwae-dreg",
    "vaelib.objectives:IWAE_DREG_OBJECTIVE",
    help="IWAE_K with doubly reparameterized encoder gradients (Tucker et al. 2019)",
)
