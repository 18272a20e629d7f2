"""Results of a tuning experiment -> leaderboard, report folder (plots + README),
TensorBoard HParams sessions, summary, best-adapter export (optionally merged).

Reads what the experiment wrote (Tune's trial results, each trial's resolved config saved
where it ran) through `lexiray.storage`; never re-runs or re-derives anything, so it works
on a running experiment too (its trials show as RUNNING).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from lexiray import plots, scoring, storage
from lexiray.config import ExperimentConfig
from lexiray.cost import money, planned_trials
from lexiray.errors import LexirayError
from lexiray.results import (CSV, HPARAM_COLUMNS, HPARAMS, REPORT, TERMINAL, LeaderboardRow, TrialReport, as_rows,
                             cell, is_number, table)
from lexiray.space import describe_sample
from lexiray.storage import ExperimentLayout, TrainRunLayout, TuningRun

# leaderboard.csv's fixed columns (the tuned metric and eval_loss/<task> join them): lexiray.results.METRICS
LEADERBOARD_COLUMNS = [column for column, _ in table(CSV, "eval_loss", [])]


@dataclass
class TrialRecord:
    """One trial as the experiment recorded it."""

    trial_id: str
    tune_status: str  # Tune's: TERMINATED, ERROR, RUNNING, PENDING, ...
    reports: list[dict] = field(default_factory=list)  # every result, in order
    config: ExperimentConfig | None = None  # the resolved config saved where it ran
    sample: dict = field(default_factory=dict)


def collect_trials(layout: ExperimentLayout) -> list[TrialRecord]:
    """Every trial from Tune's experiment state, its results and its saved config."""
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(layout.root)
    except ValueError:  # Tune saves its first snapshot a few seconds into a run
        raise LexirayError(f"{layout.root}: no Tune experiment state yet (experiment_state-*.json); "
                           "run the report again once the first trials have started") from None
    records = []
    for trial in analysis.trials:
        frame = analysis.trial_dataframes.get(trial.trial_id)
        reports = frame.to_dict("records") if frame is not None and len(frame) else []
        for report in reports:
            storage.fill_checkpoint_path(report, trial.path)
        records.append(TrialRecord(trial.trial_id, trial.status, reports,
                                   storage.read_trial_config(layout, trial.trial_id), dict(trial.config)))
    return records


def leaderboard_row(record: TrialRecord, metric: str, mode: str, max_t: int | None) -> LeaderboardRow:
    """A trial's row: its best report by `metric`, how far it got, and its settings."""
    reports = [TrialReport.from_result(report) for report in record.reports]
    scored = [r for r in reports if is_number(r.get(metric))]
    best = (min if mode == "min" else max)(scored, key=lambda r: r.get(metric)) if scored else TrialReport()
    last = reports[-1] if reports else TrialReport()
    # The untrained model's loss rides on every report of the attempt that evaluated it; a
    # trial restarted from a checkpoint reports without it after the restart.
    at_start = next((r.eval_loss_at_start for r in reports if is_number(r.eval_loss_at_start)), None)
    last = replace(last, eval_loss_at_start=at_start)
    # The cost: the newest report that carries one (a diverged trial's last report has none),
    # and never less than an earlier attempt's (lexiray.cost)
    costs = [r.cost_usd for r in reports if is_number(r.cost_usd)]
    projected = [r.projected_cost_usd for r in reports if is_number(r.projected_cost_usd)]
    if costs:
        last = replace(last, cost_usd=max(costs), projected_cost_usd=projected[-1] if projected else None)
    total = max_t if last.total_steps is None else last.total_steps
    total = int(total) if is_number(total) else None
    steps = int(max((r.step or 0) for r in reports)) if reports else 0
    if record.tune_status == "ERROR":
        status = "ERROR"
    elif last.skipped_memory:
        status = "SKIPPED"  # estimated over its GPU's memory: never trained
    elif any(r.diverged for r in reports):
        status = "DIVERGED"  # its loss turned non-finite on a precision it could not leave (lexiray.precision)
    elif total and steps >= total:
        status = "DONE"
    elif record.tune_status == "TERMINATED":
        status = "STOPPED"  # ended before max_t: the scheduler stopped it
    else:
        status = record.tune_status
    config = record.config
    evaluated = [r for r in reports if is_number(r.eval_loss)]
    # The best checkpoint's loss on each task (the same evaluation as its eval_loss).
    best = replace(best, task_losses={task: loss for task, loss in best.task_losses.items() if is_number(loss)})
    return LeaderboardRow(
        trial_id=record.trial_id,
        status=status,
        metric=metric,
        score=best.get(metric),
        steps=steps,
        total_steps=total,
        final_eval_loss=evaluated[-1].eval_loss if evaluated else None,
        learning_rate=config.training.learning_rate if config else record.sample.get("training.learning_rate"),
        lora_r=config.lora.r if config else None,
        lora_alpha=config.lora.alpha if config else None,
        lora_dropout=config.lora.dropout if config else None,
        batch_size=config.training.per_device_train_batch_size if config else None,
        grad_accum=config.training.gradient_accumulation_steps if config else None,
        best=best,
        last=last,  # out-of-memory back-off, throughput, memory, precision: lexiray.results.METRICS
        sample=record.sample,
        history=[{"step": r.step, metric: r.get(metric)} for r in scored],
    )


