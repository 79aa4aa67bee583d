"""The ``kubernetes`` executor.

What runs here without a cluster: the manifest it builds, the Job-status mapping, option
checks, the in-pod entry point (for real, in a subprocess) and the result convention, and the
executor's polling / cancel logic against an in-memory stand-in of the Kubernetes API (a fake,
clearly not a cluster). The end-to-end test at the bottom runs only when ``KUBECONFIG`` points
at a cluster and ``ASSAY_TEST_K8S_IMAGE`` names an image with assay installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import assay
from assay import ConfigError, JobStatus
from assay.jobs.context import JobContext
from assay.jobs.executors import (
    Cancelled,
    Completed,
    Failed,
    Retry,
    TimedOut,
    available_executors,
    create_executor,
)
from assay.jobs.executors.kubernetes import (
    KubernetesExecutor,
    build_manifest,
    map_status,
    parse_result,
    pod_problem,
)
from assay.jobs.model import Job
from jobmods_remote import K8S_JOBS
from support.jobs import FAST, JOBMODS_DIR, running_worker
from support.timing import wait_until

IMAGE = "registry.example.com/assay-jobs:1.2"
JOB_ID = "06e4cc4b-e37e-4c8f-b470-559b2055c134"


def _job(name: str = "k_add", params: dict[str, Any] | None = None, attempt: int = 2) -> Job:
    now = datetime.now(UTC)
    return Job(
        id=JOB_ID,
        name=name,
        params={"a": 2, "b": 3} if params is None else params,
        status=JobStatus.RUNNING,
        result=None,
        error=None,
        attempt=attempt,
        max_retries=0,
        timeout=90.5,
        created_at=now,
        started_at=now,
        finished_at=None,
        worker_id="w1",
        progress=None,
    )


def _options(**overrides: Any) -> dict[str, Any]:
    return {**KubernetesExecutor.options, "image": IMAGE, **overrides}


# -- manifest -------------------------------------------------------------------------------------


def test_manifest_is_one_batch_job_per_execution() -> None:
    options = _options(labels={"team": "evals"}, env={"HF_HOME": "/cache"}, service_account="jobs")
    manifest = build_manifest(_job(), K8S_JOBS.get("k_add"), options)
    labels = {
        "team": "evals",
        "app": "assay",
        "assay/job-id": JOB_ID,
        "assay/job-name": "k_add",
        "assay/attempt": "2",
    }
    resources = {"cpu": "500m", "memory": "512Mi"}
    assert manifest == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "assay-06e4cc4be37e-2",
            "labels": labels,
            "annotations": {"assay/job-name": "k_add"},
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 91,  # the job's 90.5 s timeout, rounded up
            "ttlSecondsAfterFinished": 300,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": "jobs",
                    "containers": [
                        {
                            "name": "job",
                            "image": IMAGE,
                            "command": ["python", "-m", "assay.jobs.executors.kubernetes"],
                            "env": [
                                {"name": "HF_HOME", "value": "/cache"},
                                {"name": "ASSAY_JOB_ID", "value": JOB_ID},
                                {"name": "ASSAY_JOB_NAME", "value": "k_add"},
                                {"name": "ASSAY_JOB_ATTEMPT", "value": "2"},
                                {"name": "ASSAY_JOB_TIMEOUT", "value": "90.5"},
                                {"name": "ASSAY_JOB_PARAMS", "value": '{"a": 2, "b": 3}'},
                                {"name": "ASSAY_JOB_MODULE", "value": "jobmods_remote"},
                                {"name": "ASSAY_JOB_FUNCTION", "value": "k_add"},
                            ],
                            "resources": {"requests": resources, "limits": resources},
                            "terminationMessagePath": "/dev/termination-log",
                            "terminationMessagePolicy": "File",
                        }
                    ],
                },
            },
        },
    }


def test_manifest_labels_stay_valid_and_ours_win() -> None:
    job = _job(name="scores/rouge L (v2)" + "x" * 80)
    options = _options(labels={"app": "theirs"}, ttl_seconds_after_finished=None)
    manifest = build_manifest(job, K8S_JOBS.get("k_add"), options)
    labels = manifest["metadata"]["labels"]
    assert labels["app"] == "assay"
    assert labels["assay/job-name"] == ("scores-rouge-L--v2-" + "x" * 80)[:63]
    assert manifest["metadata"]["annotations"]["assay/job-name"] == job.name
    assert "ttlSecondsAfterFinished" not in manifest["spec"]


# -- status mapping -------------------------------------------------------------------------------


def _cond(kind: str, reason: str | None = None, status: str = "True") -> dict[str, Any]:
    return {"conditions": [{"type": kind, "status": status, "reason": reason}]}


@pytest.mark.parametrize(
    ("status", "phase"),
    [
        ({}, "running"),
        ({"active": 1}, "running"),
        ({"active": 1, **_cond("Complete", status="False")}, "running"),
        (_cond("Complete"), "succeeded"),
        (_cond("SuccessCriteriaMet"), "succeeded"),
        ({"succeeded": 1}, "succeeded"),
        (_cond("Failed", "BackoffLimitExceeded"), "failed"),
        (_cond("FailureTarget", "BackoffLimitExceeded"), "failed"),
        ({"failed": 1}, "failed"),
        (_cond("Failed", "DeadlineExceeded"), "deadline"),
        (_cond("FailureTarget", "DeadlineExceeded"), "deadline"),
    ],
)
def test_status_mapping(status: dict[str, Any], phase: str) -> None:
    assert map_status(status) == phase


def test_pod_that_cannot_start_is_a_problem() -> None:
    def pod(waiting: dict[str, str]) -> dict[str, Any]:
        return {"status": {"containerStatuses": [{"state": {"waiting": waiting}}]}}

    assert pod_problem(pod({"reason": "ContainerCreating"})) is None
    assert pod_problem({"status": {}}) is None
    assert pod_problem(pod({"reason": "ImagePullBackOff", "message": "not found"})) == (
        "ImagePullBackOff: not found"
    )


# -- options --------------------------------------------------------------------------------------


def test_plugin_is_registered_and_checks_its_options() -> None:
    assert "kubernetes" in available_executors()
    with pytest.raises(ConfigError, match="the kubernetes executor needs an 'image'"):
        create_executor("kubernetes", assay.load_settings(), slots=1)
    typo = assay.load_settings(executor_options={"kubernetes": {"image": IMAGE, "namespce": "x"}})
    with pytest.raises(
        ConfigError, match="unknown option 'namespce' for executor 'kubernetes'; did you mean"
    ):
        create_executor("kubernetes", typo, slots=1)
    bad = assay.load_settings(executor_options={"kubernetes": {"image": IMAGE, "labels": {"a": 1}}})
    with pytest.raises(ConfigError, match="'labels' must map names to strings"):
        create_executor("kubernetes", bad, slots=1)
    good = assay.load_settings(executor_options={"kubernetes": {"image": IMAGE, "cpu": "2"}})
    executor = create_executor("kubernetes", good, slots=1)
    assert executor.config["cpu"] == "2"
    assert executor.config["namespace"] == "default"


# -- the entry point in the pod, for real ---------------------------------------------------------


def _entry(tmp_path: Path, name: str, params: dict[str, Any]) -> tuple[int, str, str]:
    """Run ``python -m assay.jobs.executors.kubernetes`` as the pod would, with the manifest's
    environment; returns the exit code, the termination message and stdout."""
    manifest = build_manifest(_job(name, params), K8S_JOBS.get(name), _options())
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    result_path = tmp_path / "termination-log"
    env = {
        **os.environ,
        **{item["name"]: item["value"] for item in container["env"]},
        "ASSAY_RESULT_PATH": str(result_path),
        "PYTHONPATH": str(JOBMODS_DIR),
    }
    command = [sys.executable, *container["command"][1:]]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode, result_path.read_text(), proc.stdout


def test_entry_point_reports_results_by_the_convention(tmp_path: Path) -> None:
    code, message, stdout = _entry(tmp_path, "k_add", {"a": 2, "b": 3})
    assert (code, json.loads(message)) == (0, {"status": "ok", "result": 5})
    assert stdout == "adding 2 and 3\n"
    terminated = {"exitCode": code, "reason": "Completed", "message": message}
    assert parse_result(terminated, stdout.splitlines()[-1], job_name="j") == Completed(5)

    code, message, _ = _entry(tmp_path, "k_flaky", {})
    assert code == 1
    outcome = parse_result({"exitCode": 1, "message": message}, None, job_name="j")
    assert isinstance(outcome, Retry)
    assert "RemoteTransient: transient on attempt 2" in outcome.error


def test_big_results_travel_in_the_log(tmp_path: Path) -> None:
    code, message, stdout = _entry(tmp_path, "k_big", {"n": 10_000})
    assert code == 0
    assert json.loads(message) == {"status": "ok", "in_log": True}
    last_line = stdout.splitlines()[-1]
    outcome = parse_result({"exitCode": 0, "message": message}, last_line, job_name="j")
    assert outcome == Completed("x" * 10_000)


def test_missing_result_is_a_clear_failure() -> None:
    oom = {"exitCode": 137, "reason": "OOMKilled", "message": ""}
    outcome = parse_result(oom, "loading model...", job_name="assay-abc-1")
    assert outcome == Failed(
        "Kubernetes Job assay-abc-1 left no assay result (exit code 137, reason OOMKilled); "
        "last log line: loading model..."
    )


# -- the executor's control loop, against an in-memory fake of the API (not a cluster) ------------

try:
    import kubernetes
except ImportError:  # the pure tests above still run without the extra
    kubernetes = None

needs_client = pytest.mark.skipif(
    kubernetes is None,
    reason="the kubernetes extra is not installed: pip install 'assay[kubernetes]'",
)


class FakeK8s:
    """Stands in for BatchV1Api and CoreV1Api: records calls, plays a scripted Job status."""

    def __init__(self, statuses: list[dict[str, Any]], pod_status: dict[str, Any]) -> None:
        self.statuses = statuses
        self.pod_status = pod_status
        self.created: list[dict[str, Any]] = []
        self.deleted: list[tuple[str, str, str]] = []

    def create_namespaced_job(self, namespace: str, body: dict[str, Any]) -> None:
        self.created.append(body)

    def read_namespaced_job_status(self, name: str, namespace: str) -> Any:
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return kubernetes.client.V1Job(
            status=kubernetes.client.ApiClient()._ApiClient__deserialize(status, "V1JobStatus")
        )

    def list_namespaced_pod(self, namespace: str, label_selector: str) -> Any:
        pod = {"metadata": {"name": "pod-1"}, "status": self.pod_status}
        return kubernetes.client.V1PodList(
            items=[kubernetes.client.ApiClient()._ApiClient__deserialize(pod, "V1Pod")]
        )

    def read_namespaced_pod_log(self, name: str, namespace: str, **kwargs: Any) -> str:
        return 'adding 2 and 3\n{"status": "ok", "result": 5}\n'

    def delete_namespaced_job(self, name: str, namespace: str, propagation_policy: str) -> None:
        self.deleted.append((namespace, name, propagation_policy))


def _terminated(message: str) -> dict[str, Any]:
    state = {"terminated": {"exitCode": 0, "reason": "Completed", "message": message}}
    return {
        "containerStatuses": [
            {
                "name": "job",
                "image": IMAGE,
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": state,
            }
        ]
    }


def _executor(fake: FakeK8s) -> KubernetesExecutor:
    settings = assay.load_settings(
        executor_options={
            "kubernetes": {"image": IMAGE, "namespace": "ns", "poll_interval_s": 0.01}
        }
    )
    executor = create_executor("kubernetes", settings, slots=1)
    assert isinstance(executor, KubernetesExecutor)
    executor._batch = executor._core = fake  # instead of start(): no cluster here
    return executor


@needs_client
def test_control_loop_success_reads_the_termination_message() -> None:
    fake = FakeK8s(
        [{"active": 1}, {"active": 1}, _cond("Complete")],
        _terminated('{"status": "ok", "result": 5}'),
    )
    ctx = JobContext(_job())
    assert _executor(fake).run(K8S_JOBS.get("k_add"), ctx) == Completed(5)
    assert [body["metadata"]["name"] for body in fake.created] == ["assay-06e4cc4be37e-2"]
    assert fake.deleted == []  # finished Jobs are left to ttlSecondsAfterFinished
    assert ctx.log_tail == "adding 2 and 3\n"


@needs_client
def test_control_loop_deadline_is_a_timeout() -> None:
    fake = FakeK8s([_cond("Failed", "DeadlineExceeded")], {})
    outcome = _executor(fake).run(K8S_JOBS.get("k_add"), JobContext(_job()))
    assert isinstance(outcome, TimedOut)


@needs_client
def test_control_loop_cancel_deletes_the_job_with_propagation() -> None:
    fake = FakeK8s([{"active": 1}], {})
    ctx = JobContext(_job())
    ctx.cancel("canceled by request")
    assert _executor(fake).run(K8S_JOBS.get("k_add"), ctx) == Cancelled("canceled by request")
    assert fake.deleted == [("ns", "assay-06e4cc4be37e-2", "Foreground")]
    timed = JobContext(_job())
    timed.cancel("timed out after 90.5s", timed_out=True)
    assert isinstance(
        _executor(FakeK8s([{"active": 1}], {})).run(K8S_JOBS.get("k_add"), timed), TimedOut
    )


@needs_client
def test_control_loop_fails_fast_on_a_bad_image() -> None:
    waiting = {"waiting": {"reason": "ErrImagePull", "message": "manifest unknown"}}
    pod = {
        "containerStatuses": [
            {
                "name": "job",
                "image": IMAGE,
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": waiting,
            }
        ]
    }
    fake = FakeK8s([{"active": 1}], pod)
    outcome = _executor(fake).run(K8S_JOBS.get("k_add"), JobContext(_job()))
    assert outcome == Failed(
        "Kubernetes Job assay-06e4cc4be37e-2 cannot start: ErrImagePull: manifest unknown"
    )
    assert fake.deleted == [("ns", "assay-06e4cc4be37e-2", "Foreground")]


# -- end to end on a real cluster (skipped without one) ------------------------------------------

K8S_IMAGE = os.environ.get("ASSAY_TEST_K8S_IMAGE")


@pytest.fixture
def cluster_backend(tmp_path: Path) -> Iterator[assay.Backend]:
    options = {
        "image": K8S_IMAGE,
        "namespace": os.environ.get("ASSAY_TEST_K8S_NAMESPACE", "default"),
        "cpu": "100m",
        "memory": "128Mi",
        "poll_interval_s": 0.5,
    }
    settings = {
        **FAST,
        "job_modules": ["assay.examples"],
        "default_executor": "kubernetes",
        "executor_options": {"kubernetes": options},
    }
    with assay.connect(f"sqlite:///{tmp_path / 'assay.db'}", **settings) as backend:
        yield backend


@needs_client
@pytest.mark.skipif(
    not (os.environ.get("KUBECONFIG") and K8S_IMAGE),
    reason="needs a cluster (KUBECONFIG) and an image with assay installed (ASSAY_TEST_K8S_IMAGE)",
)
def test_end_to_end_on_a_cluster(cluster_backend: assay.Backend) -> None:
    from kubernetes import client, config

    config.load_kube_config()
    batch = client.BatchV1Api()
    namespace = os.environ.get("ASSAY_TEST_K8S_NAMESPACE", "default")
    with running_worker(cluster_backend, concurrency=2):
        done = cluster_backend.wait(cluster_backend.submit("add", {"a": 2, "b": 3}).id, timeout=300)
        assert done.status == JobStatus.SUCCEEDED, done.error
        assert done.result == 5

        long = cluster_backend.submit("count_to", {"n": 600, "delay_s": 1})
        selector = f"assay/job-id={long.id}"
        wait_until(
            lambda: batch.list_namespaced_job(namespace, label_selector=selector).items,
            timeout=120,
        )
        cluster_backend.cancel(long.id)
        assert cluster_backend.wait(long.id, timeout=60).status == JobStatus.CANCELED
        wait_until(
            lambda: not batch.list_namespaced_job(namespace, label_selector=selector).items,
            timeout=120,
            interval=1,
        )
