"""The ``ray`` executor on a real Ray cluster of three nodes on this machine, one node killed.

The cluster (bench/ray_cluster.py's ``LocalCluster``: ``ray start --head`` and two
``ray start --address`` worker nodes, each a process tree of its own) is started once for the
module and stopped at its end, checked for leftover processes. Each test runs jobs through a
worker whose executor connects with ``address="auto"``, kills a worker node (SIGKILL to every
process of it) while jobs run on it, and checks from the jobs table and from the jobs' own
records of each execution: every job SUCCEEDED (the killed ones retried by assay), none lost,
none run twice at the same time, and every job's progress reached its row. Slow: a minute or
two on a 2-core machine, most of it Ray starting processes and noticing the death.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from assay import Backend, load_settings
from support.jobs import BENCH_DIR

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'assay[ray]'")

sys.path.append(str(BENCH_DIR))
from ray_cluster import (  # noqa: E402
    Execution,
    LocalCluster,
    RunConfig,
    analyse,
    ray_settings,
    run_on_cluster,
    session_pids,
)
from ray_cluster_jobs import RAY_CLUSTER_JOBS  # noqa: E402

# Runs in the process that runs the other Ray tests, one module after the other: a process
# holds one Ray connection at a time.
# Timeout: starting the cluster and noticing the node's death take minutes on a loaded box.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray"), pytest.mark.timeout(1200)]

KILLED = "node_a"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    assert not ray.is_initialized(), "this process is already connected to a Ray instance"
    # The cluster runs without token authentication; a driver in token mode (what an earlier
    # local ray.init() leaves in this process by default) would never receive streamed results.
    assert os.environ.get("RAY_AUTH_MODE", "disabled") == "disabled", (
        "an earlier local ray.init() turned on Ray's token authentication in this process"
    )
    cluster = LocalCluster(workers=(KILLED, "node_b"))
    try:
        with cluster:
            yield cluster
    finally:
        # No process of any node is left, and the temporary directory is gone.
        assert not any(session_pids(node.session) for node in cluster.nodes.values())
        assert not cluster.temp_dir.exists()


# PostgreSQL, the store of a multi-node deployment: what assay does with a lost task (the retry
# and its guarded updates) is tested on every store in tests/jobs; `bench/ray_cluster.py` runs
# the cluster on any store.
@pytest.mark.parametrize("store_uri", ["postgresql"], indirect=True)
def test_a_killed_node_loses_no_job_and_runs_none_twice(
    cluster: LocalCluster, store_uri: str, tmp_path: Path
) -> None:
    # Jobs of 0.09 s, 4.5 s on the node to be killed: the ones seen running there are still
    # running when the kill lands, on a loaded machine too.
    config = RunConfig(
        jobs=60,
        steps=3,
        step_s=0.03,
        concurrency=4,
        kill_after=0.3,
        kill_node=KILLED,
        kill_node_slowdown=50,
    )
    backend = Backend(load_settings(**ray_settings(store_uri, config.concurrency)))
    backend.registry = RAY_CLUSTER_JOBS
    try:
        result = run_on_cluster(cluster, backend, config, tmp_path / "executions.log")
    finally:
        backend.close()
    summary = {k: v for k, v in result.items() if k not in ("statuses", "per_node")}
    # The node was killed while jobs ran on it, and every process of it died.
    assert result["kill"]["running_on_node"] >= 1, summary
    assert result["killed_executions"] >= 1, summary
    assert not cluster.pids(KILLED)
    # Every job ended SUCCEEDED; the ones killed with the node were retried by assay.
    assert result["statuses"] == {"SUCCEEDED": config.jobs}, summary
    assert result["lost"] == 0
    assert result["retried_jobs"] >= result["killed_executions"], summary
    assert set(result["retry_reasons"]) <= {
        "RETRIED NodeDiedError",
        "RETRIED WorkerCrashedError",
    }, summary
    # None ran twice at the same time, every attempt ran exactly once, and every execution not
    # on the killed node returned.
    assert result["overlapping_jobs"] == 0, summary
    assert result["duplicate_attempts"] == 0, summary
    assert result["unended_executions"] == 0, summary
    assert result["executions"] == result["attempts"], summary
    # Jobs ended on worker nodes only (never the head; on the killed node too unless every job
    # that ran there was still running at the kill), and each one's last progress report
    # reached its row.
    assert "node_b" in result["per_node"], result["per_node"]
    assert set(result["per_node"]) <= {KILLED, "node_b"}, result["per_node"]
    assert result["progress_arrived"] == config.jobs, summary


def test_an_execution_killed_with_its_node_ends_when_its_process_was_killed() -> None:
    """The overlap check: Ray reports a task lost as soon as its worker process is gone, so
    assay's retry can start while the kill still waits for the node's other processes. The
    killed execution ends when its own process got SIGKILL, not when the last one was gone."""
    killed = Execution("j1", 1, KILLED, pid=100, start=10.0, end=None)
    retry = Execution("j1", 2, "node_b", pid=200, start=11.5, end=12.0)
    # pid 100 got SIGKILL at 11.0; the node's last process was gone at 13.0.
    report = analyse([killed, retry], KILLED, 13.0, {100: 11.0})
    assert (report.killed, report.overlapping_jobs) == (1, [])
    # A retry that started before the SIGKILL overlaps.
    early = Execution("j1", 2, "node_b", pid=200, start=10.5, end=12.0)
    assert analyse([killed, early], KILLED, 13.0, {100: 11.0}).overlapping_jobs == ["j1"]
    # A process the kill did not list ends when the node was gone.
    assert analyse([killed, retry], KILLED, 13.0, {}).overlapping_jobs == ["j1"]
