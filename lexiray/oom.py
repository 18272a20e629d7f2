"""The OOM back-off ladder: what a trial that ran out of GPU memory retries with.

The rungs follow the guide's OOM checklist. A tuning trial is there to compare its sample,
so the ladder climbs in two stages:

  1. rungs that keep the optimization the same, taken whatever the search varies:
     gradient checkpointing on; then a smaller micro-batch with more accumulation steps
     (the effective batch, the samples per step and their order stay the same, so the
     trial's loss curve is the one the search asked for);
  2. rungs that change the recipe, only for settings the search does not vary (a searched
     setting is never changed behind the search's back): a shorter data.max_seq_length
     when the training rows' lengths allow it, a lower lora.r, the 8-bit paged optimizer.

`training.oom_backoff` caps how many rungs one trial may take. The worker
(`lexiray.trial.train_worker`) catches the out-of-memory error, frees the memory and
rebuilds with `OomLadder.back_off`'s config. Pure logic on `ExperimentConfig`, except the
small torch helpers at the end (imported inside them: `lexiray.trial` imports this module
in every trial's driver process, where torch would cost ~1.5 CPU-seconds).
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field

from lexiray.config import ACCUMULATION_KEY, BATCH_KEY, ExperimentConfig
from lexiray.data import recommend_max_seq_length
from lexiray.errors import LexirayError
from lexiray.results import TrialReport

log = logging.getLogger(__name__)

MIN_LORA_R = 8  # the guide's checklist lowers r 48 → 32 → 16 → 8 and no further
EIGHT_BIT_OPTIMIZER = "paged_adamw_8bit"


class OutOfRungsError(LexirayError):
    """A trial ran out of GPU memory on every rung the ladder allowed it."""


@dataclass(frozen=True)
class Rung:
    """One step down the ladder: the config to retry with and what changed, in words."""

    config: ExperimentConfig
    change: str  # one log line, e.g. "per_device_train_batch_size 8 → 4, gradient_accumulation_steps 1 → 2"
    keeps_optimization: bool  # False: the recipe changed, no checkpoint of an earlier attempt fits it


def _update(config: ExperimentConfig, section: str, **values) -> ExperimentConfig:
    changed = getattr(config, section).model_copy(update=values)
    return config.model_copy(update={section: changed})


def checkpointing_rung(config: ExperimentConfig) -> Rung | None:
    if config.training.gradient_checkpointing:
        return None
    return Rung(_update(config, "training", gradient_checkpointing=True), "gradient_checkpointing on", True)


def smaller_batch_rung(config: ExperimentConfig) -> Rung | None:
    """Half the micro-batch (for an odd one, its largest divisor below it), accumulation
    multiplied to match: the effective batch stays exactly the same."""
    batch, accumulation = config.training.per_device_train_batch_size, config.training.gradient_accumulation_steps
    if batch == 1:
        return None
    smaller = max(d for d in range(1, batch) if batch % d == 0)
    more = accumulation * (batch // smaller)
    return Rung(_update(config, "training", per_device_train_batch_size=smaller, gradient_accumulation_steps=more),
                f"per_device_train_batch_size {batch} → {smaller}, "
                f"gradient_accumulation_steps {accumulation} → {more}", True)


def shorter_sequence_rung(config: ExperimentConfig, train_lengths: list[int] | None) -> Rung | None:
    """The length the guide recommends for these rows (covering data.length_coverage of
    them), when it is shorter than the current one; never without the rows' lengths."""
    if not train_lengths:
        return None
    current = config.data.max_seq_length
    shorter = recommend_max_seq_length(train_lengths, config.data.length_coverage)
    if shorter >= current:
        return None
    return Rung(_update(config, "data", max_seq_length=shorter), f"data.max_seq_length {current} → {shorter}", False)


def lower_rank_rung(config: ExperimentConfig) -> Rung | None:
    """Half the LoRA rank, alpha halved with it so the adapter's scale (alpha / r) stays."""
    r, alpha = config.lora.r, config.lora.alpha
    if r // 2 < MIN_LORA_R:
        return None
    lower, lower_alpha = r // 2, max(1, round(alpha / 2))
    return Rung(_update(config, "lora", r=lower, alpha=lower_alpha),
                f"lora.r {r} → {lower}, lora.alpha {alpha} → {lower_alpha}", False)


def eight_bit_optimizer_rung(config: ExperimentConfig) -> Rung | None:
    optim = config.training.optim
    if "8bit" in optim:
        return None
    return Rung(_update(config, "training", optim=EIGHT_BIT_OPTIMIZER),
                f"training.optim {optim} → {EIGHT_BIT_OPTIMIZER}", False)


# Recipe-changing rungs, in the checklist's order, with the settings each one changes.
RECIPE_RUNGS = (
    (("data.max_seq_length",), shorter_sequence_rung),
    (("lora.r", "lora.alpha"), lambda config, lengths: lower_rank_rung(config)),
    (("training.optim",), lambda config, lengths: eight_bit_optimizer_rung(config)),
)


def next_rung(config: ExperimentConfig, searched: frozenset[str] | set[str] = frozenset(),
              train_lengths: list[int] | None = None) -> Rung | None:
    """The first rung of the checklist that still changes something, or None. `searched`:
    the dotted settings the tuning run's search block varies (or derives)."""
    for rung in (checkpointing_rung(config), smaller_batch_rung(config)):
        if rung is not None:
            return rung
    for settings, make in RECIPE_RUNGS:
        if searched.isdisjoint(settings):
            rung = make(config, train_lengths)
            if rung is not None:
                return rung
    return None