def leaderboard_rows(records: list[TrialRecord], metric: str = "eval_loss", mode: str = "min",
                     max_t: int | None = None) -> list[LeaderboardRow]:
    """Rows ranked by the trial's best `metric` (lowest first for mode=min, highest first
    for mode=max); trials without a score next, diverged trials last (by their last finite
    score): a diverged trial is never the best."""
    rows = [leaderboard_row(record, metric, mode, max_t) for record in records]
    sign = 1 if mode == "min" else -1
    rows.sort(key=lambda row: (row.status == "DIVERGED", row.score is None,
                               sign * row.score if row.score is not None else 0))
    return [replace(row, rank=rank) for rank, row in enumerate(rows, start=1)]


def task_names(rows: list[LeaderboardRow]) -> list[str]:
    """The tasks any trial has a per-task eval_loss for, sorted."""
    return sorted({task for row in rows for task in row.task_losses})


def figure_names(rows: list[LeaderboardRow]) -> list[str]:
    """The scored "<task>/<figure>" names any trial has (lexiray.scoring), sorted."""
    return sorted({name for row in rows for name in row.score_figures})


def leaderboard_columns(rows: list[LeaderboardRow], metric: str) -> list[str]:
    """leaderboard.csv's columns: the tuned metric after the status, then eval_loss and
    the per-task losses beside it, the task score and its figures."""
    return [column for column, _ in table(CSV, metric, task_names(rows), figure_names(rows))]


def leaderboard_csv(rows: list[LeaderboardRow], metric: str) -> str:
    columns = table(CSV, metric, task_names(rows), figure_names(rows))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([column for column, _ in columns])
    writer.writerows([[value(row) for _, value in columns] for row in rows])
    return text.getvalue()


# --------------------------------------------------------------------------- task scores


def score_targets(layout: ExperimentLayout, rows: list[LeaderboardRow], top_k: int,
                  trial_id: str | None = None) -> list[scoring.ScoreTarget]:
    """The base and the trials to score: `trial_id`, or the leaderboard's first `top_k`
    trials that kept a checkpoint and did not diverge. The base at the precision of the
    first (the best trial's: on a GPU, what it trained in), on its node."""
    if trial_id:
        chosen = [row for row in rows if row.trial_id == trial_id]
        if not chosen:
            known = ", ".join(row.trial_id for row in rows) or "none"
            raise LexirayError(f"no trial {trial_id!r} to score (trials: {known})")
        if not chosen[0].best.checkpoint_path:
            raise LexirayError(f"trial {trial_id} kept no checkpoint to score")
    else:
        # one per checkpoint: a reused trial shares its twin's (lexiray.warm), scored once (apply_scores)
        chosen, seen = [], set()
        for row in rows:
            location = best_checkpoint_location(layout, row)
            if len(chosen) == top_k:
                break
            # a reused trial's checkpoint is in another experiment, which may have pruned or lost it
            if row.status != "DIVERGED" and location and location not in seen and storage.exists(location):
                chosen.append(row)
                seen.add(location)
    targets = [scoring.ScoreTarget(row.trial_id, row.best.checkpoint_path, row.last.precision or "fp32",
                                   row.last.node_id or row.best.node_id) for row in chosen]
    if not targets:
        return []
    return [scoring.ScoreTarget(scoring.BASE, None, targets[0].precision, targets[0].node_id), *targets]


def best_checkpoint_location(layout: ExperimentLayout, row: LeaderboardRow) -> str | None:
    """Where the row's best checkpoint is (a reused trial's: in its twin's experiment)."""
    return layout.checkpoint_location(row.best.checkpoint_path) if row.best.checkpoint_path else None


def score_experiment(layout: ExperimentLayout, console, trial_id: str | None = None, eval_data=None,
                     tuning_seconds: float | None = None, records: list[TrialRecord] | None = None,
                     on_ray: bool | None = None, top_k: int | None = None,
                     config: ExperimentConfig | None = None) -> scoring.ScoreRun | None:
    """Generate and score answers on the eval rows for the base and the best
    tune.score_top_k trials (or `trial_id`), into scores.json; a rescore keeps the other
    trials' scores already there. None when there is nothing to score. `records` and
    `config`, where the caller holds them, spare reading them again."""
    config = config or storage.read_experiment_config(layout)
    top_k = config.tune.score_top_k if top_k is None else top_k
    if not top_k and not trial_id:
        return None
    rows = leaderboard_rows(records if records is not None else collect_trials(layout), config.tune.metric,
                            config.tune.mode)
    targets = score_targets(layout, rows, top_k or 1, trial_id)
    if not targets:
        console.print("task scores: no trial kept a checkpoint to score")
        return None
    previous = scoring.read_scores(layout)
    if tuning_seconds is None and previous is not None:
        tuning_seconds = previous.tuning_seconds
    run = scoring.run_scoring(layout, config, targets, eval_data, tuning_seconds, on_ray=on_ray,
                              progress=lambda line: console.print(line, markup=False),
                              keep=previous if trial_id else None)
    return run


