"""The encoder and decoder networks of `vaelib.models`: the MLP, and the contract of networks of
your own.

Your own networks (`VAE(D, k, encoder=module, decoder=module)`) are checked once, at construction,
on a dummy batch, in eval mode, without gradients and with a private generator (the global RNG and
the module's state are left as they were)::

    encoder: x (B, D) -> (B, 2k) [mu, logvar side by side] or a pair (mu, logvar), (B, k) each; an
             Autoencoder's encoder returns the code (B, k);
    decoder: z (..., k) -> (..., D), keeping any leading sample dimensions: z (K, B, k) -> (K, B,
        D).
"""

import contextlib
import functools
from collections import OrderedDict

import torch
from torch import nn


def device_dtype(module):
    """(device, dtype) of a module's first floating-point parameter; (CPU, torch's default dtype)
    without one."""
    p = next((t for t in module.parameters() if t.is_floating_point()), None)
    return (
        (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.get_default_dtype())
    )


def check_module(name, module):
    """None for the MLP, else the user's nn.Module; the config's "custom" marker is not a module."""
    if module is None or (isinstance(module, str) and module == "mlp"):
        return None
    if isinstance(module, str) and module == "custom":
        raise ValueError(
            f"{name}='custom' marks a model built with your own {name} module, which a config "
            f"cannot rebuild: "
            f"construct the module and pass it ({name}=MyModule()), or load saved weights into a "
            f"model you built "
            "with vaelib.checkpoints.load_checkpoint(path, model=...)"
        )
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"{name} must be a torch.nn.Module (or None for the MLP), got {type(module).__name__}"
        )
    return module


class _DummyCall:
    """Run a user's module on a dummy batch: in eval mode (dropout off, batch norm per example),
    without gradients, with a private generator (the global RNG and the module's state are left as
    they were)."""

    def __init__(self, name, module):
        self.name, self.module = name, module
        self.device, self.dtype = device_dtype(module)
        self.gen = torch.Generator().manual_seed(0)

    def describe(self):
        return f"{self.name} ({type(self.module).__name__})"

    def randn(self, *shape):
        return torch.randn(*shape, generator=self.gen, dtype=torch.float64).to(
            self.device, self.dtype
        )

    def rand(self, *shape):
        return torch.rand(*shape, generator=self.gen, dtype=torch.float64).to(
            self.device, self.dtype
        )

    def __call__(self, inp, what):
        modes = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        try:
            with torch.no_grad():
                return self.module(inp)
        except Exception as e:
            raise ValueError(
                f"{self.describe()} failed on a dummy batch {what} of shape {tuple(inp.shape)}: "
                f"{type(e).__name__}: {e}"
            ) from e
        finally:
            for m, mode in modes:
                m.training = mode


def _shape_of(out):
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of " + ", ".join(
            _shape_of(o) if isinstance(o, torch.Tensor) else type(o).__name__ for o in out
        )
    return f"a {type(out).__name__}"


def _check_dummy_output_finite(call, out):
    for t in out if isinstance(out, (tuple, list)) else (out,):
        if t.dtype != call.dtype:
            raise TypeError(
                f"{call.describe()} returned dtype {t.dtype} on a dummy batch of dtype "
                f"{call.dtype} "
                f"(its parameters' dtype); it must compute in the model's dtype: remove the "
                f"conversion (e.g. .double() or .half()) from its forward, or convert the module"
            )
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{call.describe()} returned NaN or inf on a dummy batch")