def memory_settings(config: ExperimentConfig) -> str:
    """The settings that decide a trial's memory, as one short line."""
    training = config.training
    return (f"{BATCH_KEY}={training.per_device_train_batch_size} ({ACCUMULATION_KEY}="
            f"{training.gradient_accumulation_steps}), data.max_seq_length={config.data.max_seq_length}, "
            f"lora.r={config.lora.r}, training.optim={training.optim}, "
            f"gradient_checkpointing={'on' if training.gradient_checkpointing else 'off'}")


@dataclass
class OomLadder:
    """One trial's walk down the ladder: the config it runs now and the rungs taken."""

    config: ExperimentConfig
    searched: frozenset[str] = frozenset()
    train_lengths: list[int] | None = None
    retries: int = 0
    keeps_optimization: bool = True  # every rung so far kept it: an earlier checkpoint still fits
    start: ExperimentConfig = field(init=False)  # the trial's own config, before any rung

    def __post_init__(self):
        self.start = self.config

    @property
    def budget(self) -> int:
        return self.config.training.oom_backoff

    def back_off(self, error: str) -> Rung:
        """The next rung after an out-of-memory `error` (logged on one line), or the one-line
        `OutOfRungsError` naming the settings that did not fit."""
        rung = next_rung(self.config, self.searched, self.train_lengths) if self.retries < self.budget else None
        if rung is None:
            raise OutOfRungsError(self.explain_failure())
        self.retries += 1
        self.keeps_optimization = self.keeps_optimization and rung.keeps_optimization
        self.config = rung.config
        log.warning("out of memory (%s): OOM back-off rung %d/%d: %s", error, self.retries, self.budget, rung.change)
        return rung

    def explain_failure(self) -> str:
        tried = f" after {self.retries} back-off rung{'s' if self.retries != 1 else ''}" if self.retries else ""
        if self.retries < self.budget:
            fix = "no rung left (settings the search varies are kept): use a smaller model or model.quantization=4bit"
        else:
            fix = f"raise training.oom_backoff (now {self.budget}) or use a smaller model"
        return f"out of GPU memory{tried}: {memory_settings(self.config)} did not fit; {fix}"

    def ran_with(self) -> str:
        """The settings the rungs changed, as they are now, e.g. "batch 2×4, checkpointing on"
        ("" when none did): what the leaderboard shows beside the trial's own settings."""
        now, start = self.config, self.start
        changed = [
            ((now.training.per_device_train_batch_size, now.training.gradient_accumulation_steps) !=
             (start.training.per_device_train_batch_size, start.training.gradient_accumulation_steps),
             f"batch {now.training.per_device_train_batch_size}×{now.training.gradient_accumulation_steps}"),
            (now.training.gradient_checkpointing != start.training.gradient_checkpointing, "checkpointing on"),
            (now.data.max_seq_length != start.data.max_seq_length, f"max_seq_length {now.data.max_seq_length}"),
            (now.lora.r != start.lora.r, f"r {now.lora.r}"),
            (now.training.optim != start.training.optim, f"optim {now.training.optim}"),
        ]
        return ", ".join(text for differs, text in changed if differs)

    def report(self) -> TrialReport:
        """What each report carries: the retries and the settings the trial finally ran with."""
        training = self.config.training
        return TrialReport(
            oom_retries=self.retries,
            ran_with=self.ran_with(),
            ran_batch_size=training.per_device_train_batch_size,
            ran_grad_accum=training.gradient_accumulation_steps,
            ran_gradient_checkpointing=training.gradient_checkpointing,
            ran_max_seq_length=self.config.data.max_seq_length,
            ran_lora_r=self.config.lora.r,
            ran_optim=training.optim,
        )

    def metrics(self) -> dict:
        """`report` as result keys."""
        return self.report().to_result()


def shorten_rows(dataset, max_length: int):
    """The tokenized training rows cut to `max_length` tokens (after a shorter
    data.max_seq_length rung); a row left with no labelled token to predict is dropped.
    In memory: no cache files beside a prepared data folder."""

    def cut(row: dict) -> dict:
        return {"input_ids": row["input_ids"][:max_length], "labels": row["labels"][:max_length],
                "length": min(row["length"], max_length)}

    # labels[0] is never predicted: causal LMs shift the labels by one inside the loss
    return (dataset.map(cut, keep_in_memory=True)
            .filter(lambda row: any(label != -100 for label in row["labels"][1:]), keep_in_memory=True))


# --------------------------------------------------------------------------- torch helpers


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError)


def free_memory() -> None:
    """Give back what an attempt held once nothing references it any more (call it after
    the `except` block: the caught error's traceback keeps the attempt's frames alive)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def samples_in(kwargs: dict) -> int:
    """How many samples a forward call holds: its batch dimension, or for a padding-free
    row (batch dimension 1, samples concatenated) the restarts of its position_ids."""
    input_ids, positions = kwargs.get("input_ids"), kwargs.get("position_ids")
    if input_ids is None:
        return 0
    if input_ids.shape[0] == 1 and positions is not None:
        return int((positions[0] == 0).sum())
    return int(input_ids.shape[0])


def raise_oom_above_batch(model, limit: int):
    """`--chaos oom-above-batch=N`: a training forward pass over more than `limit` samples
    raises the real `torch.OutOfMemoryError`, as CUDA would. Returns the hook's handle."""
    import torch

    def hook(module, args, kwargs):
        count = samples_in(kwargs)
        if module.training and count > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected by --chaos: {count} samples > {limit})")

    return model.register_forward_pre_hook(hook, with_kwargs=True)
