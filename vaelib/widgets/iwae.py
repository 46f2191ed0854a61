"""The IWAE_K explorer: ELBO <= E[IWAE_K] <= log p(x) on a toy model whose log p(x) is exact
(notebook 10)."""

import math

import numpy as np
import torch

from vaelib import _validate, quick_mode
from vaelib.widgets._common import FigureImage, explorer, load_ipywidgets, pre_text, sticky_lim
from vaelib.widgets.kl_identity import kl_identity_models

IWAE_KS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def iwae_readout(model, x, mu, logvar, K=None, repeats=500, seed=0, *, k=None):
    """ELBO <= E[IWAE_K] <= log p(x) on a toy model whose log p(x) is known, with standard errors.

    IWAE_K is drawn `repeats` times with estimators.iwae_bound (a generator seeded with `seed`); its
    mean and the standard error of that mean (sd / sqrt(repeats)) are compared with the exact ELBO
    (model.exact_elbo) and the exact log p(x) (model.log_evidence).

    Args:
        model: a vaelib.toy LinearGaussian or NonlinearGaussian; x: (1, d) one observation.
        mu, logvar: (1, k) the proposal q(z | x).
        K: importance samples (>= 1, required); repeats: independent draws of the bound (>= 2).
        k: the same as K (an alias; k is the latent size everywhere else in vaelib).
    Returns:
        dict of floats: log_px, elbo, iwae (mean of the draws), iwae_se, and draws (repeats,) numpy.
    """
    from vaelib.estimators import iwae_bound

    K = _validate.renamed("K", K, "k", k)
    if K is None:
        raise TypeError("iwae_readout() missing the number of importance samples K")
    _validate.count("K", K)
    _validate.count("repeats", repeats, minimum=2)
    _validate.tensor("x", x, min_dim=2)
    if x.shape[0] != 1:
        raise ValueError(f"x must be one observation of shape (1, d), got {tuple(x.shape)}")
    draws = iwae_bound(
        model.log_joint,
        x.expand(repeats, -1),
        mu.expand(repeats, -1),
        logvar.expand(repeats, -1),
        K,
        generator=torch.Generator().manual_seed(seed),
    )  # (repeats,)
    return {
        "log_px": model.log_evidence(x).item(),
        "elbo": model.exact_elbo(x, mu, logvar).item(),
        "iwae": draws.mean().item(),
        "iwae_se": (draws.std() / math.sqrt(repeats)).item(),
        "draws": draws.double().numpy(),
    }


