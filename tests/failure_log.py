"""A pytest plugin: with MOBILEVITV2_FAILURE_LOG set (bench/gpu_all.sh sets it), every failure's name and
traceback is appended to that file the moment it is reported, so a run stopped at its time limit keeps them
(pytest prints its own summary only at the end). Under pytest-xdist the controller receives every worker's
reports and writes them; the workers write nothing."""

from __future__ import annotations

import os


def pytest_runtest_logreport(report):
    path = os.environ.get("MOBILEVITV2_FAILURE_LOG")
    if not path or not report.failed or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    with open(path, "a") as log:
        log.write(f"FAILED {report.nodeid} ({report.when})\n{report.longreprtext}\n\n")
