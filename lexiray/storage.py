"""The experiment folder, on local disk or at a URI: its layout, its files, finding it again.

Nothing else in lexiray builds these paths. A tuning experiment (Ray Tune's layout, plus
lexiray's files):

  <storage_path>/<name>/
    config.yaml              the experiment's resolved config (first line: max_t, grace, concurrency)
    trial_<id>/              Ray Tune's trial folders (result.json, error.txt); a single-worker
                             trial's checkpoints too: checkpoint_*/checkpoint/ (HF files), kept by Tune
    trials/<id>/             a multi-worker trial's Ray Train run: checkpoint_*/checkpoint/ (HF files)
    trials/<id>/config.yaml  the trial's resolved config, written where it ran
    trials/<id>/fingerprint.json  its identity (lexiray.warm): settings that change results + data
    fingerprints/<hash>      the trial that trains this fingerprint in this experiment (its twins
                             replay it; a later `--warm-start` experiment reuses it)
    finished/<id>.json       "this trial is over" (done or stopped by ASHA), written at once
    finished/history/<id>.jsonl   every result of a trial, as it arrived (resume replays them)
    finished/<id>.failed     an attempt of the trial failed (its twins stop waiting for it)
    tensorboard/<id> <sample>/    HF curves of each trial, and its HParams session (written by the report)
    leaderboard.csv  summary.json  scores.json (task scores from generations)  best/
    report/                  README.md with the leaderboard and the PNG plots

The same layout at a URI (s3://, gs://, file://) on a cluster: every file above is written
and read through pyarrow, so a remote experiment resumes, reports and exports like a local
one. Only the `--chaos` marker (a testing aid) needs a local experiment.

A single run (`lexiray train --output DIR`) keeps its Train run in `DIR/ray/train`, its
tokenized data in `DIR/data`, its curves in `DIR/tensorboard`, and the exported adapter in
`DIR` itself. Worker scratch folders (the HF Trainer's local output) live in the temp dir.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from lexiray.config import ExperimentConfig, config_from_dict, config_to_yaml, yaml_load
from lexiray.errors import LexirayError
from lexiray.results import TUNE_AUTO_KEYS

CONFIG_FILE = "config.yaml"
CHECKPOINT_NAME = "checkpoint"  # the HF checkpoint's folder inside a Ray checkpoint
DEFAULT_STORAGE = ExperimentConfig().tune.storage_path
# Files of a HF checkpoint needed only to resume training, not to use the adapter.
TRAINING_STATE_FILES = {"optimizer.pt", "scheduler.pt", "training_args.bin", "trainer_state.json", "scaler.pt"}


# --------------------------------------------------------------------------- local or URI
# Every location is a string: an absolute local path, or a URI that pyarrow reads (s3://,
# gs://, file://; an S3-compatible endpoint comes from AWS_ENDPOINT_URL, as in Ray).


def is_uri(location: str) -> bool:
    return "://" in location


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def filesystem(location: str):
    """(pyarrow filesystem, path inside it) of a URI. The path part is percent-encoded first:
    lexiray's folder names hold spaces and '=' (TensorBoard runs named by their settings),
    which pyarrow's URI parser refuses; it decodes them again. A query (?region=...) is kept."""
    from urllib.parse import quote

    import pyarrow.fs

    scheme, rest = location.split("://", 1)
    path, separator, query = rest.partition("?")
    return pyarrow.fs.FileSystem.from_uri(f"{scheme}://{quote(path, safe='/:@%')}{separator}{query}")


def write_bytes(location: str, data: bytes) -> None:
    """Write a small file; a local file is replaced atomically, so a reader never sees
    half of it (an object store's put is atomic by itself)."""
    if not is_uri(location):
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_bytes(data)
        temporary.replace(path)
        return
    fs, path = filesystem(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode("utf-8"))


def read_text(location: str) -> str | None:
    """The file's text, or None when it does not exist."""
    if not is_uri(location):
        path = Path(location)
        return path.read_text(encoding="utf-8") if path.is_file() else None
    import pyarrow.fs

    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read().decode("utf-8")


