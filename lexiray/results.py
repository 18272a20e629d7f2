"""What a trial reports, what the leaderboard makes of it, and the one table of metrics.

- `TrialReport`: one result of a trial as typed fields. The worker builds it
  (`hf_trainer.ThroughputMeter`, `hf_trainer.ReportOnSave`, `oom.OomLadder`, `trial`) and
  hands Tune its flat `to_result()` dict, whose keys are the field names (`task_losses`
  flattened to `eval_loss/<task>`, `extra` — HF's own log keys such as learning_rate,
  epoch, grad_norm — merged in): the keys stored experiments and Tune's scheduler (ASHA
  reads `step` and the tuned metric) know. `from_result` reads such a dict back.
- `LeaderboardRow`: one trial on the leaderboard: its best and last report and what the
  report works out per trial (status, steps, its settings); `as_dict()` is the row of
  summary.json (and leaderboard.csv's columns).
- `METRICS`: every leaderboard value — where it comes from (the best report, the last
  report, the trial) and where it is shown (terminal, leaderboard CSV, the report's README
  table, TensorBoard's HParams view, TensorBoard curves). The views are derived from it:
  adding a metric is one entry here plus the `TrialReport` field it reads.

Plain Python: no Ray, torch or transformers (the Tune driver and every trial import it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

from lexiray.config import ACCUMULATION_KEY, BATCH_KEY

TASK_LOSS_PREFIX = "eval_loss/"  # eval_loss/<task>, from hf_trainer's per-task evaluation
SCORE_PREFIX = "score/"  # score/<task>/<figure>: task scores from generations (lexiray.scoring)
# Filled in by Tune for every result: never a trial's own (a replayed result must not carry the old ones).
TUNE_AUTO_KEYS = {"done", "training_iteration", "trial_id", "date", "timestamp", "time_this_iter_s", "time_total_s",
                  "pid", "hostname", "node_ip", "time_since_restore", "iterations_since_restore", "experiment_tag",
                  "should_checkpoint", "replayed"}


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


@dataclass(frozen=True)
class TrialReport:
    """One result of a trial. Every field is optional: a report carries what its writer
    knew (a skipped trial's only report has no step). Wire key = field name."""

    step: int | None = None
    eval_loss: float | None = None
    task_losses: dict[str, float] = field(default_factory=dict)  # on the wire: eval_loss/<task>
    train_loss: float | None = None  # the newest training-log loss
    # hf_trainer.ThroughputMeter: training steps only, from this attempt's start
    samples_per_second: float | None = None
    tokens_per_second: float | None = None
    steps_per_second: float | None = None
    phase_steps_per_second: float | None = None  # evaluations and saves included
    peak_memory_mb: float | None = None
    total_steps: int | None = None
    world_size: int | None = None
    resumed_from_step: int | None = None
    first_step_at: float | None = None  # wall clock
    projected_wall_s: float | None = None
    # with resources.price_per_hour only (lexiray.cost): the trial's seconds so far (every
    # attempt), their cost, and the cost of its full run at the rate so far
    paid_s: float | None = None
    cost_usd: float | None = None
    projected_cost_usd: float | None = None
    mfu: float | None = None
    startup_s: float | None = None
    reported_at: float | None = None  # wall clock
    # where it trained (trial.fit_attempt)
    precision: str | None = None
    node_id: str | None = None
    training_pid: int | None = None
    # the OOM back-off ladder (oom.OomLadder): rungs taken, the settings finally run with
    oom_retries: int | None = None
    ran_with: str | None = None
    ran_batch_size: int | None = None
    ran_grad_accum: int | None = None
    ran_gradient_checkpointing: bool | None = None
    ran_max_seq_length: int | None = None
    ran_lora_r: int | None = None
    ran_optim: str | None = None
    # the precision back-off ladder (precision.PrecisionLadder): rungs taken, the precision run with
    precision_retries: int | None = None
    ran_precision: str | None = None
    # a trial whose loss turned non-finite on a precision it could not leave: why, on one line
    diverged: str | None = None  # only its last report carries it
    eval_loss_at_start: float | None = None  # the untrained model's (eval_on_start)
    # a trial estimated over its GPU memory budget (trial.skip_over_budget): never trained
    skipped_memory: bool = False  # on the wire: 1, or absent
    estimated_memory_gb: float | None = None
    memory_budget_gb: float | None = None
    checkpoint_path: str | None = None  # Ray Train's, or storage.fill_checkpoint_path's
    # "<experiment>/<trial id>": a report replayed from the trial that trained this fingerprint
    # (lexiray.warm), in an earlier experiment or earlier in this run; never trained here
    reused_from: str | None = None
    time_total_s: float | None = None  # Tune's: the trial's seconds so far
    extra: dict[str, Any] = field(default_factory=dict)  # any other key (HF's logs, a custom tuned metric)

    def to_result(self) -> dict:
        """The flat dict Tune receives; unset fields are left out."""
        result = dict(self.extra)
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "extra" or value is None:
                continue
            if item.name == "task_losses":
                result.update({TASK_LOSS_PREFIX + task: loss for task, loss in value.items()})
            elif item.name == "skipped_memory":
                if value:
                    result["skipped_memory"] = 1
            else:
                result[item.name] = value
        return result

    @classmethod
    def from_result(cls, result: dict) -> TrialReport:
        """A result dict read back: missing keys stay unset, Tune's own keys are dropped."""
        values: dict[str, Any] = {}
        tasks, extra = {}, {}
        for key, value in result.items():
            if key in _PLAIN_FIELDS:
                values[key] = value
            elif key == "skipped_memory":
                values[key] = value == value and bool(value)  # NaN: a column other reports lacked
            elif key in ("diverged", "reused_from"):
                values[key] = value if isinstance(value, str) and value else None  # NaN: as above
            elif key.startswith(TASK_LOSS_PREFIX) and len(key) > len(TASK_LOSS_PREFIX):
                tasks[key[len(TASK_LOSS_PREFIX):]] = value
            elif key not in TUNE_AUTO_KEYS:
                extra[key] = value
        return cls(**values, task_losses=tasks, extra=extra)

    def get(self, key: str, default=None):
        """The value under a wire key (the tuned metric's name, e.g.), or `default`."""
        if key in _PLAIN_FIELDS:
            value = getattr(self, key)
        elif key.startswith(TASK_LOSS_PREFIX):
            value = self.task_losses.get(key[len(TASK_LOSS_PREFIX):])
        else:
            value = self.to_result().get(key)
        return default if value is None else value

    def merged(self, other: TrialReport) -> TrialReport:
        """This report with every key `other` sets set to its value."""
        return TrialReport.from_result({**self.to_result(), **other.to_result()})

    def with_value(self, key: str, value) -> TrialReport:
        """This report with the wire key `key` (a field, eval_loss/<task> or another) set."""
        return TrialReport.from_result({**self.to_result(), key: value})


_PLAIN_FIELDS = frozenset(item.name for item in fields(TrialReport)) - {"task_losses", "skipped_memory", "diverged",
                                                                        "reused_from",
                                                                        "extra"}


# --------------------------------------------------------------------------- the leaderboard row

BEST, LAST, TRIAL = "best", "last", "trial"  # where a row's value comes from
TERMINAL, CSV, REPORT, HPARAMS, CURVES = "terminal", "csv", "report", "hparams", "curves"  # where it is shown


@dataclass(frozen=True)
class LeaderboardRow:
    """One trial on the leaderboard: its best report by the tuned metric, its last report,
    and what the report works out for the trial. Values taken from the reports are read
    through `METRICS` (`row.value(name)`)."""

    trial_id: str
    status: str  # DONE, STOPPED (by the scheduler), DIVERGED, SKIPPED (over memory), ERROR, or Tune's own
    metric: str  # the tuned metric's name
    score: float | None  # its value in the best report
    steps: int
    total_steps: int | None
    final_eval_loss: float | None  # the last evaluation's
    # the trial's own settings, from the config it saved where it ran
    learning_rate: float | None = None
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    batch_size: int | None = None
    grad_accum: int | None = None
    best: TrialReport = field(default_factory=TrialReport)
    last: TrialReport = field(default_factory=TrialReport)
    sample: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # [{"step", metric}] of every scored report
    rank: int = 0
    # task scores from generations at the best checkpoint (lexiray.scoring): the mean of the
    # tasks' 0–1 scores, and every figure as "<task>/<figure>"; None / empty: not scored
    task_score: float | None = None
    score_figures: dict[str, float] = field(default_factory=dict)

    @property
    def stopped_early(self) -> bool:
        return self.status == "STOPPED"

    @property
    def task_losses(self) -> dict[str, float]:
        """The best report's eval_loss per task (the same evaluation as its eval_loss)."""
        return self.best.task_losses

    def value(self, name: str):
        """A column's value: the tuned metric, eval_loss/<task>, or a `METRICS` entry."""
        if name == self.metric:
            return self.score
        if name.startswith(TASK_LOSS_PREFIX):
            return self.task_losses.get(name[len(TASK_LOSS_PREFIX):])
        if name.startswith(SCORE_PREFIX):
            return self.score_figures.get(name[len(SCORE_PREFIX):])
        return METRIC[name].value(self)

    def as_dict(self, history: bool = False) -> dict:
        """The row as summary.json holds it: leaderboard.csv's values by column, and the
        sample and per-task losses; `history` adds the scored reports."""
        row = {"trial_id": self.trial_id, "status": self.status, self.metric: self.score}
        for metric in METRICS:
            if metric.per_task:
                row.update({TASK_LOSS_PREFIX + task: loss for task, loss in self.task_losses.items()})
            elif metric.per_figure:
                row.update({SCORE_PREFIX + name: value for name, value in self.score_figures.items()})
            elif metric.name not in ("rank", "trial_id", "status"):
                row[metric.name] = metric.value(self)
        row[self.metric] = self.score
        row.update(sample=self.sample, task_losses=self.task_losses, score_figures=self.score_figures)
        if history:
            row["history"] = self.history
        row["rank"] = self.rank
        return row

    @classmethod
    def from_dict(cls, row: dict, metric: str = "eval_loss") -> LeaderboardRow:
        """A row of summary.json read back."""
        reports = {BEST: {}, LAST: {}}
        for entry in METRICS:
            if entry.take in reports and not (entry.per_task or entry.per_figure) and entry.name in row:
                reports[entry.take][entry.reads or entry.name] = row[entry.name]
        own = {name: row.get(name) for name in ("learning_rate", "lora_r", "lora_alpha", "lora_dropout",
                                                 "batch_size", "grad_accum")}
        return cls(row["trial_id"], row["status"], metric, row.get(metric), row.get("steps") or 0,
                   row.get("total_steps"), row.get("final_eval_loss"), **own,
                   best=replace(TrialReport(**reports[BEST]), task_losses=dict(row.get("task_losses") or {})),
                   last=TrialReport(**reports[LAST]), sample=dict(row.get("sample") or {}),
                   history=list(row.get("history") or []), rank=row.get("rank") or 0,
                   task_score=row.get("task_score"), score_figures=dict(row.get("score_figures") or {}))


def as_rows(rows: list, metric: str = "eval_loss") -> list[LeaderboardRow]:
    """Rows as `LeaderboardRow`s, whether built now or read back from summary.json."""
    return [row if isinstance(row, LeaderboardRow) else LeaderboardRow.from_dict(row, metric) for row in rows]


# --------------------------------------------------------------------------- the table of metrics


def cell(value, fmt: str = "") -> str:
    """A value as a table shows it: "-" when there is none, numbers formatted."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt) if fmt and is_number(value) else str(value)


def _back_off_cell(retries_key: str, ran_key: str) -> Callable[..., str]:
    """A back-off ladder's cell: "-", or the rungs a trial took and what it finally ran with."""

    def render(row: LeaderboardRow, view: str = TERMINAL) -> str:
        retries, ran = row.value(retries_key), row.value(ran_key)
        if not retries:
            return "-"
        return f"{retries}: {ran}" if ran else str(retries)

    return render


oom_cell = _back_off_cell("oom_retries", "ran_with")  # lexiray.oom's rungs
precision_cell = _back_off_cell("precision_retries", "ran_precision")  # lexiray.precision's rungs


def _status_cell(row: LeaderboardRow, view: str) -> str:
    status = row.status.lower()
    if row.value("reused_from"):  # replayed, not trained: its steps cost nothing here
        status += " (reused)"
    estimate = row.value("estimated_memory_gb")
    if view == TERMINAL and estimate is not None:
        status += f" (est. {estimate:.1f} GB)"
    return status


@dataclass(frozen=True)
class Metric:
    """One leaderboard value: where it comes from and where it is shown."""

    name: str  # the leaderboard.csv column and summary.json key
    label: str = ""  # the terminal's and README's column header (default: name)
    fmt: str = ""  # number format in those tables
    take: str = TRIAL  # BEST / LAST: the field of that report; TRIAL: the row's own field
    reads: str = ""  # the TrialReport field it reads (default: name)
    shown: frozenset[str] = frozenset()  # TERMINAL, CSV, REPORT, HPARAMS, CURVES
    hparam: str = ""  # its HParams metric name (default: name)
    setting: str = ""  # a setting shown as an HParams hyperparameter: its search key
    render: Callable[[LeaderboardRow, str], str] | None = None  # (row, view) -> a cell that is not one number
    per_task: bool = False  # one column per task (eval_loss/<task>)
    priced: bool = False  # a USD figure: left out of the terminal and README without a price (`table`)
    per_figure: bool = False  # one column per scored figure (score/<task>/<figure>)

    def value(self, row: LeaderboardRow):
        if self.take == TRIAL:
            return getattr(row, self.name)
        value = getattr(row.best if self.take == BEST else row.last, self.reads or self.name)
        return None if value == "" else value

    def columns(self, tasks: list[str], figures: list[str] = ()) -> list[tuple[str, str, str,
                                                                             Callable[[LeaderboardRow], Any]]]:
        """(column, label, HParams name, value of a row) for each column it makes."""
        if self.per_figure:
            return [(SCORE_PREFIX + name, SCORE_PREFIX + name, SCORE_PREFIX + name,
                     lambda row, name=name: row.score_figures.get(name)) for name in figures]
        if self.per_task:
            return [(TASK_LOSS_PREFIX + task, TASK_LOSS_PREFIX + task, f"best_{TASK_LOSS_PREFIX}{task}",
                     lambda row, task=task: row.task_losses.get(task)) for task in tasks]
        return [(self.name, self.label or self.name, self.hparam or self.name, self.value)]


def _shown(*views: str) -> frozenset[str]:
    return frozenset(views)


# In leaderboard.csv's column order; the terminal and README tables keep the same order.
METRICS: tuple[Metric, ...] = (
    Metric("rank", "#", shown=_shown(CSV, TERMINAL, REPORT)),
    Metric("trial_id", "trial", shown=_shown(CSV, TERMINAL, REPORT)),
    Metric("status", shown=_shown(CSV, TERMINAL, REPORT), render=_status_cell),
    # (the tuned metric's column comes here: `table`)
    Metric("eval_loss", fmt=".4f", take=BEST, shown=_shown(CSV, REPORT, HPARAMS), hparam="best_eval_loss"),
    Metric("task_losses", fmt=".4f", take=BEST, shown=_shown(CSV, REPORT, HPARAMS), per_task=True),
    # task scores from generations (lexiray.scoring): the top tune.score_top_k trials; "-" for the rest
    Metric("task_score", "task score", ".3f", shown=_shown(CSV, TERMINAL, REPORT, HPARAMS)),
    Metric("score_figures", fmt=".3f", shown=_shown(CSV, HPARAMS), per_figure=True),
    Metric("steps", shown=_shown(CSV, TERMINAL, REPORT, HPARAMS),
           render=lambda row, view: f"{row.steps}/{row.total_steps or '?'}"),
    Metric("total_steps", shown=_shown(CSV)),
    Metric("stopped_early", shown=_shown(CSV, HPARAMS)),
    Metric("final_eval_loss", "final eval_loss", ".4f", shown=_shown(CSV, REPORT, HPARAMS)),
    Metric("learning_rate", "lr", ".2e", shown=_shown(CSV, TERMINAL, REPORT), setting="training.learning_rate"),
    Metric("lora_r", "r", shown=_shown(CSV, TERMINAL, REPORT), setting="lora.r"),
    Metric("lora_alpha", "alpha", shown=_shown(CSV, TERMINAL, REPORT), setting="lora.alpha"),
    Metric("lora_dropout", setting="lora.dropout"),
    Metric("batch_size", "batch×accum", shown=_shown(CSV, TERMINAL, REPORT), setting=BATCH_KEY,
           render=lambda row, view: f"{cell(row.batch_size)}×{cell(row.grad_accum)}"),
    Metric("grad_accum", shown=_shown(CSV), setting=ACCUMULATION_KEY),
    Metric("oom_retries", "OOM", take=LAST, shown=_shown(CSV, TERMINAL), render=oom_cell),
    Metric("ran_with", take=LAST, shown=_shown(CSV)),
    Metric("precision_retries", "NaN", take=LAST, shown=_shown(CSV, TERMINAL), render=precision_cell),
    Metric("ran_precision", take=LAST, shown=_shown(CSV)),
    Metric("diverged", take=LAST, shown=_shown(CSV)),  # why, for a DIVERGED trial
    Metric("samples_per_second", "samples/s", ".1f", take=LAST, shown=_shown(CSV, TERMINAL, REPORT, HPARAMS, CURVES)),
    Metric("tokens_per_second", "tokens/s", ".0f", take=LAST, shown=_shown(CSV, TERMINAL, REPORT, CURVES)),
    Metric("peak_memory_mb", "peak MB", ".0f", take=LAST, shown=_shown(CSV, TERMINAL, REPORT, HPARAMS, CURVES)),
    Metric("estimated_memory_gb", take=LAST, shown=_shown(CSV)),
    Metric("eval_loss_at_start", take=LAST),
    Metric("wall_time_s", "wall s", ".0f", take=LAST, reads="time_total_s", shown=_shown(CSV, TERMINAL)),
    # lexiray.cost: the trial's cost so far (its whole cost once it ended) and of its full run
    Metric("cost_usd", "$", ".4f", take=LAST, shown=_shown(CSV, TERMINAL, REPORT, HPARAMS), priced=True),
    Metric("projected_wall_s", "proj. wall s", ".0f", take=LAST, shown=_shown(CSV, REPORT)),
    Metric("projected_cost_usd", "proj. $", ".4f", take=LAST, shown=_shown(CSV, REPORT), priced=True),
    Metric("precision", take=LAST),  # the worker's dtype: `export --merge` loads the base in it
    Metric("best_checkpoint", take=BEST, reads="checkpoint_path", shown=_shown(CSV)),
    Metric("reused_from", take=LAST, shown=_shown(CSV)),  # the status cell says "(reused)" elsewhere
)
METRIC = {metric.name: metric for metric in METRICS}

# The per-log keys hf_trainer.ThroughputMeter adds for TensorBoard's curves.
CURVE_KEYS = tuple(metric.reads or metric.name for metric in METRICS if CURVES in metric.shown)
# Settings shown as HParams hyperparameters, with the search keys they stand for.
HPARAM_COLUMNS = {metric.name: metric.setting for metric in METRICS if metric.setting}


def table(view: str, metric: str, tasks: list[str],
          figures: list[str] = (), priced: bool = True) -> list[tuple[str, Callable[[LeaderboardRow], Any]]]:
    """A view's columns: (header, value of a row); `figures`: the scored "<task>/<figure>"
    names (score/<task>/<figure> columns). CSV: the column name and the raw value;
    TERMINAL and REPORT: the label and the cell text; HPARAMS: the metric's name and value.
    The tuned metric follows the status in CSV, TERMINAL and REPORT (its own entry, if it
    has one, moves there). `priced=False` (no trial has a cost: no price was set) leaves the
    USD columns out of TERMINAL and REPORT; CSV keeps its fixed columns (empty)."""
    columns = []
    tuned = view in (CSV, TERMINAL, REPORT)
    for entry in METRICS:
        if view not in entry.shown or (tuned and entry.name == metric):
            continue
        if entry.priced and not priced and view in (TERMINAL, REPORT):
            continue
        for column, label, hparam, value in entry.columns(tasks, figures):
            if view == CSV:
                columns.append((column, value))
            elif view == HPARAMS:
                columns.append((hparam, value))
            elif entry.render is not None:
                columns.append((label, lambda row, entry=entry: entry.render(row, view)))
            else:
                columns.append((label, lambda row, value=value, fmt=entry.fmt: cell(value(row), fmt)))
        if tuned and entry.name == "status":
            columns.append((metric, (lambda row: row.score) if view == CSV else (lambda row: cell(row.score, ".4f"))))
    return columns
