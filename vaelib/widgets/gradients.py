"""The gradient-estimator explorer: score-function and pathwise gradients of E_q[z^2] against the
exact one (notebook 06)."""

import math

import numpy as np
import torch

from vaelib import _validate, quick_mode
from vaelib.widgets._common import (
    FigureImage,
    as_float,
    explorer,
    load_ipywidgets,
    pre_text,
    sticky_lim,
)


def _gaussian_poly_moments(coeffs):
    """Mean and variance of p(eps) = sum_n coeffs[n] eps^n for eps ~ N(0, 1); E[eps^n] = (n - 1)!!
    for even n."""
    from numpy.polynomial import polynomial as npoly

    def expect(c):
        return float(
            sum(cn * math.prod(range(n - 1, 0, -2)) for n, cn in enumerate(c) if n % 2 == 0)
        )

    mean = expect(coeffs)
    return mean, expect(npoly.polymul(coeffs, coeffs)) - mean**2


def gradient_exact(mu, sigma):
    """Exact gradient of L = E_q[z^2], q = N(mu, sigma^2), and the variance of each single-sample
    estimator.

    L = mu^2 + sigma^2, so dL/dmu = 2 mu and dL/dlog sigma^2 = sigma^2. With z = mu + sigma eps each
    single-sample estimate is a polynomial in eps (notebook 06, section 5): score function z^2 (z -
    mu) / sigma^2 and z^2 (eps^2 - 1) / 2; pathwise 2 z and z (z - mu). Their variances follow from
    E[eps^n] = (n - 1)!! (n even).

    Args:
        mu: float; sigma: float > 0.
    Returns:
        dict: grad_mu, grad_logvar (floats) and var[(estimator, parameter)] for estimator in
            {"score", "pathwise"},
        parameter in {"mu", "logvar"}: the variance of one single-sample estimate.
    """
    from numpy.polynomial import polynomial as npoly

    mu, sigma = as_float("mu", mu), _validate.positive_scalar("sigma", sigma)
    z, eps = (
        np.array([mu, sigma]),
        np.array([0.0, 1.0]),
    )  # z = mu + sigma eps, as polynomials in eps
    z2 = npoly.polymul(z, z)
    polys = {
        ("score", "mu"): npoly.polymul(z2, eps) / sigma,
        ("score", "logvar"): npoly.polymul(z2, npoly.polysub(npoly.polymul(eps, eps), [1.0])) / 2,
        ("pathwise", "mu"): 2 * z,
        ("pathwise", "logvar"): npoly.polymul(z, sigma * eps),
    }
    var = {key: _gaussian_poly_moments(c)[1] for key, c in polys.items()}
    return {"grad_mu": 2 * mu, "grad_logvar": sigma**2, "var": var}


def _f_square(z):
    return (z**2).sum(-1)


def gradient_readout(mu, sigma, K, repeats=2000, seed=0):
    """K-sample score-function and pathwise estimates of the gradient of E_q[z^2], q = N(mu,
    sigma^2), `repeats` times.

    Uses estimators.score_function_grad and estimators.pathwise_grad on `repeats` independent copies
    of (mu, logvar), with a generator seeded by `seed` (the same eps for every mu and sigma, so the
    histograms move smoothly).

    Args:
        mu: float; sigma: float > 0; K: samples per estimate (>= 1); repeats: number of K-sample
            estimates.
    Returns:
        dict: "exact" (gradient_exact(mu, sigma)); "estimates"[(estimator, parameter)] a (repeats,)
            numpy array;
        "mean", "var" (measured, per key), "exact_var" (the single-sample variance / K, per key).
    """
    from vaelib.estimators import pathwise_grad, score_function_grad

    exact = gradient_exact(mu, sigma)
    _validate.count("K", K)
    _validate.count("repeats", repeats, minimum=2)
    mu_t = torch.full((repeats, 1), float(mu), dtype=torch.float64)  # (R, 1)
    logvar_t = torch.full((repeats, 1), 2.0 * math.log(sigma), dtype=torch.float64)
    estimates = {}
    for name, estimator in (("score", score_function_grad), ("pathwise", pathwise_grad)):
        g = estimator(
            _f_square, mu_t, logvar_t, K, generator=torch.Generator().manual_seed(seed)
        )  # (R, 1) each
        estimates[(name, "mu")] = g.grad_mu[:, 0].numpy()
        estimates[(name, "logvar")] = g.grad_logvar[:, 0].numpy()
    return {
        "exact": exact,
        "estimates": estimates,
        "mean": {k: float(v.mean()) for k, v in estimates.items()},
        "var": {k: float(v.var(ddof=1)) for k, v in estimates.items()},
        "exact_var": {k: v / K for k, v in exact["var"].items()},
    }


