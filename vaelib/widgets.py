"""Interactive explorers for JupyterLab: move q, sigma_x or beta, the latent code and K, and watch the numbers follow.

Each explorer is a function that returns an `ipywidgets.Widget`: sliders, one matplotlib figure drawn with the Agg
backend into an `ipywidgets.Image` (the figure is built once; a slider move updates its artists and re-renders the
PNG, no pyplot state, no ipympl needed), and a readout of the numbers the figure shows. Every number in a readout comes
from a plain `*_readout` function of the slider values, which the tests call directly and compare with the library:

    kl_identity_readout(model, x, m, logvar)      log p(x), ELBO, KL(q || p(z|x)) of a 1-D Gaussian q   (notebooks 03/04)
    gradient_readout(mu, sigma, K)                score-function and pathwise gradients of E_q[z^2]      (notebook 06)
    kl_weight_readout(model, x)                   reconstructions, KL per unit, active units of a VAE    (notebooks 07, 10)
    latent_readout(model, z, codes)               decoded image, log p(z), nearest codes at a 2-D z      (notebook 09)
    iwae_readout(model, x, mu, logvar, K)         ELBO <= IWAE_K <= log p(x) with standard errors       (notebook 10)

The returned widget is an `ipywidgets.VBox` with three extra attributes for tests and curious readers:
`controls` (dict name -> slider), `readout` (the dict behind the text), `timings` (wall-clock seconds taken by each
update after a control moved: computation, artist updates and PNG rendering), `cpu_timings` (the same in CPU seconds
of this process, which other programs on a busy machine do not inflate) and `figure` (the matplotlib Figure in
`figure.fig`; `figure.full_redraws` counts the updates that had to redraw axes and text, not just the moving parts).
Setting a control's `.value` runs the update synchronously.

ipywidgets is imported inside the functions (it is in the dev extra, not a core dependency); without it the
explorers raise ImportError with the install command. Nothing runs at import time. `logvar` is log sigma^2.
"""

import io
import math
import time

import numpy as np
import torch

from vaelib import _validate, quick_mode
from vaelib.distributions import LOG_2PI, kl_normal, log_normal

# -- shared helpers ----------------------------------------------------------------------------------------------


def _ipywidgets():
    try:
        import ipywidgets
    except ImportError as err:  # pragma: no cover - ipywidgets is installed in the dev environment
        raise ImportError(
            "vaelib.widgets needs ipywidgets >= 8 (and JupyterLab to show it): pip install 'ipywidgets>=8' jupyterlab"
        ) from err
    return ipywidgets


class _FigureImage:
    """One matplotlib Figure on an Agg canvas, shown as an ipywidgets.Image.

    `refresh()` re-renders the PNG. Artists registered with `animate()` are drawn on top of a cached background
    (blitting): the full figure (axes, ticks, text) is drawn again only when an axis limit, scale or title changed,
    or after `invalidate()`. Keep slider-dependent numbers in the readout, not in titles or legends.
    """

    def __init__(self, figsize, dpi=80):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        widgets = _ipywidgets()
        self.fig = Figure(figsize=figsize, dpi=dpi)
        FigureCanvasAgg(self.fig)
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%", height="auto"))
        self.animated = []
        self._background, self._key = None, None
        self.full_redraws = 0

    def animate(self, *artists):
        for a in artists:
            a.set_animated(True)
            self.animated.append(a)

    def invalidate(self):
        self._background = None

    def _layout_key(self):
        return tuple((ax.get_xlim(), ax.get_ylim(), ax.get_xscale(), ax.get_yscale(), ax.get_title())
                     for ax in self.fig.axes)

    def refresh(self):
        from PIL import Image

        canvas = self.fig.canvas
        key = self._layout_key()
        if self._background is None or key != self._key:
            canvas.draw()  # everything except the animated artists
            self._background, self._key = canvas.copy_from_bbox(self.fig.bbox), key
            self.full_redraws += 1
        else:
            canvas.restore_region(self._background)
        for a in self.animated:
            if a.get_visible():
                self.fig.draw_artist(a)
        buf = io.BytesIO()
        Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1).save(
            buf, format="png", compress_level=1)
        self.image.value = buf.getvalue()


def _sticky_lim(ax, lo, hi, axis="y", margin=0.1, fill=0.4):
    """Set an axis range that holds [lo, hi]; keep the current one while it still does and is not too loose
    (at least `fill` of it used), so that most slider moves reuse the cached background."""
    get, set_ = (ax.get_ylim, ax.set_ylim) if axis == "y" else (ax.get_xlim, ax.set_xlim)
    a, b = get()
    span = max(hi - lo, 1e-9)
    if lo < a or hi > b or span < fill * (b - a):
        set_(lo - margin * span, hi + margin * span)


def _explorer(controls, figure, readout_html, update):
    """Assemble the VBox, wire every control to `update` (timed), run it once."""
    widgets = _ipywidgets()
    box = widgets.VBox([widgets.HBox(list(controls.values()), layout=widgets.Layout(flex_flow="row wrap")),
                        figure.image, readout_html])
    box.controls, box.readout, box.timings, box.cpu_timings, box.figure = controls, {}, [], [], figure

    def redraw():
        box.readout = update({name: c.value for name, c in controls.items()})
        figure.refresh()

    def on_change(_change):
        t0, c0 = time.perf_counter(), time.process_time()
        redraw()
        box.timings.append(time.perf_counter() - t0)
        box.cpu_timings.append(time.process_time() - c0)

    for c in controls.values():
        c.observe(on_change, names="value")
    redraw()
    return box


def _pre(lines):
    """Readout lines as monospaced HTML (the numbers keep their alignment)."""
    import html

    return "<pre style='font-size: 12px; line-height: 1.35; margin: 2px 0'>" + html.escape("\n".join(lines)) + "</pre>"


