"""likelihood.py's run files (likelihood.json): the settings added after the first runs were
written, and the value each older file implies. The runner, the report and the clamp measurement
read old files through `fill_defaults`, so the three agree. Also the control's choices that
--as-ours sets back to ours (AS_OURS), which the runner and the report share."""

# Each setting as an older run had it: the Gaussian prior, our own protocol, all 50,000 training
# images, every test draw at --k (no separate spread pass), and the control with all of the
# reference's choices (--as-ours none).
OLD_RUN_DEFAULTS = {
    "protocol": "ours",
    "prior": "normal",
    "prior_components": None,
    "spread_k": 0,
    "train_limit": None,
    "as_ours": [],
}


def fill_defaults(config, **now):
    """Fill the settings `config` (a run's "config" dict) lacks, in place, from OLD_RUN_DEFAULTS,
    or from `now` (e.g. spread_k=args.spread_k: a resumed old run evaluates with today's passes).
    Returns `config`."""
    for key, value in {**OLD_RUN_DEFAULTS, **now}.items():
        config.setdefault(key, value)
    return config


# The control's training choices that --as-ours can set back to ours, one at a time or together.
# (The control's other differences from ours are none in distribution: a fresh binarization of each
# minibatch draws every image once per epoch, as our fresh draw of the whole set does.)
AS_OURS = {
    "optimizer": "plain Adam: gradients not divided by their norm (the same learning rate)",
    "lr": "our learning rate, --lr (default 1e-3, not 5e-4) cosine to --lr-final over --epochs "
    "(only with 'stopping', which fixes the length)",
    "init": "PyTorch's default initial weights, not He-normal",
    "warmup": "our KL warm-up, (epoch - 1) / --warmup-epochs from 0, not epoch / 100 (patience "
    "still starts counting at epoch 100, as in the control)",
    "stopping": "our stopping rule: --epochs epochs (default 300), the best-validation epoch kept, "
    "no early stopping",
    "clamp": "the exact Bernoulli likelihood: probabilities not clamped",
    "valid-draw": "our validation set: fit's one fixed torch draw, not numpy RandomState(777)",
}
