"""cluster/ holds files users apply as they are: Ray's own checks accept them, the upload of
a checkout stays small, the image is the tested Ray, and every placeholder is documented.

No cluster is started and nothing leaves this machine: the launcher files go through what
`ray up` runs before it contacts a cloud, the KubeRay spec through what Ray's KubeRay
autoscaler derives from it, the runtime_env through `ray job submit`'s parsing, Ray's
RuntimeEnv validation and Ray's packaging of a working_dir.
"""

from __future__ import annotations

import copy
import inspect
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
LAUNCHERS = ["aws-t4.yaml", "gcp-t4.yaml"]
RAYJOB = CLUSTER / "kuberay-rayjob.yaml"
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"
IMAGE = "YOUR-REGISTRY/lexiray:0.1.0"
PLACEHOLDER = re.compile(r"YOUR-[A-Z0-9]+(?:-[A-Z0-9]+)*")
# "#   YOUR-NAME   what it is": a placeholder's entry in the comment block heading a file.
DEFINITION = re.compile(r"#\s+(YOUR-[A-Z0-9]+(?:-[A-Z0-9]+)*)\s{2,}\S")


def read_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# ----------------------------------------------------------------- (1) launcher files: `ray up`


def ray_up_checks(config: dict) -> dict:
    """What `ray up` does to a config before contacting the cloud:
    commands.create_or_update_cluster → _bootstrap_config → prepare_config (defaults,
    Docker check, per-type worker bounds), then validate_config (ray-schema.json and the
    cross-field checks). Next would come the provider's bootstrap, which calls AWS/GCP."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_ray_up_still_checks_this_way():
    """ray_up_checks mirrors Ray's code: if a Ray upgrade changes it, this says so."""
    from ray.autoscaler._private import commands

    source = inspect.getsource(commands._bootstrap_config)
    calls = [source.index(call) for call in
             ("prepare_config(config)", "validate_config(config)", "provider_cls.bootstrap_config(config)")]
    assert calls == sorted(calls)
    assert "_bootstrap_config(" in inspect.getsource(commands.create_or_update_cluster)


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_passes_ray_up_validation(name):
    config = ray_up_checks(read_yaml(CLUSTER / name))
    types = config["available_node_types"]
    head, worker = types[config["head_node_type"]], types["t4_worker"]
    assert head["resources"] == {"CPU": 0}
    assert worker["resources"]["GPU"] == 1 and worker["resources"]["accelerator_type:T4"] == 1
    assert worker["resources"]["CPU"] >= 2  # a trial: its driver's 0.01 CPU + a 1.99-CPU Train worker
    assert 1 <= worker["min_workers"] <= worker["max_workers"] == config["max_workers"]
    node = worker["node_config"]
    if config["provider"]["type"] == "aws":
        assert node["InstanceType"] == "g4dn.xlarge" and node["InstanceMarketOptions"]["MarketType"] == "spot"
    else:
        assert node["guestAccelerators"] == [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 1}]
        assert node["scheduling"]["preemptible"] is True
    assert config["docker"]["image"] == IMAGE
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    head_start, worker_start = " ".join(config["head_start_ray_commands"]), " ".join(config["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    assert "RAY_AUTH_MODE=token ray start --head" in head_start
    assert "RAY_AUTH_MODE=token ray start --address" in worker_start


def _fractional_gpu(config):
    config["available_node_types"]["t4_worker"]["resources"]["GPU"] = 0.5


def _unknown_field(config):
    config["dashboard_host"] = "127.0.0.1"


def _unknown_head_type(config):
    config["head_node_type"] = "cpu_head"


def _too_few_max_workers(config):
    config["max_workers"] = 0


@pytest.mark.parametrize("name", LAUNCHERS)
@pytest.mark.parametrize("break_it, error", [(_fractional_gpu, jsonschema.ValidationError),
                                             (_unknown_field, jsonschema.ValidationError),
                                             (_unknown_head_type, ValueError),
                                             (_too_few_max_workers, ValueError)])
def test_ray_up_validation_rejects_a_broken_copy(name, break_it, error):
    config = read_yaml(CLUSTER / name)
    break_it(config)
    with pytest.raises(error):
        ray_up_checks(config)


# ------------------------------------------------------------------------- (2) the KubeRay RayJob


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return read_yaml(RAYJOB)


def test_rayjob_manifest(rayjob):
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    spec = rayjob["spec"]
    assert spec["entrypoint"].startswith("lexiray tune ")
    assert "--storage-path s3://" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["authOptions"] == {"mode": "token"}
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    [group] = cluster["workerGroupSpecs"]
    assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
    pod = group["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    [container] = pod["containers"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    for template in (head["template"], group["template"]):
        [container] = template["spec"]["containers"]
        assert container["image"] == IMAGE
        env = {item["name"]: item for item in container["env"]}
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-token"
        assert container["envFrom"] == [{"secretRef": {"name": "aws-credentials", "optional": True}}]
        secrets_in_file = [name for name, item in env.items()
                           if re.search("TOKEN|SECRET|KEY|PASSWORD", name) and "value" in item]
        assert not secrets_in_file


def test_rayjob_cluster_as_rays_kuberay_autoscaler_reads_it(rayjob):
    """Ray's KubeRay autoscaler turns the RayCluster spec into its own config and runs
    validate_config on it: the T4 group scales from zero and offers what trials ask."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    spec = rayjob["spec"]["rayClusterSpec"]
    config = _derive_autoscaling_config_from_ray_cr({"metadata": {"name": "lexiray", "namespace": "default"},
                                                      "spec": spec})
    types = config["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0
    t4 = types["t4"]
    assert (t4["min_workers"], t4["max_workers"]) == (0, 4)
    assert t4["resources"]["GPU"] == 1 and t4["resources"]["accelerator_type:T4"] == 1
    assert t4["resources"]["CPU"] >= 2


# --------------------------------------------------------------------------- (3) the runtime_env


def test_runtime_env_as_ray_job_submit_reads_it(rayjob):
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
    from ray.runtime_env import RuntimeEnv

    from lexiray.cluster import RAY_ENV_DEFAULTS

    # `ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml`
    runtime_env = parse_runtime_env_args(runtime_env=str(RUNTIME_ENV), working_dir=".")
    RuntimeEnv(**runtime_env)
    env_vars = runtime_env["env_vars"]
    assert {key: env_vars.get(key) for key in RAY_ENV_DEFAULTS} == RAY_ENV_DEFAULTS  # a cluster run = a local one
    assert env_vars["TOKENIZERS_PARALLELISM"] == "false" and env_vars["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert not [key for key in env_vars if re.search("TOKEN$|SECRET|PASSWORD|KEY", key)]
    # The RayJob's (no working_dir: the code is the image's) carries the same environment.
    job_env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    RuntimeEnv(**job_env)
    assert job_env == {"env_vars": env_vars}

    broken = copy.deepcopy(runtime_env)
    broken["env_vars"]["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = 0.2  # unquoted in YAML
    with pytest.raises(TypeError):
        RuntimeEnv(**broken)


# ------------------------------------------------------------- (4) the working_dir Ray uploads


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A clean clone of the committed HEAD (read-only for the repository)."""
    target = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(REPO), str(target)], check=True, capture_output=True, timeout=60)
    return target


def packaged(checkout: Path, runtime_env: dict, out: Path, include_gitignore: bool = True) -> zipfile.ZipFile:
    """The zip `ray job submit --working-dir` uploads: Ray's upload_working_dir_if_needed
    (its excludes + runtime_env["excludes"] + .gitignore) with the job SDK's create_package."""
    from ray._private.runtime_env.packaging import create_package
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    def upload_fn(path, excludes, is_file=False):
        assert not is_file
        create_package(path, out, include_gitignore=include_gitignore, include_parent_dir=False, excludes=excludes)

    upload_working_dir_if_needed({**runtime_env, "working_dir": str(checkout)}, include_gitignore=include_gitignore,
                                 upload_fn=upload_fn)
    return zipfile.ZipFile(out)


def test_clean_checkout_uploads_far_below_rays_limit(checkout, tmp_path):
    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE

    names = packaged(checkout, read_yaml(RUNTIME_ENV), tmp_path / "job.zip").namelist()
    size = (tmp_path / "job.zip").stat().st_size
    assert size < GCS_STORAGE_MAX_SIZE / 20, f"{size / 2**20:.1f} MiB"
    assert not [name for name in names if name.startswith((".git/", ".venv/"))]
    assert {"pyproject.toml", "lexiray/cli.py", "search_spaces/balanced.yaml"} <= set(names)


def test_runtime_env_excludes_alone_keep_venv_results_and_caches_out(checkout, tmp_path, monkeypatch):
    """Even with Ray's default excludes and .gitignore switched off (both can be), the
    file's own excludes keep what a working checkout accumulates out of the upload."""
    junk = [".venv/bin/python", "lexiray_results/balanced-1/leaderboard.csv", "runs/train/config.yaml",
            "lexiray/__pycache__/cli.cpython-311.pyc", ".pytest_cache/v/cache/nodeids", "lexiray.egg-info/PKG-INFO"]
    for name in junk:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text("x")
    monkeypatch.setenv("RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES", "")

    names = set(packaged(checkout, read_yaml(RUNTIME_ENV), tmp_path / "job.zip", include_gitignore=False).namelist())
    assert not names & set(junk)
    assert not [name for name in names if name.startswith(".git/")]
    assert "lexiray/cli.py" in names
    # The check can fail: without the excludes all of it would be uploaded.
    unfiltered = set(packaged(checkout, {}, tmp_path / "all.zip", include_gitignore=False).namelist())
    assert set(junk) <= unfiltered and any(name.startswith(".git/") for name in unfiltered)


# ---------------------------------------------------------------------------------- (5) the image


def test_dockerfile_builds_on_the_tested_ray():
    text = (CLUSTER / "Dockerfile").read_text()
    [base] = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    image, tag = base.split(":")
    assert image == "rayproject/ray"
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert re.fullmatch(rf"{re.escape(ray.__version__)}-{python}-(gpu|cu12\d)", tag), tag
    assert "pip install" in text and not re.search(r"pip install[^\n]*(-e\b|--editable)", text)
    assert not re.search(r"^(ENV|ARG)\s+\S*(TOKEN|SECRET|PASSWORD|KEY)", text, flags=re.MULTILINE)
    for source in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)\s+\S+$", text, flags=re.MULTILINE):
        for path in source.split():
            assert (REPO / path).exists(), f"COPY {path}: not in the repository"