def exists(location: str) -> bool:
    if not is_uri(location):
        return Path(location).exists()
    import pyarrow.fs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def list_file_names(folder: str) -> list[str]:
    """Names of the files directly inside a folder (none when it does not exist)."""
    if not is_uri(folder):
        path = Path(folder)
        return sorted(p.name for p in path.iterdir() if p.is_file()) if path.is_dir() else []
    import pyarrow.fs

    fs, path = filesystem(folder)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return sorted(info.base_name for info in infos if info.type == pyarrow.fs.FileType.File)


def upload_folder(local: Path, location: str) -> None:
    """Copy a local folder's files to a location (a URI, or another local folder)."""
    if not is_uri(location):
        shutil.copytree(local, location, dirs_exist_ok=True)
        return
    import pyarrow.fs

    fs, path = filesystem(location)
    fs.create_dir(path, recursive=True)
    pyarrow.fs.copy_files(str(local), path, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs)


def _local_part(location: str) -> Path:
    return Path(location[len("file://"):] if location.startswith("file://") else location).expanduser()


def check_storage(location: str, field: str = "tune.storage_path") -> None:
    """Before Ray starts: a local folder can be written in (tried, not guessed from the mode
    bits, which root ignores); a bucket exists and answers within seconds, where pyarrow's
    default client would retry an unreachable endpoint for a minute."""
    if not is_uri(location) or location.startswith("file://"):
        ancestor = _local_part(location).resolve()
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise LexirayError(f"{field}={location}: {ancestor} is a file, not a folder: choose a folder")
        try:
            tempfile.TemporaryFile(dir=ancestor).close()
        except OSError as error:
            raise LexirayError(f"{field}={location}: cannot write in {ancestor} ({error.strerror}): choose a "
                               "writable folder") from None
        return
    import pyarrow.fs

    bucket = location.split("://", 1)[1].split("?", 1)[0].split("/", 1)[0]
    try:
        info = _quick_filesystem(location).get_file_info(bucket)
    except (OSError, ValueError) as error:  # pyarrow's ArrowIOError / ArrowInvalid
        reason = str(error).strip().splitlines()[0][:200]
        if "301" in reason or "region" in reason.lower():
            return  # a bucket in another region answers; Ray's own client resolves the region
        raise LexirayError(f"{field}={location}: cannot reach bucket '{bucket}' ({reason}): check the endpoint "
                           "(AWS_ENDPOINT_URL), the network and the credentials") from None
    if info.type == pyarrow.fs.FileType.NotFound:
        raise LexirayError(f"{field}={location}: bucket '{bucket}' does not exist: create it first, or fix the name")


def _quick_filesystem(location: str):
    """The location's filesystem with short timeouts and no retries, for `check_storage`."""
    from datetime import timedelta
    from urllib.parse import parse_qsl

    import pyarrow.fs

    scheme = location.split("://", 1)[0]
    if scheme == "s3":
        query = dict(parse_qsl(location.partition("?")[2]))
        # from_uri reads the endpoint from the environment as Ray does; the constructor does not
        endpoint = (query.get("endpoint_override") or os.environ.get("AWS_ENDPOINT_URL_S3")
                    or os.environ.get("AWS_ENDPOINT_URL"))
        return pyarrow.fs.S3FileSystem(region=query.get("region"), endpoint_override=endpoint,
                                       scheme=query.get("scheme"), connect_timeout=5, request_timeout=10,
                                       retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=1))
    if scheme in ("gs", "gcs"):
        return pyarrow.fs.GcsFileSystem(retry_time_limit=timedelta(seconds=10))
    return filesystem(location)[0]


def remove_experiment(root: str) -> None:
    """`lexiray tune --overwrite`: the old experiment's files, all of them."""
    if not is_uri(root):
        shutil.rmtree(root, ignore_errors=True)
        return
    fs, path = filesystem(root)
    fs.delete_dir(path)


# --------------------------------------------------------------------------- a tuning experiment


