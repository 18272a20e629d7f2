"""An installed (not editable) lexiray finds its presets: the wheel the cluster image installs
is built from the files cluster/Dockerfile copies, offline, and run from outside the repository."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE_SOURCE = "/tmp/lexiray-src"  # where cluster/Dockerfile copies the package before `pip install`


def copy_like_the_dockerfile(target: Path) -> None:
    """The Dockerfile's `COPY SRC... DEST` lines into `target` (standing in for IMAGE_SOURCE)."""
    text = (REPO / "cluster" / "Dockerfile").read_text()
    copies = re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)\s+(\S+)$", text, flags=re.MULTILINE)
    assert copies, "cluster/Dockerfile has no COPY line"
    for sources, dest in copies:
        assert dest.startswith(IMAGE_SOURCE), dest
        where = target / dest[len(IMAGE_SOURCE):].strip("/")
        for source in sources.split():
            into = where / source if dest.endswith("/") else where
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, into, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO / source, into)


@pytest.mark.slow
def test_installed_wheel_finds_the_presets(tmp_path):
    source, dist, installed, elsewhere = (tmp_path / name for name in ("src", "dist", "site", "elsewhere"))
    copy_like_the_dockerfile(source)
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--disable-pip-version-check", "-w", str(dist), str(source)],
                   check=True, capture_output=True, text=True, timeout=300, cwd=elsewhere)
    [wheel] = dist.glob("lexiray-*.whl")
    presets = sorted(path.name for path in (REPO / "search_spaces").glob("*.yaml"))
    assert {"smoke.yaml", "balanced.yaml"} <= set(presets)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {f"lexiray/search_spaces/{name}" for name in presets} <= names, sorted(names)
        archive.extractall(installed)

    check = ("import json, lexiray, lexiray.config as c; "
             "print(json.dumps([lexiray.__file__, str(c.SEARCH_SPACES_DIR), c.load_config('smoke').model.name]))")
    result = subprocess.run([sys.executable, "-c", check], cwd=elsewhere, capture_output=True, text=True,
                            timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(installed)})
    assert result.returncode == 0, result.stderr[-3000:]
    module, folder, model = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(module).is_relative_to(installed), module  # the wheel's copy, not the checkout's
    assert Path(folder) == installed / "lexiray" / "search_spaces"
    assert sorted(path.name for path in Path(folder).glob("*.yaml")) == presets
    assert model == "tiny"
