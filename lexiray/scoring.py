"""Task scores from generations: what the tuned adapters answer on the evaluation rows, scored
per task without a judge model, against the untrained base.

Three parts, top to bottom:

- the scorers (pure functions of answers and references; chrF is sacrebleu's): each task
  gives its figures and one 0–1 score (`TASK_SCORE_FIGURE` says which figure, or how it
  is made); a model's task score is the mean of its tasks' 0–1 scores, every task counted
  once whatever its row count;
- generation: the evaluation rows as the trials evaluated them (the tokenized eval set:
  prompt = the tokens before the last answer, which end with the chat template's
  generation prompt; reference = the answer's text), answered greedily in left-padded
  batches with the KV cache, `max_new_tokens` per task from its answers' token lengths;
- orchestration: the base and the chosen trials' best checkpoints scored, in this process
  (one base model loaded once, the adapters loaded onto it in turn) or, where trials ran on
  GPUs or elsewhere in a cluster, as one Ray task per scored model with the trial's
  resources on the node it trained on; the result persists in the experiment's
  `scores.json` (`storage.ExperimentLayout.scores_file`).

The scorers are plain Python (sacrebleu's chrF only); torch, transformers and peft are
imported inside the generation functions.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

from lexiray import storage
from lexiray.config import ExperimentConfig
from lexiray.errors import LexirayError
from lexiray.results import cell
from lexiray.storage import ExperimentLayout

NO_TASK = "none"  # the group of rows without a task column
BASE = "base"  # the untrained base model's entry in scores.json

# --------------------------------------------------------------------------- scorers

CEFR_LEVELS = ("A1", "A2", "B1", "B2", "C1", "C2")
_CEFR = re.compile(r"\b([ABC][12])\b", re.IGNORECASE)
_FLUENCY = re.compile(r"score\s*[:=]?\s*([1-5])(?:\s*/\s*5)?\b", re.IGNORECASE)
# Letters only Vietnamese uses among Latin scripts: ă đ ơ ư and the tone-marked vowels of
# Latin Extended Additional (U+1EA0–U+1EF9: ạ ả ấ … ỹ). â ê ô are left out (French has them).
_VIETNAMESE = re.compile("[ăđơưĂĐƠƯ\u1ea0-\u1ef9]")

# Which figure is each task's 0–1 score (the README and the report say the same).
TASK_SCORE_FIGURE = {
    "vocabulary": "level_accuracy",
    "grammar": "mean of exact_match and chrf/100",
    "fluency": "1 - |score error| / 4 per row, unparseable rows 0",
    "dialogue": "chrf/100",
    "explanation": "chrf/100",
    NO_TASK: "mean of exact_match and chrf/100",  # and any task lexiray has no scorer for
}


def chrf(answers: list[str], references: list[str]) -> float:
    """Corpus chrF (0–100) of the answers against one reference each: sacrebleu's,
    character 6-grams, beta 2, the standard setting."""
    from sacrebleu.metrics import CHRF

    if not answers:
        return math.nan
    return float(CHRF().corpus_score(list(answers), [list(references)]).score)


def normalise(text: str) -> str:
    """Whitespace collapsed and case folded: what exact match compares."""
    return " ".join(text.split()).casefold()


def exact_match(answers: list[str], references: list[str]) -> float:
    return _mean([normalise(a) == normalise(r) for a, r in zip(answers, references)])


def parse_level(text: str) -> str | None:
    """The first CEFR level (A1 … C2) named in an answer, upper-cased; None if there is none."""
    found = _CEFR.search(text)
    return found.group(1).upper() if found else None


def parse_fluency(text: str) -> int | None:
    """The N of 'Score: N/5' (1–5) in an answer; None if it has no such score."""
    found = _FLUENCY.search(text)
    return int(found.group(1)) if found else None


def is_vietnamese(text: str) -> bool:
    """Written in Vietnamese: holds a letter only Vietnamese writes (ă đ ơ ư, tone marks)."""
    return bool(_VIETNAMESE.search(text))


def _mean(values: Iterable[float]) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else math.nan


def score_vocabulary(answers: list[str], references: list[str]) -> dict[str, float]:
    """level_accuracy (the named level is the reference's), within_one_level (at most one
    step off on A1 < A2 < … < C2); an answer naming no level is wrong for both. Score: level_accuracy."""
    exact, near = [], []
    for answer, reference in zip(answers, references):
        level, wanted = parse_level(answer), parse_level(reference)
        ok = level is not None and wanted is not None
        exact.append(ok and level == wanted)
        near.append(ok and abs(CEFR_LEVELS.index(level) - CEFR_LEVELS.index(wanted)) <= 1)
    accuracy = _mean(exact)
    return {"level_accuracy": accuracy, "within_one_level": _mean(near), "score": accuracy}


def score_exact_and_chrf(answers: list[str], references: list[str]) -> dict[str, float]:
    """exact_match (after whitespace / case normalisation) and chrF; score: their mean (chrF
    as 0–1). Exact match alone is all-or-nothing per row: chrF grades the near misses."""
    exact, value = exact_match(answers, references), chrf(answers, references)
    return {"exact_match": exact, "chrf": value, "score": (exact + value / 100) / 2}


def score_fluency(answers: list[str], references: list[str]) -> dict[str, float]:
    """mae: the mean absolute error of the parsed 1–5 score over the answers that have one
    (NaN when none has); parsed: the share that has one. Score: per row 1 − error/4 (1 exact,
    0 four points off), an answer without a score counted 0 — so a model that stops writing
    scores cannot look better by its MAE over fewer rows."""
    errors, row_scores, answered = [], [], []
    for answer, reference in zip(answers, references):
        got, wanted = parse_fluency(answer), parse_fluency(reference)
        answered.append(got is not None)
        if got is None or wanted is None:
            row_scores.append(0.0)
            continue
        errors.append(abs(got - wanted))
        row_scores.append(1 - abs(got - wanted) / 4)
    return {"mae": _mean(errors), "parsed": _mean(answered), "score": _mean(row_scores)}


def score_dialogue(answers: list[str], references: list[str]) -> dict[str, float]:
    """chrF against the reference reply. Score: chrf/100."""
    value = chrf(answers, references)
    return {"chrf": value, "score": value / 100}


def score_explanation(answers: list[str], references: list[str]) -> dict[str, float]:
    """chrF against the reference explanation; vietnamese: the share of answers written in
    Vietnamese (`is_vietnamese`). Score: chrf/100."""
    value = chrf(answers, references)
    return {"chrf": value, "vietnamese": _mean(is_vietnamese(answer) for answer in answers), "score": value / 100}


SCORERS: dict[str, Callable[[list[str], list[str]], dict[str, float]]] = {
    "vocabulary": score_vocabulary,
    "grammar": score_exact_and_chrf,
    "fluency": score_fluency,
    "dialogue": score_dialogue,
    "explanation": score_explanation,
}


def score_task(task: str, answers: list[str], references: list[str]) -> dict[str, float]:
    """One task's figures and its 0–1 `score`; a task without a scorer of its own (rows
    without a task column included) gets exact match and chrF."""
    if len(answers) != len(references):
        raise ValueError(f"{task}: {len(answers)} answers for {len(references)} references")
    return SCORERS.get(task, score_exact_and_chrf)(answers, references)


def score_answers(tasks: list[str], answers: list[str], references: list[str]) -> dict[str, dict[str, float]]:
    """{task: its figures and score}, for rows given as parallel lists."""
    grouped: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for task, answer, reference in zip(tasks, answers, references, strict=True):
        grouped[task or NO_TASK][0].append(answer)
        grouped[task or NO_TASK][1].append(reference)
    return {task: score_task(task, *grouped[task]) for task in sorted(grouped)}


def task_score(per_task: dict[str, dict[str, float]]) -> float | None:
    """The mean of the tasks' 0–1 scores (a NaN score counted 0: a task was scored but gave nothing)."""
    scores = [figures["score"] for figures in per_task.values()]
    return _mean(0.0 if math.isnan(s) else s for s in scores) if scores else None


