"""Size checks before big allocations: a request that cannot fit fails at once, naming the option.

`check(option, nbytes, what)` compares an estimate of the bytes a computation needs with the memory
of the machine (`limit_bytes()`: physical memory, or `LIMIT_BYTES` when set) and raises ValueError
naming the argument or command-line option that sets the size, instead of an allocator error deep
inside torch.
"""

import os

# None: the machine's physical memory; tests set a small value.
LIMIT_BYTES = None


def limit_bytes():
    """The most bytes one computation may plan to allocate: physical memory unless LIMIT_BYTES."""
    if LIMIT_BYTES is not None:
        return LIMIT_BYTES
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 36


def check(option, nbytes, what, advice=None):
    """Raise ValueError when `nbytes` (an estimate) exceeds `limit_bytes()`; the message names
    `option`."""
    limit = limit_bytes()
    if nbytes > limit:
        raise ValueError(
            f"{what} needs about {nbytes / 2**30:.3g} GiB, more than this machine's "
            f"{limit / 2**30:.3g} GiB of memory; {advice or f'lower {option}'}"
        )


def mlp_bytes(data_dim, latent_dim, hidden_dims, itemsize=4):
    """Bytes of an MLP VAE's weights with their gradients and Adam's two moments (4 copies)."""
    sizes = [data_dim, *hidden_dims]
    enc = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:])) + 2 * (sizes[-1] + 1) * latent_dim
    sizes = [latent_dim, *hidden_dims[::-1], data_dim]
    dec = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
    return 4 * (enc + dec) * itemsize