@dataclass(frozen=True)
class ExperimentLayout:
    """Where every file of one tuning experiment lives. `root` is an absolute local path or
    a URI; Ray Tune's own (storage_path, name) are its parent and its last part."""

    root: str

    @classmethod
    def for_new_experiment(cls, config: ExperimentConfig) -> "ExperimentLayout":
        """A local storage path is made absolute; the default name is the preset's plus the
        start time, so a second run never collides with the first."""
        storage = config.tune.storage_path
        if not is_uri(storage):
            storage = str(Path(storage).expanduser().resolve())
        name = config.tune.name or f"{config.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        return cls(join(storage, name))

    @property
    def storage_path(self) -> str:
        return self.root.rstrip("/").rsplit("/", 1)[0]

    @property
    def name(self) -> str:
        return self.root.rstrip("/").rsplit("/", 1)[1]

    @property
    def is_local(self) -> bool:
        return not is_uri(self.root)

    def exists(self) -> bool:
        return exists(self.root) if self.is_local else exists(self.config_file)

    def path(self, *parts: str) -> str:
        return join(self.root, *parts)

    @property
    def config_file(self) -> str:
        return self.path(CONFIG_FILE)

    @property
    def trials_storage(self) -> str:
        """Ray Train's storage_path for the trials' runs; each run is named by its trial id."""
        return self.path("trials")

    def trial_config_file(self, trial_id: str) -> str:
        return self.path("trials", trial_id, CONFIG_FILE)

    def trial_fingerprint_file(self, trial_id: str) -> str:
        return self.path("trials", trial_id, "fingerprint.json")

    def fingerprint_claim_file(self, fingerprint: str) -> str:
        return self.path("fingerprints", fingerprint)

    def failed_file(self, trial_id: str) -> str:
        return self.path("finished", f"{trial_id}.failed")

    @property
    def tensorboard_dir(self) -> str:
        return self.path("tensorboard")

    def trial_tensorboard_dir(self, trial_id: str, label: str) -> str:
        return self.path("tensorboard", f"{trial_id} {label}")

    @property
    def finished_dir(self) -> str:
        return self.path("finished")

    def finished_file(self, trial_id: str) -> str:
        return self.path("finished", f"{trial_id}.json")

    def history_file(self, trial_id: str) -> str:
        return self.path("finished", "history", f"{trial_id}.jsonl")

    @property
    def chaos_folder(self) -> Path | None:
        """The `--chaos` marker needs an atomic create-if-absent: local experiments only."""
        return Path(self.root) if self.is_local else None

    @property
    def leaderboard_file(self) -> str:
        return self.path("leaderboard.csv")

    @property
    def summary_file(self) -> str:
        return self.path("summary.json")

    def trial_hparams_file(self, trial_id: str, label: str) -> str:
        """The trial's HParams session, inside its own TensorBoard run: one fixed name that
        each report rewrites, so a stopped-and-resumed trial stays one session. The name
        sorts after the timestamped files of HF's writer."""
        return join(self.trial_tensorboard_dir(trial_id, label), "events.out.tfevents.9999999999.lexiray-hparams")

    @property
    def scores_file(self) -> str:
        """Task scores from generations (lexiray.scoring): the base and the scored trials."""
        return self.path("scores.json")

    @property
    def report_dir(self) -> str:
        return self.path("report")

    def report_file(self, name: str) -> str:
        return self.path("report", name)

    def plot_file(self, metric: str) -> str:
        return self.report_file(f"{metric}.png")

    @property
    def best_dir(self) -> str:
        return self.path("best")

    def checkpoint(self, path: str):
        """A Ray checkpoint by the path Tune recorded (inside the storage's filesystem), or by
        a full location (a reused trial's checkpoint in another experiment: `checkpoint_location`)."""
        from ray.train import Checkpoint

        if is_uri(path):
            fs, inner = filesystem(path)
            return Checkpoint(inner, filesystem=fs)
        return Checkpoint(path) if self.is_local else Checkpoint(path, filesystem=filesystem(self.root)[0])

    def checkpoint_location(self, path: str) -> str:
        """A checkpoint path Tune recorded, as a location any experiment can read: Tune records
        a URI experiment's paths inside its filesystem ('bucket/exp/trial_x/checkpoint_1'),
        which another experiment's filesystem would read as its own."""
        if self.is_local or is_uri(path):
            return path
        scheme, rest = self.root.split("://", 1)
        query = rest.partition("?")[2]
        return f"{scheme}://{path}" + (f"?{query}" if query else "")