# --------------------------------------------------------------------------- the rows and their answers


@dataclass(frozen=True)
class EvalRow:
    """One evaluation row as generation sees it."""

    task: str
    prompt_ids: list[int]  # through the generation prompt of the last answer's turn
    reference: str  # that answer's text
    answer_tokens: int  # its token count, the end-of-turn token included
    stop_id: int | None  # the token after the answer (the template's end of turn), a stop token


def eval_rows(eval_data, tokenizer) -> list[EvalRow]:
    """The tokenized evaluation set (input_ids, labels, task: `data.prepare_data`'s) as
    prompts and references: the last run of labelled tokens is the answer scored (earlier
    assistant turns of a conversation are context), everything before it the prompt."""
    rows = []
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    for ids, labels, task in zip(eval_data["input_ids"], eval_data["labels"], eval_data["task"]):
        end = max((i for i, label in enumerate(labels) if label != -100), default=-1) + 1
        if end == 0:
            continue  # no answer (cannot happen after data's checks)
        start = end - 1
        while start > 0 and labels[start - 1] != -100:
            start -= 1
        answer = list(ids[start:end])
        stop = answer[-1] if answer[-1] in special else None
        rows.append(EvalRow(task or NO_TASK, list(ids[:start]),
                            tokenizer.decode(answer, skip_special_tokens=True).strip(), len(answer), stop))
    return rows


