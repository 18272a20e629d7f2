"""The read-only commands through the real entry point (no Ray involved)."""

from __future__ import annotations

import subprocess
import sys


def _lexiray(*args, cwd):
    return subprocess.run([sys.executable, "-m", "lexiray", *args], cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)


def test_presets_table_lists_the_guide_values(tmp_path):
    result = _lexiray("presets", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for expected in ("speed", "balanced", "quality", "smoke", "Qwen/Qwen2.5-1.5B-Instruct", "8 × 3", "4 × 6",
                     "2 × 12", "paged_adamw_32bit"):
        assert expected in result.stdout


def test_analyze_recommends_a_max_seq_length(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"task": "grammar", "input": "She go to school.", "output": "She goes to school."}\n' * 20)
    result = _lexiray("analyze", str(data), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "grammar" in result.stdout and "recommended data.max_seq_length: 256" in result.stdout


def test_analyze_missing_file_is_a_one_line_error(tmp_path):
    result = _lexiray("analyze", str(tmp_path / "nope.jsonl"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: data.path") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
