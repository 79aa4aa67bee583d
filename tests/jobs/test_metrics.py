"""``GET /metrics`` and ``GET /health`` of real servers: exact counts after real jobs ran,
queue gauges read from the database, lock conflicts, rescues after a kill -9."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from prometheus_client.parser import text_string_to_metric_families

import assay
import jobmods_race  # noqa: F401  (registers t_sleep_first in this process too)
from assay import JobStatus
from assay.db.migrate import _config, current_revision, head_revision
from assay.jobs.backend import Backend
from assay.jobs.metrics import JobMetrics
from assay.jobs.services import Rescuer
from assay.jobs.store import JobStore
from support.jobs import FAST, WorkerProcesses, running_worker
from support.servers import ServerProcess, Servers, free_port
from support.timing import wait_until

Labels = tuple[tuple[str, str], ...]


class Scrape:
    """One parsed exposition: every sample by (sample name, sorted labels)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.types: dict[str, str] = {}
        self.samples: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for s in family.samples:
                self.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def series(self, sample: str, **fixed: str) -> dict[Labels, float]:
        """Samples named ``sample`` matching ``fixed``, by their other labels."""
        out: dict[Labels, float] = {}
        for (name, labels), value in self.samples.items():
            as_dict = dict(labels)
            if name == sample and all(as_dict.get(k) == v for k, v in fixed.items()):
                out[tuple((k, v) for k, v in labels if k not in fixed)] = value
        return out

    def by(self, sample: str, *keys: str, **fixed: str) -> dict[Any, float]:
        """``series`` keyed by the values of ``keys`` (one key: the bare value)."""
        out: dict[Any, float] = {}
        for labels, value in self.series(sample, **fixed).items():
            as_dict = dict(labels)
            key = tuple(as_dict[k] for k in keys)
            out[key[0] if len(keys) == 1 else key] = value
        return out

    def value(self, sample: str, **labels: str) -> float:
        return self.samples[(sample, tuple(sorted(labels.items())))]