def max_new_tokens(rows: list[EvalRow], margin: float = 1.1, cap: int = 512) -> int:
    """Generation length for a group of rows: its longest reference answer plus a tenth and
    two tokens (an answer a little longer than the reference still ends; a model that never
    stops costs no more than that), capped."""
    longest = max((row.answer_tokens for row in rows), default=1)
    return max(1, min(cap, math.ceil(longest * margin) + 2))


PEFT_BASE = "__base__"  # peft's adapter name for "no adapter" in a mixed batch


def generate_answers(model, tokenizer, rows: list[EvalRow], adapters: list[str | None] = (None,),
                     batch_size: int = 64) -> dict[str | None, list[str]]:
    """Greedy answers of each adapter (None: the base), in the rows' order: one task's rows
    at a time (its own max_new_tokens), left-padded batches of similar prompt length, the KV
    cache on. Several adapters answer in ONE batch (peft's mixed-adapter batches, the base's
    rows included): on a small model a decoding step costs about the same for 6 rows as for
    24, so scoring 3 trials and the base costs about one generation, not four."""
    import torch

    jobs = [(index, adapter) for adapter in adapters for index in range(len(rows))]
    answers: dict[tuple[int, str | None], str] = {}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = sorted({row.stop_id for row in rows if row.stop_id is not None} | (
        {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()))
    device = next(model.parameters()).device
    by_task: dict[str, list[tuple[int, str | None]]] = defaultdict(list)
    for job in jobs:
        by_task[rows[job[0]].task].append(job)
    model.eval()
    mixed = any(adapter is not None for adapter in adapters)
    for task, members in sorted(by_task.items()):
        limit = max_new_tokens([rows[i] for i, _ in members])
        members = sorted(members, key=lambda job: len(rows[job[0]].prompt_ids))
        for first in range(0, len(members), batch_size):
            batch = members[first:first + batch_size]
            prompts = [rows[i].prompt_ids for i, _ in batch]
            width = max(len(prompt) for prompt in prompts)
            ids = [[pad] * (width - len(prompt)) + prompt for prompt in prompts]
            mask = [[0] * (width - len(prompt)) + [1] * len(prompt) for prompt in prompts]
            extra = {"adapter_names": [adapter or PEFT_BASE for _, adapter in batch]} if mixed else {}
            with torch.inference_mode():
                out = model.generate(input_ids=torch.tensor(ids, device=device),
                                     attention_mask=torch.tensor(mask, device=device),
                                     do_sample=False, use_cache=True, max_new_tokens=limit,
                                     eos_token_id=stops or None, pad_token_id=pad,
                                     temperature=None, top_p=None, top_k=None, **extra)
            for position, job in enumerate(batch):
                answers[job] = tokenizer.decode(out[position, width:], skip_special_tokens=True).strip()
    return {adapter: [answers[(index, adapter)] for index in range(len(rows))] for adapter in adapters}


# --------------------------------------------------------------------------- scoring models


@dataclass(frozen=True)
class ScoreTarget:
    """A model to score: the base (`checkpoint` None) or a trial's best checkpoint."""

    name: str  # BASE or the trial id
    checkpoint: str | None = None  # the Ray checkpoint's path, as Tune recorded it
    precision: str = "fp32"  # the dtype the trial trained in (the base: the best trial's)
    node_id: str | None = None  # where the trial ran (a Ray node id), for the Ray task's placement


@dataclass(frozen=True)
class ModelScores:
    """One model's scores: its task score and every task's figures."""

    name: str
    task_score: float | None
    per_task: dict[str, dict[str, float]]
    seconds: float
    examples: list[dict] = field(default_factory=list)  # a few (task, answer, reference), for reading


@dataclass(frozen=True)
class ScoreRun:
    """What scores.json holds."""

    eval_rows: int
    models: list[ModelScores]
    seconds: float  # scoring's wall time, loading included
    tuning_seconds: float | None  # the tuning's wall time, for the ratio
    where: str  # "driver" or "ray tasks"
    rows_per_task: dict[str, int] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)  # rows_s, load_s, generate_s (in this process)

    @property
    def base(self) -> ModelScores | None:
        return next((m for m in self.models if m.name == BASE), None)

    @property
    def trials(self) -> list[ModelScores]:
        return [m for m in self.models if m.name != BASE]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)  # asdict turns the models into dicts too

    @classmethod
    def from_json(cls, text: str) -> ScoreRun:
        data = json.loads(text)
        models = [ModelScores(**model) for model in data.pop("models")]
        return cls(**data, models=models)


