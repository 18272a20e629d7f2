"""The report's figures, drawn from leaderboard rows (`lexiray.results.LeaderboardRow`) as PNG bytes.

Every figure names its trials on the plot itself (next to the line or the point), so a
reader never matches colours against a legend. Stopped trials are drawn dashed and end
in an x: ASHA cut them short. matplotlib runs headless (Agg).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from lexiray.results import LeaderboardRow

STOPPED_STYLE = {"linestyle": "--", "alpha": 0.55}
LABELLED_TRIALS = 8  # curves named at their end; the rest are drawn but not named


@dataclass(frozen=True)
class Setting:
    """One searched setting as the report plots it: its sample key, a short label, and
    whether the search drew it log-uniformly (log axis) or from a list of choices."""

    key: str
    label: str
    log: bool = False


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    plt = _pyplot()
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=110)
    plt.close(figure)
    return image.getvalue()


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _short(trial_id: str) -> str:
    return trial_id[-5:] if len(trial_id) > 8 else trial_id


def _colours(rows: list[LeaderboardRow]) -> dict[str, tuple]:
    """One colour per trial, by rank: the best trials dark, the worst pale."""
    plt = _pyplot()
    cmap = plt.get_cmap("viridis")
    count = max(len(rows) - 1, 1)
    return {row.trial_id: cmap(0.75 * index / count) for index, row in enumerate(rows)}  # no pale yellow


def curves(rows: list[LeaderboardRow], metric: str, max_t: int | None, title: str) -> bytes:
    """`metric` against the training step, every trial on one axis. Trials that ran to
    the end are solid; trials stopped early are dashed and end in an x where ASHA cut them."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(9, 5.5))
    colours = _colours(rows)
    labels = []  # (x, y, text, colour) of each named curve's end
    for row in rows:
        points = [(h["step"], h[metric]) for h in row.history if h.get("step") is not None
                  and _number(h.get(metric))]
        if not points:
            continue
        steps, values = zip(*points)
        stopped = row.status in ("STOPPED", "ERROR")
        axis.plot(steps, values, color=colours[row.trial_id], marker="o", markersize=3, linewidth=1.6,
                  **(STOPPED_STYLE if stopped else {}))
        if stopped:
            axis.plot(steps[-1], values[-1], marker="x", markersize=9, mew=2, color=colours[row.trial_id])
        if row.rank <= LABELLED_TRIALS:
            note = f"#{row.rank} {_short(row.trial_id)}" + (f" ({row.status.lower()})" if stopped else "")
            labels.append((steps[-1], values[-1], note, colours[row.trial_id]))
    _label_ends(axis, labels)
    if max_t:
        axis.axvline(max_t, color="grey", linestyle=":", linewidth=1)
        axis.annotate("max_t", (max_t, 1), xycoords=("data", "axes fraction"), fontsize=8, color="grey",
                      xytext=(3, -10), textcoords="offset points")
    axis.set_xlabel("training step")
    axis.set_ylabel(metric)
    axis.set_title(f"{title}: {metric} per trial (solid: ran to the end; dashed, x: stopped early)")
    axis.margins(x=0.12)
    axis.grid(alpha=0.3)
    return _png(figure)


def _label_ends(axis, labels: list[tuple]) -> None:
    """Name each curve at its last point; curves ending at (nearly) the same point, such as
    trials stopped at the same rung with the same loss, get their names stacked downwards."""
    low, high = axis.get_ylim()
    near = (high - low) * 0.03
    placed: list[tuple[float, float]] = []
    for x, y, text, colour in sorted(labels, key=lambda label: (label[0], -label[1])):
        clashes = sum(1 for px, py in placed if px == x and abs(py - y) < near)
        placed.append((x, y))
        axis.annotate(text, (x, y), fontsize=8, color=colour, xytext=(7, -11 * clashes),
                      textcoords="offset points", va="center")


def metric_by_setting(rows: list[LeaderboardRow], settings: list[Setting], metric: str) -> bytes:
    """One panel per searched setting: each trial's best `metric` against its value (log
    axis for log-uniform settings), the best trial ringed and named."""
    plt = _pyplot()
    columns = min(len(settings), 3)
    lines = math.ceil(len(settings) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(4.6 * columns, 3.8 * lines), squeeze=False)
    scored = [row for row in rows if _number(row.score)]
    best = next((row for row in scored if row.status != "DIVERGED"), None)  # a diverged trial is never best
    for axis, setting in zip(axes.flat, settings):
        points = [(row.sample.get(setting.key), row.score, row) for row in scored
                  if row.sample.get(setting.key) is not None]
        categorical = any(not _number(value) for value, _, _ in points)
        if categorical:  # e.g. target_modules: one column per value
            names = sorted({str(value) for value, _, _ in points})
            points = [(names.index(str(value)), score, row) for value, score, row in points]
            axis.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        for value, score, row in points:
            stopped = row.status != "DONE"
            axis.scatter(value, score, s=36, color="tab:blue", facecolors="none" if stopped else "tab:blue")
            if row is best:
                axis.scatter(value, score, s=160, facecolors="none", edgecolors="tab:red", linewidths=1.5)
                axis.annotate(f"best {_short(row.trial_id)}", (value, score), fontsize=8, color="tab:red",
                              xytext=(6, 6), textcoords="offset points")
        if setting.log and not categorical:
            axis.set_xscale("log")
        axis.set_xlabel(setting.label + (" (log scale)" if setting.log else ""))
        axis.set_ylabel(f"best {metric}")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(settings):]:
        axis.set_visible(False)
    figure.suptitle(f"best {metric} against each searched setting (filled: ran to the end; hollow: stopped early)",
                    fontsize=10)
    return _png(figure)