def find_experiment(path_or_name: str) -> ExperimentLayout:
    """An experiment by its folder, its URI, or its name under the default storage path."""
    if is_uri(path_or_name):
        layout = ExperimentLayout(path_or_name.rstrip("/"))
        if read_text(layout.config_file) is None:
            raise LexirayError(f"{path_or_name}: not a lexiray experiment (no {CONFIG_FILE})")
        return layout
    for candidate in (Path(path_or_name).expanduser(), Path(DEFAULT_STORAGE).resolve() / path_or_name):
        if (candidate / CONFIG_FILE).is_file():
            return ExperimentLayout(str(candidate.resolve()))
    raise LexirayError(f"{path_or_name}: not a lexiray experiment folder (no {CONFIG_FILE})")


def write_experiment_config(layout: ExperimentLayout, config: ExperimentConfig, max_t: int, grace: int,
                            concurrency: int) -> None:
    header = f"# resolved by lexiray: max_t={max_t} grace_period={grace} max_concurrent_trials={concurrency}\n"
    write_text(layout.config_file, header + config_to_yaml(config))


def read_config(location: str) -> ExperimentConfig | None:
    text = read_text(location)
    return None if text is None else config_from_dict(yaml_load(text) or {}, location)


def read_experiment_config(layout: ExperimentLayout) -> ExperimentConfig:
    config = read_config(layout.config_file)
    if config is None:
        raise LexirayError(f"{layout.root}: not a lexiray experiment (no {CONFIG_FILE})")
    return config


def write_trial_config(layout: ExperimentLayout, trial_id: str, config: ExperimentConfig) -> None:
    """The trial's resolved config, saved where it ran: the report reads it back instead of
    re-deriving it from the sample."""
    write_text(layout.trial_config_file(trial_id), config_to_yaml(config))


def read_trial_config(layout: ExperimentLayout, trial_id: str) -> ExperimentConfig | None:
    return read_config(layout.trial_config_file(trial_id))


# --------------------------------------------------------------------------- fingerprints (lexiray.warm)


def write_trial_fingerprint(layout: ExperimentLayout, trial_id: str, fingerprint: str, data_fingerprint: str) -> None:
    write_text(layout.trial_fingerprint_file(trial_id),
               json.dumps({"fingerprint": fingerprint, "data_fingerprint": data_fingerprint}))


def read_trial_fingerprint(layout: ExperimentLayout, trial_id: str) -> dict:
    """{"fingerprint", "data_fingerprint"} of a trial; {} for a trial (or lexiray) before fingerprints."""
    text = read_text(layout.trial_fingerprint_file(trial_id))
    return json.loads(text) if text else {}


def fingerprint_owner(layout: ExperimentLayout, fingerprint: str) -> str | None:
    """The trial that trains (or trained) this fingerprint in the experiment, if any."""
    text = read_text(layout.fingerprint_claim_file(fingerprint))
    return text.strip() if text else None


