"""Every setting of an experiment as validated pydantic models, loaded from YAML.

Sections follow the data flow (model, data, lora, training, resources, tune, report) and
keep Hugging Face / PEFT names where a setting maps onto one. Errors are `ConfigError`s
whose one-line message names the file and the dotted field.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lexiray.errors import ConfigError

_PACKAGE_DIR = Path(__file__).resolve().parent
# Presets: a wheel carries search_spaces/ inside the package (pyproject's package-dir); a
# checkout (source, editable install, a job's working_dir) has it next to lexiray/.
_INSTALLED_PRESETS, _CHECKOUT_PRESETS = _PACKAGE_DIR / "search_spaces", _PACKAGE_DIR.parent / "search_spaces"
SEARCH_SPACES_DIR = _INSTALLED_PRESETS if _INSTALLED_PRESETS.is_dir() else _CHECKOUT_PRESETS
DEFAULT_PRESET = "smoke"

LEXILINGO_TASKS = ("fluency", "vocabulary", "grammar", "dialogue", "explanation")
DEFAULT_SYSTEM_PROMPTS = {
    "fluency": "You are LexiLingo, an English tutor. Rate the learner's fluency as "
    "'Score: N/5.' followed by one sentence of feedback.",
    "vocabulary": "You are LexiLingo, an English tutor. Answer with the CEFR level "
    "(A1, A2, B1, B2, C1 or C2) of the word.",
    "grammar": "You are LexiLingo, an English tutor. Rewrite the learner's sentence "
    "with its grammar corrected. Answer with the corrected sentence only.",
    "dialogue": "You are LexiLingo, a friendly English conversation partner. Reply "
    "naturally, gently correct mistakes and ask a follow-up question.",
    "explanation": "You are LexiLingo, an English tutor for Vietnamese speakers. "
    "Explain the grammar point in Vietnamese with short English examples.",
}
DEFAULT_SYSTEM_PROMPT = "You are LexiLingo, a helpful English-learning assistant."
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(Section):
    name: str = "tiny"  # "tiny" / "lexiray:tiny" = the offline model of lexiray.tiny
    quantization: Literal["none", "4bit", "8bit"] = "none"
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_use_double_quant: bool = True
    trust_remote_code: bool = False
    revision: str | None = None


class DataSettings(Section):
    path: str = "lexilingo-sample"  # a file, a folder, a HF dataset id, or the bundled sample
    eval_path: str | None = None
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    split_seed: int = 42
    max_seq_length: int = Field(512, ge=16)
    overlong: Literal["truncate", "drop"] = "truncate"
    max_bad_fraction: float = Field(0.05, ge=0, le=1)
    length_coverage: float = Field(0.95, gt=0, le=1)
    max_rows: int | None = Field(None, gt=0)
    # How a training batch is laid out (evaluation batches are padded): "padding_free"
    # concatenates a batch's rows into one row with no padding, each row attending only to
    # itself: the same samples, labelled tokens and loss as "none", which pads each batch to its
    # longest row; "group_by_length" pads batches of rows of similar length (a different sample
    # order, and HF groups the evaluation batches too). See benchmarks/packing.py.
    packing: Literal["none", "group_by_length", "padding_free"] = "padding_free"
    system_prompts: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_SYSTEM_PROMPTS))
    default_system_prompt: str = DEFAULT_SYSTEM_PROMPT


class LoraSettings(Section):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(default_factory=lambda: list(ALL_PROJECTIONS))
    bias: Literal["none", "all", "lora_only"] = "none"


class TrainingSettings(Section):
    learning_rate: float = Field(2e-4, gt=0)
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = -1  # > 0 overrides num_train_epochs, as in HF TrainingArguments
    per_device_train_batch_size: int = Field(4, gt=0)
    per_device_eval_batch_size: int = Field(8, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    optim: str = "adamw_torch"
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = Field(0.03, ge=0)  # < 1 is a ratio of all steps (transformers 5)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    save_steps: int = Field(100, gt=0)
    eval_steps: int | None = Field(None, gt=0)  # None: same as save_steps
    logging_steps: int = Field(10, gt=0)
    gradient_checkpointing: bool = True
    # Out-of-memory rungs a trial may take before it fails (lexiray.oom); 0: fail at once.
    oom_backoff: int = Field(3, ge=0)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    dataloader_num_workers: int | Literal["auto"] = "auto"
    dataloader_prefetch_factor: int = Field(2, gt=0)
    seed: int = 42

    @field_validator("max_steps")
    @classmethod
    def _max_steps(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError("must be -1 (use num_train_epochs) or a positive number of steps")
        return value

    @model_validator(mode="after")
    def _eval_divides_save(self) -> "TrainingSettings":
        # The report callback sends metrics when a checkpoint is saved; if evaluation does
        # not happen on every save step the reported eval_loss would be stale.
        if self.eval_steps is not None and self.save_steps % self.eval_steps != 0:
            raise ValueError(
                f"eval_steps ({self.eval_steps}) must divide save_steps ({self.save_steps}) "
                "so every checkpoint carries a fresh eval_loss"
            )
        return self

    @property
    def effective_eval_steps(self) -> int:
        return self.eval_steps or self.save_steps

    @property
    def effective_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps


class ResourceSettings(Section):
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    accelerator_type: str | None = None  # e.g. "T4": schedule trials only on such GPUs
    num_workers: int = Field(1, gt=0)  # Ray Train workers per trial (data parallel)
    # GPU memory one trial may use (GB): trials estimated over it are skipped, not trained.
    # None: its GPU's, from accelerator_type or the GPUs seen (lexiray.memory).
    gpu_memory_gb: float | None = Field(None, gt=0)
    # What one hour costs, in USD (None: no `$` figure anywhere). What it is per (lexiray.cost):
    # - GPU trials (gpus_per_trial > 0): per GPU-hour; a trial pays price x gpus_per_trial x
    #   num_workers an hour. A T4 node with one GPU (g4dn.xlarge): its hourly price.
    # - CPU trials: per worker-hour; a trial pays price x num_workers an hour. Which share of a
    #   node a trial's cpus_per_trial hold is unknowable offline, so for trials that share a node
    #   give the node's price divided by the trials it runs at once.
    # The hours: the trial's wall time from its start, retries included (lexiray.cost).
    price_per_hour: float | None = Field(None, gt=0)


class TuneSettings(Section):
    num_samples: int = Field(8, gt=0)
    max_concurrent_trials: int | None = Field(None, gt=0)
    search_alg: Literal["random", "optuna"] = "random"
    scheduler: Literal["asha", "fifo"] = "asha"
    metric: str = "eval_loss"
    mode: Literal["min", "max"] = "min"
    grace_period: int | None = Field(None, gt=0)  # steps; None: the first evaluation step
    reduction_factor: float = Field(3.0, gt=1)
    max_t: int | None = Field(None, gt=0)  # steps; None: derived from the epochs
    time_budget_s: float | None = Field(None, gt=0)
    # USD (`--budget`): stop starting trials once the spent cost plus the running trials'
    # committed cost reaches it (lexiray.cost.BudgetLedger); needs resources.price_per_hour.
    budget_usd: float | None = Field(None, gt=0)
    max_failures: int = Field(2, ge=0)
    keep_checkpoints: int = Field(2, gt=0)
    storage_path: str = "lexiray_results"
    name: str | None = None
    seed: int | None = 0
    # An earlier experiment (folder, name or URI) that seeds this search (lexiray.warm): its best
    # configurations run first, Optuna is told its results, its finished trials are reused.
    warm_start: str | None = None
    # Task scores from generations (lexiray.scoring) for the best score_top_k trials and the
    # base after the run; 0: none. select_by: which trial best/ and `lexiray export` take.
    score_top_k: int = Field(3, ge=0)
    select_by: Literal["eval_loss", "task_score"] = "eval_loss"

    @model_validator(mode="after")
    def _select_by_needs_scores(self) -> "TuneSettings":
        if self.select_by == "task_score" and self.score_top_k == 0:
            raise ValueError("select_by=task_score needs task scores but score_top_k=0 scores no trial: set "
                             "tune.score_top_k to 1 or more, or tune.select_by=eval_loss")
        return self

    @model_validator(mode="after")
    def _grace_before_max_t(self) -> "TuneSettings":
        if self.grace_period is not None and self.max_t is not None and self.grace_period >= self.max_t:
            raise ValueError(f"grace_period ({self.grace_period}) must be below max_t ({self.max_t}): ASHA would "
                             "stop no trial early; lower tune.grace_period or raise tune.max_t")
        return self


class ReportSettings(Section):
    plots: bool = True
    top: int = Field(20, gt=0)


class ExperimentConfig(Section):
    name: str = "experiment"
    description: str = ""
    model: ModelSettings = Field(default_factory=ModelSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    resources: ResourceSettings = Field(default_factory=ResourceSettings)
    tune: TuneSettings = Field(default_factory=TuneSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)
    search: dict[str, Any] = Field(default_factory=dict)  # as written; read it through `search_space`

    @model_validator(mode="after")
    def _budget_needs_price(self) -> "ExperimentConfig":
        if self.tune.budget_usd is not None and self.resources.price_per_hour is None:
            raise ValueError("tune.budget_usd (--budget) needs resources.price_per_hour: set the price of a GPU-hour "
                             "(CPU trials: of a worker-hour), e.g. --set resources.price_per_hour=0.526")
        return self

    @property
    def search_space(self) -> "SearchSpace":
        """The search block, typed (`SearchSpace`): parsed once per config (see `search_space`)."""
        return search_space(self)


# --------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` (no dot) as a string; users write learning rates that way."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def valid_keys(model: type[BaseModel] = ExperimentConfig, prefix: str = "") -> list[str]:
    """All dotted keys a config may set, e.g. 'lora.r'."""
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        keys.append(prefix + name)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(valid_keys(annotation, prefix + name + "."))
    return keys


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.5)
    if not close:  # compare the last part alone: 'lora.rank' vs 'lora.r'
        leaf = key.rsplit(".", 1)[-1]
        candidates = [k for k in valid_keys() if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0]]
        close = difflib.get_close_matches(leaf, [c.rsplit(".", 1)[-1] for c in candidates], n=1, cutoff=0.3)
        close = [key.rsplit(".", 1)[0] + "." + close[0]] if close and "." in key else close
    return f"; did you mean '{close[0]}'?" if close else ""


def yaml_key_lines(text: str) -> dict[str, int]:
    """The line (1-based) of every dotted key of a YAML mapping, e.g. {'lora.r': 12}, so an
    error can point at the line to fix."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}

    def walk(node, prefix: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key_node, value_node in node.value:
            key = prefix + str(key_node.value)
            lines[key] = key_node.start_mark.line + 1
            # search keys keep their dots ('search.lora.r'); other sections nest
            walk(value_node, key + ".")

    walk(root, "")
    return lines


SET_ON_COMMAND_LINE = 0  # the "line" of a key given with --set


def _where(source: str, key: str, lines: dict[str, int]) -> str:
    """'file.yaml:12' when the key (or the nearest section above it) is on a line of the file;
    a note such as ' (with --set)' stays after the line number."""
    path, space, note = source.partition(" (")
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        line = lines.get(".".join(parts[:end]))
        if line == SET_ON_COMMAND_LINE:
            return source
        if line:
            return f"{path}:{line}{space}{note}"
    return source


def _format_validation_error(error: ValidationError, source: str, lines: dict[str, int] | None = None) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    source = _where(source, key, lines or {})
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'{_suggest(key)}"
    message = first["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    got = first.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    more = len(error.errors()) - 1
    tail = f" [+{more} more problem{'s' if more > 1 else ''}]" if more else ""
    where = f"{key}: " if key else ""  # a check across sections names its own fields
    return f"{source}: {where}{message}{shown}{tail}"


def parse_override(text: str) -> tuple[str, Any]:
    """'lora.r=32' -> ('lora.r', 32); the value is read as YAML so types come out right."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set lora.r=32")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: the key before '=' is empty")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_override(raw: dict, key: str, value: Any) -> None:
    """Set a dotted key in a raw config dict. `search.<setting>` keys keep their dots."""
    parts = key.split(".")
    if parts[0] == "search" and len(parts) > 1:
        raw.setdefault("search", {})
        if not isinstance(raw["search"], dict):
            raise ConfigError("search: must be a mapping of setting -> distribution")
        raw["search"][".".join(parts[1:])] = value
        return
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def resolve_config_path(path_or_name: str | Path | None) -> Path:
    """A YAML path, or a preset name such as 'smoke' found in search_spaces/."""
    if path_or_name is None:
        path_or_name = DEFAULT_PRESET
    path = Path(path_or_name).expanduser()
    if path.is_file():
        return path
    preset = SEARCH_SPACES_DIR / f"{path_or_name}.yaml"
    if preset.is_file():
        return preset
    names = ", ".join(sorted(p.stem for p in SEARCH_SPACES_DIR.glob("*.yaml")))
    raise ConfigError(f"config {str(path_or_name)!r} not found: give a YAML path or a preset ({names})")


def read_yaml(path: Path) -> dict:
    try:
        raw = yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return raw


def config_from_dict(raw: dict, source: str = "config", lines: dict[str, int] | None = None) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, source, lines)) from None


def load_config(path_or_name: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML config (or preset name), apply `KEY=VALUE` overrides, validate."""
    path = resolve_config_path(path_or_name)
    raw = copy.deepcopy(read_yaml(path))
    raw.setdefault("name", path.stem)
    lines = yaml_key_lines(path.read_text(encoding="utf-8"))
    for text in overrides or []:
        key, value = parse_override(text)
        apply_override(raw, key, value)
        lines[key] = SET_ON_COMMAND_LINE  # no file line to point at for this key
    source = str(path) + (" (with --set)" if overrides else "")
    config = config_from_dict(raw, source, lines)
    if config.search:  # validated here so a bad search block fails before anything starts
        validate_search(config, source)
    return config


def config_to_yaml(config: ExperimentConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def parse_usd(text: str) -> float:
    """'25', '$25', '2.50' -> 25.0 (`--budget`)."""
    try:
        value = float(text.strip().lstrip("$"))
    except ValueError:
        raise ConfigError(f"--budget {text!r}: expected an amount in USD, e.g. 25 or 2.50") from None
    if not value > 0 or math.isinf(value):
        raise ConfigError(f"--budget {text!r}: must be more than 0")
    return value


def parse_duration(text: str) -> float:
    """'90m', '2h', '1h30m', '45s', '600' -> seconds (`--time-budget`)."""
    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not match or not any(match.groups()):
        raise ConfigError(f"--time-budget {text!r}: expected e.g. 45m, 2h, 1h30m or seconds")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ConfigError(f"--time-budget {text!r}: must be more than 0")
    return total


# --------------------------------------------------------------------------- the search block
# Only sampled settings become Tune domains (lexiray.space). Derived settings
# (`lora.alpha: 2 * lora.r`) and the constant effective batch (accumulation = effective
# batch / batch) are computed from a sample by `apply_sample`, so they work the same under
# every search algorithm (Optuna cannot sample `tune.sample_from` dependencies).

DISTRIBUTIONS = ("loguniform", "uniform", "quniform", "randint", "choice", "grid")
BATCH_KEY = "training.per_device_train_batch_size"
ACCUMULATION_KEY = "training.gradient_accumulation_steps"
# "2 * lora.r", "lora.r * 2", "lora.r"
_DERIVED = re.compile(r"^\s*(?:(?P<a>[0-9.eE+-]+)\s*\*\s*)?(?P<key>[a-z_]+\.[a-z_0-9]+)(?:\s*\*\s*(?P<b>[0-9.eE+-]+))?\s*$")


def _setting_keys() -> set[str]:
    sections = {"model", "data", "lora", "training", "resources", "tune", "report", "search", "name", "description"}
    return {key for key in valid_keys() if key not in sections}


def _parse_dimension(key: str, spec: Any, source: str) -> "Dimension":
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
        if not all(math.isclose(bound / args[2], round(bound / args[2])) for bound in args[:2]):
            raise ConfigError(f"{source}: search.{key}.quniform: low and high must be multiples of the step "
                              f"{args[2]} (Ray Tune's quniform draws multiples of it)")
    return Dimension(key, kind, tuple(args))


def _quantized_indices(low: float, high: float, step: float) -> tuple[int, int]:
    """quniform's values are k * step for k from the first to the last index, as Ray Tune
    draws them (its bounds are multiples of the step)."""
    return round(low / step), round(high / step)


def candidate_values(kind: str, args: list | tuple) -> list:
    """Values a distribution can produce, where they are finite (for up-front checks);
    the bounds otherwise."""
    if kind in ("choice", "grid"):
        return list(args)
    if kind == "randint":
        return list(range(int(args[0]), int(args[1]) + 1))
    if kind == "quniform":
        first, last = _quantized_indices(*args)
        return [k * args[2] for k in range(first, last + 1)]
    return list(args)


def parse_derived(expression: str) -> tuple[str, float]:
    match = _DERIVED.match(expression)
    if not match:
        raise ValueError(expression)
    factor = float(match.group("a") or 1) * float(match.group("b") or 1)
    return match.group("key"), factor


@dataclass(frozen=True)
class Dimension:
    """A sampled setting, e.g. `lora.r: {choice: [4, 8, 16]}` -> Dimension('lora.r', 'choice',
    (4, 8, 16)). `args` as in the YAML: randint's bounds are both included."""

    key: str
    kind: str  # one of DISTRIBUTIONS
    args: tuple

    @property
    def is_finite(self) -> bool:
        return self.kind in ("choice", "grid")

    def candidate_values(self) -> list:
        return candidate_values(self.kind, self.args)

    def draw(self, rng: random.Random):
        """One value, from the values Ray Tune's domain for it (`space.build_param_space`) holds."""
        kind, args = self.kind, self.args
        if kind == "loguniform":  # clamped: exp(log(high)) may round above high
            return min(max(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))), args[0]), args[1])
        if kind == "uniform":
            return rng.uniform(args[0], args[1])
        if kind == "quniform":
            first, last = _quantized_indices(*args)
            return rng.randint(first, last) * args[2]
        if kind == "randint":
            return rng.randint(int(args[0]), int(args[1]))
        return rng.choice(args)