# ---------------------------------------------------------------------------- (6) placeholders


def readme_placeholders() -> dict[str, set[str]]:
    """README's "Placeholders to fill in": one `### \\`file\\`` heading and table per file."""
    text = (CLUSTER / "README.md").read_text()
    section = text.split("## Placeholders to fill in", 1)[1]
    tables = {}
    for block in section.split("\n### ")[1:]:
        heading, _, body = block.partition("\n")
        name = heading.strip().strip("`")
        rows = [line for line in body.splitlines() if line.startswith("|")]
        tables[name] = {match for row in rows for match in PLACEHOLDER.findall(row.split("|")[1])}
    return tables


def cluster_files() -> list[Path]:
    return sorted(path for path in CLUSTER.iterdir() if path.is_file() and path.name != "README.md")


@pytest.mark.parametrize("path", cluster_files(), ids=lambda path: path.name)
def test_placeholders_are_declared_at_the_top_and_in_the_readme(path):
    text = path.read_text()
    used = set(PLACEHOLDER.findall(text))
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    declared = {match.group(1) for line in header if (match := DEFINITION.match(line))}
    assert used == declared, "placeholders used but not listed at the top, or listed but unused"
    assert used == readme_placeholders().get(path.name, set()), "cluster/README.md's table differs"
    # One spelling: YOUR-UPPER-CASE, no <angle-bracket> or lower-case your-... variants.
    assert all(PLACEHOLDER.fullmatch(word) for word in re.findall(r"(?i)\byour[-_][a-z0-9]+", text))
    assert not re.search(r"<[A-Za-z][\w-]*>", text)


def test_readme_tables_name_existing_files():
    tables = readme_placeholders()
    assert set(tables) <= {path.name for path in cluster_files()}
    assert all(tables.values())
