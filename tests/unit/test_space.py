"""lexiray.space: YAML distributions -> Ray Tune domains, samples -> trial configs."""

from __future__ import annotations

import pytest
import yaml
from ray.tune.search import sample

from lexiray.config import SEARCH_SPACES_DIR, load_config
from lexiray.errors import ConfigError
from lexiray.config import SearchSpace, apply_sample, candidate_values, parse_derived
from lexiray.memory import plan_samples
from lexiray.space import build_param_space, describe_sample

BATCH = "training.per_device_train_batch_size"
ACCUMULATION = "training.gradient_accumulation_steps"


def _write_config(tmp_path, search: dict, base: str = "speed"):
    """A YAML config in tmp_path: the given preset with its search block replaced."""
    raw = yaml.safe_load((SEARCH_SPACES_DIR / f"{base}.yaml").read_text())
    raw["search"] = search
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture()
def all_kinds(tmp_path):
    search = {
        "training.learning_rate": {"loguniform": [1.0e-5, 1.0e-3]},
        "lora.dropout": {"uniform": [0.0, 0.2]},
        "training.weight_decay": {"quniform": [0.0, 0.1, 0.05]},
        "lora.r": {"randint": [4, 16]},
        "lora.alpha": "2 * lora.r",
        BATCH: {"choice": [4, 8, 12]},
        "training.warmup_steps": {"grid": [0.0, 0.1]},
    }
    return load_config(_write_config(tmp_path, search))


def test_loguniform_domain(all_kinds):
    domain = build_param_space(all_kinds)["training.learning_rate"]
    assert isinstance(domain, sample.Float)
    assert isinstance(domain.sampler, sample.LogUniform)
    assert (domain.lower, domain.upper) == (pytest.approx(1e-5), pytest.approx(1e-3))
    values = domain.sample(size=50)
    assert all(1e-5 <= v <= 1e-3 for v in values)


def test_uniform_domain(all_kinds):
    domain = build_param_space(all_kinds)["lora.dropout"]
    assert isinstance(domain, sample.Float)
    assert isinstance(domain.sampler, sample.Uniform)
    assert (domain.lower, domain.upper) == (0.0, 0.2)


def test_quniform_domain(all_kinds):
    domain = build_param_space(all_kinds)["training.weight_decay"]
    assert isinstance(domain, sample.Float)
    assert isinstance(domain.sampler, sample.Quantized)
    assert domain.sampler.q == pytest.approx(0.05)
    assert (domain.lower, domain.upper) == (0.0, 0.1)
    for value in domain.sample(size=30):
        assert min(abs(value - step) for step in (0.0, 0.05, 0.1)) < 1e-9


def test_randint_domain_is_inclusive(all_kinds):
    domain = build_param_space(all_kinds)["lora.r"]
    assert isinstance(domain, sample.Integer)
    # Tune's randint excludes its upper bound; our YAML [4, 16] includes 16.
    assert (domain.lower, domain.upper) == (4, 17)
    assert set(domain.sample(size=300)) <= set(range(4, 17))


def test_choice_domain(all_kinds):
    domain = build_param_space(all_kinds)[BATCH]
    assert isinstance(domain, sample.Categorical)
    assert list(domain.categories) == [4, 8, 12]


def test_grid_entry(all_kinds):
    entry = build_param_space(all_kinds)["training.warmup_steps"]
    assert entry == {"grid_search": [0.0, 0.1]}


def test_derived_settings_are_not_sampled(all_kinds):
    space = build_param_space(all_kinds)
    assert "lora.alpha" not in space
    assert ACCUMULATION not in space
    assert set(space) == {"training.learning_rate", "lora.dropout", "training.weight_decay", "lora.r",
                          BATCH, "training.warmup_steps"}


def test_preset_param_space():
    space = build_param_space(load_config("speed"))
    assert set(space) == {"training.learning_rate", "lora.r", BATCH}
    assert space["training.learning_rate"].lower == pytest.approx(1.25e-4)
    assert space["training.learning_rate"].upper == pytest.approx(2e-3)


# --------------------------------------------------------------------------- one space for Tune and plan


def _in_tune_domain(domain, value) -> bool:
    """Whether Ray Tune's domain (or grid entry) holds `value`, by Tune's own bounds."""
    if isinstance(domain, dict):
        return value in domain["grid_search"]
    if isinstance(domain, sample.Categorical):
        return value in domain.categories
    if isinstance(domain, sample.Integer):  # Tune's upper bound is exclusive
        return float(value).is_integer() and domain.lower <= value < domain.upper
    if isinstance(domain.sampler, sample.Quantized):
        steps = value / domain.sampler.q
        if abs(steps - round(steps)) > 1e-9:
            return False
    return domain.lower <= value <= domain.upper