def pareto_front(points: list[tuple[float, float, str]], higher_x_is_better: bool) -> list[tuple[float, float, str]]:
    """The (x, loss, name) points no other point beats on both axes: lower loss and
    higher (or lower) x. Sorted by x, best x first."""
    ordered = sorted(points, key=lambda p: (-p[0] if higher_x_is_better else p[0], p[1]))
    front, lowest = [], math.inf
    for point in ordered:
        if point[1] < lowest:
            front.append(point)
            lowest = point[1]
    return front


def quality_speed(rows: list[LeaderboardRow], metric: str) -> bytes:
    """Best `metric` against samples/s (higher is better), against peak memory (lower is
    better) and, when trials have a cost (resources.price_per_hour), against what each trial
    cost (lower is better); the Pareto front of each drawn as a step line through its named trials."""
    plt = _pyplot()
    panels = [("samples_per_second", "training samples / s (higher is better)", True),
              ("peak_memory_mb", "peak memory, MB (lower is better)", False)]
    if any(_number(row.value("cost_usd")) for row in rows):
        panels.append(("cost_usd", "the trial's cost, USD (lower is better)", False))
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.8), squeeze=False)
    for axis, (key, label, higher) in zip(axes.flat, panels):
        # a reused trial (lexiray.warm) paid no training: its cost would sit on any cost front
        points = [(row.value(key), row.score, row.trial_id) for row in rows
                  if _number(row.value(key)) and _number(row.score)
                  and not (key == "cost_usd" and row.value("reused_from"))]
        if points:
            axis.scatter([p[0] for p in points], [p[1] for p in points], s=30, color="tab:grey", alpha=0.7)
            front = pareto_front(points, higher)
            axis.plot([p[0] for p in front], [p[1] for p in front], color="tab:orange", marker="o",
                      drawstyle="steps-post" if not higher else "steps-pre", linewidth=1.5)
            for x, y, name in front:
                axis.annotate(_short(name), (x, y), fontsize=8, color="tab:orange", xytext=(5, 4),
                              textcoords="offset points")
        axis.set_xlabel(label)
        axis.set_ylabel(f"best {metric}")
        axis.grid(alpha=0.3)
    what = "speed / cost" if len(panels) == 3 else "speed"
    figure.suptitle(f"quality / {what} trade-off: the orange line is the Pareto front (named trials), "
                    f"grey points are dominated", fontsize=10)
    return _png(figure)


def task_losses(rows: list[LeaderboardRow], tasks: list[str], top: int = 5) -> bytes:
    """Per-task eval_loss (at each trial's best checkpoint) of the `top` trials, one
    group of bars per task, each bar labelled with its trial."""
    plt = _pyplot()
    chosen = [row for row in rows if row.task_losses][:top]
    figure, axis = plt.subplots(figsize=(min(12, max(7, 0.45 * len(tasks) * max(len(chosen), 1))), 4.8))
    width = 0.8 / max(len(chosen), 1)
    colours = _colours(chosen)
    for index, row in enumerate(chosen):
        xs = [position + (index - (len(chosen) - 1) / 2) * width for position in range(len(tasks))]
        values = [row.task_losses.get(task, math.nan) for task in tasks]
        bars = axis.bar(xs, values, width=width * 0.95, color=colours[row.trial_id],
                        label=f"#{row.rank} {_short(row.trial_id)}")
        axis.bar_label(bars, labels=[f"#{row.rank}"] * len(tasks), fontsize=7, padding=1)
    axis.set_xticks(range(len(tasks)), tasks)
    axis.set_xlabel("task")
    axis.set_ylabel("eval_loss at the trial's best checkpoint")
    axis.set_title(f"per-task eval_loss of the top {len(chosen)} trials (bars labelled by rank)")
    axis.legend(fontsize=8, title="trial", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside, not over, the bars
    axis.grid(axis="y", alpha=0.3)
    return _png(figure)


def task_scores(tasks: list[str], models: list[tuple[str, dict[str, float | None]]]) -> bytes:
    """Per-task scores (0–1, lexiray.scoring) of the scored models, one group of bars per
    task: the base grey and hatched, the trials by their order (best first), each bar named."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(min(12, max(7, 0.45 * len(tasks) * max(len(models), 1))), 4.8))
    width = 0.8 / max(len(models), 1)
    cmap = plt.get_cmap("viridis")
    trials = [name for name, _ in models if name != "base"]
    for index, (name, scores) in enumerate(models):
        xs = [position + (index - (len(models) - 1) / 2) * width for position in range(len(tasks))]
        values = [scores.get(task) for task in tasks]
        values = [value if _number(value) else math.nan for value in values]
        if name == "base":
            style = {"color": "0.75", "hatch": "//", "edgecolor": "0.4"}
            label = "base (untrained)"
        else:
            style = {"color": cmap(0.85 * trials.index(name) / max(len(trials) - 1, 1))}
            label = f"trial {_short(name)}"
        bars = axis.bar(xs, values, width=width * 0.95, label=label, **style)
        axis.bar_label(bars, labels=[f"{v:.2f}" if _number(v) else "" for v in values], fontsize=7, padding=1)
    axis.set_xticks(range(len(tasks)), tasks)
    axis.set_ylim(0, 1.08)
    axis.set_xlabel("task")
    axis.set_ylabel("task score (0–1)")
    axis.set_title("per-task scores from generations: scored trials against the base")
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axis.grid(axis="y", alpha=0.3)
    return _png(figure)