@dataclass(frozen=True)
class Derived:
    """A setting computed from a sample, e.g. `lora.alpha: 2 * lora.r` -> Derived('lora.alpha',
    '2 * lora.r', 'lora.r', 2.0)."""

    key: str
    expression: str
    target: str
    factor: float


@dataclass(frozen=True)
class SearchSpace:
    """The search block, parsed: what Tune samples (`space.build_param_space`), what `lexiray
    plan` samples, what the report plots and `apply_sample` derives all read this one object."""

    dimensions: tuple[Dimension, ...] = ()
    derived: tuple[Derived, ...] = ()

    @classmethod
    def parse(cls, search: dict, source: str = "config") -> "SearchSpace":
        keys = _setting_keys()
        dimensions, derived = [], []
        for key, spec in search.items():
            if key not in keys:
                raise ConfigError(f"{source}: search.{key}: unknown setting{_suggest(key)}")
            if isinstance(spec, str):
                try:
                    target, factor = parse_derived(spec)
                except ValueError:
                    raise ConfigError(f"{source}: search.{key}: cannot read '{spec}' (write e.g. '2 * lora.r')") \
                        from None
                if target not in keys:
                    raise ConfigError(f"{source}: search.{key}: '{spec}' refers to unknown setting '{target}'")
                derived.append(Derived(key, spec, target, factor))
            else:
                dimensions.append(_parse_dimension(key, spec, source))
        return cls(tuple(dimensions), tuple(derived))

    @property
    def sampled_keys(self) -> tuple[str, ...]:
        return tuple(dimension.key for dimension in self.dimensions)

    @property
    def keys(self) -> tuple[str, ...]:
        """Every searched setting: the sampled ones, then the derived ones."""
        return self.sampled_keys + tuple(entry.key for entry in self.derived)

    def dimension(self, key: str) -> Dimension:
        for dimension in self.dimensions:
            if dimension.key == key:
                return dimension
        raise KeyError(key)

    def candidate_values(self, key: str) -> list:
        return self.dimension(key).candidate_values()

    @property
    def is_finite(self) -> bool:
        """True when every sampled setting is a choice or a grid (its points can be listed)."""
        return all(dimension.is_finite for dimension in self.dimensions)

    def grid_points(self) -> list[dict]:
        """Every point of a finite space (one empty sample when nothing is sampled)."""
        if not self.is_finite:
            raise ValueError("grid_points: the space has continuous dimensions")
        values = itertools.product(*(dimension.args for dimension in self.dimensions))
        return [dict(zip(self.sampled_keys, point)) for point in values]

    def seeded_samples(self, count: int, seed: int = 0) -> list[dict]:
        """`count` samples drawn with `random.Random(seed)`, each value one Tune's domain holds."""
        rng = random.Random(seed)
        return [{dimension.key: dimension.draw(rng) for dimension in self.dimensions} for _ in range(count)]


