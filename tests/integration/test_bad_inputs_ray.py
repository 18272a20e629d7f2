"""The bad inputs only a running Ray cluster can reveal (issue 13): more GPUs or CPUs per
trial than the cluster has. Refused before any trial starts, in one `error:` line, exit
code 2, no experiment folder, and no Ray process left behind."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # each case starts Ray: the cluster is what refuses it


@pytest.mark.parametrize("setting, expected", [
    ("resources.gpus_per_trial=1", "resources.gpus_per_trial=1 but this Ray cluster has 0 GPUs; set "
                                   "resources.gpus_per_trial=0 to train on CPU"),
    ("resources.cpus_per_trial=512", "resources.cpus_per_trial=512 x num_workers=1 needs 512 CPUs but this Ray "
                                     "cluster has"),
], ids=["gpus", "cpus"])
def test_more_than_the_cluster_has(tmp_path, no_ray_leftovers, setting, expected):
    result = run_cli(["tune", "--storage-path", "results", "--name", "exp", "--set", setting], cwd=tmp_path,
                     timeout=180)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [result.stderr.strip().splitlines()[-1]] and expected in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "results").exists()
