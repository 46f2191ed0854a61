"""The KL-weight explorer: trained VAEs that differ in sigma_x or beta, their reconstructions and KL
per unit (07, 10)."""

import math

import numpy as np
import torch

from vaelib import _validate, quick_mode
from vaelib.distributions import kl_normal
from vaelib.networks import in_eval_mode
from vaelib.widgets._common import (
    FigureImage,
    decoded_mean,
    explorer,
    load_ipywidgets,
    pre_text,
    to_model,
)

SIGMA_GRID = (
    0.05,
    0.1,
    0.2,
    0.3,
    0.5,
    1 / math.sqrt(2),
    1.0,
    math.sqrt(32),
)  # notebook 07 (sqrt(D/2), D = 64)
SIGMA_GRID_QUICK = (0.1, 0.3, 1.0)


def train_sigma_grid(
    path, sigmas=None, epochs=None, latent_dim=8, hidden_dims=(128,), seed=0, x_train=None
):
    """Train one Gaussian-decoder VAE per sigma_x on digits (once) and cache their weights in the
    file `path`.

    Every model starts from the same weights (torch seed `seed`) and sees the same data order and
    noise (fit seed `seed`), as in notebook 07. If `path` holds models trained with the same
    settings they are loaded instead; the file is written atomically (all models or none).

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

    from vaelib._atomic import atomic_write
    from vaelib.models import VAE
    from vaelib.train import fit

    quick = quick_mode()
    sigmas = tuple(
        float(s)
        for s in (sigmas if sigmas is not None else (SIGMA_GRID_QUICK if quick else SIGMA_GRID))
    )
    if not sigmas:
        raise ValueError("sigmas must hold at least one sigma_x")
    for s in sigmas:
        _validate.positive_scalar("sigmas", s)
    epochs = (2 if quick else 200) if epochs is None else _validate.count("epochs", epochs)
    if x_train is None:
        from vaelib.data import load

        x_train, _ = load("digits")
    D = x_train.shape[-1]
    config = {
        "sigmas": list(sigmas),
        "epochs": epochs,
        "latent_dim": latent_dim,
        "hidden_dims": list(hidden_dims),
        "seed": seed,
        "data_dim": D,
        "n_train": int(x_train.shape[0]),
        "data_sum": round(float(x_train.double().sum()), 6),
    }
    path = Path(path)

    def build(sigma_x):
        torch.manual_seed(seed)
        model = VAE(
            D, latent_dim, hidden_dims=tuple(hidden_dims), likelihood="gaussian", sigma_x=sigma_x
        )
        model.warn_unit_sigma_x = (
            False  # sigma_x = 1 on [0, 1] data is on purpose: the collapse is the point
        )
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
        fit(
            models[s],
            x_train,
            epochs=epochs,
            batch_size=128,
            lr=2e-3,
            seed=seed,
            device="cpu",
            progress=False,
        )
        models[s].eval()
    payload = {
        "config": config,
        "state_dicts": [{k: t.cpu() for k, t in models[s].state_dict().items()} for s in sigmas],
    }
    atomic_write(path, lambda f: torch.save(payload, f))
    return models


@in_eval_mode
@torch.no_grad()
def kl_weight_readout(model, x, n_images=8):
    """What a trained VAE does with images x: reconstructions, KL to the prior per unit, active
    units, squared error.

    Reconstructions decode the encoder mean: mean of p(x | z = mu(x)). KL_j = mean over x of
    KL(q(z_j | x) || N(0, 1)); active units: evaluate.active_units (Var_x of mu_j(x) > 0.01).

    Args:
        model: a vaelib.models.VAE.
        x: (N, D) images, N >= 2.
        n_images: how many of the first images to reconstruct.
    Returns:
        dict: recon (n_images, D) numpy; kl_per_unit (k,) numpy; kl (float, their sum, nats per
            image);
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
    mu, logvar = model.encode(to_model(model, x))  # (N, k) each
    kl_units = (
        kl_normal(mu[..., None], logvar[..., None]).mean(0).double().cpu()
    )  # (k,) KL of each unit, mean over x
    recon_all = decoded_mean(model, mu)  # (N, D)
    n_active, variance = active_units(model, to_model(model, x))
    return {
        "recon": recon_all[:n_images].numpy(),
        "kl_per_unit": kl_units.numpy(),
        "kl": float(kl_units.sum()),
        "active": n_active,
        "code_variance": variance.double().cpu().numpy(),
        "sse": float(((x - recon_all) ** 2).sum(-1).mean()),
    }