@pytest.mark.parametrize("name", ["smoke", "balanced", "all_kinds"])
def test_plan_samples_lie_in_tunes_domains(name, request):
    config = request.getfixturevalue(name) if name == "all_kinds" else load_config(name)
    param_space = build_param_space(config.search_space)
    samples = plan_samples(config, count=300, seed=3)
    assert len(samples) == 300
    for point in samples:
        assert set(point) == set(param_space) == set(config.search_space.sampled_keys)
        outside = {key: value for key, value in point.items() if not _in_tune_domain(param_space[key], value)}
        assert not outside, f"{name}: plan drew {outside}, which Tune's param_space cannot"
    for key, domain in param_space.items():  # and plan reaches both ends of what Tune draws
        drawn = [point[key] for point in samples]
        if isinstance(domain, sample.Categorical):
            assert set(drawn) == set(domain.categories)
        elif isinstance(domain, sample.Integer):
            assert (min(drawn), max(drawn)) == (domain.lower, domain.upper - 1)


def test_plan_grid_points_lie_in_tunes_domains():
    config = load_config("balanced", ["search.training.learning_rate={choice: [1.0e-4, 2.0e-4]}"])
    param_space = build_param_space(config)
    points = plan_samples(config, count=5)
    assert len(points) == 2 * 3 * 3
    assert all(set(p) == set(param_space) and all(_in_tune_domain(param_space[k], v) for k, v in p.items())
               for p in points)


def test_the_search_block_is_parsed_once_per_config():
    config = load_config("smoke")
    space = config.search_space
    assert isinstance(space, SearchSpace) and config.search_space is space
    assert space.sampled_keys == ("training.learning_rate", "lora.r", BATCH)
    assert [(d.key, d.target, d.factor) for d in space.derived] == [("lora.alpha", "lora.r", 2.0)]
    assert space.candidate_values("lora.r") == [4, 8, 16]
    assert space.seeded_samples(4, seed=7) == space.seeded_samples(4, seed=7) != space.seeded_samples(4, seed=8)
    config.search["lora.r"] = {"choice": [2, 4]}  # a changed block is parsed again, not served stale
    assert config.search_space is not space and config.search_space.candidate_values("lora.r") == [2, 4]
    assert apply_sample(config, {}).search_space == SearchSpace()


def test_quniform_candidates_are_the_values_tune_draws():
    assert candidate_values("quniform", [0.05, 0.2, 0.05]) == [0.05, 0.1, 3 * 0.05, 0.2]
    space = SearchSpace.parse({"lora.dropout": {"quniform": [0.05, 0.2, 0.05]}})
    domain = build_param_space(space)["lora.dropout"]
    drawn = domain.sample(size=200) + [point["lora.dropout"] for point in space.seeded_samples(200)]
    assert set(drawn) == set(space.candidate_values("lora.dropout"))


def test_quniform_bounds_must_be_multiples_of_the_step():
    # Ray Tune refuses such a domain when the tuning run starts; lexiray, when the config loads
    message = _load_error("speed", ["search.lora.dropout={quniform: [0.03, 0.2, 0.05]}"])
    assert "lora.dropout" in message and "multiples" in message


# --------------------------------------------------------------------------- apply_sample


@pytest.mark.parametrize("batch, accumulation", [(4, 6), (8, 3), (12, 2)])
def test_apply_sample_keeps_effective_batch(batch, accumulation):
    config = load_config("speed")
    trial = apply_sample(config, {BATCH: batch})
    assert trial.training.per_device_train_batch_size == batch
    assert trial.training.gradient_accumulation_steps == accumulation
    assert trial.training.effective_batch_size == 24


@pytest.mark.parametrize("r", [4, 8, 16])
def test_apply_sample_derives_alpha(r):
    trial = apply_sample(load_config("speed"), {"lora.r": r})
    assert trial.lora.r == r
    assert trial.lora.alpha == 2 * r
    assert isinstance(trial.lora.alpha, int)


def test_apply_sample_full_trial():
    config = load_config("balanced")
    trial = apply_sample(config, {"training.learning_rate": 1e-4, "lora.r": 32, BATCH: 8})
    assert trial.training.learning_rate == pytest.approx(1e-4)
    assert (trial.lora.r, trial.lora.alpha) == (32, 64)
    assert (trial.training.per_device_train_batch_size, trial.training.gradient_accumulation_steps) == (8, 3)
    assert trial.search == {}  # the trial config holds no search block
    # Everything not sampled is the preset's.
    assert trial.model.name == config.model.name
    assert trial.data.max_seq_length == config.data.max_seq_length
    assert trial.training.optim == config.training.optim
    assert config.lora.r == 16  # the base config is not mutated


def test_apply_sample_rejects_non_divisor_batch():
    with pytest.raises(ConfigError, match="does not divide"):
        apply_sample(load_config("speed"), {BATCH: 16})


def test_apply_sample_rejects_invalid_value():
    with pytest.raises(ConfigError, match="lora.r"):
        apply_sample(load_config("speed"), {"lora.r": 0})


