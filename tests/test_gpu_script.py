"""bench/gpu_all.sh, the staged GPU run, as a dry run on the CPU (DRY_RUN=1: Triton interpreter, tiny
shapes): the same stages and files as on a GPU, a clear non-zero exit on any error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_all.sh"


def clean_environment() -> dict[str, str]:
    """This process's environment less pytest-xdist's worker variables: under ``pytest -n`` they would make
    a pytest started here take itself for a worker (whose failures the failure log leaves to a controller)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}


def run_stage(stage: str, out: Path, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    environment = {**clean_environment(), "DRY_RUN": "1", "OUT": str(out), "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT), stage], cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def result_files(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if p.is_file()}


def test_verify_dry_run(tmp_path):
    proc = run_stage("verify", tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("gpu_all.sh verify: all steps passed")
    files = result_files(tmp_path)
    assert {"environment.txt", "check.txt", "check.json", "tests.txt", "tests.xml", "failures.txt"} <= files
    assert len(files) <= 8 and (tmp_path / "failures.txt").read_text() == ""
    checks = json.loads((tmp_path / "check.json").read_text())["checks"]
    assert {(c["op"], c["dtype"]) for c in checks if c["backend"] == "triton" and c["failure"] is None} == {
        (op, dtype) for op in ("separable_attention", "unfold", "fold", "inverted_residual", "transformer_layer",
                               "linear_self_attention") for dtype in ("float32", "float16", "bfloat16")}  # fmt: skip
    tests_log = (tmp_path / "tests.txt").read_text()
    assert "skipped" in tests_log and "failed" not in tests_log  # every CUDA case collected, and skipped here


def test_failures_are_logged_as_they_happen_across_workers(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "def test_fine():\n    pass\n\n\ndef test_broken():\n    assert 1 + 1 == 3, 'arithmetic'\n"
    )
    log = tmp_path / "failures.txt"
    env = {**clean_environment(), "MOBILEVITV2_FAILURE_LOG": str(log), "PYTHONPATH": str(REPO / "tests")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "failure_log", "-p", "no:cacheprovider", "-n", "2",
                           "-q", str(tmp_path / "test_sample.py")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 1, proc.stdout
    text = log.read_text()
    assert text.count("FAILED ") == 1 and "test_broken (call)" in text and "arithmetic" in text


def test_measure_dry_run(tmp_path):
    proc = run_stage("measure", tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    files = result_files(tmp_path)
    assert {"targets.json", "targets.csv", "targets.txt", "kernels.json"} <= files and len(files) <= 8
    rows = json.loads((tmp_path / "targets.json").read_text())["results"]
    assert rows and all(row["error"] is None for row in rows), rows
    assert json.loads((tmp_path / "kernels.json").read_text())


def test_a_failing_step_fails_the_stage(tmp_path):
    proc = run_stage("verify", tmp_path, TOTAL_S="12")  # the stage's budget is spent before the tests
    assert proc.returncode == 1
    assert "gpu_all.sh verify: FAILED:" in proc.stdout and "tests (no time left)" in proc.stdout


def test_a_step_that_fails_fails_the_stage_and_the_others_still_run(tmp_path):
    broken = tmp_path / "python"  # the interpreter, except that the first-use check step exits 3
    broken.write_text(f"""#!/usr/bin/env bash
if [ "$1" = "-m" ] && [ "$2" = "mobilevitv2_kernels" ]; then echo "check broke"; exit 3; fi
exec {sys.executable} "$@"
""")
    broken.chmod(0o755)
    out = tmp_path / "out"
    proc = run_stage("verify", out, PYTHON=str(broken))
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "gpu_all.sh verify: FAILED: check (exit 3)" in proc.stdout
    assert "skipped" in (out / "tests.txt").read_text()  # the tests step ran after it


def test_a_broken_interpreter_is_an_error_not_nothing_to_do(tmp_path):
    proc = run_stage("verify", tmp_path, PYTHON="false")
    assert proc.returncode == 1 and "environment probe failed" in proc.stderr


def test_unknown_stage_is_a_usage_error(tmp_path):
    proc = run_stage("everything", tmp_path)
    assert proc.returncode == 2 and "usage" in proc.stderr


@pytest.mark.skipif(os.environ.get("CUDA_VISIBLE_DEVICES") == "", reason="no GPU is hidden here")
def test_without_a_gpu_the_real_stage_refuses(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    proc = run_stage("verify", tmp_path, DRY_RUN="0")
    assert proc.returncode == 1 and "no CUDA device is visible" in proc.stdout + proc.stderr