def read_scores(layout: ExperimentLayout) -> ScoreRun | None:
    text = storage.read_text(layout.scores_file)
    return None if text is None else ScoreRun.from_json(text)


@contextlib.contextmanager
def _checkpoint_dir(layout: ExperimentLayout, path: str):
    """The checkpoint's HF folder (downloaded when at a URI)."""
    with layout.checkpoint(path).as_directory() as restored:
        yield os.path.join(restored, storage.CHECKPOINT_NAME)


def score_models(layout: ExperimentLayout, config: ExperimentConfig, targets: list[ScoreTarget],
                 rows: list[EvalRow], progress: Callable[[str], None] | None = None,
                 tokenizer=None, phases: dict[str, float] | None = None) -> list[ModelScores]:
    """Score the targets in this process: one base model (per precision) loaded once, every
    trial's adapter loaded onto it, and all of them (the base too) answering in the same
    mixed-adapter batches (`generate_answers`). A model's `seconds` is its share of the group's;
    `phases` gets the seconds spent loading (base + adapters) and generating."""
    import torch
    from peft import PeftModel

    from lexiray.model import load_base_model, load_tokenizer

    tokenizer = tokenizer or load_tokenizer(config.model)
    references = [row.reference for row in rows]
    tasks = [row.task for row in rows]
    results = []
    phases = {} if phases is None else phases
    by_precision: dict[str, list[ScoreTarget]] = defaultdict(list)
    for target in targets:
        by_precision[target.precision].append(target)
    for precision, group in by_precision.items():
        started = time.time()
        model = load_base_model(config.model, precision)
        if torch.cuda.is_available() and config.model.quantization == "none":
            model = model.to("cuda")
        model.config.use_cache = True
        for target in group:
            if target.checkpoint is None:
                continue
            with _checkpoint_dir(layout, target.checkpoint) as folder:
                if not isinstance(model, PeftModel):
                    model = PeftModel.from_pretrained(model, folder, adapter_name=target.name)
                else:
                    model.load_adapter(folder, adapter_name=target.name)
        adapters = [None if target.checkpoint is None else target.name for target in group]
        loaded = time.time()
        answered = generate_answers(model, tokenizer, rows, adapters)
        phases["load_s"] = phases.get("load_s", 0.0) + loaded - started
        phases["generate_s"] = phases.get("generate_s", 0.0) + time.time() - loaded
        seconds = (time.time() - started) / len(group)
        for target, adapter in zip(group, adapters):
            answers = answered[adapter]
            per_task = score_answers(tasks, answers, references)
            examples = [{"task": t, "answer": a, "reference": r}
                        for t, a, r in _one_per_task(tasks, answers, references)]
            results.append(ModelScores(target.name, task_score(per_task), per_task, seconds, examples))
            if progress:
                progress(f"scored {target.name}: task score {_score_cell(results[-1].task_score)}")
    order = {target.name: index for index, target in enumerate(targets)}
    return sorted(results, key=lambda result: order[result.name])