def iwae_explorer(model=None, x=None, mu=None, logvar=None, Ks=IWAE_KS, repeats=None, *, ks=None):
    """A K slider: the distribution of IWAE_K, with the exact ELBO and log p(x) it lies between
    (notebook 10).

    Default: the linear-Gaussian model of notebooks 03/04 (exact log p(x)) with the proposal q =
        N(0.3, e^-1), which
    misses the posterior N(0.933, 0.167) by KL = 1.41 nats.
    All K are computed when the explorer is built (a second or less); the slider only redraws.

    Args:
        model, x: a toy model and one observation (1, d) (default: kl_identity_models()["linear"]).
        mu, logvar: (1, k) proposal (default: 0.3 and -1.0).
        Ks: the numbers of importance samples K on the slider; repeats: draws of IWAE_K per K
            (default 500; 200 in quick mode). ks: the same as Ks (an alias).
    Returns:
        ipywidgets.VBox (see the module docstring).
    """
    widgets = load_ipywidgets()
    if model is None:
        model, x = kl_identity_models()["linear"]
    if x is None:
        raise ValueError("x must be given with model")
    mu = torch.full((1, model.latent_dim), 0.3, dtype=model.dtype) if mu is None else mu
    logvar = (
        torch.full((1, model.latent_dim), -1.0, dtype=model.dtype) if logvar is None else logvar
    )
    repeats = (200 if quick_mode() else 500) if repeats is None else repeats
    Ks = tuple(_validate.renamed("Ks", Ks, "ks", ks, default=IWAE_KS))
    results = {
        K: iwae_readout(model, x, mu, logvar, K, repeats=repeats, seed=i) for i, K in enumerate(Ks)
    }
    log_px, elbo = results[Ks[0]]["log_px"], results[Ks[0]]["elbo"]

    controls = {
        "K": widgets.SelectionSlider(
            options=list(Ks),
            value=Ks[0],
            description="importance samples K",
            style={"description_width": "initial"},
        )
    }
    fig = FigureImage((10.5, 3.4))
    ax_h, ax_c = fig.fig.subplots(1, 2)
    (hist_line,) = ax_h.plot([], [], color="C2", drawstyle="steps-mid", label="draws of IWAE_K")
    ax_h.axvline(elbo, color="C0", ls="--", label=f"exact ELBO {elbo:.3f}")
    ax_h.axvline(log_px, color="k", lw=1.5, label=f"exact log p(x) {log_px:.3f}")
    mean_line = ax_h.axvline(elbo, color="C2", lw=2, label="mean of the draws")
    all_draws = np.concatenate([r["draws"] for r in results.values()])
    lo, hi = np.quantile(all_draws, 0.01), max(all_draws.max(), log_px)
    edges = np.linspace(lo, hi + 0.02 * (hi - lo), 61)
    densities = {K: np.histogram(results[K]["draws"], bins=edges, density=True)[0] for K in Ks}
    ax_h.set(xlim=(edges[0], edges[-1]), xlabel="nats", ylabel="density")
    ax_h.legend(loc="upper left", fontsize=7.5)
    KK = np.array(Ks, dtype=float)
    gaps = np.array([log_px - results[K]["iwae"] for K in Ks])
    ses = np.array([results[K]["iwae_se"] for K in Ks])
    ax_c.errorbar(
        KK,
        gaps,
        yerr=2 * ses,
        fmt="o-",
        color="C2",
        ms=4,
        capsize=2,
        label="log p(x) − mean IWAE_K, ± 2 s.e.",
    )
    ax_c.axhline(log_px - elbo, color="C0", ls="--", label="log p(x) − ELBO = KL")
    (mark,) = ax_c.plot([], [], "o", ms=12, mfc="none", mec="k", mew=2)
    # symlog: logarithmic above 1e-3 nats, linear through 0 (a mean of draws can overshoot log p(x)
    # by noise)
    ax_c.set(
        xscale="log", xlabel="K (importance samples)", ylabel="log p(x) − IWAE_K (nats, symlog)"
    )
    ax_c.set_yscale("symlog", linthresh=1e-3)
    ax_c.legend(loc="lower left", fontsize=7.5)
    ax_h.set_title(f"{repeats} draws of IWAE_K", fontsize=10)
    fig.fig.tight_layout()
    fig.animate(hist_line, mean_line, mark)
    readout_html = widgets.HTML()

    def update(v):
        K = v["K"]
        r = results[K]
        hist_line.set_data(0.5 * (edges[1:] + edges[:-1]), densities[K])
        sticky_lim(ax_h, 0.0, 1.1 * densities[K].max() + 1e-9, margin=0.0, fill=0.3)
        ax_h.set_ylim(bottom=0)
        mean_line.set_xdata([r["iwae"], r["iwae"]])
        mark.set_data([K], [log_px - r["iwae"]])
        holds = (
            r["elbo"] <= r["iwae"] + 3 * r["iwae_se"]
            and r["iwae"] - 3 * r["iwae_se"] <= r["log_px"]
        )
        readout_html.value = pre_text(
            [
                f"K = {K}:  ELBO {r['elbo']:.4f}  ≤  IWAE_K {r['iwae']:.4f} ± {r['iwae_se']:.4f} "
                f"(s.e.)  ≤  log p(x) "
                f"{r['log_px']:.4f}   (within 3 s.e.: {holds})",
                f"gap log p(x) − IWAE_K = {r['log_px'] - r['iwae']:.4f} nats;  log p(x) − ELBO = "
                f"KL = {r['log_px'] - r['elbo']:.4f}",
            ]
        )
        return r

    return explorer(controls, fig, readout_html, update)
