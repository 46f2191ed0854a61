"""The KL identity explorer: log p(x) = ELBO + KL(q || p(z|x)) for a 1-D Gaussian q on a toy model
(notebooks 03/04)."""

import math

import numpy as np
import torch

from vaelib import _validate
from vaelib.distributions import LOG_2PI, kl_normal, log_normal
from vaelib.widgets._common import (
    FigureImage,
    as_float,
    explorer,
    load_ipywidgets,
    pre_text,
    sticky_lim,
)


def kl_identity_models(dtype=torch.float64):
    """The two 1-D models of notebooks 03/04 with their observation: {"linear": (model, x),
    "bimodal": (model, x)}.

    linear:  LinearGaussian(W = [[1], [0.5]], b = 0, noise_std = 0.5), x = [[1.0, 0.8]]  (Gaussian
    posterior)
    bimodal: NonlinearGaussian(W = [[1]], b = 0, noise_std = 0.3, curvature = 1), x = [[1.0]]  (two
        posterior modes)
    """
    from vaelib.toy import LinearGaussian, NonlinearGaussian

    lin = LinearGaussian(
        torch.tensor([[1.0], [0.5]], dtype=dtype), torch.zeros(2, dtype=dtype), noise_std=0.5
    )
    nl = NonlinearGaussian(
        torch.tensor([[1.0]], dtype=dtype),
        torch.zeros(1, dtype=dtype),
        noise_std=0.3,
        curvature=1.0,
    )
    return {
        "linear": (lin, torch.tensor([[1.0, 0.8]], dtype=dtype)),
        "bimodal": (nl, torch.tensor([[1.0]], dtype=dtype)),
    }


# standard-normal quadrature in q's own coordinates z = m + s eps: rectangle rule on [-12, 12],
# spacing 0.01. The integrands are a polynomial of degree <= 4 times N(eps; 0, 1), for which the
# rule is exact to round-off.
_EPS_LIMIT, _EPS_POINTS = 12.0, 2401
# The grid on which kl_identity_readout normalises p(z | x) for the non-linear model: wider and
# finer than the model's own (2001 points on [-7, 7]), so the two are independent routes to the
# normaliser p(x).
_Z_LIMIT, _Z_POINTS = 20.0, 8001


def _check_1d(model, x):
    from vaelib.toy import LinearGaussian, NonlinearGaussian

    if not isinstance(model, (LinearGaussian, NonlinearGaussian)):
        raise TypeError(
            "model must be a vaelib.toy LinearGaussian or NonlinearGaussian, got "
            f"{type(model).__name__}"
        )
    if model.latent_dim != 1:
        raise ValueError(
            "model must have a 1-D latent space (the sliders move one m and one logvar), got "
            f"k={model.latent_dim}"
        )
    _validate.tensor("x", x, min_dim=2)
    if x.dim() != 2 or x.shape[0] != 1 or x.shape[1] != model.data_dim:
        raise ValueError(
            f"x must be one observation of shape (1, {model.data_dim}), got {tuple(x.shape)}"
        )


