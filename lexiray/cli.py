"""`lexiray` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from lexiray.errors import LexirayError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Tune LoRA / QLoRA fine-tuning of small causal LMs with Ray Tune + Ray Train.")
# Without a terminal (CI, `ray job submit` logs) rich would wrap tables at 80 columns.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)

ConfigOption = typer.Option(None, "--config", "-c", help="YAML config path or preset name (default: smoke)")
SetOption = typer.Option(None, "--set", "-s", help="Override a setting, e.g. --set lora.r=32 (repeatable)")


class _Flags:
    debug = False  # set by --debug as it is parsed; main() reads it when an error ends the command


def _set_debug(value: bool) -> bool:
    if value:
        _Flags.debug = True
        logging.getLogger().setLevel(logging.INFO)
    return value


DebugOption = typer.Option(False, "--debug", help="Show tracebacks", callback=_set_debug, is_eager=True)
VerboseOption = typer.Option(False, "--verbose", "-v", help="Show Ray's own logs")


def _load(config: Optional[str], overrides: Optional[List[str]]):
    from lexiray.config import load_config

    return load_config(config, overrides or [])


def _parse_chaos(text: Optional[str]):
    if not text:
        return None
    from lexiray.chaos import parse_chaos

    return parse_chaos(text)


def tune_overrides(set_: Optional[List[str]], num_samples: Optional[int] = None, max_concurrent: Optional[int] = None,
                   time_budget: Optional[str] = None, storage_path: Optional[str] = None,
                   name: Optional[str] = None, budget: Optional[str] = None,
                   warm_start: Optional[str] = None) -> list[str]:
    """`lexiray tune`'s shortcut options as the `--set` overrides they stand for."""
    from lexiray.config import parse_duration, parse_usd

    overrides = list(set_ or [])
    for key, value in (("tune.num_samples", num_samples), ("tune.max_concurrent_trials", max_concurrent),
                       ("tune.storage_path", storage_path), ("tune.name", name), ("tune.warm_start", warm_start)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if time_budget is not None:
        overrides.append(f"tune.time_budget_s={parse_duration(time_budget)}")
    if budget is not None:  # without resources.price_per_hour the config refuses it, on one line
        overrides.append(f"tune.budget_usd={parse_usd(budget)}")
    return overrides


@app.command()
def train(
    config: Optional[str] = ConfigOption,
    set_: Optional[List[str]] = SetOption,
    output: Path = typer.Option(Path("runs/train"), "--output", "-o", help="Output folder"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output from its last checkpoint"),
    chaos: Optional[str] = typer.Option(None, "--chaos",
                                        help="Testing aid: kill-worker@step=N, kill-save@step=N, "
                                        "nan-loss@step=N or oom-above-batch=N"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: local)"),
    verbose: bool = VerboseOption,
    debug: bool = DebugOption,
):
    """Run one training trial through Ray Train and export its adapter."""
    from lexiray.trial import run_training

    settings = _load(config, set_)
    console.print(f"lexiray train: [bold]{settings.name}[/] — model {settings.model.name}, output {output}")
    summary = run_training(settings, output, resume=resume, chaos=_parse_chaos(chaos), address=address,
                           verbose=verbose)
    start, final = summary.get("eval_loss_at_start"), summary.get("eval_loss_final")
    console.print(f"eval_loss: {start if start is None else f'{start:.4f}'} at step 0 → "
                  f"{final if final is None else f'{final:.4f}'} at the end "
                  f"(best {summary.get('eval_loss_best', float('nan')):.4f}); "
                  f"{summary['final'].get('samples_per_second', 0):.1f} samples/s, "
                  f"{summary['final'].get('tokens_per_second', 0):.0f} tokens/s, "
                  f"peak memory {summary['final'].get('peak_memory_mb', 0):.0f} MB, "
                  f"{summary['wall_time_s']:.0f} s")
    if summary["final"].get("diverged"):  # a result, not an error: the adapter is the last finite checkpoint's
        console.print(f"[red]{summary['final']['diverged']}[/]: stopped at step {summary['final'].get('step')}")
    console.print(f"adapter: {output.resolve()}")
    console.print(f"tensorboard --logdir {(output / 'tensorboard').resolve()}")


@app.command()
def tune(
    config: Optional[str] = ConfigOption,
    set_: Optional[List[str]] = SetOption,
    num_samples: Optional[int] = typer.Option(None, "--num-samples", "-n", help="Trials to run"),
    max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", help="Trials at once"),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="Stop starting trials after e.g. 90m, 2h"),
    budget: Optional[str] = typer.Option(None, "--budget", help="USD: stop starting trials once spent + committed "
                                         "cost reaches it (needs resources.price_per_hour)"),
    storage_path: Optional[str] = typer.Option(None, "--storage-path", help="Results folder or s3:// / gs:// URI"),
    name: Optional[str] = typer.Option(None, "--name", help="Experiment name (default: the preset's)"),
    warm_start: Optional[str] = typer.Option(None, "--warm-start", help="An earlier experiment (folder, name or URI): "
                                             "its best configurations run first, Optuna learns its results, its "
                                             "finished trials with the same settings and data are reused"),
    chaos: Optional[str] = typer.Option(None, "--chaos",
                                        help="Testing aid: kill-worker@step=N, kill-save@step=N, nan-loss@step=N or "
                                        "oom-above-batch=N [,trial=K]"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: local)"),
    resume_existing: bool = typer.Option(False, "--resume", help="Continue the experiment of this --name when "
                                         "it exists already"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the experiment of this --name"),
    verbose: bool = VerboseOption,
    debug: bool = DebugOption,
):
    """Tune the config's search space with Ray Tune + ASHA; print the leaderboard; export the best adapter."""
    from lexiray.tune import run_tuning

    if resume_existing and overwrite:
        raise LexirayError("lexiray tune: --resume continues the experiment and --overwrite replaces it; give one")
    overrides = tune_overrides(set_, num_samples, max_concurrent, time_budget, storage_path, name, budget, warm_start)
    settings = _load(config, overrides)
    _ensure_warm_start_summary(settings)
    existing = "resume" if resume_existing else "overwrite" if overwrite else "refuse"
    run = run_tuning(settings, console=console, chaos=_parse_chaos(chaos), address=address, verbose=verbose,
                     existing=existing)
    _finish(run)


def _ensure_warm_start_summary(settings) -> None:
    """An earlier experiment that ended without its report (killed, or still running): its
    summary.json, which the warm start reads, is built from its records first."""
    if not settings.tune.warm_start:
        return
    from lexiray import storage
    from lexiray.report import build_report, read_summary
    from lexiray.warm import find_warm_start

    if storage.is_uri(settings.tune.warm_start):  # a dead endpoint would retry for a minute below
        storage.check_storage(settings.tune.warm_start, field="--warm-start")
    source = find_warm_start(settings)
    if read_summary(source) is None:
        build_report(source)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    ctx: typer.Context,
    address: Optional[str] = typer.Option(None, "--address", help="The head's dashboard, http://HEAD:8265 "
                                          "(default: RAY_ADDRESS)"),
    working_dir: Path = typer.Option(Path("."), "--working-dir", help="Uploaded as the job's working dir"),
    runtime_env: Optional[str] = typer.Option(None, "--runtime-env", help="Job runtime_env YAML (default: "
                                              "cluster/runtime_env.yaml when it is here; '' for none)"),
    python: str = typer.Option("python", "--python", help="The cluster's interpreter that has lexiray"),
    no_wait: bool = typer.Option(False, "--no-wait", help="Return once submitted instead of following the logs"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the `ray job submit` command, run nothing"),
    debug: bool = DebugOption,
):
    """Submit `lexiray tune [TUNE OPTIONS]` to a Ray cluster as a job (`ray job submit`).

    Example: lexiray submit --address http://127.0.0.1:8265 -c balanced --storage-path s3://BUCKET/lexiray
    """
    import shlex
    import subprocess

    from lexiray.cluster import DEFAULT_RUNTIME_ENV, plan_submission

    tune_args = [arg for arg in ctx.args if arg != "--debug"]
    # The tune options are parsed and the config validated here, before anything is sent.
    tune_command = typer.main.get_command(app).get_command(ctx, "tune")
    try:
        params = tune_command.make_context("lexiray submit … tune", list(tune_args)).params
    except Exception as error:  # typer's own click usage errors
        if not hasattr(error, "format_message"):
            raise
        raise LexirayError(f"lexiray submit: {error.format_message()} (tune options: lexiray tune --help)") from None
    if params.get("address") or params.get("chaos"):
        raise LexirayError("lexiray submit: --address belongs before the tune options, and --chaos is for local "
                           "tests only")
    settings = _load(params["config"], tune_overrides(params["set_"], params["num_samples"], params["max_concurrent"],
                                                      params["time_budget"], params["storage_path"], params["name"],
                                                      params["budget"], params["warm_start"]))
    if "://" not in settings.tune.storage_path:
        console.print(f"note: tune.storage_path={settings.tune.storage_path} is a local folder: on a multi-node "
                      "cluster lexiray refuses it; use --storage-path s3://... or gs://...")
    if runtime_env is None and Path(DEFAULT_RUNTIME_ENV).is_file():
        runtime_env = DEFAULT_RUNTIME_ENV
    job = plan_submission(tune_args, settings.tune.name or settings.name, address, str(working_dir),
                          runtime_env or None, python, wait=not no_wait)
    console.print(" ".join(shlex.quote(part) for part in job.command()), markup=False)
    if dry_run:
        return
    # The `ray` CLI of this environment, whatever is first on PATH.
    returncode = subprocess.call([sys.executable, "-m", "ray.scripts.scripts", *job.command()[1:]],
                                 stdin=subprocess.DEVNULL)
    for line in job.follow_lines():
        console.print(line, markup=False)
    if returncode:
        raise typer.Exit(returncode)


@app.command()
def resume(
    path: str = typer.Argument(..., help="Experiment folder (storage_path/name) or name under the default storage"),
    retry_errored: bool = typer.Option(False, "--retry-errored", help="Run errored trials again"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: local)"),
    verbose: bool = VerboseOption,
    debug: bool = DebugOption,
):
    """Continue an interrupted tuning experiment from what is in its storage."""
    from lexiray.tune import resume_tuning

    run = resume_tuning(path, console=console, retry_errored=retry_errored, address=address, verbose=verbose)
    _finish(run)


def _finish(run) -> None:
    """The report of a tuning run; a run stopped by Ctrl-C / SIGTERM gets the partial
    leaderboard and the resume command, and exits 130."""
    from lexiray.report import finish_experiment, finish_interrupted

    if run.interrupted:
        finish_interrupted(run, console)
        raise typer.Exit(130)
    finish_experiment(run, console)


@app.command()
def analyze(
    data: Optional[str] = typer.Argument(None, help="Data file / folder / dataset id (default: the config's)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model whose tokenizer counts tokens"),
    config: Optional[str] = ConfigOption,
    set_: Optional[List[str]] = SetOption,
    debug: bool = DebugOption,
):
    """Token-length percentiles per task and the recommended max_seq_length."""
    from lexiray.data import LENGTH_CANDIDATES, analyze_lengths
    from lexiray.model import load_tokenizer

    overrides = list(set_ or [])
    if data:
        overrides.append(f"data.path={data}")
    if model:
        overrides.append(f"model.name={model}")
    settings = _load(config, overrides)
    report = analyze_lengths(settings.data, load_tokenizer(settings.model))
    table = Table(title=f"token lengths — {settings.data.path} ({settings.model.name} tokenizer)")
    for column in ("task", "rows", "p50", "p90", "p95", "p99", "max"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for task, stats in [*report.per_task.items(), ("all", report.overall)]:
        table.add_row(task, *(str(stats[k]) for k in ("rows", "p50", "p90", "p95", "p99", "max")))
    console.print(table)
    truncation = ", ".join(f"{c}: {report.truncated_by_candidate[c]}" for c in LENGTH_CANDIDATES)
    console.print(f"rows longer than each candidate max_seq_length — {truncation}")
    if report.bad_rows:
        console.print(f"{report.bad_rows} unusable rows were left out")
    console.print(f"recommended data.max_seq_length: {report.recommended} "
                  f"(covers {report.coverage:.0%} of rows)")


@app.command()
def presets(debug: bool = DebugOption):
    """Print the presets side by side."""
    from lexiray.config import SEARCH_SPACES_DIR, load_config

    configs = [load_config(p) for p in sorted(SEARCH_SPACES_DIR.glob("*.yaml"))]
    order = {"speed": 0, "balanced": 1, "quality": 2}
    configs.sort(key=lambda c: order.get(c.name, 9))
    table = Table(title="lexiray presets (search_spaces/)")
    table.add_column("setting")
    for c in configs:
        table.add_column(c.name, justify="right")
    rows = [
        ("model", lambda c: c.model.name),
        ("max_seq_length", lambda c: c.data.max_seq_length),
        ("r / alpha / dropout", lambda c: f"{c.lora.r} / {c.lora.alpha} / {c.lora.dropout:g}"),
        ("epochs", lambda c: f"{c.training.num_train_epochs:g}"),
        ("batch × accum", lambda c: f"{c.training.per_device_train_batch_size} × {c.training.gradient_accumulation_steps}"),
        ("learning_rate", lambda c: f"{c.training.learning_rate:g}"),
        ("optim", lambda c: c.training.optim),
        ("save_steps", lambda c: c.training.save_steps),
        ("gpus / cpus per trial", lambda c: f"{c.resources.gpus_per_trial:g} / {c.resources.cpus_per_trial:g}"),
        ("trials", lambda c: c.tune.num_samples),
        ("searched", lambda c: ", ".join(k.split(".")[-1] for k in c.search_space.keys) or "-"),
    ]
    for label, get in rows:
        table.add_row(label, *(str(get(c)) for c in configs))
    console.print(table)


@app.command()
def plan(
    config: Optional[str] = ConfigOption,
    set_: Optional[List[str]] = SetOption,
    samples: Optional[int] = typer.Option(None, "--samples", "-n", min=1, help="Configurations to draw when the "
                                          "search is not all choices (default: tune.num_samples)"),
    debug: bool = DebugOption,
):
    """Pre-flight: each searched configuration's estimated peak GPU memory against the budget,
    and the projected wall time of a full run. Offline; nothing is trained."""
    from lexiray import memory
    from lexiray.model import check_precision

    settings = _load(config, set_)
    check_precision(settings)
    shape = memory.model_shape(settings.model.name, settings.model.revision)
    count = samples or settings.tune.num_samples
    seed = settings.tune.seed or 0
    trials = memory.plan_trials(settings, count, seed)
    how = "every point of the search" if memory.search_is_finite(settings) else f"a seeded sample (seed {seed})"
    console.print(f"lexiray plan: {settings.name} — {settings.model.name} ({_count(shape.parameters)} parameters, "
                  f"vocab {shape.vocab_size}), {len(trials)} configurations: {how}", markup=False)
    budget = memory.gpu_memory_budget_gb(settings)
    console.print(_budget_line(settings, budget), markup=False)
    width = max(len(trial.label) for trial in trials)
    train_rows = _train_rows(settings)
    priced = settings.resources.price_per_hour is not None
    costs = []
    for trial in trials:
        estimate = trial.estimate
        verdict = "" if budget is None else ("  OVER BUDGET" if estimate.total_gb > budget else "  fits")
        cost = ""
        if priced:  # a full run of this configuration, at the guide's T4 throughput
            projected = (memory.projected_cost_usd(trial.config, shape, train_rows)
                         if isinstance(train_rows, int) else None)
            costs.append(projected)
            wall = memory.projected_wall_s(trial.config, shape, train_rows) if projected else None
            why = (train_rows if not isinstance(train_rows, int)  # the data could not be read
                   else "no T4 throughput for it in the guide's table")
            cost = (f"  full run {_duration(wall[0])}–{_duration(wall[1])}, {_money_range(projected)}" if projected
                    else f"  full run: cost unknown ({why})")
        console.print(f"  {trial.label:<{width}}  peak {estimate.total_gb:5.1f} GB  "
                      f"(weights {estimate.weights_gb:.1f}, LoRA {estimate.lora_gb:.2f}, "
                      f"train step {estimate.activations_gb + estimate.logits_gb:.1f} / "
                      f"eval step {estimate.eval_logits_gb:.1f}, CUDA {estimate.cuda_context_gb:.1f}){verdict}{cost}",
                      markup=False)
    console.print(_projection_line(settings, shape, train_rows), markup=False)
    if priced:
        console.print(_plan_cost_line(settings, costs), markup=False)


def _budget_line(settings, budget: Optional[float]) -> str:
    if budget is not None:
        return f"GPU memory budget per trial: {budget:.1f} GB"
    if settings.resources.gpus_per_trial <= 0:
        return "GPU memory budget: none (CPU trials: the estimates are the tensors' share of process memory)"
    return ("GPU memory budget: unknown (no GPU here and no resources.accelerator_type): set "
            "resources.gpu_memory_gb, or e.g. --set resources.accelerator_type=T4")


def _train_rows(settings) -> "int | str":
    """The rows a full trial trains on (0 when max_steps fixes the samples), or why unknown."""
    from lexiray.data import load_records

    if settings.training.max_steps > 0:
        return 0  # not needed: max_steps fixes the samples
    try:
        rows = len(load_records(settings.data.path)[: settings.data.max_rows])
    except LexirayError as error:
        return str(error)
    return rows if settings.data.eval_path else round(rows * (1 - settings.data.eval_fraction))


def _money_range(low_high) -> str:
    from lexiray.cost import money

    return f"{money(low_high[0])}–{money(low_high[1])}"


def _plan_cost_line(settings, costs: list) -> str:
    """The configurations' projected costs summed: every one trained to the end (ASHA stops
    most of them early, so the run costs less), with the price it assumes."""
    from lexiray.cost import hourly_rate, money, price_unit

    resources = settings.resources
    price = (f"at {money(resources.price_per_hour)} per {price_unit(resources)} "
             f"({money(hourly_rate(resources))} per trial-hour)")
    known = [cost for cost in costs if cost]
    if not known:
        return f"projected cost: unknown (no projected wall time for any configuration) {price}"
    low, high = sum(cost[0] for cost in known), sum(cost[1] for cost in known)
    unknown = len(costs) - len(known)
    return (f"projected cost of the {len(known)} configurations{' with a projection' if unknown else ''}, each "
            f"trained to the end: {money(low)}–{money(high)} {price}"
            + (f"; {unknown} unknown" if unknown else ""))


def _projection_line(settings, shape, train_rows: "int | str") -> str:
    """A full run of the base config at the guide's T4 throughput, where it has a row for it."""
    from lexiray import memory

    training = settings.training
    if not isinstance(train_rows, int):
        return f"full run: unknown ({train_rows})"
    total = memory.full_run_samples(settings, train_rows)
    what = (f"{training.max_steps} steps x {training.effective_batch_size}" if training.max_steps > 0
            else f"{training.num_train_epochs:g} epochs of ~{train_rows} rows")
    rate = memory.expected_samples_per_second(settings, shape)
    if rate is None:
        return (f"full run of the base config ({what} = {total} samples): wall time unknown — the guide's "
                "throughput table covers Qwen2.5-0.5B / 1.5B at seq 512 / 768 on a T4 only")
    fast, slow = memory.projected_wall_s(settings, shape, train_rows)
    line = (f"full run of the base config ({what} = {total} samples): {_duration(fast)}–{_duration(slow)} "
            f"at {rate[0]:g}–{rate[1]:g} samples/s per T4 (the training guide's table)")
    cost = memory.projected_cost_usd(settings, shape, train_rows)
    return line + (f", {_money_range(cost)}" if cost else "")


def _count(parameters: int) -> str:
    return f"{parameters / 1e9:.2f}B" if parameters >= 1e9 else f"{parameters / 1e6:.0f}M"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@app.command()
def report(
    path: str = typer.Argument(..., help="Experiment folder (storage_path/name) or URI; a running one too"),
    debug: bool = DebugOption,
):
    """Rebuild the leaderboard, the report/ folder (plots + README.md) and TensorBoard's HParams sessions."""
    from lexiray.report import build_report, print_leaderboard, print_report_locations, sync_best_adapter
    from lexiray.storage import find_experiment

    layout = find_experiment(path)
    summary = build_report(layout)
    sync_best_adapter(layout, summary, console)
    print_leaderboard(summary, console)
    print_report_locations(summary, layout, console)


@app.command()
def score(
    path: str = typer.Argument(..., help="Experiment folder (storage_path/name) or URI"),
    trial: Optional[str] = typer.Option(None, "--trial", help="Score this trial (and the base) only; the other "
                                        "trials' scores are kept"),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="Trials to score, best first "
                                        "(default: the experiment's tune.score_top_k, or 3 where that is 0)"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address, where the trials ran on "
                                          "GPUs or a cluster (default: local)"),
    debug: bool = DebugOption,
):
    """Task scores from generations on the eval rows: the best trials and the base, per task;
    then the leaderboard, report and summary again, with tune.select_by's choice."""
    from lexiray.report import (build_report, print_leaderboard, print_report_locations, print_scores,
                                read_summary, score_experiment, sync_best_adapter)
    from lexiray.scoring import runs_on_ray
    from lexiray.storage import find_experiment, read_experiment_config

    layout = find_experiment(path)
    config = read_experiment_config(layout)
    on_ray = runs_on_ray(config, layout)
    if on_ray:
        from lexiray.cluster import init_ray

        init_ray(address)
    run = score_experiment(layout, console, trial_id=trial, on_ray=on_ray,
                           top_k=top_k or config.tune.score_top_k or 3)
    if run is None:
        raise LexirayError(f"{layout.root}: no trial kept a checkpoint to score")
    summary = build_report(layout, wall_time_s=(read_summary(layout) or {}).get("wall_time_s"))
    sync_best_adapter(layout, summary, console)
    print_leaderboard(summary, console, top=config.report.top)
    print_scores(run, summary, console)
    print_report_locations(summary, layout, console)


@app.command()
def export(
    path: str = typer.Argument(..., help="Experiment folder (storage_path/name) or URI, or a `lexiray train` "
                               "output folder"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Destination folder or URI "
                                         "(default: PATH/best)"),
    trial: Optional[str] = typer.Option(None, "--trial", help="Trial id (default: the best)"),
    merge: bool = typer.Option(False, "--merge", help="Also merge the LoRA into the base: OUTPUT becomes a "
                               "standard HF model folder (safetensors), the adapter goes to OUTPUT/adapter"),
    debug: bool = DebugOption,
):
    """Export a trial's best adapter (default: the best trial's) with its tokenizer and config;
    or a `lexiray train` output's adapter."""
    from lexiray.report import export_train_output, export_trial
    from lexiray.storage import find_experiment, find_train_output, is_uri

    if output is not None and not is_uri(output):
        output = str(Path(output).expanduser().resolve())
    train_output = find_train_output(path)
    if train_output is not None:
        if trial is not None:
            raise LexirayError(f"{path} is a `lexiray train` output (one run): --trial is for tuning experiments")
        destination = export_train_output(train_output, output, merge=merge)
    else:
        destination = export_trial(find_experiment(path), output, trial, merge=merge)
    if merge:
        console.print(f"merged model exported to {destination} (AutoModelForCausalLM.from_pretrained loads it); "
                      f"adapter in {destination.rstrip('/')}/adapter")
    else:
        console.print(f"adapter exported to {destination}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    try:
        code = app(standalone_mode=False)  # click returns a typer.Exit's code instead of exiting
        if isinstance(code, int) and code:
            sys.exit(code)
    except LexirayError as error:
        if _Flags.debug:
            traceback.print_exc()
        Console(stderr=True, highlight=False, soft_wrap=True).print(f"error: {error}", markup=False)
        sys.exit(2)
    except (typer.Exit, SystemExit) as stop:
        code = getattr(stop, "exit_code", getattr(stop, "code", 0))
        sys.exit(code or 0)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted: resume with `lexiray resume <storage_path/name>`")
        sys.exit(130)
    except Exception as error:  # click usage errors and the unexpected
        import click

        if isinstance(error, click.exceptions.ClickException):
            error.show()
            sys.exit(2)
        if isinstance(error, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
