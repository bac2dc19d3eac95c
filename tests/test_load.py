"""The load test, small: the demo under gunicorn (2 workers x 4 threads, autostart on), users
browsing while the scheduled validation and "Validate All" run; `make stress` runs it large."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import skip_or_fail

from lm_billing_plugin.testing.load import run_load


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "batches_in"),
                         [("sqlite", "process"), ("sqlite", "threads"), ("postgresql", "process")])
def test_pages_answer_and_nothing_is_locked_while_two_validations_run(
    backend: str, batches_in: str, tmp_path: Path
) -> None:
    database = None
    if backend == "postgresql":
        database = os.environ.get("LM_BILLING_TEST_POSTGRES_URL")
        if not database:
            skip_or_fail("postgresql: set LM_BILLING_TEST_POSTGRES_URL to run this test there",
                         external_db=True)
    # Latency on a shared CI machine is too noisy to bound here; `make stress` bounds it.
    report = run_load(database=database, servers=20, users=8, idle_seconds=5.0,
                      load_seconds=45.0, lists=20, max_ratio=float("inf"),
                      workdir=str(tmp_path), think=(0.05, 0.3), batches_in=batches_in)
    assert report.requests > 50
    assert report.errors == []
    assert report.lock_errors == 0
    assert report.leftover_leases == 0 and report.unfinished_runs == 0
    assert {b["by"] for b in report.batches} >= {"scheduler", "operator"}
    assert all(b["status"] == "finished" and b["done"] == b["total"] == 20
               for b in report.batches), report.batches
    assert report.problems == []
    assert report.batches_in == batches_in