def gradient_explorer(mu=1.0, sigma=0.5, K=1, repeats=None):
    """mu, sigma and K sliders: histograms of K-sample score-function and pathwise gradient
    estimates of E_q[z^2], with the exact gradient and the exact variances (notebook 06).

    Args:
        mu, sigma, K: starting values (the notebook's q = N(1, 0.5^2), one sample).
        repeats: estimates per histogram (default 1000; 500 in quick mode).
    Returns:
        ipywidgets.VBox (see the module docstring).
    """
    widgets = load_ipywidgets()
    repeats = (500 if quick_mode() else 1000) if repeats is None else repeats
    style = {"description_width": "initial"}
    controls = {
        "mu": widgets.FloatSlider(
            value=mu, min=-2.0, max=2.0, step=0.05, description="μ", style=style
        ),
        "sigma": widgets.FloatSlider(
            value=sigma, min=0.1, max=2.0, step=0.05, description="σ", style=style
        ),
        "K": widgets.SelectionSlider(
            options=[1, 2, 4, 8, 16, 32, 64], value=K, description="samples K", style=style
        ),
    }
    fig = FigureImage((10.5, 3.4))
    axes = fig.fig.subplots(1, 2)
    lines = {}
    for ax, param, title in zip(axes, ("mu", "logvar"), ("∂L/∂μ", "∂L/∂log σ²")):
        for est, color in (("score", "C1"), ("pathwise", "C0")):
            (lines[(est, param)],) = ax.plot([], [], color=color, lw=1.5, drawstyle="steps-mid")
        lines[("exact", param)] = ax.axvline(0, color="k", ls="--", lw=1.2, label="exact gradient")
        ax.set(
            xlabel=f"K-sample estimate of {title}",
            ylabel="frequency (tallest bin = 1)",
            ylim=(0, 1.3),
        )
        ax.legend(
            handles=[lines[("score", param)], lines[("pathwise", param)], lines[("exact", param)]],
            labels=["score function", "pathwise", "exact gradient"],
            loc="upper right",
            fontsize=7.5,
        )
    axes[0].set_title(f"{repeats} K-sample estimates of each gradient, f(z) = z²", fontsize=10)
    axes[1].set_title("the x-axis stays put while K changes", fontsize=10)
    fig.fig.tight_layout()
    fig.animate(*lines.values())
    readout_html = widgets.HTML()
    # (mu, sigma) -> the x-ranges of the K = 1 estimates, so that K only narrows the histograms
    ranges = {}

    def x_ranges(mu, sigma):
        if (mu, sigma) not in ranges:
            r1 = gradient_readout(mu, sigma, 1, repeats=repeats)
            ranges.clear()
            for param in ("mu", "logvar"):
                both = np.concatenate(
                    [r1["estimates"][("score", param)], r1["estimates"][("pathwise", param)]]
                )
                lo, hi = np.quantile(both, [0.01, 0.99])
                ranges.setdefault((mu, sigma), {})[param] = (
                    (lo, hi) if hi - lo > 1e-9 else (lo - 0.5, hi + 0.5)
                )
        return ranges[(mu, sigma)]

    def update(v):
        r = gradient_readout(v["mu"], v["sigma"], v["K"], repeats=repeats)
        for ax, param in zip(axes, ("mu", "logvar")):
            sticky_lim(ax, *x_ranges(v["mu"], v["sigma"])[param], axis="x", margin=0.3)
            edges = np.linspace(*ax.get_xlim(), 81)
            counts = {
                est: np.histogram(r["estimates"][(est, param)], bins=edges)[0]
                for est in ("score", "pathwise")
            }
            top = max(c.max() for c in counts.values()) or 1
            for est, c in counts.items():
                lines[(est, param)].set_data(0.5 * (edges[1:] + edges[:-1]), c / top)
            exact = r["exact"]["grad_" + param]
            lines[("exact", param)].set_xdata([exact, exact])
        rows = [
            f"q = N({v['mu']:.2f}, {v['sigma']:.2f}²), K = {v['K']}:  L = E_q[z²] = μ² + σ² = "
            f"{v['mu'] ** 2 + v['sigma'] ** 2:.4f};  exact gradient: ∂L/∂μ = 2μ = "
            f"{r['exact']['grad_mu']:.4f},  "
            f"∂L/∂log σ² = σ² = {r['exact']['grad_logvar']:.4f}",
            f"{'estimator':22s}{'mean of estimates':>18s}{'measured var':>14s}"
            f"{'exact var (v1/K)':>18s}",
        ]
        for key in r["estimates"]:
            rows.append(
                f"{key[0] + ', ' + key[1]:22s}{r['mean'][key]:18.4f}{r['var'][key]:14.4g}"
                f"{r['exact_var'][key]:18.4g}"
            )
        readout_html.value = pre_text(rows)
        return r

    return explorer(controls, fig, readout_html, update)