def kl_weight_explorer(models, x, parameter="sigma_x", n_images=8, image_shape=None):
    """A slider over trained VAEs that differ in one KL weight (sigma_x or beta): reconstructions,
    KL per unit and active units follow the slider (notebooks 07 and 10). Everything is computed
    once when the explorer is built; a slider move only redraws.

    Args:
        models: {value: VAE}, e.g. train_sigma_grid(...) or {beta: model}.
        x: (N, D) held-out images, N >= 2.
        parameter: "sigma_x" (the readout adds beta = 2 sigma_x^2) or "beta".
        n_images: images to reconstruct.
        image_shape: (height, width) of an image (default: square).
    Returns:
        ipywidgets.VBox (see the module docstring).
    """
    from vaelib.plotting import make_grid, resolve_image_shape

    widgets = load_ipywidgets()
    if parameter not in ("sigma_x", "beta"):
        raise ValueError(f"parameter must be 'sigma_x' or 'beta', got {parameter!r}")
    if not models:
        raise ValueError("models must hold at least one VAE")
    keys = sorted(models)
    results = {key: kl_weight_readout(models[key], x, n_images=n_images) for key in keys}
    shape = resolve_image_shape(x.shape[-1], image_shape)
    n_images = len(results[keys[0]]["recon"])
    originals = x[:n_images].double().numpy()
    k = len(results[keys[0]]["kl_per_unit"])
    label = "σ_x" if parameter == "sigma_x" else "β"

    controls = {
        "value": widgets.SelectionSlider(
            options=[(f"{key:.3g}", key) for key in keys],
            value=keys[0],
            description=label,
            style={"description_width": "initial"},
        )
    }
    fig = FigureImage((11.0, 3.2))
    ax_img, ax_kl, ax_curve = fig.fig.subplots(1, 3, gridspec_kw=dict(width_ratios=[1.6, 1, 1]))
    im = ax_img.imshow(
        make_grid(np.concatenate([originals, results[keys[0]]["recon"]]), shape, ncols=n_images),
        cmap="gray",
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    ax_img.set(xticks=[], yticks=[], title="top: test images, bottom: reconstructions")
    ax_img.grid(False)
    kl_bars = ax_kl.bar(np.arange(1, k + 1), np.zeros(k), color="C1")
    kl_top = max(r["kl_per_unit"].max() for r in results.values())
    ax_kl.set(
        xlabel="latent unit (sorted by KL)",
        ylabel="KL(q(z_j|x) ‖ p(z_j)) (nats)",
        ylim=(0, 1.1 * kl_top + 1e-9),
    )
    xs = np.array(keys, dtype=float)
    ax_curve.plot(
        xs, [results[key]["kl"] for key in keys], "o-", color="C1", label="KL (nats per image)"
    )
    ax_act = ax_curve.twinx()
    ax_act.plot(
        xs, [results[key]["active"] for key in keys], "s--", color="C2", label="active units"
    )
    ax_act.set(ylim=(-0.3, k + 0.3), ylabel="active units")
    (mark,) = ax_curve.plot([], [], "o", ms=12, mfc="none", mec="k", mew=2)
    ax_curve.set(
        xscale="log" if xs.min() > 0 and len(xs) > 1 else "linear",
        xlabel=label,
        ylabel="KL (nats per image)",
    )
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
        im.set_data(make_grid(np.concatenate([originals, r["recon"]]), shape, ncols=n_images))
        order = np.sort(r["kl_per_unit"])[::-1]
        active_sorted = np.sort(r["code_variance"])[::-1] > 0.01
        for bar, h, a in zip(kl_bars, order, active_sorted):
            bar.set_height(h)
            bar.set_color("C1" if a else "C7")
        mark.set_data([key], [r["kl"]])
        extra = f",  β = 2σ_x² = {2 * key**2:.4g}" if parameter == "sigma_x" else ""
        readout_html.value = pre_text(
            [
                f"{label} = {key:.4g}{extra}",
                f"KL(q(z|x) ‖ p(z)) = {r['kl']:.3f} nats per image;  active units {r['active']} of "
                f"{k}",
                f"E‖x − mean of p(x | z = μ(x))‖² = {r['sse']:.3f} per image",
            ]
        )
        return dict(r, value=key)

    return explorer(controls, fig, readout_html, update)
