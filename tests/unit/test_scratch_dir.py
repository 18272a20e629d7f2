"""A trial worker's local HF output folder: the folders of workers that were killed (ASHA
stops trials that way) are swept when the next worker makes its own."""

import os
import subprocess
import sys
import threading

from lexiray.storage import SCRATCH_PREFIX, make_scratch_dir, sweep_scratch_dirs


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_folders_of_dead_workers_are_swept_and_live_ones_kept(tmp_path):
    dead = tmp_path / f"{SCRATCH_PREFIX}{_dead_pid()}-abc"
    (dead / "checkpoint-6").mkdir(parents=True)
    live = tmp_path / f"{SCRATCH_PREFIX}{os.getppid()}-def"  # the parent is alive
    live.mkdir()
    unrelated = tmp_path / "other-folder"
    unrelated.mkdir()

    created = make_scratch_dir(str(tmp_path))

    assert not dead.exists()
    assert live.exists() and unrelated.exists()
    assert os.path.basename(created).startswith(f"{SCRATCH_PREFIX}{os.getpid()}-")
    assert os.path.isdir(created)


def test_the_sweep_waits_for_a_worker_that_is_being_killed(tmp_path):
    dying = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    reaper = threading.Thread(target=dying.wait)  # reaped at exit, as Ray's raylet reaps its workers
    reaper.start()
    folder = tmp_path / f"{SCRATCH_PREFIX}{dying.pid}-xyz"
    folder.mkdir()
    sweep_scratch_dirs(str(tmp_path), wait_s=0)
    assert folder.exists()  # its worker is alive: kept
    sweep_scratch_dirs(str(tmp_path), wait_s=10)
    reaper.join()
    assert not folder.exists()  # removed once its worker exited, within the wait