_SEARCH_SPACE_SLOT = "_lexiray_search_space"  # in the model's __dict__ like a functools.cached_property: no field


def search_space(config: ExperimentConfig, source: str = "search") -> SearchSpace:
    """`config.search` parsed, once per config: the result is kept on the config with a copy of
    the block it came from, and parsed again only if the block was changed since."""
    cached = config.__dict__.get(_SEARCH_SPACE_SLOT)
    if cached is not None and cached[0] == config.search:
        return cached[1]
    space = SearchSpace.parse(config.search, source)
    config.__dict__[_SEARCH_SPACE_SLOT] = (copy.deepcopy(config.search), space)
    return space


def _effective_batch(config: ExperimentConfig) -> int:
    return config.training.effective_batch_size


def validate_search(config: ExperimentConfig, source: str = "config") -> None:
    """Every key a setting, every distribution well formed, every candidate value valid,
    and searched batch sizes dividing the preset's effective batch."""
    space = search_space(config, source)  # errors name the file; the config keeps the result
    grids = [dimension.key for dimension in space.dimensions if dimension.kind == "grid"]
    if grids and config.tune.search_alg != "random":  # only the random search lays out grids
        raise ConfigError(f"{source}: search.{grids[0]}: 'grid' entries need tune.search_alg=random "
                          f"({config.tune.search_alg} samples, it does not grid)")
    if BATCH_KEY in space.sampled_keys and ACCUMULATION_KEY not in space.keys:
        effective = _effective_batch(config)
        for value in space.candidate_values(BATCH_KEY):
            if not float(value).is_integer() or value <= 0 or effective % int(value) != 0:
                raise ConfigError(
                    f"{source}: search.{BATCH_KEY}: batch {value} does not divide the effective batch "
                    f"{effective} (= {config.training.per_device_train_batch_size} x "
                    f"{config.training.gradient_accumulation_steps}); use divisors of {effective}"
                )
    # Each candidate must make a valid config on its own (r > 0, lr > 0, ...), and so must the
    # derived settings computed from the base values.
    apply_sample(config, {}, source=source)
    for dimension in space.dimensions:
        for value in dimension.candidate_values():
            apply_sample(config, {dimension.key: value}, source=f"{source}: search.{dimension.key}={value!r}")


