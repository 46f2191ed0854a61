"""What the explorers share: a figure rendered into an image widget, the slider wiring, the readout
text, and moving tensors to a model's device and dtype."""

import io
import math
import time

from vaelib.networks import device_dtype, in_eval_mode


def load_ipywidgets():
    try:
        import ipywidgets
    except ImportError as err:  # pragma: no cover - ipywidgets is installed in the dev environment
        raise ImportError(
            "vaelib.widgets needs ipywidgets >= 8 (and JupyterLab to show it): pip install "
            "'ipywidgets>=8' jupyterlab"
        ) from err
    return ipywidgets


class FigureImage:
    """One matplotlib Figure on an Agg canvas, shown as an ipywidgets.Image.

    `refresh()` re-renders the PNG. Artists registered with `animate()` are drawn on top of a cached
    background (blitting): the full figure (axes, ticks, text) is drawn again only when an axis
    limit, scale or title changed, or after `invalidate()`. Keep slider-dependent numbers in the
    readout, not in titles or legends.
    """

    def __init__(self, figsize, dpi=80):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        widgets = load_ipywidgets()
        self.fig = Figure(figsize=figsize, dpi=dpi)
        FigureCanvasAgg(self.fig)
        self.image = widgets.Image(
            format="png", layout=widgets.Layout(max_width="100%", height="auto")
        )
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
        return tuple(
            (ax.get_xlim(), ax.get_ylim(), ax.get_xscale(), ax.get_yscale(), ax.get_title())
            for ax in self.fig.axes
        )

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
        Image.frombuffer(
            "RGBA", canvas.get_width_height(), canvas.buffer_rgba(), "raw", "RGBA", 0, 1
        ).save(buf, format="png", compress_level=1)
        self.image.value = buf.getvalue()


def sticky_lim(ax, lo, hi, axis="y", margin=0.1, fill=0.4):
    """Set an axis range that holds [lo, hi]; keep the current one while it still does and is not
    too loose (at least `fill` of it used), so that most slider moves reuse the cached
    background."""
    get, set_ = (ax.get_ylim, ax.set_ylim) if axis == "y" else (ax.get_xlim, ax.set_xlim)
    a, b = get()
    span = max(hi - lo, 1e-9)
    if lo < a or hi > b or span < fill * (b - a):
        set_(lo - margin * span, hi + margin * span)


def explorer(controls, figure, readout_html, update):
    """Assemble the VBox, wire every control to `update` (timed), run it once."""
    widgets = load_ipywidgets()
    box = widgets.VBox(
        [
            widgets.HBox(list(controls.values()), layout=widgets.Layout(flex_flow="row wrap")),
            figure.image,
            readout_html,
        ]
    )
    box.controls, box.readout, box.timings, box.cpu_timings, box.figure = (
        controls,
        {},
        [],
        [],
        figure,
    )

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


def pre_text(lines):
    """Readout lines as monospaced HTML (the numbers keep their alignment)."""
    import html

    return (
        "<pre style='font-size: 12px; line-height: 1.35; margin: 2px 0'>"
        + html.escape("\n".join(lines))
        + "</pre>"
    )


def as_float(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@in_eval_mode
def decoded_mean(model, z):
    """E[x | z] of a VAE (model.decode_mean), float64 on the CPU.  z: (..., k) on any device ->
    (..., D)."""
    return model.decode_mean(to_model(model, z)).double().cpu()


def to_model(model, t):
    """t on the model's device and in its dtype (a model trained on CUDA is used where it lives)."""
    device, dtype = device_dtype(model)
    return t.to(device=device, dtype=dtype)