def kl_identity_readout(model, x, m, logvar):
    """log p(x), ELBO and KL(q || p(z|x)) for q = N(m, exp(logvar)) on a 1-D toy model, three
    independent routes.

    log p(x) = ELBO + KL(q(z|x) || p(z|x))   (notebook 04). log p(x) is model.log_evidence; the ELBO
    is model.exact_elbo (closed form, or Gauss-Hermite for the non-linear model); the KL never uses
    log p(x):
    LinearGaussian: closed form against the exact Gaussian posterior (model.posterior,
        distributions.kl_normal);
    NonlinearGaussian: KL = E_q[log q(z) - log p(x, z)] + log Z, the expectation by a rectangle rule
        in
    eps = (z - m) / s and log Z = log sum_grid p(x, z) dz on a grid of its own (8001 points on [-20,
    20], not the model's), so that p(x, z) / Z is p(z | x) normalised there. `residual` = ELBO + KL
    - log p(x) is ~1e-15 (linear) or ~1e-12 (non-linear); an error in any one route shows in it (a
    log p(x) off by 1 nat: residual -1).

    Args:
        model: toy.LinearGaussian or toy.NonlinearGaussian with latent_dim 1.
        x: (1, d) one observation.
        m, logvar: floats, the mean and log-variance of q.
    Returns:
        dict of floats: log_px, elbo, kl, residual; and "kl_route", a short text naming how the KL
        was computed.
    """
    from vaelib.toy import LinearGaussian

    _check_1d(model, x)
    m, logvar = as_float("m", m), as_float("logvar", logvar)
    dtype = model.dtype
    mu_t = torch.tensor([[m]], dtype=dtype)  # (1, 1)
    lv_t = torch.tensor([[logvar]], dtype=dtype)  # (1, 1)
    log_px = model.log_evidence(x).item()
    elbo = model.exact_elbo(x, mu_t, lv_t).item()
    if isinstance(model, LinearGaussian):
        post_mean, post_cov = model.posterior(x)  # (1, 1), (1, 1)
        kl = kl_normal(mu_t, lv_t, post_mean, torch.log(post_cov).reshape(1, 1)).item()
        route = "closed form against the exact posterior"
    else:
        grid = torch.linspace(-_Z_LIMIT, _Z_LIMIT, _Z_POINTS, dtype=dtype)[
            :, None, None
        ]  # (G, B=1, k=1)
        log_norm = torch.logsumexp(model.log_joint(x, grid)[:, 0], 0) + math.log(
            grid[1, 0, 0] - grid[0, 0, 0]
        )  # log Z
        eps = torch.linspace(-_EPS_LIMIT, _EPS_LIMIT, _EPS_POINTS, dtype=dtype)  # (E,)
        weights = torch.exp(-0.5 * (LOG_2PI + eps**2)) * (eps[1] - eps[0])  # (E,) N(eps) d eps
        z = (m + math.exp(0.5 * logvar) * eps)[:, None, None]  # (E, B=1, k=1)
        log_q = log_normal(z, mu_t, lv_t)  # (E, 1)
        log_post = (
            model.log_joint(x, z) - log_norm
        )  # (E, 1) p(z | x) = p(x, z) / Z, normalised on its own grid
        kl = (weights[:, None] * (log_q - log_post)).sum().item()
        route = "quadrature of E_q[log q - log p(z|x)], p(z|x) normalised on its own grid"
    return {
        "log_px": log_px,
        "elbo": elbo,
        "kl": kl,
        "residual": elbo + kl - log_px,
        "kl_route": route,
    }