def scrape(server: ServerProcess, accept: str | None = None) -> Scrape:
    headers = {"accept": accept} if accept else {}
    response = httpx.get(f"{server.url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return Scrape(response.text)


def submit(server: ServerProcess, name: str, params: dict[str, Any] | None = None) -> Any:
    response = httpx.post(
        f"{server.url}/api/v1/jobs", json={"name": name, "params": params or {}}, timeout=10
    )
    assert response.status_code == 201, response.text
    return response.json()


def get_job(server: ServerProcess, job_id: str) -> Any:
    response = httpx.get(f"{server.url}/api/v1/jobs/{job_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_status(server: ServerProcess, job_id: str, *statuses: str, timeout: float = 20) -> Any:
    def reached() -> Any:
        job = get_job(server, job_id)
        return job if job["status"] in statuses else None

    try:
        return wait_until(reached, timeout=timeout, interval=0.05)
    except AssertionError:
        raise AssertionError(f"{get_job(server, job_id)}\n{server.logs()[-4000:]}") from None


# -- counters and histograms -----------------------------------------------------------------


# The counters and histograms are the worker's own (the store's part, the queue samples read at
# scrape time, is tested on every store below).
@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_counts_and_histograms_after_jobs_ran(servers: Servers, store_uri: str) -> None:
    # Retry delays of 1.5 s and 3 s (±20%): a pickup measured from created_at instead of
    # run_at would put the retried attempts of t_flaky past the 1 s bucket.
    server = servers.start(store_uri, retry_backoff_base_s=1.5, retry_backoff_max_s=10)
    ids = [submit(server, "t_add", {"a": i, "b": 1})["id"] for i in range(3)]
    ids += [submit(server, "t_fail")["id"] for _ in range(2)]
    ids.append(submit(server, "t_flaky", {"fail_times": 2})["id"])
    ids.append(submit(server, "t_sleep", {"seconds": 0.3})["id"])
    for job_id in ids:
        wait_status(server, job_id, "SUCCEEDED", "FAILED")
    # The status is committed just before the worker counts it.
    wait_until(lambda: sum(scrape(server).series("assay_jobs_finished_total").values()) == 7)

    m = scrape(server)
    assert m.types["assay_jobs_finished"] == "counter"
    assert m.types["assay_jobs_pickup_latency_seconds"] == "histogram"
    assert m.by("assay_jobs_finished_total", "name", "status") == {
        ("t_add", "SUCCEEDED"): 3,
        ("t_fail", "FAILED"): 2,
        ("t_flaky", "SUCCEEDED"): 1,
        ("t_sleep", "SUCCEEDED"): 1,
    }
    assert m.by("assay_jobs_retried_total", "name") == {"t_flaky": 2}
    executions = {"t_add": 3, "t_fail": 2, "t_flaky": 3, "t_sleep": 1}
    assert m.by("assay_jobs_pickup_latency_seconds_count", "name") == executions
    assert m.by("assay_jobs_run_seconds_count", "name") == executions
    assert m.by("assay_jobs_pickup_latency_seconds_bucket", "name", le="+Inf") == executions
    assert m.by("assay_jobs_pickup_latency_seconds_bucket", "name", le="1.0")["t_flaky"] == 3
    assert m.by("assay_jobs_pickup_latency_seconds_bucket", "name", le="60.0") == executions
    assert all(v >= 0 for v in m.by("assay_jobs_pickup_latency_seconds_sum", "name").values())
    run_sum = m.by("assay_jobs_run_seconds_sum", "name")
    assert run_sum["t_sleep"] >= 0.3
    assert m.value("assay_jobs_run_seconds_bucket", name="t_sleep", le="0.25") == 0
    assert run_sum["t_add"] < 1.0
    assert m.series("assay_jobs_rescued_total") == {}
    assert m.series("assay_jobs_lock_conflicts_total") == {}

    # Read from the database at scrape time: live jobs only (none are left), but every name
    # in the table still has its queue samples.
    assert m.series("assay_jobs_stored") == {}
    assert m.by("assay_jobs_queue_depth", "name") == dict.fromkeys(executions, 0)
    assert m.by("assay_jobs_queue_oldest_age_seconds", "name") == dict.fromkeys(executions, 0)
    assert m.value("assay_store_up") == 1

    # OpenMetrics when the scraper asks for it.
    response = httpx.get(
        f"{server.url}/metrics", headers={"accept": "application/openmetrics-text"}, timeout=10
    )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    assert 'assay_jobs_retried_total{name="t_flaky"} 2.0' in response.text


def test_queue_depth_counts_pending_jobs_whose_run_at_has_passed(
    backend: assay.Backend, servers: Servers, store_uri: str
) -> None:
    # A job whose retry is a minute away: PENDING, but not runnable yet.
    later = backend.settings.model_copy(
        update={"retry_backoff_base_s": 60.0, "retry_backoff_max_s": 120.0}
    )
    flaky = backend.submit("t_flaky", {"fail_times": 1})
    with running_worker(backend, settings=later):
        wait_until(lambda: backend.get(flaky.id).attempt == 1 and backend.get(flaky.id).error)
    assert backend.get(flaky.id).status == assay.JobStatus.PENDING

    server = servers.start(store_uri, "--workers", "0")
    started = time.time()
    for i in range(4):
        submit(server, "t_add", {"a": i, "b": 0})
    submit(server, "t_noop")
    first = scrape(server)
    assert first.by("assay_jobs_stored", "name", "status") == {
        ("t_add", "PENDING"): 4,
        ("t_noop", "PENDING"): 1,
        ("t_flaky", "PENDING"): 1,
    }
    assert first.by("assay_jobs_queue_depth", "name") == {"t_add": 4, "t_noop": 1, "t_flaky": 0}
    assert first.by("assay_jobs_waiting_for_lock", "name") == {
        "t_add": 0,
        "t_noop": 0,
        "t_flaky": 0,
    }
    ages = first.by("assay_jobs_queue_oldest_age_seconds", "name")
    assert ages["t_flaky"] == 0
    assert 0 <= ages["t_noop"] <= ages["t_add"] <= time.time() - started + 0.5
    # Nothing ran here: no worker loop, so no events.
    assert first.series("assay_jobs_finished_total") == {}
    assert first.series("assay_jobs_pickup_latency_seconds_count") == {}

    # The age grows while the jobs wait.
    wait_until(
        lambda: (
            scrape(server).value("assay_jobs_queue_oldest_age_seconds", name="t_add")
            >= ages["t_add"] + 0.5
        )
    )


def test_gauges_read_live_jobs_only_and_name_every_job(backend: assay.Backend) -> None:
    """A scrape never reads the finished jobs (months of them would make it scan the table):
    only PENDING and RUNNING are counted, yet a name with only finished jobs keeps its queue
    samples (at 0)."""
    backend.submit_many("t_add", [{"a": i, "b": 1} for i in range(3)])
    backend.worker().run(until_idle=True)
    backend.submit("t_noop")
    backend.submit("t_sleep", {"seconds": 1})
    claimed = backend.store.jobs_claim("w-gauges", limit=1, names=["t_sleep"], lease_ttl_s=60)
    assert [j.name for j in claimed] == ["t_sleep"]

    m = Scrape(backend.store.metrics.expose()[0].decode())
    assert m.by("assay_jobs_stored", "name", "status") == {
        ("t_noop", "PENDING"): 1,
        ("t_sleep", "RUNNING"): 1,
    }
    assert m.by("assay_jobs_queue_depth", "name") == {"t_add": 0, "t_noop": 1, "t_sleep": 0}
    assert m.by("assay_jobs_waiting_for_lock", "name") == {"t_add": 0, "t_noop": 0, "t_sleep": 0}


# -- lock conflicts ----------------------------------------------------------------------------


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_skipped_duplicate_is_a_lock_conflict(server: ServerProcess, tmp_path: Path) -> None:
    out = str(tmp_path / "runs.txt")
    holder = submit(server, "t_exclusive", {"key": "k", "seconds": 60, "path": out})
    wait_status(server, holder["id"], "RUNNING")
    duplicate = submit(server, "t_exclusive", {"key": "k", "seconds": 0, "path": out})
    assert duplicate["status"] == "CANCELED"
    m = scrape(server)
    assert m.by("assay_jobs_lock_conflicts_total", "name", "on_conflict") == {
        ("t_exclusive", "skip"): 1
    }

    # A queue-policy duplicate waits for the lock instead; the claim query leaves it out
    # while the lock is held, so it is shown as waiting, not counted as a conflict.
    queue_holder = submit(server, "t_exclusive_queue", {"key": "q", "seconds": 60, "path": out})
    wait_status(server, queue_holder["id"], "RUNNING")
    waiting = submit(server, "t_exclusive_queue", {"key": "q", "seconds": 0, "path": out})
    assert waiting["status"] == "PENDING"
    m = scrape(server)
    assert m.value("assay_jobs_waiting_for_lock", name="t_exclusive_queue") == 1
    assert m.value("assay_jobs_queue_depth", name="t_exclusive_queue") == 1
    assert m.value("assay_jobs_waiting_for_lock", name="t_exclusive") == 0
    assert m.by("assay_jobs_lock_conflicts_total", "name", "on_conflict") == {
        ("t_exclusive", "skip"): 1
    }
    assert get_job(server, waiting["id"])["status"] == "PENDING"


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_deferred_queue_claim_is_a_lock_conflict(
    servers: Servers, store_uri: str, tmp_path: Path
) -> None:
    """Two queue-policy jobs of one key, both runnable: the claim that sees both runs one and
    defers the other (counted once), which runs when the lock frees."""
    out = str(tmp_path / "runs.txt")
    api = servers.start(store_uri, "--workers", "0")
    args = {"key": "z", "seconds": 0.2, "path": out}
    ids = [submit(api, "t_exclusive_queue", args)["id"] for _ in range(2)]
    worker = servers.start(store_uri)
    for job_id in ids:
        wait_status(worker, job_id, "SUCCEEDED")
    wait_until(lambda: sum(scrape(worker).series("assay_jobs_finished_total").values()) == 2)

    m = scrape(worker)
    assert m.by("assay_jobs_lock_conflicts_total", "name", "on_conflict") == {
        ("t_exclusive_queue", "queue"): 1
    }
    assert m.by("assay_jobs_pickup_latency_seconds_count", "name") == {"t_exclusive_queue": 2}
    assert scrape(api).series("assay_jobs_lock_conflicts_total") == {}
    starts = [line for line in Path(out).read_text().splitlines() if line.startswith("start")]
    assert len(starts) == 2


# -- rescues -----------------------------------------------------------------------------------


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_killed_worker_job_is_counted_as_rescued(
    servers: Servers, store_uri: str, worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    modules = ("--jobs-module", "jobmods_race")
    server = servers.start(store_uri, "--workers", "0", *modules)
    victim = worker_processes.start(store_uri, *modules)
    worker_processes.wait_ready(1)
    out = str(tmp_path / "runs.txt")
    job = submit(server, "t_sleep_first", {"path": out, "first_s": 120, "then_s": 0.1})
    running = wait_status(server, job["id"], "RUNNING")
    assert f":{victim.pid}:" in running["worker_id"]
    assert scrape(server).series("assay_jobs_rescued_total") == {}

    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    # Lease (2 s) + a sweep by the server, which holds (or takes over) the leader lease.
    wait_until(lambda: scrape(server).series("assay_jobs_rescued_total"), timeout=20)

    m = scrape(server)
    assert m.by("assay_jobs_rescued_total", "name", "status") == {("t_sleep_first", "PENDING"): 1}
    assert get_job(server, job["id"])["status"] == "PENDING"
    assert m.value("assay_jobs_queue_depth", name="t_sleep_first") == 1


def test_standalone_worker_serves_its_own_metrics(
    backend: assay.Backend, store_uri: str, worker_processes: WorkerProcesses
) -> None:
    port = free_port()
    worker_processes.start(store_uri, "--metrics-port", str(port))
    worker_processes.wait_ready(1)
    assert f"metrics on http://127.0.0.1:{port}/metrics" in worker_processes.logs()
    ids = [backend.submit("t_add", {"a": i, "b": 1}).id for i in range(3)]
    for job_id in ids:
        assert backend.wait(job_id, timeout=20).status == JobStatus.SUCCEEDED

    def finished() -> Scrape | None:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert response.status_code == 200
        m = Scrape(response.text)
        return m if m.series("assay_jobs_finished_total") else None

    m = wait_until(finished)  # the status is committed just before the worker counts it
    assert m.by("assay_jobs_finished_total", "name", "status") == {("t_add", "SUCCEEDED"): 3}
    assert m.by("assay_jobs_run_seconds_count", "name") == {"t_add": 3}
    assert m.value("assay_store_up") == 1


def test_worker_metrics_port_in_use_is_one_line(
    store_uri: str, worker_processes: WorkerProcesses
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = worker_processes.start(store_uri, "--metrics-port", str(port))
        assert proc.wait(timeout=60) != 0
    log = worker_processes.logs()
    assert f"cannot serve metrics on 127.0.0.1:{port}" in log
    assert "Traceback" not in log


def test_rescuer_counts_requeued_and_failed(backend: assay.Backend) -> None:
    store = backend.store
    rescuer = Rescuer(store, interval_s=0.3, min_attempts=2)
    job = backend.submit("t_noop")
    for attempt in (1, 2):
        claimed = wait_until(
            lambda: store.jobs_claim("dead", limit=1, names=["t_noop"], lease_ttl_s=0.2)
        )
        assert [(j.id, j.attempt) for j in claimed] == [(job.id, attempt)]

        def swept() -> bool:
            rescuer.tick()
            return backend.get(job.id).status != assay.JobStatus.RUNNING

        wait_until(swept)
    assert backend.get(job.id).status == assay.JobStatus.FAILED
    m = Scrape(store.metrics.expose()[0].decode())
    assert m.by("assay_jobs_rescued_total", "name", "status") == {
        ("t_noop", "PENDING"): 1,
        ("t_noop", "FAILED"): 1,
    }
    assert m.by("assay_jobs_pickup_latency_seconds_count", "name") == {"t_noop": 2}


# -- one registry per store --------------------------------------------------------------------


def test_each_store_has_its_own_registry(backend: assay.Backend, store_uri: str) -> None:
    """Two backends (and their workers) in one process: no duplicate registration, and each
    counts only its own events; the database gauges agree."""
    with Backend(assay.load_settings(store_uri=store_uri, **FAST)) as other:
        other.submit_many("t_add", [{"a": 1, "b": 2}, {"a": 3, "b": 4}])
        backend.worker().run(until_idle=True)
        mine = Scrape(backend.store.metrics.expose()[0].decode())
        theirs = Scrape(other.store.metrics.expose()[0].decode())
    assert mine.by("assay_jobs_finished_total", "name", "status") == {("t_add", "SUCCEEDED"): 2}
    assert theirs.series("assay_jobs_finished_total") == {}
    for m in (mine, theirs):
        assert m.series("assay_jobs_stored") == {}  # finished jobs are not counted
        assert m.by("assay_jobs_queue_depth", "name") == {"t_add": 0}
        assert m.value("assay_store_up") == 1


def test_unreachable_store_reports_store_down(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'missing' / 'assay.db'}")
    try:
        metrics = JobMetrics(JobStore(engine).jobs_stats)
        m = Scrape(metrics.expose()[0].decode())
    finally:
        engine.dispose()
    assert m.value("assay_store_up") == 0
    assert m.series("assay_jobs_stored") == {}
    assert m.types["assay_jobs_finished"] == "counter"


# -- /health -----------------------------------------------------------------------------------


@pytest.mark.parametrize("store_uri", ["sqlite"], indirect=True)
def test_health_names_the_schema_when_it_is_behind(servers: Servers, store_uri: str) -> None:
    """The running server's database is put back one revision (alembic ``stamp``: the version
    table, which is what the check reads; a real downgrade would also depend on every newer
    migration's downgrade), then forward again."""
    server = servers.start(store_uri)
    response = httpx.get(f"{server.url}/health", timeout=10)
    assert (response.status_code, response.json()) == (
        200,
        {
            "status": "ok",
            "checks": {"database": "ok", "migrations": "ok", "workers": "1 alive"},
        },
    )

    head = head_revision()
    previous = ScriptDirectory.from_config(_config()).get_revision(head).down_revision
    assert isinstance(previous, str)
    engine = sa.create_engine(store_uri)
    try:
        with engine.connect() as conn:
            command.stamp(_config(conn), previous)
            conn.commit()
        assert current_revision(engine) == previous
        response = httpx.get(f"{server.url}/health", timeout=10)
        assert response.status_code == 503, response.text
        assert response.json() == {
            "status": "unhealthy",
            "checks": {"database": "ok", "migrations": "behind", "workers": "1 alive"},
        }
        with engine.connect() as conn:
            command.stamp(_config(conn), head)
            conn.commit()
    finally:
        engine.dispose()
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
