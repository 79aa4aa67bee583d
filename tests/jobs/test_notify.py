"""Wake-ups through Redis pub/sub (ASSAY_NOTIFY_URL): a real `assay worker` process that polls
only every 30 s picks up a job submitted by another process's backend at once, on each store;
a Redis that is down costs polling latency, never a submit; a bad URL is a clear error."""

from __future__ import annotations

import logging
import socket
import uuid

import pytest
import redis

import assay
from assay import ConfigError, JobStatus
from support.jobs import FAST, WorkerProcesses
from support.timing import wait_until


def _subscribers(url: str, channel: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(dict(client.pubsub_numsub(channel))[channel.encode()])
    finally:
        client.close()


def test_a_submit_wakes_a_worker_of_another_process_at_once(
    store_uri: str, redis_url: str, worker_processes: WorkerProcesses
) -> None:
    channel = f"assay:test:{uuid.uuid4().hex}"
    wake = {"notify_url": redis_url, "notify_channel": channel}
    # Polling every 30 s: only the message can bring the job to the worker within the wait.
    worker_processes.start(store_uri, "--concurrency", "2", poll_interval_s=30.0, **wake)
    worker_processes.wait_ready(1)
    wait_until(lambda: _subscribers(redis_url, channel) >= 1)
    with assay.connect(store_uri, **{**FAST, **wake}) as backend:
        for n in range(3):
            job = backend.submit("t_add", {"a": n, "b": 1})
            done = backend.wait(job.id, timeout=10)
            assert (done.status, done.result) == (JobStatus.SUCCEEDED, n + 1), done.error


def test_redis_down_costs_a_poll_interval_never_a_submit(
    store_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = {"notify_url": f"redis://127.0.0.1:{port}/0"}
    with (
        caplog.at_level(logging.WARNING, logger="assay.notify"),
        assay.connect(store_uri, **{**FAST, **down}) as backend,
    ):
        jobs = [backend.submit("t_add", {"a": n, "b": 1}) for n in range(3)]
        # Only the first submit tried Redis; the next ones stay quiet for a while.
        assert len([r for r in caplog.records if "publish_failed" in r.message]) == 1
        worker = backend.worker(concurrency=2)
        worker.run(until_idle=True)
        assert [backend.get(j.id).status for j in jobs] == [JobStatus.SUCCEEDED] * 3


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379", "invalid ASSAY_NOTIFY_URL 'http://127.0.0.1:6379'"),
        ("redis://127.0.0.1:notaport/0", "invalid ASSAY_NOTIFY_URL"),
    ],
)
def test_a_bad_notify_url_is_a_config_error(tmp_path, url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        assay.connect(f"sqlite:///{tmp_path / 'a.db'}", notify_url=url)
