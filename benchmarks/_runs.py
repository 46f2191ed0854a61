"""likelihood.py's run files (likelihood.json): the settings added after the first runs were
written, and the value each older file implies. The runner, the report and the clamp measurement
read old files through `fill_defaults`, so the three agree."""

# Each setting as an older run had it: the Gaussian prior, our own protocol, all 50,000 training
# images, and every test draw at --k (no separate spread pass).
OLD_RUN_DEFAULTS = {
    "protocol": "ours",
    "prior": "normal",
    "prior_components": None,
    "spread_k": 0,
    "train_limit": None,
}


def fill_defaults(config, **now):
    """Fill the settings `config` (a run's "config" dict) lacks, in place, from OLD_RUN_DEFAULTS,
    or from `now` (e.g. spread_k=args.spread_k: a resumed old run evaluates with today's passes).
    Returns `config`."""
    for key, value in {**OLD_RUN_DEFAULTS, **now}.items():
        config.setdefault(key, value)
    return config
