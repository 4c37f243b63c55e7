"""Citus readiness over the whole store suite: every statement the PostgreSQL store sends
while the store tests run (tests/store, on PostgreSQL alone) is checked as
tests/store/test_distribution.py checks one: it goes to one organization's shard, or it is
one of the multi-shard statements named there, or the coordinator's. The suite runs in a
process of its own on a server that logs every statement (`CALLS_TEST_DATABASE_URL`).

`CALLS_DISTRIBUTION_SUITE` names other test paths to run instead (space-separated), e.g.
`tests/store tests/api` for the whole PostgreSQL suite in process (several minutes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.store.test_distribution import MULTI_SHARD, Findings, StatementLog, check_statements

SUITE = os.environ.get("CALLS_DISTRIBUTION_SUITE", "tests/store").split()


@pytest.fixture(scope="module")
def suite() -> Iterator[Findings]:
    """The findings on every statement the store sent during the suite."""
    log = StatementLog()
    try:
        log.start()

        def run() -> None:
            done = subprocess.run(
                [
                    sys.executable,
                    *("-m", "pytest", "-n0", "-q", "-p", "no:cacheprovider"),
                    *("--ignore", "tests/store/test_distribution.py"),
                    *SUITE,
                ],
                env={
                    **os.environ,
                    "CALLS_TEST_DATABASE_URL": log.cluster.url(),
                    "CALLS_TEST_BACKENDS": "postgres",
                },
                capture_output=True,
                text=True,
                timeout=1800,
            )
            # A store test that fails is the suite's to report: here, what it sent counts.
            assert done.returncode in (0, 1), done.stdout[-5000:] + done.stderr[-5000:]

        yield check_statements(log, run)
    finally:
        log.stop()


def test_every_statement_of_the_suite_goes_to_one_shard_or_is_named(suite):
    assert suite.kinds["routed"] > 10_000  # the suite ran, on this server
    assert [f"{why}: {statement}" for statement, why in suite.unrouted.items()] == []


def test_every_run_of_a_statement_names_one_organization(suite):
    assert suite.mixed == []


def test_every_transaction_stays_within_one_organization(suite):
    assert suite.spanning == []


def test_every_multi_shard_statement_named_is_still_sent(suite):
    # copy-to-postgres' usage is rebuilt in the system tests' copies, not the store's.
    sent_elsewhere = {"copy-to-postgres usage"}

    assert set(MULTI_SHARD) - sent_elsewhere <= suite.multi_shard