def kl_identity_explorer(models=None, m=0.3, logvar=-1.0):
    """Sliders for q's mean and log-variance on the 1-D toy models: q against the exact posterior,
    and bars for log p(x), the ELBO and KL(q || p(z|x)) that always add up (notebooks 03/04).

    Args:
        models: {name: (model, x)} of 1-D toy models (default: kl_identity_models(), linear and
            bimodal).
        m, logvar: the starting q = N(m, exp(logvar)).
    Returns:
        ipywidgets.VBox (see the module docstring for `controls`, `readout`, `timings`).
    """
    widgets = load_ipywidgets()
    models = kl_identity_models() if models is None else dict(models)
    if not models:
        raise ValueError("models must hold at least one (model, x) pair")
    curves = {}
    z_plot = np.linspace(-4.0, 4.0, 801)
    for name, (model, x) in models.items():
        _check_1d(model, x)
        zt = torch.tensor(z_plot, dtype=model.dtype)[:, None, None]  # (G, 1, 1)
        log_post = model.log_joint(x, zt)[:, 0] - model.log_evidence(
            x
        )  # (G,) p(z|x) on the plot grid
        curves[name] = np.exp(log_post.numpy())

    style = {"description_width": "initial"}
    controls = {
        "model": widgets.ToggleButtons(options=list(models), description="model", style=style),
        "m": widgets.FloatSlider(
            value=m,
            min=-3.0,
            max=3.0,
            step=0.01,
            description="mean m of q",
            readout_format=".2f",
            style=style,
        ),
        "logvar": widgets.FloatSlider(
            value=logvar,
            min=-5.0,
            max=1.0,
            step=0.05,
            description="log s² of q",
            readout_format=".2f",
            style=style,
        ),
    }
    fig = FigureImage((9.5, 3.3))
    ax_q, ax_b = fig.fig.subplots(1, 2, gridspec_kw=dict(width_ratios=[1.7, 1]))
    post_fill = ax_q.fill_between(
        z_plot, curves[next(iter(models))], color="C7", alpha=0.35, label="exact posterior p(z | x)"
    )
    (q_line,) = ax_q.plot(z_plot, z_plot * 0, color="C0", lw=2, label="q(z | x) = N(m, s²)")
    ax_q.set(xlim=(-4, 4), xlabel="z (latent units)", ylabel="density")
    ax_q.legend(loc="upper left", fontsize=8)
    bars = ax_b.bar([0, 1, 2], [0, 0, 0], color=["k", "C0", "C3"], width=0.6)
    (gap,) = ax_b.bar(
        [1],
        [0],
        bottom=[0],
        width=0.6,
        color="C3",
        alpha=0.45,
        hatch="//",
        label="KL stacked on the ELBO",
    )
    level = ax_b.axhline(0, color="k", ls="--", lw=1, label="log p(x)")
    ax_b.axhline(0, color="k", lw=0.6)
    ax_b.set_xticks([0, 1, 2], ["log p(x)", "ELBO", "KL(q‖p(z|x))"])
    ax_b.set(ylabel="nats")
    ax_b.legend(loc="upper left", fontsize=7.5)
    ax_b.set_title("log p(x) = ELBO + KL", fontsize=10)
    fig.fig.tight_layout()
    fig.animate(q_line, *bars, gap, level)
    readout_html = widgets.HTML()
    state = {"model": next(iter(models)), "fill": post_fill}

    def update(v):
        model, x = models[v["model"]]
        r = kl_identity_readout(model, x, v["m"], v["logvar"])
        if state["model"] != v["model"]:  # the posterior changes only with the model
            state["fill"].remove()
            state["fill"] = ax_q.fill_between(z_plot, curves[v["model"]], color="C7", alpha=0.35)
            state["model"] = v["model"]
            fig.invalidate()
        q = np.exp(-0.5 * (LOG_2PI + v["logvar"] + (z_plot - v["m"]) ** 2 / math.exp(v["logvar"])))
        q_line.set_ydata(q)
        sticky_lim(ax_q, 0.0, max(q.max(), curves[v["model"]].max()), margin=0.08)
        ax_q.set_ylim(bottom=0)
        ax_q.set_title(f"{v['model']} model: q against the exact posterior", fontsize=10)
        for bar, h in zip(bars, (r["log_px"], r["elbo"], r["kl"])):
            bar.set_height(h)
        gap.set_y(r["elbo"])
        gap.set_height(r["kl"])
        level.set_ydata([r["log_px"], r["log_px"]])
        lo, hi = min(0.0, r["elbo"], r["log_px"]), max(0.0, r["kl"], r["log_px"])
        sticky_lim(ax_b, lo, hi, margin=0.08)
        readout_html.value = pre_text(
            [
                f"q = N(m = {v['m']:+.2f}, s² = {math.exp(v['logvar']):.4f})   on the {v['model']} "
                f"model",
                f"log p(x)              = {r['log_px']:+.12f} nats",
                f"ELBO                  = {r['elbo']:+.12f} nats",
                f"KL(q ‖ p(z|x))        = {r['kl']:+.12f} nats   ({r['kl_route']})",
                f"ELBO + KL − log p(x)  = {r['residual']:+.1e}",
            ]
        )
        return r

    return explorer(controls, fig, readout_html, update)