def claim_fingerprint(layout: ExperimentLayout, fingerprint: str, trial_id: str) -> str:
    """The trial that trains this fingerprint: the first to claim it. Returns the owner: this
    trial, or the twin it should replay. Locally an atomic create-if-absent; at a URI a write
    read back (two trials claiming in the same instant may then both train: a lost saving,
    never a wrong result)."""
    location = layout.fingerprint_claim_file(fingerprint)
    if layout.is_local:
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        try:
            handle = os.open(location, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return fingerprint_owner(layout, fingerprint) or trial_id
        with os.fdopen(handle, "w") as stream:
            stream.write(trial_id)
        return trial_id
    owner = fingerprint_owner(layout, fingerprint)
    if owner is None:
        write_text(location, trial_id)
        owner = fingerprint_owner(layout, fingerprint)
    return owner or trial_id


def mark_failed(layout: ExperimentLayout, trial_id: str) -> None:
    """An attempt of the trial failed (Tune retries it, or gives up): its twins stop waiting."""
    write_text(layout.failed_file(trial_id), str(time.time()))


def has_failed(layout: ExperimentLayout, trial_id: str) -> bool:
    return exists(layout.failed_file(trial_id))


# --------------------------------------------------------------------------- finished-trial records
# Tune persists its experiment state only every so often, and drops an unfinished trial's
# results when an experiment is restored: resume relies on these records instead.

# Filled in by Tune for every result (lexiray.results.TUNE_AUTO_KEYS); a replayed result must not carry the old ones.


def _plain(result: dict, drop: set[str] = frozenset()) -> dict:
    return {k: v for k, v in result.items()
            if k not in drop and (isinstance(v, (int, float, str, bool)) or v is None)}


def mark_finished(layout: ExperimentLayout, trial_id: str, last_result: dict) -> None:
    """Record at once that a trial is over (done or stopped by ASHA), so a driver killed
    before Tune's next state save does not run it again on resume."""
    write_text(layout.finished_file(trial_id), json.dumps(_plain(last_result)))


def is_finished(layout: ExperimentLayout, trial_id: str) -> bool:
    return exists(layout.finished_file(trial_id))


def finished_trial_ids(layout: ExperimentLayout) -> set[str]:
    return {name[: -len(".json")] for name in list_file_names(layout.finished_dir) if name.endswith(".json")}


def fill_checkpoint_path(result: dict, trial_path: str) -> dict:
    """`checkpoint_path`: where a result's checkpoint is. Ray Train's runs (multi-worker
    trials) put it in the result; Tune (trials that train in their actor) names only the
    folder inside the trial's, `checkpoint_dir_name`."""
    name, path = result.get("checkpoint_dir_name"), result.get("checkpoint_path")
    # Not a string: absent, or NaN where Tune's results table mixes rows that carry the key
    # (results replayed after a restore) with rows that do not.
    if not (isinstance(path, str) and path) and isinstance(name, str) and name:
        result["checkpoint_path"] = join(trial_path, name)
    return result


def append_history(layout: ExperimentLayout, trial_id: str, result: dict) -> None:
    line = json.dumps(_plain(result, TUNE_AUTO_KEYS)) + "\n"
    location = layout.history_file(trial_id)
    if layout.is_local:
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        with open(location, "a", encoding="utf-8") as handle:
            handle.write(line)
        return
    # An object store cannot append: rewrite the trial's (small) history with the new line.
    write_text(location, (read_text(location) or "") + line)


def claim_untrained_evaluation(layout: ExperimentLayout, trial_id: str) -> bool:
    """True for the first trial that asks (it also evaluates the untrained model, the "before"
    of the leaderboard). By a marker file, not by the trial's name: only random search names
    trials `<run>_00000`; Optuna's are hashes. Two trials starting at once may both claim it,
    which costs one evaluation more and nothing else."""
    marker = layout.path("finished", "untrained-evaluation")
    if read_text(marker) is not None:
        return False
    write_text(marker, trial_id)
    return True


def read_history(layout: ExperimentLayout, trial_id: str) -> list[dict]:
    text = read_text(layout.history_file(trial_id)) or ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class TuningRun:
    """What `tune.run_tuning` / `resume_tuning` hand to the report (defined here, where both
    can import it: the report must not load Ray Tune)."""

    layout: ExperimentLayout
    config: ExperimentConfig
    max_t: int
    wall_time_s: float
    interrupted: str | None = None  # "SIGINT" / "SIGTERM": stopped early, resumable
    budget: dict | None = None  # tune.budget_usd's outcome (lexiray.cost.BudgetLedger.outcome)
    eval_data: Any = None  # the tokenized eval set (datasets.Dataset) the trials used: scoring reuses it

    @property
    def resume_command(self) -> str:
        return f"lexiray resume {self.layout.root}"



# --------------------------------------------------------------------------- a single run


@dataclass(frozen=True)
class TrainRunLayout:
    """`lexiray train --output DIR`: the adapter is exported into DIR itself."""

    output: Path

    @property
    def ray_storage(self) -> str:
        return str(self.output / "ray")

    run_name = "train"

    @property
    def run_dir(self) -> Path:
        return self.output / "ray" / self.run_name

    @property
    def data_dir(self) -> Path:
        return self.output / "data"

    @property
    def tensorboard_dir(self) -> Path:
        return self.output / "tensorboard"

    @property
    def config_file(self) -> Path:
        return self.output / CONFIG_FILE

    @property
    def metrics_file(self) -> Path:
        return self.output / "metrics.json"

    def holds_adapter(self) -> bool:
        """A finished `lexiray train` output: its adapter exported into the folder itself."""
        return (self.output / "adapter_config.json").is_file() and self.metrics_file.is_file()


def find_train_output(path: str) -> TrainRunLayout | None:
    """`path` as a finished `lexiray train --output` folder, or None (then it may be a tuning
    experiment: `find_experiment`)."""
    if is_uri(path):
        return None
    layout = TrainRunLayout(Path(path).expanduser().resolve())
    return layout if layout.holds_adapter() else None


def write_config(path: Path, config: ExperimentConfig) -> None:
    write_text(str(path), config_to_yaml(config))


# --------------------------------------------------------------------------- adapters


def read_log_history(checkpoint_dir: str | Path) -> list[dict]:
    """The HF log history saved with a checkpoint (includes the step-0 evaluation)."""
    state = Path(checkpoint_dir) / "trainer_state.json"
    if not state.is_file():
        return []
    return json.loads(state.read_text()).get("log_history", [])


def export_adapter(checkpoint, destination: str | Path, config: ExperimentConfig, final_metrics: dict,
                   best_metrics: dict, latest_checkpoint=None) -> dict:
    """Copy a Ray checkpoint's adapter + tokenizer into `destination` (a folder or a URI;
    loadable with `PeftModel.from_pretrained`), with the resolved config and metrics.json."""
    destination = str(destination)
    if is_uri(destination):  # assembled locally, then uploaded
        with tempfile.TemporaryDirectory() as staging:
            summary = export_adapter(checkpoint, Path(staging), config, final_metrics, best_metrics,
                                     latest_checkpoint)
            upload_folder(Path(staging), destination)
        return summary
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as restored:
        source = Path(restored) / CHECKPOINT_NAME
        for item in source.iterdir():
            if item.name in TRAINING_STATE_FILES or item.name.startswith("rng_state"):
                continue
            target = destination / item.name
            if item.is_dir():
                shutil.copytree(item, target, dirs_exist_ok=True)
            else:
                shutil.copy2(item, target)
        history = read_log_history(source)
    if latest_checkpoint is not None and latest_checkpoint.path != checkpoint.path:
        with latest_checkpoint.as_directory() as restored:  # the longest history
            history = read_log_history(Path(restored) / CHECKPOINT_NAME) or history
    write_config(destination / CONFIG_FILE, config)
    evals = [entry for entry in history if "eval_loss" in entry]
    best, final = _plain(best_metrics), _plain(final_metrics)
    summary = {
        "best": best,
        "final": final,
        "eval_loss_at_start": evals[0]["eval_loss"] if evals and evals[0].get("step") == 0 else None,
        "eval_loss_best": best.get("eval_loss"),
        "eval_loss_final": final.get("eval_loss"),
        "history": history,
        "checkpoint": checkpoint.path,
    }
    write_text(str(destination / "metrics.json"), json.dumps(summary, indent=2))
    return summary


# --------------------------------------------------------------------------- worker scratch folders

SCRATCH_PREFIX = "lexiray-trial-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_scratch_dirs(parent: str | None = None, wait_s: float = 0.0) -> None:
    """Remove the scratch folders of trial workers that no longer exist (on this machine),
    giving workers that are being killed up to `wait_s` seconds to exit.

    ASHA stops a trial by killing its worker, so no `finally` of that worker runs, and each
    leftover holds its last checkpoints (tens of MB on a real model)."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = 0
        for entry in Path(parent or tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
            pid = entry.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            if _pid_alive(int(pid)):
                alive += 1
            else:
                shutil.rmtree(entry, ignore_errors=True)
        if not alive or time.monotonic() >= deadline:
            return
        time.sleep(0.5)


def make_scratch_dir(parent: str | None = None) -> str:
    """The HF Trainer's local output folder for this worker (Ray persists the checkpoints),
    named after the worker's pid so that `sweep_scratch_dirs` can tell when it is orphaned."""
    parent = parent or tempfile.gettempdir()
    sweep_scratch_dirs(parent)
    return tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=parent)
