"""Ray itself: join a cluster or start a local one, and check it can hold what is asked.

Used by both `lexiray train` and `lexiray tune` before anything is started on the cluster.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lexiray import ray_seam
from lexiray.config import ExperimentConfig
from lexiray.errors import ResourceError
from lexiray.storage import is_uri

# Ray's environment knobs, with why each is set, live in lexiray.ray_seam.
RAY_ENV_DEFAULTS, LOCAL_ONLY_ENV_DEFAULTS = ray_seam.RAY_ENV_DEFAULTS, ray_seam.LOCAL_ONLY_ENV_DEFAULTS


def init_ray(address: str | None = None, num_cpus: float | None = None, verbose: bool = False,
             log_to_driver: bool | None = None) -> None:
    """Connect to a cluster (address / RAY_ADDRESS, as under `ray job submit`) or start a
    local one in-process. Environment defaults are set before Ray starts so every worker
    inherits them."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if not address:
        for key, value in LOCAL_ONLY_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
    kwargs = {"log_to_driver": verbose if log_to_driver is None else log_to_driver, "configure_logging": True,
              "logging_level": logging.INFO if verbose else logging.WARNING}
    if address:
        ray.init(address=address, **kwargs)
        return
    # The dashboard is needed: Train's placement-group cleaner asks Ray's state API (served by
    # the dashboard) whether a trial's controller still lives; without it trials stopped by
    # ASHA never gave their resources back (STACK-NOTES). That API finds its cluster by
    # RAY_API_SERVER_ADDRESS / RAY_ADDRESS, or else by looking for Ray on this machine, and
    # with a second Ray running here it finds two, fails, and the trials hang. So the new
    # cluster's dashboard gets a port chosen here, named in a variable every Ray process
    # inherits, and only the loopback interface (Ray's token authentication stays on).
    port = free_local_port()
    os.environ[ray_seam.STATE_API_ADDRESS_ENV] = f"http://127.0.0.1:{port}"
    ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port, **kwargs)


def free_local_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def check_resources(config: ExperimentConfig) -> None:
    """Refuse before any trial starts when the cluster cannot hold one trial."""
    import ray

    total = ray.cluster_resources()
    per_trial = config.resources
    gpus_needed = per_trial.gpus_per_trial * per_trial.num_workers
    if gpus_needed > total.get("GPU", 0):
        raise ResourceError(
            f"resources.gpus_per_trial={per_trial.gpus_per_trial:g} but this Ray cluster has "
            f"{total.get('GPU', 0):g} GPUs; set resources.gpus_per_trial=0 to train on CPU"
        )
    cpus_needed = per_trial.cpus_per_trial * per_trial.num_workers
    if cpus_needed > total.get("CPU", 0):
        raise ResourceError(
            f"resources.cpus_per_trial={per_trial.cpus_per_trial:g} x num_workers={per_trial.num_workers} "
            f"needs {cpus_needed:g} CPUs but this Ray cluster has {total.get('CPU', 0):g}"
        )
    if per_trial.accelerator_type:
        key = f"accelerator_type:{per_trial.accelerator_type}"
        if key not in total:
            raise ResourceError(f"resources.accelerator_type={per_trial.accelerator_type}: no such GPU in this cluster")


def check_shared_storage(storage: str) -> None:
    """Ray no longer syncs trial folders to the head node: on several nodes a plain local
    path would scatter results over the nodes' disks."""
    import ray

    alive = [node for node in ray.nodes() if node.get("Alive")]
    if len(alive) > 1 and not is_uri(storage):
        raise ResourceError(
            f"tune.storage_path={storage} is a local folder but the cluster has {len(alive)} nodes: use "
            "s3://..., gs://... or a shared NFS mount written as file:///mnt/shared/..."
        )


def default_concurrency(config: ExperimentConfig) -> int:
    """As many trials at once as the cluster's GPUs (or CPUs) hold, counting only the nodes
    with the requested accelerator type when there is one."""
    import ray

    resources = config.resources
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if resources.accelerator_type:
        nodes = [node for node in nodes if f"accelerator_type:{resources.accelerator_type}" in node]
    if resources.gpus_per_trial > 0:
        slots = sum(node.get("GPU", 0) for node in nodes) // (resources.gpus_per_trial * resources.num_workers)
    else:
        slots = sum(node.get("CPU", 0) for node in nodes) // (resources.cpus_per_trial * resources.num_workers)
    return max(1, int(slots))


# --------------------------------------------------------------------------- `lexiray submit`

DEFAULT_RUNTIME_ENV = "cluster/runtime_env.yaml"


@dataclass(frozen=True)
class JobSubmission:
    """One `ray job submit` call: what `lexiray submit` prints and runs."""

    address: str  # the head's dashboard, http://HEAD:8265
    working_dir: str
    runtime_env: str | None
    entrypoint: tuple[str, ...]
    submission_id: str
    wait: bool = True

    def command(self) -> list[str]:
        command = ["ray", "job", "submit", "--address", self.address, "--submission-id", self.submission_id,
                   "--working-dir", self.working_dir]
        if self.runtime_env:
            command += ["--runtime-env", self.runtime_env]
        if not self.wait:
            command.append("--no-wait")
        return [*command, "--", *self.entrypoint]

    def follow_lines(self) -> list[str]:
        where = f"--address {self.address}"
        return [f"follow:  ray job logs -f {self.submission_id} {where}",
                f"status:  ray job status {self.submission_id} {where}",
                f"stop:    ray job stop {self.submission_id} {where}"]


def plan_submission(tune_args: list[str], experiment_name: str, address: str | None, working_dir: str,
                    runtime_env: str | None, python: str, wait: bool) -> JobSubmission:
    """The `ray job submit` call for a tuning run (its options already validated)."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ResourceError("lexiray submit: give --address http://HEAD:8265 (the head's dashboard) or set "
                            "RAY_ADDRESS")
    if not address.startswith(("http://", "https://")):
        raise ResourceError(f"lexiray submit --address {address}: jobs go to the dashboard's HTTP address, "
                            "e.g. http://127.0.0.1:8265 (port-forward or `ray dashboard` to reach it)")
    if not Path(working_dir).is_dir():
        raise ResourceError(f"lexiray submit --working-dir {working_dir}: no such folder")
    if runtime_env and not Path(runtime_env).is_file():
        raise ResourceError(f"lexiray submit --runtime-env {runtime_env}: no such file")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return JobSubmission(address, working_dir, runtime_env, (python, "-m", "lexiray", "tune", *tune_args),
                         f"lexiray-{experiment_name}-{stamp}", wait)
