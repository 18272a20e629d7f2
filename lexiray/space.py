"""The typed search space of a config -> Ray Tune's param_space, and a sample's short label.

The search block's grammar, its parsing into a `config.SearchSpace`, its validation and
`apply_sample` (a sample -> the trial's config) live in `lexiray.config`: they are plain
settings logic, needed before Ray starts.
"""

from __future__ import annotations

from lexiray.config import BATCH_KEY, Dimension, ExperimentConfig, SearchSpace


def tune_domain(dimension: Dimension):
    """The Ray Tune domain that samples what `dimension` describes (a grid: a grid_search entry)."""
    from ray import tune

    kind, args = dimension.kind, dimension.args
    if kind == "loguniform":
        return tune.loguniform(*args)
    if kind == "uniform":
        return tune.uniform(*args)
    if kind == "quniform":
        return tune.quniform(*args)
    if kind == "randint":  # inclusive in our YAML, exclusive in Tune
        return tune.randint(int(args[0]), int(args[1]) + 1)
    if kind == "choice":
        return tune.choice(list(args))
    return tune.grid_search(list(args))


def build_param_space(space: SearchSpace | ExperimentConfig) -> dict:
    """Tune domains for the sampled settings (derived ones are not sampled); given a config,
    for its `search_space`."""
    if isinstance(space, ExperimentConfig):
        space = space.search_space
    return {dimension.key: tune_domain(dimension) for dimension in space.dimensions}


def describe_sample(sample: dict) -> str:
    """Short human label of a sample, e.g. 'lr=1.2e-03 r=8 batch=4' (TensorBoard run names)."""
    short = {"training.learning_rate": "lr", "lora.r": "r", BATCH_KEY: "batch", "lora.dropout": "dropout"}
    parts = []
    for key in sorted(sample):
        value = sample[key]
        label = short.get(key, key.rsplit(".", 1)[-1])
        parts.append(f"{label}={value:.2e}" if isinstance(value, float) else f"{label}={value}")
    return " ".join(parts)