def _set(raw: dict, key: str, value: Any) -> None:
    section, name = key.split(".", 1)
    raw.setdefault(section, {})[name] = value


def _get(raw: dict, key: str) -> Any:
    section, name = key.split(".", 1)
    return raw.get(section, {}).get(name)


def apply_sample(config: ExperimentConfig, sample: dict, source: str = "trial") -> ExperimentConfig:
    """The trial's config: the base config with the sampled values, derived settings and
    the effective batch held constant. The search block is dropped from the result."""
    space = config.search_space
    raw = config.model_dump(mode="json")
    raw["search"] = {}
    for key, value in sample.items():
        _set(raw, key, value)
    for entry in space.derived:
        base = _get(raw, entry.target)
        if isinstance(base, bool) or not isinstance(base, (int, float)):
            raise ConfigError(f"{source}: search.{entry.key}: '{entry.expression}' refers to {entry.target}={base!r}, "
                              "which is not a number; derive it from a numeric setting such as lora.r")
        value = base * entry.factor
        _set(raw, entry.key, int(value) if float(value).is_integer() else value)
    if BATCH_KEY in sample and ACCUMULATION_KEY not in space.keys:
        batch = int(sample[BATCH_KEY])
        effective = _effective_batch(config)
        if batch <= 0 or effective % batch:
            raise ConfigError(f"{source}: batch {batch} does not divide the effective batch {effective}")
        _set(raw, ACCUMULATION_KEY, effective // batch)
    return config_from_dict(raw, source)
