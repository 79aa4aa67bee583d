"""Ray cluster benchmark: jobs through the ``ray`` executor on a 3-node cluster, one node killed.

Run it from the repository root::

    .venv/bin/python bench/ray_cluster.py [--jobs 1000] [--quick] [--stores sqlite]
                                          [--out bench/results/ray_cluster.json]

It starts a Ray cluster on this machine, a head and two worker nodes (``ray start --head`` and
``ray start --address``, each a process tree of its own), runs the jobs through an assay worker
whose ``ray`` executor connects with ``address="auto"``, kills one worker node (SIGKILL to every
process of it) while jobs run on it, and checks from the jobs table and from the jobs' own
records that every job ended SUCCEEDED (the killed ones retried by assay), none was lost, none
ran twice at the same time, and every job's progress reached its row. The cluster is stopped at
the end whatever happens. See bench/README.md for what each number means.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assay import Backend, JobStatus, load_settings
from common import (
    Store,
    add_run_options,
    console,
    free_port,
    job_rows,
    load_average,
    new_parser,
    new_table,
    run_benchmark,
    verdict,
)
from ray_cluster_jobs import NODE_VARIABLE, RAY_CLUSTER_JOBS

BENCH_DIR = Path(__file__).resolve().parent
RAY = Path(sys.executable).with_name("ray")
RESOURCE = "assay"
"""The custom resource the worker nodes offer and every job asks for: jobs never run on the
head, so killing a worker node kills running jobs."""
STARTED = "Ray runtime started."
START_ATTEMPTS = 3
REAPER = """
import os, shutil, signal, sys, time
sessions = {int(line) for line in sys.stdin}  # until EOF: the cluster stopped, or its owner died
def alive():
    pids = set()
    for name in os.listdir("/proc"):
        try:
            fields = open(f"/proc/{name}/stat").read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError, ValueError):
            continue
        if fields[0] != "Z" and int(fields[3]) in sessions:
            pids.add(int(name))
    return pids
deadline = time.monotonic() + 30
while (pids := alive()) and time.monotonic() < deadline:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(0.1)
shutil.rmtree(sys.argv[1], ignore_errors=True)
"""
"""The reaper: a process of its own that learns the cluster's sessions on its stdin and, once
its stdin closes, kills whatever is left of them and removes the temporary directory (its
argument). The stdin closes when the owner dies too (a test killed by its timeout), not only at
:meth:`LocalCluster.stop`."""


# -- the cluster -------------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def session(self) -> int:
        """The session id of every process of this node: ``ray start`` leads a session of its
        own, and the raylet, its agents and its Ray workers stay in it."""
        return self.process.pid


def session_pids(session: int) -> set[int]:
    """The live (not zombie) processes of a session."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == session:
            pids.add(int(entry.name))
    return pids


def wait_for(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout_s:.0f}s")
        time.sleep(interval_s)
    return value