def _as_float(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _tile(images, n_cols, shape, pad=1):
    """(n, D) images -> one (rows * (h + pad) - pad, n_cols * (w + pad) - pad) array, NaN between images."""
    images = np.asarray(images, dtype=float).reshape(-1, *shape)
    h, w = shape
    n_rows = max(1, math.ceil(len(images) / n_cols))
    out = np.full((n_rows * (h + pad) - pad, n_cols * (w + pad) - pad), np.nan)
    for i, img in enumerate(images):
        r, c = divmod(i, n_cols)
        out[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = img
    return out


def _image_shape(data_dim, image_shape):
    if image_shape is not None:
        if math.prod(image_shape) != data_dim:
            raise ValueError(f"image_shape {tuple(image_shape)} does not match the data dimension D={data_dim}")
        return tuple(image_shape)
    side = math.isqrt(data_dim)
    if side * side != data_dim:
        raise ValueError(f"the data dimension D={data_dim} is not a square: pass image_shape=(height, width)")
    return side, side


def _decoded_mean(model, z):
    """Mean of p(x | z): pixel probabilities (Bernoulli) or the Gaussian mean, float64 on the CPU.

    z: (..., k) on any device -> (..., D)."""
    out = model.decode(_to_model(model, z))
    return (torch.sigmoid(out) if model.likelihood == "bernoulli" else out).double().cpu()


def _to_model(model, t):
    """t on the model's device and in its dtype (a model trained on CUDA is used where it lives)."""
    p = next(model.parameters())
    return t.to(device=p.device, dtype=p.dtype)


# -- 1. the KL identity -------------------------------------------------------------------------------------------


def kl_identity_models(dtype=torch.float64):
    """The two 1-D models of notebooks 03/04 with their observation: {"linear": (model, x), "bimodal": (model, x)}.

    linear:  LinearGaussian(W = [[1], [0.5]], b = 0, noise_std = 0.5), x = [[1.0, 0.8]]  (Gaussian posterior)
    bimodal: NonlinearGaussian(W = [[1]], b = 0, noise_std = 0.3, curvature = 1), x = [[1.0]]  (two posterior modes)
    """
    from vaelib.toy import LinearGaussian, NonlinearGaussian

    lin = LinearGaussian(torch.tensor([[1.0], [0.5]], dtype=dtype), torch.zeros(2, dtype=dtype), noise_std=0.5)
    nl = NonlinearGaussian(torch.tensor([[1.0]], dtype=dtype), torch.zeros(1, dtype=dtype), noise_std=0.3, curvature=1.0)
    return {"linear": (lin, torch.tensor([[1.0, 0.8]], dtype=dtype)), "bimodal": (nl, torch.tensor([[1.0]], dtype=dtype))}


# standard-normal quadrature in q's own coordinates z = m + s eps: rectangle rule on [-12, 12], spacing 0.01.
# The integrands are a polynomial of degree <= 4 times N(eps; 0, 1), for which the rule is exact to round-off.
_EPS_LIMIT, _EPS_POINTS = 12.0, 2401


def _check_1d(model, x):
    from vaelib.toy import LinearGaussian, NonlinearGaussian

    if not isinstance(model, (LinearGaussian, NonlinearGaussian)):
        raise TypeError(f"model must be a vaelib.toy LinearGaussian or NonlinearGaussian, got {type(model).__name__}")
    if model.latent_dim != 1:
        raise ValueError(f"model must have a 1-D latent space (the sliders move one m and one logvar), got k={model.latent_dim}")
    _validate.tensor("x", x, min_dim=2)
    if x.dim() != 2 or x.shape[0] != 1 or x.shape[1] != model.data_dim:
        raise ValueError(f"x must be one observation of shape (1, {model.data_dim}), got {tuple(x.shape)}")


def kl_identity_readout(model, x, m, logvar):
    """log p(x), ELBO and KL(q || p(z|x)) for q = N(m, exp(logvar)) on a 1-D toy model, three independent routes.

    log p(x) = ELBO + KL(q(z|x) || p(z|x))   (notebook 04). log p(x) is model.log_evidence; the ELBO is
    model.exact_elbo (closed form, or Gauss-Hermite for the non-linear model); the KL is computed from its definition:
    for LinearGaussian in closed form against the exact Gaussian posterior (distributions.kl_normal); for
    NonlinearGaussian by quadrature of E_q[log q(z) - log p(z|x)] with p(z|x) = p(x, z) / p(x), on a rectangle rule in
    eps = (z - m) / s. `residual` = ELBO + KL - log p(x) is ~1e-15 (linear) or ~1e-13 (non-linear).

    Args:
        model: toy.LinearGaussian or toy.NonlinearGaussian with latent_dim 1.
        x: (1, d) one observation.
        m, logvar: floats, the mean and log-variance of q.
    Returns:
        dict of floats: log_px, elbo, kl, residual; and "kl_route", a short text naming how the KL was computed.
    """
    from vaelib.toy import LinearGaussian

    _check_1d(model, x)
    m, logvar = _as_float("m", m), _as_float("logvar", logvar)
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
        eps = torch.linspace(-_EPS_LIMIT, _EPS_LIMIT, _EPS_POINTS, dtype=dtype)  # (E,)
        weights = torch.exp(-0.5 * (LOG_2PI + eps**2)) * (eps[1] - eps[0])  # (E,) N(eps) d eps
        z = (m + math.exp(0.5 * logvar) * eps)[:, None, None]  # (E, B=1, k=1)
        log_q = log_normal(z, mu_t, lv_t)  # (E, 1)
        log_post = model.log_joint(x, z) - log_px  # (E, 1) Bayes' rule: log p(z|x) = log p(x, z) - log p(x)
        kl = (weights[:, None] * (log_q - log_post)).sum().item()
        route = "quadrature of E_q[log q - log p(z|x)]"
    return {"log_px": log_px, "elbo": elbo, "kl": kl, "residual": elbo + kl - log_px, "kl_route": route}


def kl_identity_explorer(models=None, m=0.3, logvar=-1.0):
    """Sliders for q's mean and log-variance on the 1-D toy models: q against the exact posterior, and bars for
    log p(x), the ELBO and KL(q || p(z|x)) that always add up (notebooks 03/04).

    Args:
        models: {name: (model, x)} of 1-D toy models (default: kl_identity_models(), linear and bimodal).
        m, logvar: the starting q = N(m, exp(logvar)).
    Returns:
        ipywidgets.VBox (see the module docstring for `controls`, `readout`, `timings`).
    """
    widgets = _ipywidgets()
    models = kl_identity_models() if models is None else dict(models)
    if not models:
        raise ValueError("models must hold at least one (model, x) pair")
    curves = {}
    z_plot = np.linspace(-4.0, 4.0, 801)
    for name, (model, x) in models.items():
        _check_1d(model, x)
        zt = torch.tensor(z_plot, dtype=model.dtype)[:, None, None]  # (G, 1, 1)
        log_post = model.log_joint(x, zt)[:, 0] - model.log_evidence(x)  # (G,) p(z|x) on the plot grid
        curves[name] = np.exp(log_post.numpy())

    style = {"description_width": "initial"}
    controls = {
        "model": widgets.ToggleButtons(options=list(models), description="model", style=style),
        "m": widgets.FloatSlider(value=m, min=-3.0, max=3.0, step=0.01, description="mean m of q",
                                 readout_format=".2f", style=style),
        "logvar": widgets.FloatSlider(value=logvar, min=-5.0, max=1.0, step=0.05, description="log s² of q",
                                      readout_format=".2f", style=style),
    }
    fig = _FigureImage((9.5, 3.3))
    ax_q, ax_b = fig.fig.subplots(1, 2, gridspec_kw=dict(width_ratios=[1.7, 1]))
    post_fill = ax_q.fill_between(z_plot, curves[next(iter(models))], color="C7", alpha=0.35, label="exact posterior p(z | x)")
    (q_line,) = ax_q.plot(z_plot, z_plot * 0, color="C0", lw=2, label="q(z | x) = N(m, s²)")
    ax_q.set(xlim=(-4, 4), xlabel="z (latent units)", ylabel="density")
    ax_q.legend(loc="upper left", fontsize=8)
    bars = ax_b.bar([0, 1, 2], [0, 0, 0], color=["k", "C0", "C3"], width=0.6)
    (gap,) = ax_b.bar([1], [0], bottom=[0], width=0.6, color="C3", alpha=0.45, hatch="//", label="KL stacked on the ELBO")
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
        _sticky_lim(ax_q, 0.0, max(q.max(), curves[v["model"]].max()), margin=0.08)
        ax_q.set_ylim(bottom=0)
        ax_q.set_title(f"{v['model']} model: q against the exact posterior", fontsize=10)
        for bar, h in zip(bars, (r["log_px"], r["elbo"], r["kl"])):
            bar.set_height(h)
        gap.set_y(r["elbo"])
        gap.set_height(r["kl"])
        level.set_ydata([r["log_px"], r["log_px"]])
        lo, hi = min(0.0, r["elbo"], r["log_px"]), max(0.0, r["kl"], r["log_px"])
        _sticky_lim(ax_b, lo, hi, margin=0.08)
        readout_html.value = _pre([
            f"q = N(m = {v['m']:+.2f}, s² = {math.exp(v['logvar']):.4f})   on the {v['model']} model",
            f"log p(x)              = {r['log_px']:+.12f} nats",
            f"ELBO                  = {r['elbo']:+.12f} nats",
            f"KL(q ‖ p(z|x))        = {r['kl']:+.12f} nats   ({r['kl_route']})",
            f"ELBO + KL − log p(x)  = {r['residual']:+.1e}",
        ])
        return r

    return _explorer(controls, fig, readout_html, update)


# -- 2. gradient estimators -------------------------------------------------------------------------------------


def _gaussian_poly_moments(coeffs):
    """Mean and variance of p(eps) = sum_n coeffs[n] eps^n for eps ~ N(0, 1); E[eps^n] = (n - 1)!! for even n."""
    from numpy.polynomial import polynomial as npoly

    def expect(c):
        return float(sum(cn * math.prod(range(n - 1, 0, -2)) for n, cn in enumerate(c) if n % 2 == 0))

    mean = expect(coeffs)
    return mean, expect(npoly.polymul(coeffs, coeffs)) - mean**2


def gradient_exact(mu, sigma):
    """Exact gradient of L = E_q[z^2], q = N(mu, sigma^2), and the variance of each single-sample estimator.

    L = mu^2 + sigma^2, so dL/dmu = 2 mu and dL/dlog sigma^2 = sigma^2. With z = mu + sigma eps each single-sample
    estimate is a polynomial in eps (notebook 06, section 5): score function z^2 (z - mu) / sigma^2 and
    z^2 (eps^2 - 1) / 2; pathwise 2 z and z (z - mu). Their variances follow from E[eps^n] = (n - 1)!! (n even).

    Args:
        mu: float; sigma: float > 0.
    Returns:
        dict: grad_mu, grad_logvar (floats) and var[(estimator, parameter)] for estimator in {"score", "pathwise"},
        parameter in {"mu", "logvar"}: the variance of one single-sample estimate.
    """
    from numpy.polynomial import polynomial as npoly

    mu, sigma = _as_float("mu", mu), _validate.positive_scalar("sigma", sigma)
    z, eps = np.array([mu, sigma]), np.array([0.0, 1.0])  # z = mu + sigma eps, as polynomials in eps
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
    """K-sample score-function and pathwise estimates of the gradient of E_q[z^2], q = N(mu, sigma^2), `repeats` times.

    Uses estimators.score_function_grad and estimators.pathwise_grad on `repeats` independent copies of (mu, logvar),
    with a generator seeded by `seed` (the same eps for every mu and sigma, so the histograms move smoothly).

    Args:
        mu: float; sigma: float > 0; K: samples per estimate (>= 1); repeats: number of K-sample estimates.
    Returns:
        dict: "exact" (gradient_exact(mu, sigma)); "estimates"[(estimator, parameter)] a (repeats,) numpy array;
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
        g = estimator(_f_square, mu_t, logvar_t, K, generator=torch.Generator().manual_seed(seed))  # (R, 1) each
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
    """mu, sigma and K sliders: histograms of K-sample score-function and pathwise gradient estimates of E_q[z^2],
    with the exact gradient and the exact variances (notebook 06).

    Args:
        mu, sigma, K: starting values (the notebook's q = N(1, 0.5^2), one sample).
        repeats: estimates per histogram (default 1000; 500 in quick mode).
    Returns:
        ipywidgets.VBox (see the module docstring).
    """
    widgets = _ipywidgets()
    repeats = (500 if quick_mode() else 1000) if repeats is None else repeats
    style = {"description_width": "initial"}
    controls = {
        "mu": widgets.FloatSlider(value=mu, min=-2.0, max=2.0, step=0.05, description="μ", style=style),
        "sigma": widgets.FloatSlider(value=sigma, min=0.1, max=2.0, step=0.05, description="σ", style=style),
        "K": widgets.SelectionSlider(options=[1, 2, 4, 8, 16, 32, 64], value=K, description="samples K", style=style),
    }
    fig = _FigureImage((10.5, 3.4))
    axes = fig.fig.subplots(1, 2)
    lines = {}
    for ax, param, title in zip(axes, ("mu", "logvar"), ("∂L/∂μ", "∂L/∂log σ²")):
        for est, color in (("score", "C1"), ("pathwise", "C0")):
            (lines[(est, param)],) = ax.plot([], [], color=color, lw=1.5, drawstyle="steps-mid")
        lines[("exact", param)] = ax.axvline(0, color="k", ls="--", lw=1.2, label="exact gradient")
        ax.set(xlabel=f"K-sample estimate of {title}", ylabel="frequency (tallest bin = 1)", ylim=(0, 1.3))
        ax.legend(handles=[lines[("score", param)], lines[("pathwise", param)], lines[("exact", param)]],
                  labels=["score function", "pathwise", "exact gradient"], loc="upper right", fontsize=7.5)
    axes[0].set_title(f"{repeats} K-sample estimates of each gradient, f(z) = z²", fontsize=10)
    axes[1].set_title("the x-axis stays put while K changes", fontsize=10)
    fig.fig.tight_layout()
    fig.animate(*lines.values())
    readout_html = widgets.HTML()
    ranges = {}  # (mu, sigma) -> the x-ranges of the K = 1 estimates, so that K only narrows the histograms

    def x_ranges(mu, sigma):
        if (mu, sigma) not in ranges:
            r1 = gradient_readout(mu, sigma, 1, repeats=repeats)
            ranges.clear()
            for param in ("mu", "logvar"):
                both = np.concatenate([r1["estimates"][("score", param)], r1["estimates"][("pathwise", param)]])
                lo, hi = np.quantile(both, [0.01, 0.99])
                ranges.setdefault((mu, sigma), {})[param] = (lo, hi) if hi - lo > 1e-9 else (lo - 0.5, hi + 0.5)
        return ranges[(mu, sigma)]

    def update(v):
        r = gradient_readout(v["mu"], v["sigma"], v["K"], repeats=repeats)
        for ax, param in zip(axes, ("mu", "logvar")):
            _sticky_lim(ax, *x_ranges(v["mu"], v["sigma"])[param], axis="x", margin=0.3)
            edges = np.linspace(*ax.get_xlim(), 81)
            counts = {est: np.histogram(r["estimates"][(est, param)], bins=edges)[0] for est in ("score", "pathwise")}
            top = max(c.max() for c in counts.values()) or 1
            for est, c in counts.items():
                lines[(est, param)].set_data(0.5 * (edges[1:] + edges[:-1]), c / top)
            exact = r["exact"]["grad_" + param]
            lines[("exact", param)].set_xdata([exact, exact])
        rows = [f"q = N({v['mu']:.2f}, {v['sigma']:.2f}²), K = {v['K']}:  L = E_q[z²] = μ² + σ² = "
                f"{v['mu']**2 + v['sigma']**2:.4f};  exact gradient: ∂L/∂μ = 2μ = {r['exact']['grad_mu']:.4f},  "
                f"∂L/∂log σ² = σ² = {r['exact']['grad_logvar']:.4f}",
                f"{'estimator':22s}{'mean of estimates':>18s}{'measured var':>14s}{'exact var (v1/K)':>18s}"]
        for key in r["estimates"]:
            rows.append(f"{key[0] + ', ' + key[1]:22s}{r['mean'][key]:18.4f}{r['var'][key]:14.4g}{r['exact_var'][key]:18.4g}")
        readout_html.value = _pre(rows)
        return r

    return _explorer(controls, fig, readout_html, update)


# -- 3. sigma_x or beta as a KL weight ------------------------------------------------------------------------------

SIGMA_GRID = (0.05, 0.1, 0.2, 0.3, 0.5, 1 / math.sqrt(2), 1.0, math.sqrt(32))  # notebook 07 (sqrt(D/2), D = 64)
SIGMA_GRID_QUICK = (0.1, 0.3, 1.0)


def train_sigma_grid(path, sigmas=None, epochs=None, latent_dim=8, hidden_dims=(128,), seed=0, x_train=None):
    """Train one Gaussian-decoder VAE per sigma_x on digits (once) and cache their weights in the file `path`.

    Every model starts from the same weights (torch seed `seed`) and sees the same data order and noise (fit seed
    `seed`), as in notebook 07. If `path` holds models trained with the same settings they are loaded instead; the
    file is written atomically (all models or none).

    Args:
        path: the cache file (its folder must exist), e.g. a path under the notebook's run folder.
        sigmas: sigma_x values (default SIGMA_GRID; SIGMA_GRID_QUICK in quick mode).
        epochs: epochs per model (default 200; 2 in quick mode).
        latent_dim, hidden_dims, seed: the VAE and fit settings.
        x_train: (N, D) training images in [0, 1] (default: the digits training split).
    Returns:
        {sigma_x: VAE} in eval mode, on the CPU.
    """
    from pathlib import Path

    from vaelib.models import VAE
    from vaelib.train import atomic_write, fit

    quick = quick_mode()
    sigmas = tuple(float(s) for s in (sigmas if sigmas is not None else (SIGMA_GRID_QUICK if quick else SIGMA_GRID)))
    if not sigmas:
        raise ValueError("sigmas must hold at least one sigma_x")
    for s in sigmas:
        _validate.positive_scalar("sigmas", s)
    epochs = (2 if quick else 200) if epochs is None else _validate.count("epochs", epochs)
    if x_train is None:
        from vaelib.data import load

        x_train, _ = load("digits")
    D = x_train.shape[-1]
    config = {"sigmas": list(sigmas), "epochs": epochs, "latent_dim": latent_dim, "hidden_dims": list(hidden_dims),
              "seed": seed, "data_dim": D, "n_train": int(x_train.shape[0]),
              "data_sum": round(float(x_train.double().sum()), 6)}
    path = Path(path)

    def build(sigma_x):
        torch.manual_seed(seed)
        model = VAE(D, latent_dim, hidden_dims=tuple(hidden_dims), likelihood="gaussian", sigma_x=sigma_x)
        model._warn_sigma_x_pending = False  # sigma_x = 1 on [0, 1] data is on purpose: the collapse is the point
        return model

    if path.exists():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached.get("config") == config:
            models = {}
            for s, state in zip(sigmas, cached["state_dicts"]):
                models[s] = build(s)
                models[s].load_state_dict(state)
                models[s].eval()
            return models
    models = {}
    for s in sigmas:
        models[s] = build(s)
        fit(models[s], x_train, epochs=epochs, batch_size=128, lr=2e-3, seed=seed, device="cpu", progress=False)
        models[s].eval()
    payload = {"config": config, "state_dicts": [{k: t.cpu() for k, t in models[s].state_dict().items()} for s in sigmas]}
    atomic_write(path, lambda f: torch.save(payload, f))
    return models


@torch.no_grad()
def kl_weight_readout(model, x, n_images=8):
    """What a trained VAE does with images x: reconstructions, KL to the prior per unit, active units, squared error.

    Reconstructions decode the encoder mean: mean of p(x | z = mu(x)). KL_j = mean over x of KL(q(z_j | x) || N(0, 1));
    active units: evaluate.active_units (Var_x of mu_j(x) > 0.01).

    Args:
        model: a vaelib.models.VAE.
        x: (N, D) images, N >= 2.
        n_images: how many of the first images to reconstruct.
    Returns:
        dict: recon (n_images, D) numpy; kl_per_unit (k,) numpy; kl (float, their sum, nats per image);
        active (int); code_variance (k,) numpy; sse (float, mean ||x - mean(mu(x))||^2).
    """
    from vaelib.evaluate import active_units
    from vaelib.models import VAE

    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.models.VAE, got {type(model).__name__}")
    _validate.tensor("x", x, min_dim=2)
    if x.dim() != 2 or x.shape[0] < 2 or x.shape[1] != model.data_dim:
        raise ValueError(f"x must have shape (N >= 2, {model.data_dim}), got {tuple(x.shape)}")
    x = x.double().cpu()
    mu, logvar = model.encode(_to_model(model, x))  # (N, k) each
    kl_units = kl_normal(mu[..., None], logvar[..., None]).mean(0).double().cpu()  # (k,) KL of each unit, mean over x
    recon_all = _decoded_mean(model, mu)  # (N, D)
    n_active, variance = active_units(model, _to_model(model, x))
    return {
        "recon": recon_all[:n_images].numpy(),
        "kl_per_unit": kl_units.numpy(),
        "kl": float(kl_units.sum()),
        "active": n_active,
        "code_variance": variance.double().cpu().numpy(),
        "sse": float(((x - recon_all) ** 2).sum(-1).mean()),
    }


def kl_weight_explorer(models, x, parameter="sigma_x", n_images=8, image_shape=None):
    """A slider over trained VAEs that differ in one KL weight (sigma_x or beta): reconstructions, KL per unit and
    active units follow the slider (notebooks 07 and 10). Everything is computed once when the explorer is built;
    a slider move only redraws.

    Args:
        models: {value: VAE}, e.g. train_sigma_grid(...) or {beta: model}.
        x: (N, D) held-out images, N >= 2.
        parameter: "sigma_x" (the readout adds beta = 2 sigma_x^2) or "beta".
        n_images: images to reconstruct.
        image_shape: (height, width) of an image (default: square).
    Returns:
        ipywidgets.VBox (see the module docstring).
    """
    widgets = _ipywidgets()
    if parameter not in ("sigma_x", "beta"):
        raise ValueError(f"parameter must be 'sigma_x' or 'beta', got {parameter!r}")
    if not models:
        raise ValueError("models must hold at least one VAE")
    keys = sorted(models)
    results = {key: kl_weight_readout(models[key], x, n_images=n_images) for key in keys}
    shape = _image_shape(x.shape[-1], image_shape)
    n_images = len(results[keys[0]]["recon"])
    originals = x[:n_images].double().numpy()
    k = len(results[keys[0]]["kl_per_unit"])
    label = "σ_x" if parameter == "sigma_x" else "β"

    controls = {"value": widgets.SelectionSlider(options=[(f"{key:.3g}", key) for key in keys], value=keys[0],
                                                 description=label, style={"description_width": "initial"})}
    fig = _FigureImage((11.0, 3.2))
    ax_img, ax_kl, ax_curve = fig.fig.subplots(1, 3, gridspec_kw=dict(width_ratios=[1.6, 1, 1]))
    im = ax_img.imshow(_tile(np.concatenate([originals, results[keys[0]]["recon"]]), n_images, shape), cmap="gray",
                       vmin=0, vmax=1, interpolation="nearest")
    ax_img.set(xticks=[], yticks=[], title="top: test images, bottom: reconstructions")
    ax_img.grid(False)
    kl_bars = ax_kl.bar(np.arange(1, k + 1), np.zeros(k), color="C1")
    kl_top = max(r["kl_per_unit"].max() for r in results.values())
    ax_kl.set(xlabel="latent unit (sorted by KL)", ylabel="KL(q(z_j|x) ‖ p(z_j)) (nats)", ylim=(0, 1.1 * kl_top + 1e-9))
    xs = np.array(keys, dtype=float)
    ax_curve.plot(xs, [results[key]["kl"] for key in keys], "o-", color="C1", label="KL (nats per image)")
    ax_act = ax_curve.twinx()
    ax_act.plot(xs, [results[key]["active"] for key in keys], "s--", color="C2", label="active units")
    ax_act.set(ylim=(-0.3, k + 0.3), ylabel="active units")
    (mark,) = ax_curve.plot([], [], "o", ms=12, mfc="none", mec="k", mew=2)
    ax_curve.set(xscale="log" if xs.min() > 0 and len(xs) > 1 else "linear", xlabel=label, ylabel="KL (nats per image)")
    ax_curve.legend(loc="upper right", fontsize=8)
    ax_act.legend(loc="center right", fontsize=8)
    ax_act.grid(False)
    ax_kl.set_title("KL per unit (grey: inactive)", fontsize=10)
    fig.fig.tight_layout()
    fig.animate(im, *kl_bars, mark)
    readout_html = widgets.HTML()

    def update(v):
        key = v["value"]
        r = results[key]
        im.set_data(_tile(np.concatenate([originals, r["recon"]]), n_images, shape))
        order = np.sort(r["kl_per_unit"])[::-1]
        active_sorted = np.sort(r["code_variance"])[::-1] > 0.01
        for bar, h, a in zip(kl_bars, order, active_sorted):
            bar.set_height(h)
            bar.set_color("C1" if a else "C7")
        mark.set_data([key], [r["kl"]])
        extra = f",  β = 2σ_x² = {2 * key**2:.4g}" if parameter == "sigma_x" else ""
        readout_html.value = _pre([
            f"{label} = {key:.4g}{extra}",
            f"KL(q(z|x) ‖ p(z)) = {r['kl']:.3f} nats per image;  active units {r['active']} of {k}",
            f"E‖x − mean of p(x | z = μ(x))‖² = {r['sse']:.3f} per image",
        ])
        return dict(r, value=key)

    return _explorer(controls, fig, readout_html, update)


# -- 4. the latent space ------------------------------------------------------------------------------------------


@torch.no_grad()
def latent_codes(model, x):
    """Encoder means mu(x) of a VAE with a 2-D latent space.  x: (N, D) -> (N, 2) float64 numpy array."""
    from vaelib.models import VAE

    if not isinstance(model, VAE) or model.latent_dim != 2:
        raise ValueError(f"model must be a vaelib.models.VAE with latent_dim 2, got {model!r:.80}")
    return model.encode(_to_model(model, x))[0].double().cpu().numpy()


@torch.no_grad()
def latent_readout(model, z, codes, n_neighbours=5):
    """What the decoder and the prior say at a latent point z, and which training codes lie nearest.

    Args:
        model: a vaelib.models.VAE with latent_dim 2.
        z: a pair of floats (z1, z2).
        codes: (N, 2) numpy array of training codes (latent_codes(model, x_train)).
        n_neighbours: how many nearest codes to return.
    Returns:
        dict: decoded (D,) numpy, the mean of p(x | z) (pixel probabilities for a Bernoulli decoder);
        log_prior (float) log N(z; 0, I) in nats; prior_density (float); neighbours (n,) indices into codes,
        nearest first; distances (n,) their Euclidean distances.
    """
    z1, z2 = (_as_float("z", float(v)) for v in z)
    codes = np.asarray(codes, dtype=float)
    if codes.ndim != 2 or codes.shape[1] != 2 or len(codes) == 0:
        raise ValueError(f"codes must have shape (N >= 1, 2), got {codes.shape}")
    zt = torch.tensor([z1, z2], dtype=torch.float64)
    log_prior = log_normal(zt, torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)).item()
    decoded = _decoded_mean(model, zt[None])[0].numpy()
    dist = np.hypot(codes[:, 0] - z1, codes[:, 1] - z2)
    n = min(n_neighbours, len(codes))
    nearest = np.argpartition(dist, n - 1)[:n]
    nearest = nearest[np.argsort(dist[nearest], kind="stable")]
    return {"decoded": decoded, "log_prior": log_prior, "prior_density": math.exp(log_prior), "neighbours": nearest,
            "distances": dist[nearest]}


@torch.no_grad()
def interpolation_path(model, x_a, x_b, n=10):
    """Decode the straight line between the encoder means of two images.

    Args:
        model: a VAE; x_a, x_b: (D,) images; n: points on the path, t = 0 .. 1.
    Returns:
        z (n, k) numpy path, decoded (n, D) numpy means of p(x | z).
    """
    _validate.count("n", n, minimum=2)
    ends = model.encode(_to_model(model, torch.stack([x_a, x_b])))[0].double().cpu()  # (2, k)
    t = torch.linspace(0, 1, n, dtype=torch.float64)[:, None]  # (n, 1)
    z = (1 - t) * ends[0] + t * ends[1]  # (n, k)
    return z.numpy(), _decoded_mean(model, z).numpy()


def latent_explorer(model, x_train, x_test, labels=None, pair=(0, 1), n_codes=2000, n_neighbours=5, image_shape=None):
    """Two sliders choose a point z of a 2-D latent space: its decoded image, the prior density there and the
    nearest training codes (with their images); two test images set an interpolation path (notebook 09).

    Args:
        model: a VAE with latent_dim 2.
        x_train: (N, D) training images (their codes are the scatter and the neighbours; the first n_codes are used).
        x_test: (M, D) test images for the interpolation path.
        labels: optional (N,) integer labels of x_train, to colour the scatter.
        pair: indices into x_test of the two ends of the path.
    Returns:
        ipywidgets.VBox (see the module docstring).
    """
    widgets = _ipywidgets()
    shape = _image_shape(x_train.shape[-1], image_shape)
    x_codes = x_train[:n_codes]
    codes = latent_codes(model, x_codes)
    style = {"description_width": "initial"}
    a, b = pair
    controls = {
        "z1": widgets.FloatSlider(value=0.0, min=-3.5, max=3.5, step=0.05, description="z₁", style=style),
        "z2": widgets.FloatSlider(value=0.0, min=-3.5, max=3.5, step=0.05, description="z₂", style=style),
        "a": widgets.BoundedIntText(value=a, min=0, max=len(x_test) - 1, description="path from test image",
                                    style=style, layout=widgets.Layout(width="220px")),
        "b": widgets.BoundedIntText(value=b, min=0, max=len(x_test) - 1, description="to", style=style,
                                    layout=widgets.Layout(width="130px")),
    }
    fig = _FigureImage((11.0, 5.0))
    gs = fig.fig.add_gridspec(2, 3, height_ratios=[3, 1.1], width_ratios=[1.25, 1, 1])
    ax_s = fig.fig.add_subplot(gs[0, 0])
    ax_d = fig.fig.add_subplot(gs[0, 1])
    ax_n = fig.fig.add_subplot(gs[0, 2])
    ax_p = fig.fig.add_subplot(gs[1, :])
    grid = np.linspace(-3.5, 3.5, 141)
    G1, G2 = np.meshgrid(grid, grid)
    ax_s.contour(G1, G2, np.exp(-0.5 * (G1**2 + G2**2)) / (2 * math.pi), levels=5, colors="0.6", linewidths=0.7)
    colours = None if labels is None else np.asarray(labels)[: len(codes)]
    ax_s.scatter(codes[:, 0], codes[:, 1], c=colours, cmap="tab10" if colours is not None else None, s=4, alpha=0.5,
                 color=None if colours is not None else "C0")
    (near_pts,) = ax_s.plot([], [], "o", ms=7, mfc="none", mec="k", mew=1.2, label="nearest training codes")
    (path_line,) = ax_s.plot([], [], ".-", color="C3", lw=1.5, label="interpolation path")
    (z_pt,) = ax_s.plot([], [], "X", ms=12, color="k", mec="w", label="z")
    ax_s.set(xlim=(-3.5, 3.5), ylim=(-3.5, 3.5), aspect="equal", xlabel="z₁", ylabel="z₂",
             title="training codes μ(x), prior contours")
    ax_s.legend(loc="upper left", fontsize=7)
    im_d = ax_d.imshow(np.zeros(shape), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    im_n = ax_n.imshow(_tile(np.zeros((n_neighbours, math.prod(shape))), 2, shape), cmap="gray", vmin=0, vmax=1,
                       interpolation="nearest")
    im_p = ax_p.imshow(_tile(np.zeros((12, math.prod(shape))), 12, shape), cmap="gray", vmin=0, vmax=1,
                       interpolation="nearest")
    for ax in (ax_d, ax_n, ax_p):
        ax.set(xticks=[], yticks=[])
        ax.grid(False)
    ax_n.set_title(f"{n_neighbours} nearest training images", fontsize=10)
    ax_d.set_title("mean of p(x | z) at z", fontsize=10)
    ax_p.set_title("path: test image a, decoded points t = 0 … 1 (10 steps), test image b", fontsize=10)
    fig.fig.tight_layout()
    fig.animate(z_pt, near_pts, path_line, im_d, im_n, im_p)
    readout_html = widgets.HTML()
    path_cache = {}

    def update(v):
        r = latent_readout(model, (v["z1"], v["z2"]), codes, n_neighbours=n_neighbours)
        ends = (v["a"], v["b"])
        if ends not in path_cache:
            path_cache.clear()
            path_cache[ends] = interpolation_path(model, x_test[ends[0]], x_test[ends[1]], n=10)
        z_path, decoded_path = path_cache[ends]
        z_pt.set_data([v["z1"]], [v["z2"]])
        near_pts.set_data(codes[r["neighbours"], 0], codes[r["neighbours"], 1])
        path_line.set_data(z_path[:, 0], z_path[:, 1])
        im_d.set_data(r["decoded"].reshape(shape))
        im_n.set_data(_tile(x_codes[r["neighbours"]].double().numpy(), 2, shape))
        row = np.concatenate([x_test[ends[0]].double().numpy()[None], decoded_path, x_test[ends[1]].double().numpy()[None]])
        im_p.set_data(_tile(row, 12, shape))
        readout_html.value = _pre([
            f"path from test image {ends[0]} to test image {ends[1]}",
            f"z = ({v['z1']:+.2f}, {v['z2']:+.2f});  log p(z) = {r['log_prior']:.4f} nats,  p(z) = {r['prior_density']:.4g}",
            "nearest training codes: " + ", ".join(
                f"#{int(i)} at {d:.3f}" + ("" if labels is None else f" (label {int(np.asarray(labels)[i])})")
                for i, d in zip(r["neighbours"], r["distances"])),
        ])
        return dict(r, path=z_path)

    return _explorer(controls, fig, readout_html, update)


# -- 5. IWAE_K ----------------------------------------------------------------------------------------------------

IWAE_KS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def iwae_readout(model, x, mu, logvar, K=None, repeats=500, seed=0, *, k=None):
    """ELBO <= E[IWAE_K] <= log p(x) on a toy model whose log p(x) is known, with standard errors.

    IWAE_K is drawn `repeats` times with estimators.iwae_bound (a generator seeded with `seed`); its mean and the
    standard error of that mean (sd / sqrt(repeats)) are compared with the exact ELBO (model.exact_elbo) and the exact
    log p(x) (model.log_evidence).

    Args:
        model: a vaelib.toy LinearGaussian or NonlinearGaussian; x: (1, d) one observation.
        mu, logvar: (1, k) the proposal q(z | x).
        K: importance samples (>= 1, required); repeats: independent draws of the bound (>= 2).
        k: the former name of K, still accepted (k is the latent size everywhere else in vaelib).
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
    draws = iwae_bound(model.log_joint, x.expand(repeats, -1), mu.expand(repeats, -1), logvar.expand(repeats, -1), K,
                       generator=torch.Generator().manual_seed(seed))  # (repeats,)
    return {"log_px": model.log_evidence(x).item(), "elbo": model.exact_elbo(x, mu, logvar).item(),
            "iwae": draws.mean().item(), "iwae_se": (draws.std() / math.sqrt(repeats)).item(),
            "draws": draws.double().numpy()}


def iwae_explorer(model=None, x=None, mu=None, logvar=None, Ks=IWAE_KS, repeats=None, *, ks=None):
    """A K slider: the distribution of IWAE_K, with the exact ELBO and log p(x) it lies between (notebook 10).

    Default: the linear-Gaussian model of notebooks 03/04 (exact log p(x)) with the proposal q = N(0.3, e^-1), which
    misses the posterior N(0.933, 0.167) by KL = 1.41 nats.
    All K are computed when the explorer is built (a second or less); the slider only redraws.

    Args:
        model, x: a toy model and one observation (1, d) (default: kl_identity_models()["linear"]).
        mu, logvar: (1, k) proposal (default: 0.3 and -1.0).
        Ks: the numbers of importance samples K on the slider; repeats: draws of IWAE_K per K (default 500; 200 in
            quick mode). ks: the former name of Ks, still accepted.
    Returns:
        ipywidgets.VBox (see the module docstring).
    """
    widgets = _ipywidgets()
    if model is None:
        model, x = kl_identity_models()["linear"]
    if x is None:
        raise ValueError("x must be given with model")
    mu = torch.full((1, model.latent_dim), 0.3, dtype=model.dtype) if mu is None else mu
    logvar = torch.full((1, model.latent_dim), -1.0, dtype=model.dtype) if logvar is None else logvar
    repeats = (200 if quick_mode() else 500) if repeats is None else repeats
    Ks = tuple(_validate.renamed("Ks", Ks, "ks", ks, default=IWAE_KS))
    results = {K: iwae_readout(model, x, mu, logvar, K, repeats=repeats, seed=i) for i, K in enumerate(Ks)}
    log_px, elbo = results[Ks[0]]["log_px"], results[Ks[0]]["elbo"]

    controls = {"K": widgets.SelectionSlider(options=list(Ks), value=Ks[0], description="importance samples K",
                                             style={"description_width": "initial"})}
    fig = _FigureImage((10.5, 3.4))
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
    ax_c.errorbar(KK, gaps, yerr=2 * ses, fmt="o-", color="C2", ms=4, capsize=2, label="log p(x) − mean IWAE_K, ± 2 s.e.")
    ax_c.axhline(log_px - elbo, color="C0", ls="--", label="log p(x) − ELBO = KL")
    (mark,) = ax_c.plot([], [], "o", ms=12, mfc="none", mec="k", mew=2)
    # symlog: logarithmic above 1e-3 nats, linear through 0 (a mean of draws can overshoot log p(x) by noise)
    ax_c.set(xscale="log", xlabel="K (importance samples)", ylabel="log p(x) − IWAE_K (nats, symlog)")
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
        _sticky_lim(ax_h, 0.0, 1.1 * densities[K].max() + 1e-9, margin=0.0, fill=0.3)
        ax_h.set_ylim(bottom=0)
        mean_line.set_xdata([r["iwae"], r["iwae"]])
        mark.set_data([K], [log_px - r["iwae"]])
        holds = r["elbo"] <= r["iwae"] + 3 * r["iwae_se"] and r["iwae"] - 3 * r["iwae_se"] <= r["log_px"]
        readout_html.value = _pre([
            f"K = {K}:  ELBO {r['elbo']:.4f}  ≤  IWAE_K {r['iwae']:.4f} ± {r['iwae_se']:.4f} (s.e.)  ≤  log p(x) "
            f"{r['log_px']:.4f}   (within 3 s.e.: {holds})",
            f"gap log p(x) − IWAE_K = {r['log_px'] - r['iwae']:.4f} nats;  log p(x) − ELBO = KL = {r['log_px'] - r['elbo']:.4f}",
        ])
        return r

    return _explorer(controls, fig, readout_html, update)
