"""Interactive explorers for JupyterLab: move q, sigma_x or beta, the latent code and K, and watch
the numbers follow.

Each explorer is a function that returns an `ipywidgets.Widget`: sliders, one matplotlib figure
drawn with the Agg backend into an `ipywidgets.Image` (the figure is built once; a slider move
updates its artists and re-renders the PNG, no pyplot state, no ipympl needed), and a readout of the
numbers the figure shows. Every number in a readout comes from a plain `*_readout` function of the
slider values, which the tests call directly and compare with the library:

    kl_identity_readout(model, x, m, logvar)      log p(x), ELBO, KL(q || p(z|x)) of a 1-D Gaussian
    q   (notebooks 03/04) gradient_readout(mu, sigma, K)                score-function and pathwise
    gradients of E_q[z^2]      (notebook 06) kl_weight_readout(model, x)
    reconstructions, KL per unit, active units of a VAE    (notebooks 07, 10) latent_readout(model,
    z, codes)               decoded image, log p(z), nearest codes at a 2-D z      (notebook 09)
    iwae_readout(model, x, mu, logvar, K)         ELBO <= IWAE_K <= log p(x) with standard errors
    (notebook 10)

The returned widget is an `ipywidgets.VBox` with three extra attributes for tests and curious
readers:
`controls` (dict name -> slider), `readout` (the dict behind the text), `timings` (wall-clock
seconds taken by each update after a control moved: computation, artist updates and PNG rendering),
`cpu_timings` (the same in CPU seconds of this process, which other programs on a busy machine do
not inflate) and `figure` (the matplotlib Figure in `figure.fig`; `figure.full_redraws` counts the
updates that had to redraw axes and text, not just the moving parts). Setting a control's `.value`
runs the update synchronously. One module per explorer: `kl_identity`, `gradients`, `kl_weight`,
`latent`, `iwae`; what they share is in `_common`.

ipywidgets is imported inside the functions (it is in the dev extra, not a core dependency); without
it the explorers raise ImportError with the install command. Nothing runs at import time. `logvar`
is log sigma^2.
"""

from vaelib.widgets.gradients import gradient_exact, gradient_explorer, gradient_readout
from vaelib.widgets.iwae import IWAE_KS, iwae_explorer, iwae_readout
from vaelib.widgets.kl_identity import kl_identity_explorer, kl_identity_models, kl_identity_readout
from vaelib.widgets.kl_weight import (
    SIGMA_GRID,
    SIGMA_GRID_QUICK,
    kl_weight_explorer,
    kl_weight_readout,
    train_sigma_grid,
)
from vaelib.widgets.latent import interpolation_path, latent_codes, latent_explorer, latent_readout

__all__ = [
    "IWAE_KS",
    "SIGMA_GRID",
    "SIGMA_GRID_QUICK",
    "gradient_exact",
    "gradient_explorer",
    "gradient_readout",
    "interpolation_path",
    "iwae_explorer",
    "iwae_readout",
    "kl_identity_explorer",
    "kl_identity_models",
    "kl_identity_readout",
    "kl_weight_explorer",
    "kl_weight_readout",
    "latent_codes",
    "latent_explorer",
    "latent_readout",
    "train_sigma_grid",
]