class LocalCluster:
    """A Ray head and worker nodes on this machine, each a ``ray start --block`` process in a
    session of its own, with its own ports and small resources. Worker nodes offer
    :data:`RESOURCE` and have ``ASSAY_RAY_NODE`` set to their name; ``pythonpath`` is where
    their Ray workers find the job modules. ``address="auto"`` finds this cluster in a
    process whose ``RAY_TMPDIR`` is :attr:`temp_dir` (see :meth:`environ`)."""

    def __init__(
        self,
        *,
        workers: Sequence[str] = ("node_a", "node_b"),
        head_cpus: int = 1,
        worker_cpus: int = 2,
        object_store_mb: int = 100,
        pythonpath: Sequence[Path] = (BENCH_DIR,),
        start_timeout_s: float = 240.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        self.workers = tuple(workers)
        self.head_cpus = head_cpus
        self.worker_cpus = worker_cpus
        self.object_store_mb = object_store_mb
        self.pythonpath = tuple(pythonpath)
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        # Short: Ray's unix sockets live below it (a socket path has at most 107 bytes).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="assay-ray-", dir="/tmp"))
        self.port = free_port()
        self.address = ""
        self.nodes: dict[str, Node] = {}
        self._reaper: subprocess.Popen[bytes] | None = None

    def environ(self) -> dict[str, str]:
        """What the nodes, and a driver process, need in their environment: ``RAY_TMPDIR``
        (where ``address="auto"`` finds this cluster) and the authentication mode. Ray turns
        token authentication on by itself wherever ``~/.ray/auth_token`` exists (a local
        ``ray.init()`` writes one), and the nodes and the driver must agree: it is set, to off,
        for all of them."""
        return {"RAY_TMPDIR": str(self.temp_dir), "RAY_AUTH_MODE": "disabled"}

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the head, then the worker nodes one at a time (a node whose raylet does not
        register with the GCS within Ray's fixed 30 s, as on a loaded machine, is started
        again, up to ``START_ATTEMPTS`` times)."""
        self._start_node(
            "head",
            [
                "--head",
                f"--port={self.port}",
                f"--num-cpus={self.head_cpus}",
                "--include-dashboard=false",
                f"--dashboard-port={free_port()}",
                f"--ray-client-server-port={free_port()}",
                # Ray runs task workers at nice 15 (the head's setting holds cluster-wide):
                # beside a busy machine's nice-0 processes they would barely run.
                '--system-config={"worker_niceness": 0}',
                *self._common_args(),
            ],
        )
        # The address Ray advertises (the machine's IP, not 127.0.0.1), as `ray start` wrote it.
        address_file = self.temp_dir / "ray" / "ray_current_cluster"
        self.address = wait_for(
            lambda: address_file.exists() and address_file.read_text().strip(),
            30,
            "the head's address",
        )
        for name in self.workers:
            self.start_worker(name)

    def start_worker(self, name: str) -> None:
        """Start worker node ``name`` (again, after :meth:`kill`)."""
        if name in self.nodes and self.pids(name):
            raise RuntimeError(f"ray node {name} is running")
        args = [
            f"--address={self.address}",
            f"--num-cpus={self.worker_cpus}",
            f'--resources={{"{RESOURCE}": 1000, "{name}": 1000}}',
            *self._common_args(),
        ]
        self._start_node(name, args)

    def _common_args(self) -> list[str]:
        return [
            f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
            "--disable-usage-stats",
            "--block",
        ]

    def _start_node(self, name: str, args: list[str]) -> None:
        """Start one node (with ports of its own: every node on this host needs its own) and
        wait until it is up."""
        env = dict(os.environ, **self.environ(), RAY_USAGE_STATS_ENABLED="0")
        env[NODE_VARIABLE] = name
        env["PYTHONPATH"] = os.pathsep.join(
            [*map(str, self.pythonpath), *filter(None, [env.get("PYTHONPATH")])]
        )
        log = self.temp_dir / f"{name}.log"
        for attempt in range(1, START_ATTEMPTS + 1):
            offset = log.stat().st_size if log.exists() else 0
            with log.open("ab") as out:
                process = subprocess.Popen(
                    [str(RAY), "start", *args, *self._node_ports()],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                )
            node = self.nodes[name] = Node(name, process, log)
            self._reap(node)
            if self._started(node, offset):
                return
            self._kill_session(node)
            if attempt == START_ATTEMPTS:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"ray node {name} did not start:\n{tail}")

    def _started(self, node: Node, offset: int) -> bool:
        """Whether the node came up (False: its ``ray start`` exited); its log starts at
        ``offset``."""
        deadline = time.monotonic() + self.start_timeout_s
        while STARTED.encode() not in node.log.read_bytes()[offset:]:
            if node.process.poll() is not None:
                return False
            if time.monotonic() > deadline:
                raise RuntimeError(f"ray node {node.name}: not up within {self.start_timeout_s}s")
            time.sleep(0.2)
        return True

    @staticmethod
    def _node_ports() -> list[str]:
        names = (
            "node-manager-port",
            "object-manager-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
        )
        return [f"--{name}={free_port()}" for name in names]

    @staticmethod
    def _kill_session(node: Node) -> None:
        for pid in session_pids(node.session):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.process.kill()
            node.process.wait(timeout=10)
        wait_for(lambda: not session_pids(node.session), 30, f"the processes of {node.name} exit")

    def _reap(self, node: Node) -> None:
        if self._reaper is None:
            self._reaper = subprocess.Popen(
                [sys.executable, "-c", REAPER, str(self.temp_dir)],
                stdin=subprocess.PIPE,
                start_new_session=True,
            )
        assert self._reaper.stdin is not None
        self._reaper.stdin.write(f"{node.session}\n".encode())
        self._reaper.stdin.flush()

    def pids(self, name: str) -> set[int]:
        return session_pids(self.nodes[name].session)

    def kill(self, name: str) -> dict[int, float]:
        """SIGKILL every process of node ``name`` at once (a machine that dies); once all are
        gone, returns when each was sent its SIGKILL (pid: wall-clock time), the moment after
        which it ran no more code."""
        signalled = {}
        for pid in self.pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            signalled[pid] = time.time()
        wait_for(lambda: not self.pids(name), 30, f"the processes of {name} die", 0.02)
        self.nodes[name].process.wait(timeout=30)
        return signalled

    def stop(self) -> None:
        """Stop every node (workers first) and remove the temporary directory: SIGTERM to each
        ``ray start --block`` (it stops its node's processes), then SIGKILL to whatever of its
        session is left after ``stop_timeout_s``. Kills only this cluster's processes."""
        nodes = [n for n in self.nodes.values() if n.name != "head"]
        nodes += [n for n in self.nodes.values() if n.name == "head"]
        for node in nodes:
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for node in nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        for node in nodes:
            with contextlib.suppress(RuntimeError):
                self._kill_session(node)
        if self._reaper is not None:
            assert self._reaper.stdin is not None
            self._reaper.stdin.close()
            self._reaper.wait(timeout=60)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


# -- what the jobs recorded --------------------------------------------------------------------


@dataclass(frozen=True)
class Execution:
    """One run of one attempt of a job, as the job recorded it (``end`` None: it never
    returned)."""

    job_id: str
    attempt: int
    node: str
    pid: int
    start: float
    end: float | None


def read_executions(path: Path) -> list[Execution]:
    starts: dict[tuple[str, int, int], tuple[str, float]] = {}
    ends: dict[tuple[str, int, int], float] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        event, job_id, attempt, node, pid, at = line.split()
        key = (job_id, int(attempt), int(pid))
        if event == "start":
            starts[key] = (node, float(at))
        else:
            ends[key] = float(at)
    return [
        Execution(job_id, attempt, node, pid, start, ends.get((job_id, attempt, pid)))
        for (job_id, attempt, pid), (node, start) in starts.items()
    ]


def running_on(path: Path, node: str) -> int:
    """Executions on ``node`` that started and have not ended."""
    return sum(1 for e in read_executions(path) if e.node == node and e.end is None)


@dataclass(frozen=True)
class ExecutionReport:
    executions: int
    killed: int
    """Executions on the killed node that never returned (started before the kill)."""
    unended: int
    """Executions that never returned and were not on the killed node (should be 0)."""
    duplicate_attempts: int
    """(job, attempt) pairs that ran more than once (Ray re-running a task; should be 0)."""
    overlapping_jobs: list[str]
    """Jobs two of whose executions overlapped in time (should be none)."""
    per_node: dict[str, int]
    """Executions that returned, per node."""
    first_retry_after_kill_s: float | None


def analyse(
    executions: Sequence[Execution],
    killed_node: str | None,
    killed_at: float | None,
    signalled: Mapping[int, float],
) -> ExecutionReport:
    """Overlaps: an execution spans [start, end]; one that never returned spans until the kill
    if it was on the killed node, else forever. On the killed node, its end is when its process
    was sent SIGKILL (``signalled``: pid to time; it ran no code after that), or ``killed_at``
    (every process of the node was gone by then) for a process not in ``signalled``. A retry
    can start before ``killed_at``: Ray reports a task lost as soon as its worker is gone,
    while the kill is still waiting for the node's other processes."""
    by_job: dict[str, list[tuple[float, float]]] = defaultdict(list)
    killed = unended = 0
    for e in executions:
        end = e.end
        if end is None:
            if e.node == killed_node and killed_at is not None and e.start <= killed_at:
                killed += 1
                end = signalled.get(e.pid, killed_at)
            else:
                unended += 1
                end = math.inf
        by_job[e.job_id].append((e.start, end))
    overlapping = []
    for job_id, spans in by_job.items():
        spans.sort()
        latest_end = -math.inf
        for start, end in spans:
            if start < latest_end:
                overlapping.append(job_id)
                break
            latest_end = max(latest_end, end)
    attempts = Counter((e.job_id, e.attempt) for e in executions)
    retries = [e.start for e in executions if e.attempt > 1]
    first_retry = None
    if killed_at is not None and retries:
        first_retry = min(retries) - killed_at
    return ExecutionReport(
        executions=len(executions),
        killed=killed,
        unended=unended,
        duplicate_attempts=sum(1 for n in attempts.values() if n > 1),
        overlapping_jobs=sorted(overlapping),
        per_node=dict(sorted(Counter(e.node for e in executions if e.end is not None).items())),
        first_retry_after_kill_s=first_retry,
    )


# -- one run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    jobs: int
    steps: int
    step_s: float
    concurrency: int
    kill_after: float
    """Kill the node once this fraction of the jobs has finished (and jobs run on it)."""
    kill_node: str = "node_a"
    drain_timeout_s: float = 900.0
    kill_node_slowdown: float = 1.0
    """Steps on the node to be killed take this many times longer, so that a job seen running
    there is still running when the kill lands, however loaded the machine (the tests)."""


def ray_settings(uri: str, concurrency: int) -> dict[str, Any]:
    """The worker's settings: the ray executor on ``address="auto"``, jobs only where
    :data:`RESOURCE` is."""
    return {
        "store_uri": uri,
        "job_modules": [],
        # Not the default "process": the worker would start a process pool it never uses.
        "default_executor": "ray",
        "worker_concurrency": concurrency,
        "retry_backoff_base_s": 0.2,
        "retry_backoff_max_s": 2.0,
        "cancel_poll_s": 0.2,
        "executor_options": {
            "ray": {
                "address": "auto",
                "resources": {RESOURCE: 1},
                "init_options": {"log_to_driver": False},
            }
        },
    }


@contextlib.contextmanager
def environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _reason(error: str | None) -> str:
    """What an attempt's error says, short: the Ray error's type for a lost task."""
    text = (error or "").strip()
    if "was lost: " in text:
        return text.split("was lost: ", 1)[1].split(":", 1)[0]
    return text.splitlines()[0][:80] if text else "?"


def count_finished(backend: Backend, ids: Sequence[str]) -> int:
    terminal = {s.value for s in JobStatus if s.is_terminal}
    return sum(1 for (status,) in job_rows(backend, ids, "status") if status in terminal)


def run_on_cluster(
    cluster: LocalCluster, backend: Backend, config: RunConfig, record: Path
) -> dict[str, Any]:
    """Submit the jobs, run them through a worker of ``backend`` (in a thread of this process,
    connected to ``cluster`` with ``address="auto"``), kill ``config.kill_node`` mid-run, wait
    until every job is finished; returns the numbers."""
    slow = (
        {"slow_node": config.kill_node, "slowdown": config.kill_node_slowdown}
        if config.kill_node_slowdown != 1
        else {}
    )
    params = [
        {"record_path": str(record), "steps": config.steps, "step_s": config.step_s, **slow}
        for _ in range(config.jobs)
    ]
    worker = backend.worker(concurrency=config.concurrency)
    thread = threading.Thread(target=worker.run, name="assay-worker", daemon=True)
    killed: dict[str, Any] = {}
    signalled: dict[int, float] = {}
    with environ(cluster.environ()):
        thread.start()
        try:
            # Warm-up: the first jobs wait for Ray to start its worker processes (and import
            # assay in them), tens of seconds on a loaded machine; not part of the numbers.
            warm_started = time.monotonic()
            warm = [{**params[0], "record_path": str(record.with_suffix(".warm-up"))}]
            warm_ids = [j.id for j in backend.submit_many("rc_step", warm * 2 * config.concurrency)]
            wait_for(
                lambda: count_finished(backend, warm_ids) == len(warm_ids),
                config.drain_timeout_s,
                "the warm-up jobs finished",
            )
            warm_up_s = time.monotonic() - warm_started
            submitted = time.monotonic()
            submitted_wall = time.time()
            ids = [j.id for j in backend.submit_many("rc_step", params)]

            def ready_to_kill(running: int) -> bool:
                finished = count_finished(backend, ids)
                if finished < config.kill_after * config.jobs:
                    return False
                # What was seen is what is reported: a job may end before the kill lands.
                killed["finished_before"] = finished
                killed["running_on_node"] = running_on(record, config.kill_node)
                return bool(killed["running_on_node"] >= running)

            # Kill while two jobs run on the node (one, if that does not happen within 30 s).
            try:
                wait_for(lambda: ready_to_kill(2), 30, "two jobs on the node", 0.01)
            except RuntimeError:
                wait_for(
                    lambda: ready_to_kill(1),
                    config.drain_timeout_s,
                    f"jobs running on {config.kill_node}",
                    0.01,
                )
            killed["at_monotonic"] = time.monotonic()
            killed["at"] = time.time()
            signalled = cluster.kill(config.kill_node)
            killed["pids"] = len(signalled)
            killed["dead_at"] = time.time()
            killed["load_average"] = os.getloadavg()
            wait_for(
                lambda: count_finished(backend, ids) == config.jobs,
                config.drain_timeout_s,
                "every job finished",
                0.1,
            )
            drained = time.monotonic()
        finally:
            worker.stop(now=True)
            thread.join(timeout=60)
    columns = ("id", "status", "attempt", "progress")
    rows = [
        dict(zip(columns, row, strict=True)) for row in job_rows(backend, ids, ", ".join(columns))
    ]
    statuses = Counter(row["status"] for row in rows)
    retried_ids = [row["id"] for row in rows if row["attempt"] > 1]
    lost_attempts = [
        a
        for job_id in retried_ids
        for a in backend.attempts(job_id)
        if a.status != JobStatus.SUCCEEDED
    ]
    reasons = Counter(f"{a.status} {_reason(a.error)}" for a in lost_attempts)
    # When Ray told the executor the task was lost (the lost attempt's end, recorded by the
    # worker), after the kill.
    reported_after = [a.finished_at.timestamp() - killed["at"] for a in lost_attempts]
    progress_ok = sum(
        1
        for row in rows
        if row["progress"] and json.loads(row["progress"])["completed"] == config.steps
    )
    # Executions killed with the node end when their process was sent SIGKILL.
    report = analyse(read_executions(record), config.kill_node, killed["dead_at"], signalled)
    before_s = killed["at_monotonic"] - submitted
    after_s = drained - killed["at_monotonic"]
    return {
        "jobs": config.jobs,
        "succeeded": statuses.get(JobStatus.SUCCEEDED.value, 0),
        "failed": sum(n for s, n in statuses.items() if s != JobStatus.SUCCEEDED.value),
        "statuses": dict(statuses),
        "lost": config.jobs
        - len(rows)
        + sum(1 for row in rows if row["status"] in ("PENDING", "RUNNING")),
        "retried_jobs": len(retried_ids),
        "attempts": sum(row["attempt"] for row in rows),
        "retry_reasons": dict(reasons),
        "progress_arrived": progress_ok,
        "executions": report.executions,
        "killed_executions": report.killed,
        "unended_executions": report.unended,
        "duplicate_attempts": report.duplicate_attempts,
        "overlapping_jobs": len(report.overlapping_jobs),
        "overlapping_examples": report.overlapping_jobs[:5],
        "per_node": report.per_node,
        "first_retry_after_kill_s": report.first_retry_after_kill_s,
        "loss_reported_after_kill_s": max(reported_after, default=None),
        "kill": {k: v for k, v in killed.items() if k not in ("at", "at_monotonic", "dead_at")},
        "kill_took_s": killed["dead_at"] - killed["at"],
        "wall_s": drained - submitted,
        "throughput_per_s": config.jobs / (drained - submitted),
        "throughput_before_kill_per_s": killed["finished_before"] / before_s,
        "throughput_after_kill_per_s": (config.jobs - killed["finished_before"]) / after_s,
        "submitted_at": submitted_wall,
        "warm_up_s": warm_up_s,
        "warm_up_jobs": len(warm_ids),
    }


# -- the benchmark -----------------------------------------------------------------------------


def bench_store(store: Store, config: RunConfig) -> dict[str, Any]:
    uri = store.fresh()
    record = store.tmp / "executions.log"
    started = time.monotonic()
    with LocalCluster() as cluster:
        cluster_start_s = time.monotonic() - started
        backend = Backend(load_settings(**ray_settings(uri, config.concurrency)))
        backend.registry = RAY_CLUSTER_JOBS
        try:
            result = run_on_cluster(cluster, backend, config, record)
        finally:
            backend.close()
    result["cluster_start_s"] = cluster_start_s
    return result


TARGETS: dict[str, tuple[str, Any]] = {
    # key: (label, target) - every job SUCCEEDED, none lost or run twice at once
    "succeeded": ("jobs SUCCEEDED", "= jobs"),
    "failed": ("jobs not SUCCEEDED", 0),
    "lost": ("jobs lost (not finished)", 0),
    "overlapping_jobs": ("jobs with overlapping executions", 0),
    "duplicate_attempts": ("attempts run more than once", 0),
    "unended_executions": ("executions never ended, not on the killed node", 0),
    "progress_arrived": ("jobs whose last progress reached the row", "= jobs"),
    "killed_executions": ("executions killed with the node", ">= 1"),
    "retried_jobs": ("jobs retried by assay", ">= killed"),
}


def check(key: str, r: dict[str, Any]) -> bool:
    target = TARGETS[key][1]
    if target == "= jobs":
        return bool(r[key] == r["jobs"])
    if target == ">= 1":
        return bool(r[key] >= 1)
    if target == ">= killed":
        return bool(r[key] >= r["killed_executions"])
    return bool(r[key] == target)


def print_table(results: dict[str, Any]) -> None:
    sizes = results["sizes"]
    table = new_table(
        f"Ray cluster: {sizes['jobs']} jobs of {sizes['steps']} x {sizes['step_s'] * 1000:.0f} ms "
        f"(progress after each), head + 2 worker nodes x {sizes['worker_cpus']} CPUs, "
        f"concurrency {sizes['concurrency']}, {sizes['kill_node']} killed; {load_average(results)}",
        {"store": "left", "metric": "left", "value": "right", "target": "right", "result": "left"},
    )
    for kind, r in results["stores"].items():
        if "skipped" in r:
            table.add_row(kind, "[yellow]skipped[/]", "", "", r["skipped"])
            continue
        table.add_row(kind, "jobs", str(r["jobs"]), "", "")
        for key, (label, target) in TARGETS.items():
            table.add_row("", label, str(r[key]), str(target), verdict(check(key, r)))
        kill = r["kill"]
        rows = [
            ("retry reasons", ", ".join(f"{k} x{n}" for k, n in r["retry_reasons"].items())),
            ("executions (all attempts)", str(r["executions"])),
            ("executions per node", ", ".join(f"{k}: {n}" for k, n in r["per_node"].items())),
            (
                "kill",
                f"after {kill['finished_before']} jobs, {kill['running_on_node']} running on it, "
                f"{kill['pids']} processes; load {kill['load_average'][0]:.2f}",
            ),
            ("loss reported by Ray after kill (max)", _seconds(r["loss_reported_after_kill_s"])),
            ("first retry started after kill", _seconds(r["first_retry_after_kill_s"])),
            ("throughput (whole run)", f"{r['throughput_per_s']:.1f} jobs/s"),
            (
                "throughput before / after kill",
                f"{r['throughput_before_kill_per_s']:.1f} / "
                f"{r['throughput_after_kill_per_s']:.1f} jobs/s",
            ),
            ("wall time (submit to last job)", f"{r['wall_s']:.1f} s"),
            ("cluster start", f"{r['cluster_start_s']:.1f} s"),
            ("warm-up (not counted)", f"{r['warm_up_jobs']} jobs in {r['warm_up_s']:.1f} s"),
        ]
        for label, value in rows:
            table.add_row("", label, value, "", "")
    console.print(table)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def passed(results: dict[str, Any]) -> bool:
    return all(
        check(key, r) for r in results["stores"].values() if "skipped" not in r for key in TARGETS
    )


def main() -> int:
    parser = new_parser(__doc__)
    parser.set_defaults(stores="sqlite")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=3, help="progress reports per job")
    parser.add_argument("--step-ms", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=4, help="the worker's job slots")
    parser.add_argument(
        "--kill-after", type=float, default=0.4, help="fraction of jobs finished before the kill"
    )
    add_run_options(parser, "ray_cluster", "120 jobs")
    args = parser.parse_args()
    jobs = 120 if args.quick else args.jobs
    if jobs < 10 or not 0 < args.kill_after < 1:
        console.print("[red]--jobs must be >= 10 and --kill-after between 0 and 1[/]")
        return 2
    config = RunConfig(
        jobs=jobs,
        steps=args.steps,
        step_s=args.step_ms / 1000,
        concurrency=args.concurrency,
        kill_after=args.kill_after,
    )
    sizes = {
        "jobs": jobs,
        "steps": config.steps,
        "step_s": config.step_s,
        "concurrency": config.concurrency,
        "kill_after": config.kill_after,
        "kill_node": config.kill_node,
        "head_cpus": 1,
        "worker_cpus": 2,
    }
    printed: list[dict[str, Any]] = []

    def report(results: dict[str, Any]) -> None:
        print_table(results)
        printed.append(results)

    code = run_benchmark(
        args, sizes, lambda store: bench_store(store, config), report, name="ray_cluster"
    )
    return code or (0 if all(passed(r) for r in printed) else 1)


if __name__ == "__main__":
    sys.exit(main())
