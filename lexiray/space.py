"""The `search:` block of a config -> Ray Tune param_space, and a sample -> trial config.

Only sampled settings become Tune domains. Derived settings (`lora.alpha: 2 * lora.r`)
and the constant effective batch (accumulation = effective batch / batch) are computed
from a sample by `apply_sample`, so they work the same under every search algorithm
(Optuna cannot sample `tune.sample_from` dependencies).
"""

from __future__ import annotations

import math
import re
from typing import Any

from lexiray.config import ExperimentConfig, config_from_dict, valid_keys
from lexiray.errors import ConfigError

DISTRIBUTIONS = ("loguniform", "uniform", "quniform", "randint", "choice", "grid")
BATCH_KEY = "training.per_device_train_batch_size"
ACCUMULATION_KEY = "training.gradient_accumulation_steps"
# "2 * lora.r", "lora.r * 2", "lora.r"
_DERIVED = re.compile(r"^\s*(?:(?P<a>[0-9.eE+-]+)\s*\*\s*)?(?P<key>[a-z_]+\.[a-z_0-9]+)(?:\s*\*\s*(?P<b>[0-9.eE+-]+))?\s*$")


def _setting_keys() -> set[str]:
    sections = {"model", "data", "lora", "training", "resources", "tune", "report", "search", "name", "description"}
    return {key for key in valid_keys() if key not in sections}


def _distribution(key: str, spec: Any, source: str) -> tuple[str, list]:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{source}: search.{key}: expected one of {{{', '.join(DISTRIBUTIONS)}: [...]}} "
                          "or a derived expression such as '2 * lora.r'")
    kind, args = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{source}: search.{key}: unknown distribution '{kind}' (use {', '.join(DISTRIBUTIONS)})")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{source}: search.{key}.{kind}: expected a non-empty list")
    if kind in ("loguniform", "uniform", "randint"):
        if len(args) != 2 or not all(isinstance(a, (int, float)) for a in args) or args[0] >= args[1]:
            raise ConfigError(f"{source}: search.{key}.{kind}: expected [low, high] with low < high")
        if kind == "loguniform" and args[0] <= 0:
            raise ConfigError(f"{source}: search.{key}.loguniform: the low bound must be > 0")
    if kind == "quniform":
        if len(args) != 3 or not all(isinstance(a, (int, float)) for a in args) or args[0] >= args[1] or args[2] <= 0:
            raise ConfigError(f"{source}: search.{key}.quniform: expected [low, high, step] with low < high, step > 0")
    return kind, args


def candidate_values(kind: str, args: list) -> list:
    """Values a distribution can produce, where they are finite (for up-front checks);
    the bounds otherwise."""
    if kind in ("choice", "grid"):
        return list(args)
    if kind == "randint":
        return list(range(int(args[0]), int(args[1]) + 1))
    if kind == "quniform":
        low, high, step = args
        count = int(math.floor((high - low) / step + 1e-9)) + 1
        return [low + i * step for i in range(count)]
    return list(args)


def parse_derived(expression: str) -> tuple[str, float]:
    match = _DERIVED.match(expression)
    if not match:
        raise ValueError(expression)
    factor = float(match.group("a") or 1) * float(match.group("b") or 1)
    return match.group("key"), factor


def _effective_batch(config: ExperimentConfig) -> int:
    return config.training.effective_batch_size


def validate_search(config: ExperimentConfig, source: str = "config") -> None:
    """Every key a setting, every distribution well formed, every candidate value valid,
    and searched batch sizes dividing the preset's effective batch."""
    keys = _setting_keys()
    sampled: dict[str, tuple[str, list]] = {}
    for key, spec in config.search.items():
        if key not in keys:
            from lexiray.config import _suggest

            raise ConfigError(f"{source}: search.{key}: unknown setting{_suggest(key)}")
        if isinstance(spec, str):
            try:
                target, _ = parse_derived(spec)
            except ValueError:
                raise ConfigError(f"{source}: search.{key}: cannot read '{spec}' (write e.g. '2 * lora.r')") from None
            if target not in keys:
                raise ConfigError(f"{source}: search.{key}: '{spec}' refers to unknown setting '{target}'")
            continue
        sampled[key] = _distribution(key, spec, source)
    if config.tune.search_alg == "optuna" and any(kind == "grid" for kind, _ in sampled.values()):
        raise ConfigError(f"{source}: 'grid' entries need tune.search_alg=random (Optuna samples, it does not grid)")
    if BATCH_KEY in sampled and ACCUMULATION_KEY not in config.search:
        effective = _effective_batch(config)
        for value in candidate_values(*sampled[BATCH_KEY]):
            if not float(value).is_integer() or value <= 0 or effective % int(value) != 0:
                raise ConfigError(
                    f"{source}: search.{BATCH_KEY}: batch {value} does not divide the effective batch "
                    f"{effective} (= {config.training.per_device_train_batch_size} x "
                    f"{config.training.gradient_accumulation_steps}); use divisors of {effective}"
                )
    # Each candidate must make a valid config on its own (r > 0, lr > 0, ...).
    for key, (kind, args) in sampled.items():
        for value in candidate_values(kind, args):
            apply_sample(config, {key: value}, source=f"{source}: search.{key}={value!r}")


def build_param_space(config: ExperimentConfig) -> dict:
    """Tune domains for the sampled settings (derived ones are not sampled)."""
    from ray import tune

    space = {}
    for key, spec in config.search.items():
        if isinstance(spec, str):
            continue
        kind, args = _distribution(key, spec, "search")
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


def _set(raw: dict, key: str, value: Any) -> None:
    section, name = key.split(".", 1)
    raw.setdefault(section, {})[name] = value


def _get(raw: dict, key: str) -> Any:
    section, name = key.split(".", 1)
    return raw.get(section, {}).get(name)


def apply_sample(config: ExperimentConfig, sample: dict, source: str = "trial") -> ExperimentConfig:
    """The trial's config: the base config with the sampled values, derived settings and
    the effective batch held constant. The search block is dropped from the result."""
    raw = config.model_dump(mode="json")
    raw["search"] = {}
    for key, value in sample.items():
        _set(raw, key, value)
    for key, spec in config.search.items():
        if isinstance(spec, str):
            target, factor = parse_derived(spec)
            value = _get(raw, target) * factor
            _set(raw, key, int(value) if float(value).is_integer() else value)
    if BATCH_KEY in sample and ACCUMULATION_KEY not in config.search:
        batch = int(sample[BATCH_KEY])
        effective = _effective_batch(config)
        if batch <= 0 or effective % batch:
            raise ConfigError(f"{source}: batch {batch} does not divide the effective batch {effective}")
        _set(raw, ACCUMULATION_KEY, effective // batch)
    return config_from_dict(raw, source)


def describe_sample(sample: dict) -> str:
    """Short human label of a sample, e.g. 'lr=1.2e-03 r=8 batch=4' (TensorBoard run names)."""
    short = {"training.learning_rate": "lr", "lora.r": "r", BATCH_KEY: "batch", "lora.dropout": "dropout"}
    parts = []
    for key in sorted(sample):
        value = sample[key]
        label = short.get(key, key.rsplit(".", 1)[-1])
        parts.append(f"{label}={value:.2e}" if isinstance(value, float) else f"{label}={value}")
    return " ".join(parts)