def test_searched_accumulation_is_left_alone(tmp_path):
    search = {BATCH: {"choice": [4, 16]}, ACCUMULATION: {"choice": [1, 2]}}
    config = load_config(_write_config(tmp_path, search))
    trial = apply_sample(config, {BATCH: 16, ACCUMULATION: 2})
    assert (trial.training.per_device_train_batch_size, trial.training.gradient_accumulation_steps) == (16, 2)


# --------------------------------------------------------------------------- validation


def _load_error(*args) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_batch_choice_must_divide_effective_batch_set():
    message = _load_error("speed", [f"search.{BATCH}={{choice: [4, 16]}}"])
    assert "does not divide" in message
    assert "16" in message and "24" in message


def test_batch_choice_must_divide_effective_batch_yaml(tmp_path):
    path = _write_config(tmp_path, {BATCH: {"choice": [4, 16]}})
    message = _load_error(path)
    assert "does not divide" in message
    assert str(path) in message


def test_batch_randint_checked_over_every_value(tmp_path):
    path = _write_config(tmp_path, {BATCH: {"randint": [2, 4]}})  # 2, 3, 4 divide 24
    assert load_config(path).search[BATCH] == {"randint": [2, 4]}
    path = _write_config(tmp_path, {BATCH: {"randint": [4, 6]}})  # 5 does not
    assert "does not divide" in _load_error(path)


def test_unknown_distribution():
    message = _load_error("speed", ["search.lora.r={normal: [4, 16]}"])
    assert "unknown distribution" in message and "normal" in message
    assert "lora.r" in message


def test_search_key_not_a_setting():
    message = _load_error("speed", ["search.lora.rank={choice: [4, 8]}"])
    assert "lora.rank" in message
    assert "unknown setting" in message


def test_search_key_that_is_a_section():
    message = _load_error("speed", ["search.lora={choice: [4, 8]}"])
    assert "search.lora" in message


def test_invalid_choice_candidate():
    message = _load_error("speed", ["search.lora.r={choice: [0, 8]}"])
    assert "lora.r" in message


def test_invalid_uniform_bound_candidate():
    message = _load_error("speed", ["search.lora.dropout={uniform: [0.0, 1.0]}"])
    assert "lora.dropout" in message


@pytest.mark.parametrize("spec", ["{loguniform: [0.001, 0.0001]}", "{loguniform: [0.0, 0.001]}",
                                  "{uniform: [1]}", "{choice: []}", "{quniform: [0.0, 1.0, 0]}", "7"])
def test_malformed_distributions(spec):
    message = _load_error("speed", [f"search.training.learning_rate={spec}"])
    assert "training.learning_rate" in message


def test_derived_expression_errors():
    assert "cannot read" in _load_error("speed", ["search.lora.alpha=twice lora.r"])
    assert "unknown setting" in _load_error("speed", ["search.lora.alpha=2 * lora.rank"])


def test_grid_rejected_with_optuna():
    message = _load_error("smoke", ["tune.search_alg=optuna", "search.lora.r={grid: [4, 8]}"])
    assert "grid" in message and "optuna" in message.lower()


def test_loguniform_bounds_in_short_exponent_notation(tmp_path):
    # '1e-4' is how most people write a learning rate; it must read as a number.
    path = tmp_path / "lr.yaml"
    path.write_text("search:\n  training.learning_rate: {loguniform: [1e-4, 1e-3]}\n")
    domain = build_param_space(load_config(path))["training.learning_rate"]
    assert (domain.lower, domain.upper) == (pytest.approx(1e-4), pytest.approx(1e-3))


# --------------------------------------------------------------------------- helpers


def test_candidate_values():
    assert candidate_values("choice", [1, 2]) == [1, 2]
    assert candidate_values("grid", ["a"]) == ["a"]
    assert candidate_values("randint", [2, 5]) == [2, 3, 4, 5]
    assert candidate_values("quniform", [0.0, 0.1, 0.05]) == pytest.approx([0.0, 0.05, 0.1])
    assert candidate_values("loguniform", [1e-4, 1e-2]) == [1e-4, 1e-2]


@pytest.mark.parametrize("text, expected", [
    ("2 * lora.r", ("lora.r", 2.0)), ("lora.r * 2", ("lora.r", 2.0)), ("lora.r", ("lora.r", 1.0)),
    ("0.5*lora.r", ("lora.r", 0.5)),
])
def test_parse_derived(text, expected):
    assert parse_derived(text) == expected


def test_describe_sample():
    text = describe_sample({"training.learning_rate": 0.0012, "lora.r": 8, BATCH: 4})
    assert sorted(text.split()) == sorted(["lr=1.20e-03", "r=8", "batch=4"])
    # Deterministic whatever the order of the sample.
    assert text == describe_sample({BATCH: 4, "lora.r": 8, "training.learning_rate": 0.0012})


def test_describe_sample_other_keys():
    text = describe_sample({"lora.dropout": 0.1, "training.weight_decay": 0.01, "training.optim": "adamw_torch"})
    assert sorted(text.split()) == sorted(["dropout=1.00e-01", "weight_decay=1.00e-02", "optim=adamw_torch"])
    assert describe_sample({}) == ""