def apply_scores(layout: ExperimentLayout, rows: list[LeaderboardRow],
                 run: scoring.ScoreRun | None) -> list[LeaderboardRow]:
    """The rows with their trial's task score and figures (rows not scored keep None); a row
    whose best checkpoint is a scored trial's (a reused twin: lexiray.warm) shares its scores."""
    if run is None:
        return rows
    scored = {model.name: model for model in run.trials}
    locations = {row.trial_id: best_checkpoint_location(layout, row) for row in rows}
    by_checkpoint = {locations[row.trial_id]: scored[row.trial_id] for row in rows
                     if row.trial_id in scored and locations[row.trial_id]}
    result = []
    for row in rows:
        model = scored.get(row.trial_id) or by_checkpoint.get(locations[row.trial_id])
        result.append(row if model is None else replace(row, task_score=model.task_score,
                                                        score_figures=scoring.figure_columns(model.per_task)))
    return result


def select_best(rows: list[LeaderboardRow], select_by: str) -> tuple[LeaderboardRow | None, dict]:
    """The trial `best/` and `lexiray export` take, and the choice explained: the best by the
    tuned metric (the leaderboard's first that did not diverge) and the best by task score
    (the highest among the scored trials that did not diverge). select_by=task_score with no
    scored trial falls back to the tuned metric, and says so."""
    by_loss = next((row for row in rows if row.status != "DIVERGED"), None)
    scored = [row for row in rows if row.status != "DIVERGED" and is_number(row.task_score)]
    by_score = max(scored, key=lambda row: row.task_score) if scored else None
    chosen = by_score if select_by == "task_score" and by_score is not None else by_loss
    selection = {
        "select_by": select_by,
        "selected": chosen.trial_id if chosen else None,
        "best_by_metric": by_loss.trial_id if by_loss else None,
        "best_by_task_score": by_score.trial_id if by_score else None,
        "disagree": bool(by_loss and by_score and by_loss.trial_id != by_score.trial_id),
        "fallback": select_by == "task_score" and by_score is None,
    }
    return chosen, selection


def selection_note(selection: dict, metric: str) -> str:
    """One line on which trial was taken and whether the two rankings agree."""
    if not selection.get("best_by_task_score"):
        if selection.get("fallback"):
            return (f"select_by task_score: no trial has a task score; took the best by {metric}, "
                    f"{selection['best_by_metric']}")
        return ""
    if not selection["disagree"]:
        return f"the best by {metric} and by task score agree: trial {selection['selected']}"
    return (f"the best by {metric} (trial {selection['best_by_metric']}) and by task score (trial "
            f"{selection['best_by_task_score']}) differ; select_by {selection['select_by']} took trial "
            f"{selection['selected']}")


def score_summary(run: scoring.ScoreRun) -> dict:
    """summary.json's task_scores: every scored model's task score and figures, the timing."""
    return {
        "eval_rows": run.eval_rows,
        "rows_per_task": run.rows_per_task,
        "where": run.where,
        "scoring_wall_time_s": run.seconds,
        "tuning_wall_time_s": run.tuning_seconds,
        "share_of_tuning": run.seconds / run.tuning_seconds if run.tuning_seconds else None,
        "line": scoring.score_line(run),
        "models": {model.name: {"task_score": model.task_score, "per_task": model.per_task}
                   for model in run.models},
    }