def check_decoder(module, data_dim, latent_dim):
    """decoder: z (..., k) -> (..., D), each leading index decoded on its own. Raises ValueError
    otherwise."""
    call, k, D = _DummyCall("decoder", module), latent_dim, data_dim
    z = call.randn(2, 3, k)  # (S, B, k): 2 samples of z for each of 3 examples
    expect = (
        "must map z of shape (..., k) to (..., D), keeping any leading sample dimensions (k "
        f"= {k}, D = {D})"
    )
    for zz in (z[0], z):
        out = call(zz, "z")
        want = (*zz.shape[:-1], D)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
            hint = (
                " (it flattens the sample dimension: reshape the output with z.shape[:-1], e.g. "
                "out.reshape(*z.shape[:-1], D))"
                if isinstance(out, torch.Tensor)
                and zz.dim() == 3
                and out.dim() == 2
                and out.shape[0] == 6
                else ""
            )
            raise ValueError(
                f"{call.describe()} {expect}: z of shape {tuple(zz.shape)} gave {_shape_of(out)}, "
                f"expected {want}{hint}"
            )
        _check_dummy_output_finite(call, out)
    # Decoding the (2, 3, k) batch at once must equal decoding each z[i] alone (float rounding
    # aside).
    each = torch.stack([call(z[i], "z") for i in range(2)])  # (2, 3, D)
    if not torch.allclose(out, each, rtol=1e-3, atol=1e-4):
        raise ValueError(
            f"{call.describe()} {expect}: decoding z of shape {tuple(z.shape)} at once differs "
            f"from "
            f"decoding each z[i] of shape {tuple(z.shape[1:])} (max difference "
            f"{(out - each).abs().max().item():.3g}); it mixes the sample and batch dimensions"
        )


def check_encoder(module, data_dim, latent_dim, pair_allowed):
    """encoder: x (B, D) -> (B, 2k) or (mu, logvar) (VAE), or (B, k) (Autoencoder). Raises
    ValueError otherwise."""
    call, k, D = _DummyCall("encoder", module), latent_dim, data_dim
    x = call.rand(3, D)  # (B, D) in [0, 1]
    out = call(x, "x")
    if pair_allowed:
        ok = (isinstance(out, torch.Tensor) and tuple(out.shape) == (3, 2 * k)) or (
            isinstance(out, (tuple, list))
            and len(out) == 2
            and all(isinstance(o, torch.Tensor) and tuple(o.shape) == (3, k) for o in out)
        )
        want = (
            f"a tensor (B, 2k) = (3, {2 * k}) [mu, logvar side by side] or a pair (mu, logvar) "
            f"of shape (3, {k}) each"
        )
    else:
        ok = isinstance(out, torch.Tensor) and tuple(out.shape) == (3, k)
        want = f"the code, a tensor (B, k) = (3, {k})"
    if not ok:
        raise ValueError(
            f"{call.describe()} must map x of shape (B, D) = (3, {D}) to {want}; got "
            f"{_shape_of(out)}"
        )
    _check_dummy_output_finite(call, out)


def mlp(sizes, prefix):
    """Linear + ReLU for each consecutive pair of sizes: hidden1, relu1, hidden2, relu2, ..."""
    layers = OrderedDict()
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        layers[f"{prefix}{i}"] = nn.Linear(n_in, n_out)
        layers[f"relu{i}"] = nn.ReLU()
    return layers


@contextlib.contextmanager
def eval_mode(module):
    """Run a block with `module` in eval mode (dropout off, batch norm on its running statistics),
    then put every submodule back in the mode it had.

    What every evaluation, sample, plot, explorer and command of vaelib runs in, so that a result
    does not depend on the batch size and the running statistics are never changed by looking at
    data; `vaelib.train.fit` trains in train mode and validates in eval mode the same way::

        with eval_mode(model):
            elbo = model.elbo(x_test)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"eval_mode needs a torch.nn.Module, got {type(module).__name__}")
    restore = set_mode(module, training=False)
    try:
        yield module
    finally:
        restore()


def set_mode(module, training):
    """Put `module` in train (True) or eval (False) mode; return a function () -> None that
    puts every submodule back in the mode it had (a submodule's own mode survives)."""
    modes = [(m, m.training) for m in module.modules()]
    module.train(training)

    def restore():
        for m, mode in modes:
            m.training = mode

    return restore


def in_eval_mode(fn):
    """Decorator: run fn(model, ...) inside `eval_mode(model)` when its first argument is a module
    (a method's self counts); any other first argument passes through for fn's own checks."""

    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        if not isinstance(model, nn.Module):
            return fn(model, *args, **kwargs)
        with eval_mode(model):
            return fn(model, *args, **kwargs)

    return wrapper
