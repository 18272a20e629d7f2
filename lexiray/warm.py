"""Warm starts and reuse: a trial's fingerprint, and what an earlier experiment hands a new search.

A trial's fingerprint is a hash of what decides its results: its resolved config's model,
data, lora and training settings, the workers it trains on, and the data's own bytes
(`data_fingerprint`). Two trials with the same fingerprint train the same way, so the second
replays the first's reports instead of training (lexiray.trial): within one run (the same
configuration sampled twice) and across runs (`lexiray tune --warm-start EARLIER`).

Not in the fingerprint, as they change no result: the experiment's name and description,
the tune / report sections (search, scheduler, storage, budget), the CPUs per trial, the GPU
memory budget, the price per hour, the data loader's worker processes, the share of bad rows
tolerated (it refuses a file or not; the rows trained on stay the same). In it, as they do: the number of Ray
Train workers (data parallelism changes the batches), whether the trial has a GPU (and which
kind), the seeds. Known limits: a Hugging Face dataset is identified by its id (and a model by
its name and revision), not by its content; a local model folder by its path.

A warm start (`tune.warm_start`) reads the earlier experiment's summary.json: its best
configurations are evaluated first (Tune's `points_to_evaluate`; only the settings the new
search samples, and only where the new space holds every value), and an Optuna search is told
every earlier result before it samples. Across models only these configurations carry over:
their fingerprints differ, so nothing is reused.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from lexiray import storage
from lexiray.config import Dimension, ExperimentConfig, apply_sample
from lexiray.data import resolve_source
from lexiray.errors import ConfigError, LexirayError
from lexiray.results import is_number
from lexiray.storage import ExperimentLayout

# Settings that change no result (see the module's docstring).
_IGNORED = {"resources": {"cpus_per_trial", "gpu_memory_gb", "price_per_hour"}, "training": {"dataloader_num_workers",
                                                                          "dataloader_prefetch_factor"},
            "data": {"max_bad_fraction"}}
_SECTIONS = ("model", "data", "lora", "training", "resources")
# How many of the earlier experiment's best configurations run first: at most half the new
# budget (the rest explores), at most 3, at least 1.
MAX_CARRIED = 3
# Rows of an earlier leaderboard whose configuration says nothing about the metric.
_NOT_RESULTS = {"ERROR", "SKIPPED", "DIVERGED"}


def _hash_file(digest, path: Path) -> None:
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def data_fingerprint(config: ExperimentConfig) -> str:
    """A hash of the training (and evaluation) data: the bytes of a local file or of every
    file in a local folder (the bundled sample is a file), else a Hub dataset's id."""
    digest = hashlib.sha256()
    for role, path in (("train", config.data.path), ("eval", config.data.eval_path)):
        if path is None:
            continue
        digest.update(f"{role}\0".encode())
        local = Path(resolve_source(path)).expanduser()
        if local.is_file():
            _hash_file(digest, local)
        elif local.is_dir():
            for item in sorted(p for p in local.rglob("*") if p.is_file()):
                digest.update(f"{item.relative_to(local).as_posix()}\0".encode())
                _hash_file(digest, item)
        else:  # a Hugging Face dataset id: its content is not read here (documented limit)
            digest.update(f"hub:{path}".encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def fingerprint_settings(config: ExperimentConfig) -> dict:
    """The settings a trial's fingerprint hashes (a resolved config: no search block)."""
    dumped = config.model_dump(mode="json")
    settings = {section: {key: value for key, value in dumped[section].items()
                          if key not in _IGNORED.get(section, set())} for section in _SECTIONS}
    settings["resources"]["gpus_per_trial"] = config.resources.gpus_per_trial > 0  # GPU or CPU, not how much
    return settings


def trial_fingerprint(config: ExperimentConfig, data: str) -> str:
    """A trial's identity: its result-changing settings and its data's fingerprint."""
    payload = json.dumps({"settings": fingerprint_settings(config), "data": data}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- warm start


def fits(dimension: Dimension, value) -> bool:
    """Whether the new search's dimension can hold an earlier sample's value."""
    kind, args = dimension.kind, dimension.args
    if kind in ("choice", "grid"):
        return value in args
    if not is_number(value):
        return False
    low, high = args[0], args[1]
    if not low <= value <= high:
        return False
    if kind == "quniform":
        return math.isclose(value / args[2], round(value / args[2]), abs_tol=1e-9)
    if kind == "randint":
        return float(value).is_integer()
    return True


def carried_point(config: ExperimentConfig, sample: dict) -> dict | None:
    """An earlier sample as a point of the new search: the settings it samples that the
    earlier one sampled too (the rest are sampled as usual), or None when a value does not
    fit the new space or nothing is shared. Grid settings are left out: Tune lays the grid
    out for every sample, a point included, so the run keeps its num_samples x grid trials."""
    point = {}
    for dimension in config.search_space.dimensions:
        if dimension.kind == "grid" or dimension.key not in sample:
            continue
        if not fits(dimension, sample[dimension.key]):
            return None
        point[dimension.key] = sample[dimension.key]
    return point or None


@dataclass(frozen=True)
class WarmStart:
    """What an earlier experiment hands a new search (`read_warm_start`)."""

    source: ExperimentLayout
    points: tuple[dict, ...] = ()  # its best configurations, evaluated first (in its rank order)
    # (configuration, its best score) of every earlier trial whose configuration covers the whole new
    # search: what an Optuna search is told before it samples (same metric and mode only)
    evaluated: tuple[tuple[dict, float], ...] = ()
    finished: int = 0  # its trials with a result
    reusable: int = 0  # how many of `points` this run will replay instead of training
    seed: int | None = None  # the new search's seed (`search_seed`)
    notes: tuple[str, ...] = field(default_factory=tuple)


def carried_count(num_samples: int) -> int:
    return max(1, min(MAX_CARRIED, num_samples // 2))


def search_seed(seed: int | None, source: ExperimentLayout) -> int | None:
    """The seed of a warm-started search: mixed with the earlier experiment's name, else a
    search with the same seed would draw the earlier experiment's samples again (each one a
    reused trial: no new configuration tried)."""
    return None if seed is None else (seed + zlib.crc32(source.name.encode())) % (2 ** 31)


def find_warm_start(config: ExperimentConfig) -> ExperimentLayout:
    """tune.warm_start's experiment: a folder, a URI, or a name under this experiment's
    storage path (then under the default one); a one-line error when it is none of them."""
    warm_start = config.tune.warm_start
    candidates = [warm_start] if storage.is_uri(warm_start) or Path(warm_start).is_absolute() else \
        [storage.join(config.tune.storage_path, warm_start), warm_start]
    for candidate in candidates:
        try:
            return storage.find_experiment(candidate)
        except LexirayError as error:
            missing = error
    raise ConfigError(f"tune.warm_start: {missing}")


def read_warm_start(config: ExperimentConfig, data: str, layout: ExperimentLayout | None = None) -> WarmStart | None:
    """The earlier experiment of `tune.warm_start`, read before Ray starts (a one-line error
    when it is not one, or has no summary.json yet: `lexiray report` writes it)."""
    if not config.tune.warm_start:
        return None
    if storage.is_uri(config.tune.warm_start):
        storage.check_storage(config.tune.warm_start, field="tune.warm_start")
    source = find_warm_start(config)
    if layout is not None and source.is_local and not layout.is_local:
        raise ConfigError(f"tune.warm_start={config.tune.warm_start} is a local folder but this experiment is at "
                          f"{layout.storage_path}: its trials could not read the reused checkpoints; give the "
                          "earlier experiment's URI (copy it there first)")
    if layout is not None and source.root.rstrip("/") == layout.root.rstrip("/"):
        raise ConfigError(f"tune.warm_start={config.tune.warm_start} is this experiment itself: give an earlier one "
                          "(`lexiray resume` continues this one)")
    text = storage.read_text(source.summary_file)
    if text is None:
        raise ConfigError(f"tune.warm_start={config.tune.warm_start}: no summary.json yet: run "
                          f"`lexiray report {source.root}` first")
    summary = json.loads(text)
    metric = summary.get("metric", "eval_loss")
    rows = [row for row in summary.get("leaderboard") or []
            if row.get("status") not in _NOT_RESULTS and is_number(row.get(metric))]  # already in rank order
    points, carried_from, evaluated = [], [], []
    sampled = set(config.search_space.sampled_keys)
    same_objective = metric == config.tune.metric and summary.get("mode") == config.tune.mode
    for row in rows:
        point = carried_point(config, dict(row.get("sample") or {}))
        if point is None or (config.tune.search_alg == "optuna" and set(point) != sampled):
            continue  # Optuna's points_to_evaluate must set every setting it samples
        if len(points) < carried_count(config.tune.num_samples) and point not in points:
            points.append(point)
            carried_from.append(row["trial_id"])
        if same_objective and set(point) == sampled:
            evaluated.append((point, float(row[metric])))
    reusable = 0
    for point, trial_id in zip(points, carried_from):
        recorded = storage.read_trial_fingerprint(source, trial_id).get("fingerprint")
        if recorded and recorded == trial_fingerprint(apply_sample(config, point), data):
            reusable += 1
    notes = []
    if not same_objective:
        notes.append(f"it ranked by {metric} ({summary.get('mode')}): its results are not given to the new search")
    return WarmStart(source, tuple(points), tuple(evaluated) if config.tune.search_alg == "optuna" else (),
                     len(rows), reusable, search_seed(config.tune.seed, source), tuple(notes))


def describe(warm: WarmStart) -> str:
    """The line `lexiray tune` prints about its warm start."""
    line = (f"warm start from {warm.source.root}: {len(warm.points)} of its best configurations run first "
            f"({warm.finished} trials with a result), {warm.reusable} of them reused as they are (same settings, "
            "model and data)")
    if warm.evaluated:
        line += f"; Optuna is told {len(warm.evaluated)} earlier results"
    return "; ".join([line, *warm.notes])