def score_markdown(run: scoring.ScoreRun) -> str:
    """The per-task table (each task's 0–1 score, base and scored trials) and each task's
    figures, as Markdown."""
    table_rows = scoring.score_table(run)
    lines = ["| " + " | ".join(table_rows[0]) + " |", "|" + "---|" * len(table_rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows[1:]]
    lines += ["", "Each task's 0–1 score: " + "; ".join(f"{task}: {how}" for task, how in
                                                         scoring.TASK_SCORE_FIGURE.items()) + ". The task score is "
              "their mean. Every figure:", ""]
    figures = sorted({f"{task}/{name}" for m in run.models for task, values in m.per_task.items() for name in values
                      if name != "score"})
    lines += ["| figure | " + " | ".join(m.name for m in run.models) + " |", "|" + "---|" * (len(run.models) + 1)]
    for figure in figures:
        task, name = figure.split("/", 1)
        lines.append(f"| {figure} | " + " | ".join(cell((m.per_task.get(task) or {}).get(name), ".3f")
                                                   for m in run.models) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- report folder


def searched_settings(config: ExperimentConfig) -> list[plots.Setting]:
    """The sampled settings of the search block (derived ones follow them), log-scaled
    where the search drew them log-uniformly or lists values two decades apart or more
    (a grid of learning rates)."""
    settings = []
    for dimension in config.search_space.dimensions:
        kind, args = dimension.kind, dimension.args
        numbers = [value for value in args if is_number(value)]
        wide = dimension.is_finite and len(numbers) == len(args) and min(numbers) > 0 \
            and max(numbers) / min(numbers) >= 100
        settings.append(plots.Setting(dimension.key, dimension.key, log=kind == "loguniform" or wide))
    return settings


def is_priced(rows: list[LeaderboardRow]) -> bool:
    """Some trial has a cost (resources.price_per_hour was set): the `$` columns are shown."""
    return any(is_number(row.value("cost_usd")) for row in rows)


def leaderboard_markdown(rows: list[LeaderboardRow], metric: str) -> str:
    """The leaderboard as a Markdown table: leaderboard.csv's rows, numbers rounded."""
    columns = table(REPORT, metric, task_names(rows), priced=is_priced(rows))
    lines = ["| " + " | ".join(label for label, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(render(row) for _, render in columns) + " |")
    return "\n".join(lines)


def write_report_folder(layout: ExperimentLayout, rows: list[LeaderboardRow], summary: dict, config: ExperimentConfig,
                        max_t: int | None, scores: scoring.ScoreRun | None = None) -> dict[str, str]:
    """`report/`: the PNG plots and README.md embedding them under the leaderboard.
    Returns {plot file name: what it shows}."""
    metric = summary["metric"]
    figures: dict[str, tuple[bytes, str]] = {
        f"{metric}.png": (plots.curves(rows, metric, max_t, layout.name),
                          f"{metric} against the training step, every trial on one axis; trials stopped early "
                          "are dashed and end in an x"),
    }
    settings = searched_settings(config)
    if settings:
        figures[f"{metric}_by_setting.png"] = (
            plots.metric_by_setting(rows, settings, metric),
            f"each trial's best {metric} against each searched setting (log axis for log-uniform ones)")
    priced = is_priced(rows)
    figures["quality_speed.png"] = (
        plots.quality_speed(rows, metric),
        f"best {metric} against training samples/s, against peak memory"
        + (" and against the trial's cost" if priced else "") + "; the Pareto front's trials named")
    tasks = task_names(rows)
    if tasks:
        figures["task_losses.png"] = (plots.task_losses(rows, tasks),
                                      "per-task eval_loss of the top trials, at each one's best checkpoint")
    if scores is not None and scores.models:
        scored_tasks = sorted({task for model in scores.models for task in model.per_task})
        figures["task_scores.png"] = (
            plots.task_scores(scored_tasks, [(model.name, {task: values.get("score") for task, values
                                                           in model.per_task.items()}) for model in scores.models]),
            "per-task scores (0–1) from greedy generations on the eval rows: the scored trials against the base")
    for name, (image, _) in figures.items():
        storage.write_bytes(layout.report_file(name), image)
    best = summary.get("best") or {}
    spent = cost_line(summary)
    lines = [f"# {layout.name}", "",
             f"{summary['trials']} trials ({summary['stopped_early']} stopped early, {summary['errored']} errored, "
             f"{summary.get('reused', 0)} reused), "
             f"{summary['total_steps_trained']} training steps; ranked by {metric} ({summary['mode']})."
             + (f" Best: trial {best['trial_id']}, {metric} {best[metric]:.4f}." if is_number(best.get(metric))
                else ""), "", *([spent, ""] if spent else []),
             "## Leaderboard", "", leaderboard_markdown(rows, metric), "",
             f"TensorBoard (curves and the HParams dashboard): `tensorboard --logdir {layout.tensorboard_dir}`", ""]
    if scores is not None and scores.models:
        note = selection_note(summary.get("selection") or {}, metric)
        lines += ["## Task scores", "", scoring.score_line(scores), "", score_markdown(scores), "",
                  f"`best/` holds the trial chosen by tune.select_by={summary.get('selection', {}).get('select_by')}"
                  + (f": {note}." if note else "."), ""]
    for name, (_, caption) in figures.items():
        lines += [f"## {caption[0].upper()}{caption[1:]}", "", f"![{caption}]({name})", ""]
    storage.write_text(layout.report_file("README.md"), "\n".join(lines))
    return {name: caption for name, (_, caption) in figures.items()}


# --------------------------------------------------------------------------- TensorBoard HParams

# Leaderboard values shown as hyperparameters (HPARAM_COLUMNS, with the search keys they
# stand for) and as metrics: lexiray.results.METRICS.
HPARAM_METRICS = [name for name, _ in table(HPARAMS, "eval_loss", [])]


def session_hparams(row: LeaderboardRow) -> dict:
    """A trial's settings for its HParams session: the usual ones from its config, every
    other sampled setting under its search key, and batch × accumulation as one value."""
    values = {name: row.value(name) for name in HPARAM_COLUMNS if row.value(name) is not None}
    covered = set(HPARAM_COLUMNS.values())
    values.update({key: value for key, value in row.sample.items()
                   if key not in covered and isinstance(value, (int, float, str, bool))})
    if row.batch_size is not None:
        values["batch_x_accum"] = f"{row.batch_size}x{row.grad_accum}"
    return values


def session_metrics(row: LeaderboardRow) -> dict[str, float]:
    """A trial's summary numbers, logged as `hparams/<name>` scalars in its run."""
    metrics = {name: value(row) for name, value in table(HPARAMS, row.metric, list(row.task_losses),
                                                         list(row.score_figures))}
    metrics = {name: float(value) if isinstance(value, bool) else value for name, value in metrics.items()}
    return {f"hparams/{name}": float(value) for name, value in metrics.items() if is_number(value)}


def _hparam_domain(values: list):
    from tensorboard.plugins.hparams import summary_v2 as hp

    if all(isinstance(v, float) for v in values) and min(values) < max(values):
        return hp.RealInterval(float(min(values)), float(max(values)))
    kinds = {type(v) for v in values}
    if len(kinds) == 1:
        return hp.Discrete(sorted(set(values)))
    return None  # mixed types: TensorBoard shows the values without a domain


def write_hparams(layout: ExperimentLayout, rows: list[LeaderboardRow] | list[dict]) -> int:
    """One HParams session per trial, in the trial's own TensorBoard run (beside its HF
    curves, so the dashboard links the two). Written from the final records by every
    report into one fixed file per trial, so a trial that was stopped and resumed is still
    one session, and reports can run again (idempotent). Each file also carries the
    experiment's list of hparams and metrics (identical in every run). Returns the count."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp
    from tensorboard.summary.writer.record_writer import RecordWriter

    sessions = [(row, session_hparams(row), session_metrics(row)) for row in as_rows(rows)]
    names = sorted({name for _, values, _ in sessions for name in values})
    hparams = {name: hp.HParam(name, _hparam_domain([v[name] for _, v, _ in sessions if name in v]))
               for name in names}
    metric_tags = sorted({tag for _, _, metrics in sessions for tag in metrics})
    experiment = hp.hparams_config_pb(list(hparams.values()), [hp.Metric(tag) for tag in metric_tags])
    now = time.time()
    for row, values, metrics in sessions:
        session = hp.hparams_pb({hparams[name]: value for name, value in values.items()},
                                trial_id=row.trial_id, start_time_secs=now)
        events = [event_pb2.Event(wall_time=now, file_version="brain.Event:2"),
                  event_pb2.Event(wall_time=now, summary=experiment),
                  event_pb2.Event(wall_time=now, summary=session)]
        for tag, value in metrics.items():
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
            events.append(event_pb2.Event(wall_time=now, step=int(row.steps), summary=summary))
        data = io.BytesIO()
        writer = RecordWriter(data)
        for event in events:
            writer.write(event.SerializeToString())
        location = layout.trial_hparams_file(row.trial_id, describe_sample(row.sample))
        storage.write_bytes(location, data.getvalue())
    return len(sessions)


def run_cost(rows: list[LeaderboardRow], config: ExperimentConfig) -> dict:
    """summary.json's cost of the run (lexiray.cost): what its trials cost (`cost_usd`), and the
    full run's projection (`projected_cost_usd`): every planned trial trained to the end, at the
    mean projected cost of a full trial (ASHA stops most trials early: an upper figure).
    None without a price."""
    costs = [row.value("cost_usd") for row in rows if is_number(row.value("cost_usd"))]
    if not costs:
        return {"cost_usd": None, "projected_cost_usd": None, "price_per_hour": config.resources.price_per_hour}
    full = [row.value("cost_usd") if row.status == "DONE" else row.value("projected_cost_usd") for row in rows
            if not row.value("reused_from")]  # a reused trial's cost (its wait) is not a trained trial's
    full = [value for value in full if is_number(value)]
    planned = max(len(rows), planned_trials(config))
    return {"cost_usd": sum(costs), "projected_cost_usd": sum(full) / len(full) * planned if full else None,
            "price_per_hour": config.resources.price_per_hour}


def cost_line(summary: dict) -> str:
    """The run's cost in one line (and what the budget did); "" without a price."""
    if summary.get("cost_usd") is None:
        return ""
    line = f"cost: {money(summary['cost_usd'])} spent"
    if summary.get("projected_cost_usd") is not None:
        line += (f"; the full run (every planned trial to the end) projected at "
                 f"{money(summary['projected_cost_usd'])}")
    budget = summary.get("budget")
    if budget:
        if budget.get("stopped_new_trials"):
            line += (f"; budget {money(budget['budget_usd'])} reached at {money(budget['spent_at_stop_usd'])} spent "
                     f"+ {money(budget['committed_at_stop_usd'])} committed: stopped starting trials after "
                     f"{budget['trials_started']} of {budget['trials_planned']}")
        else:
            line += f"; budget {money(budget['budget_usd'])}: every planned trial started"
    return line


def build_report(layout: ExperimentLayout, max_t: int | None = None, wall_time_s: float | None = None,
                 budget: dict | None = None, records: list[TrialRecord] | None = None) -> dict:
    """leaderboard.csv, summary.json, every trial's HParams session in TensorBoard and the
    `report/` folder (plots + README.md), written into the experiment (a local folder or
    a URI). Works on a running experiment: it reads what the trials reported so far.
    Task scores (scores.json) join the rows; tune.select_by picks `best`."""
    config = storage.read_experiment_config(layout)
    metric, mode = config.tune.metric, config.tune.mode
    if budget is None:  # a later `lexiray report`: what the run's own report said of the budget stays
        budget = (read_summary(layout) or {}).get("budget")
    scores = scoring.read_scores(layout)
    records = records if records is not None else collect_trials(layout)
    rows = apply_scores(layout, leaderboard_rows(records, metric, mode, max_t), scores)
    chosen, selection = select_best(rows, config.tune.select_by)
    max_t = max_t or max((row.total_steps or 0 for row in rows), default=0) or None
    storage.write_text(layout.leaderboard_file, leaderboard_csv(rows, metric))
    summary = {
        "experiment": layout.root,
        "metric": metric,
        "mode": mode,
        "trials": len(rows),
        "stopped_early": sum(r.stopped_early for r in rows),
        "errored": sum(r.status == "ERROR" for r in rows),
        "skipped_memory": sum(r.status == "SKIPPED" for r in rows),
        "diverged": sum(r.status == "DIVERGED" for r in rows),
        # reused trials replayed a twin's steps (lexiray.warm): none of them trained here
        "total_steps_trained": sum(r.steps for r in rows if not r.value("reused_from")),
        "reused": sum(bool(r.value("reused_from")) for r in rows),
        "steps_reused": sum(r.steps for r in rows if r.value("reused_from")),
        "wall_time_s": wall_time_s,
        "tasks": task_names(rows),
        "best": chosen.as_dict() if chosen else None,  # by tune.select_by (`selection`)
        "selection": selection,
        "task_scores": score_summary(scores) if scores is not None else None,
        "leaderboard": [r.as_dict() for r in rows],
        "tensorboard": layout.tensorboard_dir,
        "eval_loss_at_start": next((row.last.eval_loss_at_start for row in rows
                                    if is_number(row.last.eval_loss_at_start)), None),
        "hparams_sessions": write_hparams(layout, rows),
        **run_cost(rows, config),
        "budget": budget,
    }
    if config.report.plots and rows:
        summary["report"] = layout.report_dir
        summary["plots"] = write_report_folder(layout, rows, summary, config, max_t, scores)
        summary["plot"] = layout.plot_file(metric)
    storage.write_text(layout.summary_file, json.dumps(summary, indent=2, default=str))
    return summary


def sync_best_adapter(layout: ExperimentLayout, summary: dict, console) -> None:
    """After a rebuilt report (`lexiray report`, `lexiray score`): `best/` follows the trial
    the summary now selects. A rescore can change tune.select_by=task_score's choice; best/
    is exported again then (only where a run exported one), and summary.json says where."""
    exported = storage.read_text(storage.join(layout.best_dir, "metrics.json"))
    best = summary.get("best") or {}
    if exported is None or not best.get("best_checkpoint"):
        return
    held = (json.loads(exported).get("best") or {}).get("trial_id")
    if held != best["trial_id"]:
        export_trial(layout)
        console.print(f"best/ now holds trial {best['trial_id']} (tune.select_by="
                      f"{(summary.get('selection') or {}).get('select_by', 'eval_loss')}), not trial {held}")
    summary["best_adapter"] = layout.best_dir
    storage.write_text(layout.summary_file, json.dumps(summary, indent=2, default=str))


def read_summary(layout: ExperimentLayout) -> dict | None:
    text = storage.read_text(layout.summary_file)
    return None if text is None else json.loads(text)


def print_leaderboard(summary: dict, console, top: int = 20) -> None:
    """The leaderboard (summary.json's rows, or `LeaderboardRow`s) as a terminal table."""
    from rich.table import Table

    metric = summary["metric"]
    rows = as_rows(summary["leaderboard"][:top], metric)
    columns = table(TERMINAL, metric, [], priced=is_priced(rows))
    shown = Table(title=f"leaderboard — {summary['experiment']} ({metric}, {summary['mode']})")
    for label, _ in columns:
        shown.add_column(label, justify="left" if label in ("trial", "status") else "right")
    for row in rows:
        shown.add_row(*(render(row) for _, render in columns))
    console.print(shown)


def export_trial(layout: ExperimentLayout, destination: str | Path | None = None, trial_id: str | None = None,
                 merge: bool = False) -> str:
    """Export a trial's best checkpoint (default: the trial tune.select_by chose, summary.json's
    `best`) to `destination` (default: the experiment's `best/`, beside the leaderboard, local
    or at the URI): its adapter, tokenizer and config. With `merge`, `destination` is instead a standard HF
    model folder (the LoRA merged into the base) and the adapter goes to its `adapter/`."""
    summary = read_summary(layout) or build_report(layout)
    rows = summary["leaderboard"]
    # by default the trial tune.select_by chose (summary's best): by the tuned metric, the
    # leaderboard's first trial that did not diverge
    selected = trial_id or (summary.get("best") or {}).get("trial_id")
    row = next((r for r in rows if r["trial_id"] == selected), None) if selected else None
    if row is None:
        known = ", ".join(r["trial_id"] for r in rows) or "none"
        raise LexirayError(f"{layout.root}: no trial {trial_id!r} (trials: {known})" if trial_id is not None
                           else f"{layout.root}: no trials to export" if not rows
                           else f"{layout.root}: every trial diverged: pass --trial to export one anyway")
    if not row.get("best_checkpoint"):
        raise LexirayError(f"{layout.root}: trial {row['trial_id']} kept no checkpoint")
    config = storage.read_trial_config(layout, row["trial_id"])
    if config is None:
        raise LexirayError(f"{layout.root}: trial {row['trial_id']} has no saved config")
    destination = str(destination or layout.best_dir)
    if merge:
        export_merged(layout, row, config, destination, summary["metric"])
    else:
        _export_adapter(layout, row, config, destination, summary["metric"])
    return destination


def export_train_output(run: TrainRunLayout, destination: str | None, merge: bool = False) -> str:
    """`lexiray export DIR` where DIR is a `lexiray train --output` folder, whose adapter is
    already exported into DIR itself: copied to `destination` (a folder or URI), or with
    `merge` merged into its base there (the adapter in `destination/adapter`)."""
    config = storage.read_config(str(run.config_file))
    if config is None:
        raise LexirayError(f"{run.output}: no {run.config_file.name} beside the adapter")
    if destination is None:
        if not merge:
            raise LexirayError(f"{run.output} is a `lexiray train` output and holds its adapter already: give "
                               "--output to copy it elsewhere, or --merge -o DIR for a merged model")
        destination = str(run.output / "merged")
    if merge and storage.is_uri(destination):
        raise LexirayError("export --merge of a `lexiray train` output: give a local --output folder")
    # The adapter, tokenizer, config and metrics: the folder's files, not its ray/, data/, tensorboard/.
    files = [path for path in run.output.iterdir() if path.is_file()]
    if storage.is_uri(destination):
        with tempfile.TemporaryDirectory() as staging:
            for path in files:
                shutil.copy2(path, Path(staging) / path.name)
            storage.upload_folder(Path(staging), destination)
        return destination
    adapter_dir = Path(destination) / "adapter" if merge else Path(destination)
    adapter_dir.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy2(path, adapter_dir / path.name)
    if merge:
        from lexiray.model import merge_adapter

        # the dtype the worker trained in, as for a tuning trial
        final = json.loads(run.metrics_file.read_text()).get("final") or {}
        merge_adapter(str(adapter_dir), destination, config.model, final.get("precision") or "fp32")
    return destination


def _export_adapter(layout: ExperimentLayout, row: dict, config: ExperimentConfig, destination: str,
                    metric: str) -> None:
    try:
        storage.export_adapter(layout.checkpoint(row["best_checkpoint"]), destination, config,
                               final_metrics={k: v for k, v in row.items() if k not in ("sample", "task_losses")},
                               best_metrics={metric: row.get(metric), "eval_loss": row["eval_loss"],
                                             "trial_id": row["trial_id"]})
    except FileNotFoundError:  # pruned, or in a warm-start experiment deleted since
        raise LexirayError(f"trial {row['trial_id']}'s best checkpoint {row['best_checkpoint']} is gone: export "
                           "another with --trial") from None


def export_merged(layout: ExperimentLayout, row: dict, config: ExperimentConfig, destination: str,
                  metric: str) -> None:
    """`export --merge`: the adapter in `destination/adapter`, merged into the base in
    `destination` (safetensors, tokenizer) with a README.md saying what was merged how.
    A URI destination is assembled locally, then uploaded."""
    from lexiray.model import merge_adapter

    if storage.is_uri(destination):
        with tempfile.TemporaryDirectory() as staging:
            export_merged(layout, row, config, staging, metric)
            storage.upload_folder(Path(staging), destination)
        return
    adapter_dir = str(Path(destination) / "adapter")
    _export_adapter(layout, row, config, adapter_dir, metric)
    precision = row.get("precision") or "fp32"  # the dtype the trial's worker trained in
    merge_adapter(adapter_dir, destination, config.model, precision)
    storage.write_text(str(Path(destination) / "README.md"), merge_note(layout, row, config, precision, metric))


def merge_note(layout: ExperimentLayout, row: dict, config: ExperimentConfig, precision: str, metric: str) -> str:
    lines = [f"# {config.model.name} + LoRA of trial {row['trial_id']}", "",
             f"Experiment {layout.root}, trial {row['trial_id']}: best {metric} {cell(row.get(metric), '.4f')} "
             f"at checkpoint {row['best_checkpoint']}.", "",
             f"The LoRA adapter (r {row['lora_r']}, alpha {row['lora_alpha']}) is merged into the base model "
             f"`{config.model.name}` loaded at {precision}, the precision the trial trained in, and saved as "
             "safetensors: `AutoModelForCausalLM.from_pretrained(this folder)` loads it without peft.", ""]
    if config.model.quantization != "none":
        lines += [f"This was a QLoRA trial: the adapter trained on the {config.model.quantization} quantized base. "
                  f"It is merged into the base loaded unquantized at the compute dtype ({precision}), not into "
                  f"{config.model.quantization} weights (which would round the update away); outputs differ "
                  "slightly from the quantized model the adapter trained with.", ""]
    lines += ["The adapter alone (for `PeftModel.from_pretrained`) is in `adapter/`.", ""]
    return "\n".join(lines)


def finish_experiment(run: TuningRun, console) -> dict:
    """After `Tuner.fit`: task scores of the best trials (tune.score_top_k), leaderboard,
    summary, plot, best adapter export, closing lines."""
    layout, config = run.layout, run.config
    records = collect_trials(layout)
    scores = None
    if config.tune.score_top_k:
        try:
            scores = score_experiment(layout, console, eval_data=run.eval_data, tuning_seconds=run.wall_time_s,
                                      records=records, config=config)
        except Exception as error:  # noqa: BLE001 - the tuning's results must still be reported and exported
            console.print(f"task scores failed ({type(error).__name__}: {str(error).splitlines()[0][:200]}); the "
                          f"report goes on without them: `lexiray score {layout.root}` tries again", markup=False)
    summary = build_report(layout, max_t=run.max_t, wall_time_s=run.wall_time_s, budget=run.budget, records=records)
    print_leaderboard(summary, console, top=config.report.top)
    if scores is not None:
        print_scores(scores, summary, console)
    best = summary.get("best")
    skipped = f"{summary['skipped_memory']} skipped over the GPU memory budget, " if summary["skipped_memory"] else ""
    if summary.get("reused"):
        skipped += f"{summary['reused']} reused ({summary['steps_reused']} steps not trained again), "
    console.print(f"{summary['trials']} trials, {summary['stopped_early']} stopped early by "
                  f"{config.tune.scheduler.upper()}, {summary['diverged']} diverged, {summary['errored']} errored, "
                  f"{skipped}"
                  f"{summary['total_steps_trained']} training steps in {run.wall_time_s:.0f} s")
    if spent := cost_line(summary):
        console.print(spent, markup=False)
    destination = None
    if best and best.get("best_checkpoint"):
        try:
            destination = export_trial(layout)
        except LexirayError as error:  # the leaderboard and report stand; say why there is no best/
            console.print(f"no best adapter: {error}", markup=False)
    if destination is not None:
        summary["best_adapter"] = destination
        storage.write_text(layout.summary_file, json.dumps(summary, indent=2, default=str))
        by_score = summary["selection"]["select_by"] == "task_score" and is_number(best.get("task_score"))
        by = f" (by task score {best['task_score']:.3f})" if by_score else ""
        console.print(f"best trial {best['trial_id']}{by}: {summary['metric']} {best[summary['metric']]:.4f} "
                      f"(lr {best['learning_rate']:.2e}, r {best['lora_r']}, alpha {best['lora_alpha']}, "
                      f"batch {best['batch_size']}×{best['grad_accum']})")
        start = summary.get("eval_loss_at_start")
        if start and summary["metric"] == "eval_loss":  # what tuning bought, and what a bad config costs
            finished = [row["eval_loss"] for row in summary["leaderboard"]
                        if row["status"] == "DONE" and row.get("eval_loss") is not None]
            line = f"untrained model (step 0): eval_loss {start:.4f}; best {best['eval_loss'] / start - 1:+.0%}"
            if finished:
                worst = max(finished)
                line += f"; worst finished trial {worst:.4f} ({worst / best['eval_loss'] - 1:+.0%} vs the best)"
            console.print(line)
        console.print(f"best adapter: {destination}")
    print_report_locations(summary, layout, console)
    return summary


def print_scores(run: scoring.ScoreRun, summary: dict, console) -> None:
    """The task-score line, the per-task table (best trials against the base) and which trial
    the selection took when the two rankings differ."""
    from rich.table import Table

    console.print(scoring.score_line(run), markup=False)
    rows = scoring.score_table(run)
    shown = Table(title="task scores (0–1) from greedy generations on the eval rows")
    for index, label in enumerate(rows[0]):
        shown.add_column(label, justify="left" if index == 0 else "right")
    for row in rows[1:]:
        shown.add_row(*row)
    console.print(shown)
    note = selection_note(summary.get("selection") or {}, summary["metric"])
    if note:
        console.print(note, markup=False)


def print_report_locations(summary: dict, layout: ExperimentLayout, console) -> None:
    console.print(f"leaderboard: {layout.leaderboard_file}")
    if summary.get("report"):
        console.print(f"report: {layout.report_file('README.md')} (plots in {summary['report']}: "
                      f"{', '.join(summary['plots'])})")
    console.print(f"tensorboard --logdir {layout.tensorboard_dir}")


def finish_interrupted(run: TuningRun, console) -> dict:
    """After a Ctrl-C / SIGTERM stopped `Tuner.fit`: the leaderboard of what ran so far, and
    the exact command that continues the experiment (no adapter is exported)."""
    summary = build_report(run.layout, max_t=run.max_t, wall_time_s=run.wall_time_s, budget=run.budget)
    print_leaderboard(summary, console, top=run.config.report.top)
    if spent := cost_line(summary):
        console.print(spent, markup=False)
    console.print(f"{run.interrupted}: stopped after {summary['total_steps_trained']} training steps in "
                  f"{run.wall_time_s:.0f} s; the trials' checkpoints are kept")
    console.print(f"partial leaderboard: {run.layout.leaderboard_file}")
    console.print(f"resume with: {run.resume_command}", markup=False)
    return summary