def _score_cell(value) -> str:
    return cell(value, ".3f")


def _one_per_task(tasks, answers, references):
    seen = set()
    for task, answer, reference in zip(tasks, answers, references):
        if task not in seen:
            seen.add(task)
            yield task, answer[:300], reference[:300]


def _score_one_remote(layout_root: str, config_yaml: str, target: ScoreTarget, rows: list[EvalRow]) -> ModelScores:
    """The body of a Ray scoring task: one model, on the node and with the resources its trial had."""
    import torch

    from lexiray.config import config_from_dict, yaml_load

    config = config_from_dict(yaml_load(config_yaml) or {}, "scoring task")
    torch.set_num_threads(max(1, int(config.resources.cpus_per_trial)))  # Ray workers start with 1
    return score_models(ExperimentLayout(layout_root), config, [target], rows)[0]


def score_models_on_ray(layout: ExperimentLayout, config: ExperimentConfig, targets: list[ScoreTarget],
                        rows: list[EvalRow], progress: Callable[[str], None] | None = None) -> list[ModelScores]:
    """One Ray task per model, with a trial's resources (its GPU when it had one), placed on
    the node the trial trained on when that node is still there (a soft affinity: elsewhere
    if not). The checkpoint is read from the experiment's storage, local or at a URI."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from lexiray.config import config_to_yaml

    resources = config.resources
    remote = ray.remote(_score_one_remote)
    yaml_text = config_to_yaml(config)
    rows_ref = ray.put(rows)
    pending = {}
    for target in targets:
        options = {"num_cpus": resources.cpus_per_trial, "num_gpus": resources.gpus_per_trial, "max_retries": 1}
        if target.node_id:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(target.node_id, soft=True)
        pending[remote.options(**options).remote(layout.root, yaml_text, target, rows_ref)] = target.name
    results = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        name = pending.pop(done[0])
        results.append(ray.get(done[0]))
        if progress:
            progress(f"scored {name}: task score {_score_cell(results[-1].task_score)}")
    order = {target.name: index for index, target in enumerate(targets)}
    return sorted(results, key=lambda result: order[result.name])


def runs_on_ray(config: ExperimentConfig, layout: ExperimentLayout) -> bool:
    """Trials on GPUs, or on a cluster (the experiment at a URI): score where they ran, as
    Ray tasks. Otherwise (CPU trials on this machine) in this process, which has
    transformers imported already: a Ray task would pay a worker's start and imports."""
    return config.resources.gpus_per_trial > 0 or not layout.is_local


