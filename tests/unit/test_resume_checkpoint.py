"""trial.present_checkpoint: a resumed trial whose recorded checkpoint was pruned after the
experiment-state snapshot that names it resumes from its newest complete checkpoint instead
of failing every retry (seen in test_object_storage's driver kill)."""

from __future__ import annotations

from ray.train import Checkpoint

from lexiray.trial import present_checkpoint


def _checkpoint(trial, name: str, complete: bool = True):
    folder = trial / name / "checkpoint"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"x")
    if complete:
        (folder / "trainer_state.json").write_text("{}")
    return trial / name


def test_the_recorded_checkpoint_when_it_is_there(tmp_path):
    recorded = _checkpoint(tmp_path, "checkpoint_000001")
    _checkpoint(tmp_path, "checkpoint_000002")
    assert present_checkpoint(Checkpoint(str(recorded))).path == str(recorded)


def test_a_pruned_checkpoint_falls_back_to_the_newest_complete_one(tmp_path):
    _checkpoint(tmp_path, "checkpoint_000000")
    newest_complete = _checkpoint(tmp_path, "checkpoint_000002")
    _checkpoint(tmp_path, "checkpoint_000003", complete=False)  # an upload the kill cut short
    pruned = tmp_path / "checkpoint_000001"
    found = present_checkpoint(Checkpoint(str(pruned)))
    assert found is not None and found.path == str(newest_complete)


def test_none_left_trains_from_step_zero(tmp_path):
    _checkpoint(tmp_path, "checkpoint_000003", complete=False)
    assert present_checkpoint(Checkpoint(str(tmp_path / "checkpoint_000001"))) is None
