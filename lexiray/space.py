"""The `search:` block of a config -> Ray Tune's param_space, and a sample's short label.

The search block's grammar, its validation and `apply_sample` (a sample -> the trial's
config) live in `lexiray.config`: they are plain settings logic, needed before Ray starts.
"""

from __future__ import annotations

from lexiray.config import BATCH_KEY, ExperimentConfig, parse_distribution


def build_param_space(config: ExperimentConfig) -> dict:
    """Tune domains for the sampled settings (derived ones are not sampled)."""
    from ray import tune

    space = {}
    for key, spec in config.search.items():
        if isinstance(spec, str):
            continue
        kind, args = parse_distribution(key, spec, "search")
        if kind == "loguniform":
            space[key] = tune.loguniform(*args)
        elif kind == "uniform":
            space[key] = tune.uniform(*args)
        elif kind == "quniform":
            space[key] = tune.quniform(*args)
        elif kind == "randint":  # inclusive in our YAML, exclusive in Tune
            space[key] = tune.randint(int(args[0]), int(args[1]) + 1)
        elif kind == "choice":
            space[key] = tune.choice(args)
        else:
            space[key] = tune.grid_search(args)
    return space


def describe_sample(sample: dict) -> str:
    """Short human label of a sample, e.g. 'lr=1.2e-03 r=8 batch=4' (TensorBoard run names)."""
    short = {"training.learning_rate": "lr", "lora.r": "r", BATCH_KEY: "batch", "lora.dropout": "dropout"}
    parts = []
    for key in sorted(sample):
        value = sample[key]
        label = short.get(key, key.rsplit(".", 1)[-1])
        parts.append(f"{label}={value:.2e}" if isinstance(value, float) else f"{label}={value}")
    return " ".join(parts)