def warm_imports(config: ExperimentConfig, layout: ExperimentLayout) -> None:
    """Import what scoring in this process needs (peft, sacrebleu; ~2 s on 2 cores, most of the
    demo's scoring otherwise) in a background thread, called as the tuning starts: the driver
    mostly waits on its trials then, so the imports cost the end of the run nothing. Nothing
    when scoring is off or runs as Ray tasks."""
    if not config.tune.score_top_k or runs_on_ray(config, layout):
        return
    import threading

    def run() -> None:
        try:
            import peft  # noqa: F401
            import sacrebleu.metrics  # noqa: F401
        except Exception:  # noqa: BLE001 - scoring imports them again and reports what fails
            pass

    threading.Thread(target=run, name="lexiray-scoring-imports", daemon=True).start()


def run_scoring(layout: ExperimentLayout, config: ExperimentConfig, targets: list[ScoreTarget], eval_data,
                tuning_seconds: float | None = None, on_ray: bool | None = None,
                progress: Callable[[str], None] | None = None, keep: ScoreRun | None = None) -> ScoreRun:
    """Score the targets on the evaluation rows (`eval_data`: the tokenized eval set; None:
    rebuilt from the config) and write scores.json. `on_ray` None: `runs_on_ray`. `keep`: an
    earlier run whose other trials' scores stay (a rescore of one trial)."""
    started = time.time()
    from lexiray.model import load_tokenizer

    tokenizer = load_tokenizer(config.model)
    if eval_data is None:
        from lexiray.data import prepare_data

        eval_data = prepare_data(config.data, tokenizer).eval
    rows = eval_rows(eval_data, tokenizer)
    phases = {"rows_s": time.time() - started}
    if not rows:
        raise LexirayError(f"{layout.root}: no evaluation rows to score")
    on_ray = runs_on_ray(config, layout) if on_ray is None else on_ray
    if progress:
        progress(f"scoring {len(targets)} models on {len(rows)} eval rows "
                 f"({'Ray tasks where the trials ran' if on_ray else 'in this process'})")
    models = (score_models_on_ray(layout, config, targets, rows, progress) if on_ray
              else score_models(layout, config, targets, rows, progress, tokenizer, phases))
    if keep is not None and keep.eval_rows == len(rows):
        names = {model.name for model in models}
        models = [*models, *(model for model in keep.models if model.name not in names)]
        models.sort(key=lambda model: model.name != BASE)  # the base first, then the trials as scored
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[row.task] += 1
    run = ScoreRun(len(rows), models, time.time() - started, tuning_seconds, "ray tasks" if on_ray else "driver",
                   dict(sorted(counts.items())), phases)
    storage.write_text(layout.scores_file, run.to_json())
    return run


def score_line(run: ScoreRun) -> str:
    """One line: every scored model's task score and the time against the tuning's."""
    share = (f" = {run.seconds / run.tuning_seconds:.0%} of tuning's {run.tuning_seconds:.0f} s"
             if run.tuning_seconds else "")
    models = " · ".join(f"{'base' if m.name == BASE else 'trial ' + m.name} {_score_cell(m.task_score)}" for m in run.models)
    return f"task scores ({run.eval_rows} eval rows, {run.seconds:.1f} s{share}): {models}"


def score_table(run: ScoreRun) -> list[list[str]]:
    """Rows of a per-task table: header, then one row per task (its 0–1 score per model,
    with the figures behind it), then the task score."""
    names = [m.name for m in run.models]
    tasks = sorted({task for m in run.models for task in m.per_task})
    lines = [["task (rows)", *names]]
    for task in tasks:
        lines.append([f"{task} ({run.rows_per_task.get(task, '?')})",
                      *(_score_cell((m.per_task.get(task) or {}).get("score")) for m in run.models)])
    lines.append(["task score", *(_score_cell(m.task_score) for m in run.models)])
    return lines


def figure_columns(per_task: dict[str, dict[str, float]]) -> dict[str, float]:
    """A model's figures flat, `<task>/<figure>` (the leaderboard's `score/<task>/<figure>` columns)."""
    return {f"{task}/{name}": value for task, figures in per_task.items() for name, value in figures.items()}
