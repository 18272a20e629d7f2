"""lexiray.ray_seam holds every use of a Ray internal; each test here fails when a Ray upgrade
renames or drops one of them (or fixes the bug a patch works around), and one fails when a
Ray internal is used anywhere else in lexiray."""

from __future__ import annotations

import ast
import inspect
import logging
from pathlib import Path

import ray

from lexiray import ray_seam

PACKAGE = Path(__file__).resolve().parents[2] / "lexiray"
RAY_SOURCE = Path(ray.__file__).resolve().parent


def _ray_sources_mentioning(text: str) -> list[Path]:
    return [path for path in RAY_SOURCE.rglob("*.py") if text in path.read_text(errors="replace")]


def test_every_environment_knob_is_still_read_by_ray():
    knobs = {**ray_seam.RAY_ENV, **ray_seam.LOCAL_ONLY_ENV, **ray_seam.DRIVER_ENV}
    knobs.pop("TOKENIZERS_PARALLELISM")  # Hugging Face's, not Ray's
    assert len(knobs) == 10
    for name in [*knobs, ray_seam.STATE_API_ADDRESS_ENV]:
        assert _ray_sources_mentioning(f'"{name}"'), f"Ray no longer reads {name}"
    for name, (value, why) in knobs.items():
        assert isinstance(value, str) and why, name


def test_the_lean_trainer_drops_only_ray_datas_callback():
    from ray.train import ScalingConfig
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    def train_fn():
        pass

    kwargs = {"scaling_config": ScalingConfig(num_workers=1)}
    plain = DataParallelTrainer(train_fn, **kwargs)._create_default_callbacks()
    lean = ray_seam.LeanTrainer(train_fn, **kwargs)._create_default_callbacks()
    assert sum(isinstance(callback, DatasetsCallback) for callback in plain) == 1
    assert [type(c) for c in plain if not isinstance(c, DatasetsCallback)] == [type(c) for c in lean]


def test_the_tune_session_still_has_the_attributes_lexiray_uses():
    from ray.train._internal.session import _TrainSession, get_session

    assert get_session() is None and not ray_seam.tune_asked_to_stop()  # outside a trial: never asked
    session = inspect.getsource(_TrainSession)
    assert "self.stop_event = threading.Event()" in session and "self.stop_event.set()" in session
    assert "self._inter_actor_queue: Optional" in session
    # the session reads Train's reports through get(block=..., timeout=...) and Ray's queue Empty
    assert "self._inter_actor_queue.get(" in session and "ray_queue.Empty" in session


def test_the_checkpoint_path_key_is_rays():
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    assert ray_seam.CHECKPOINT_PATH_KEY == CHECKPOINT_PATH_KEY


def test_the_dead_actor_patch_is_still_needed_and_installs_once():
    from ray.tune.execution.tune_controller import TuneController

    source = inspect.getsource(TuneController._schedule_trial_stop)
    if getattr(TuneController._schedule_trial_stop, "lexiray_marks_trial", False):
        source = inspect.getsource(TuneController._schedule_trial_stop.__closure__[0].cell_contents)
    # The bug: a trial with no live actor returns before it is marked for the state snapshot.
    assert source.index("if trial not in self._trial_to_actor") < source.index("self._mark_trial_to_checkpoint(trial)")
    ray_seam.record_trials_whose_actor_died()
    patched = TuneController._schedule_trial_stop
    ray_seam.record_trials_whose_actor_died()
    assert TuneController._schedule_trial_stop is patched and patched.lexiray_marks_trial


def test_train_report_loggers_named_by_path_are_quieted():
    from ray.train.v2._internal.execution import context

    assert not context.logger.name.startswith("ray.")  # named by its file: no prefix reaches it
    context.logger.setLevel(logging.INFO)
    ray_seam.quiet_train_reports()
    assert context.logger.level == logging.WARNING
    assert logging.getLogger("ray.train").level == logging.WARNING


def test_tune_loggers_and_messages_lexiray_filters_still_exist():
    assert (RAY_SOURCE / "tune/execution/tune_controller.py").read_text().count("logger.error(") > 0
    tune_module = (RAY_SOURCE / "tune/tune.py").read_text()
    assert "logging.getLogger(__name__)" in tune_module
    for hint in ray_seam.TUNE_RESUME_HINTS:
        assert hint in tune_module, hint
    drop = ray_seam._DropTuneResumeHints()
    record = logging.LogRecord("ray.tune.tune", logging.WARNING, "", 0, "Stop signal received (e.g. via SIGINT)",
                               None, None)
    assert not drop.filter(record)


def _ray_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ray":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "ray")
    return found


def test_only_the_seam_imports_ray_internals():
    modules = sorted(PACKAGE.glob("*.py"))
    assert len(modules) > 15
    assert any("ray.train.v2._internal" in name for name in _ray_imports(PACKAGE / "ray_seam.py"))
    for path in modules:
        if path.name == "ray_seam.py":
            continue
        private = {name for name in _ray_imports(path) if any(part.startswith("_") for part in name.split("."))}
        assert not private, f"{path.name} imports Ray internals {private}: move them into lexiray/ray_seam.py"
        text = path.read_text()
        for knob in ('"TUNE_', '"RAY_TRAIN_', '"RAY_AIR_', "_inter_actor_queue", "stop_event", "_mark_trial"):
            assert knob not in text, f"{path.name} uses {knob}: Ray internals belong in lexiray/ray_seam.py"
