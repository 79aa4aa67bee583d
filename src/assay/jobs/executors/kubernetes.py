"""The ``kubernetes`` executor (plugin, ``pip install 'assay[kubernetes]'``): one Kubernetes Job
per execution of an assay job, through the official ``kubernetes`` client.

- :func:`build_manifest` (pure) makes a ``batch/v1`` Job named ``assay-<id prefix>-<attempt>``
  that runs the configured ``image`` with ``command`` (default: this module as a script), one pod,
  ``backoffLimit: 0`` (retries are assay's), ``activeDeadlineSeconds`` = the job's timeout,
  ``ttlSecondsAfterFinished`` for cleanup, CPU and memory requests = limits. The job travels in
  environment variables: ``ASSAY_JOB_ID``, ``ASSAY_JOB_NAME``, ``ASSAY_JOB_ATTEMPT``,
  ``ASSAY_JOB_PARAMS`` (JSON), ``ASSAY_JOB_MODULE`` and ``ASSAY_JOB_FUNCTION`` (where the
  function lives: the image must contain assay and the job module), and the execution's job
  token and the API's address (``ASSAY_API_TOKEN``, ``ASSAY_API_URL``; readable by whoever may
  read Jobs in the namespace, and short-lived).
- The result convention: the entry point (``python -m assay.jobs.executors.kubernetes``) writes
  one JSON object to the container's termination message (``/dev/termination-log``):
  ``{"status": "ok", "result": ...}`` or ``{"status": "fail" | "retry", "error": "traceback"}``.
  When that would exceed Kubernetes' 4 KiB limit it writes ``{"status": ..., "in_log": true}``
  there instead and prints the full object as the last line of stdout, which the executor reads
  from the pod's log. A custom ``command`` must follow the same convention.
- :func:`map_status` (pure) maps a Job's status to ``running``, ``succeeded``, ``failed`` or
  ``deadline``. A pod stuck on its image (``ErrImagePull``, ``ImagePullBackOff``, ...) fails
  the job at once instead of waiting for the deadline (:func:`pod_problem`).
- Cancel and timeout delete the Job with ``propagationPolicy: Foreground`` (its pod goes too).
  Finished Jobs are left for ``ttl_seconds_after_finished`` so their logs can be read.

The ``kubernetes`` package is imported only by ``start`` and ``run``: the pure functions work
without it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import re
import sys
import threading
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from assay.config import Settings
from assay.errors import ConfigError
from assay.jobs.context import LOG_TAIL_CHARS, JobContext
from assay.jobs.executors.base import (
    Completed,
    Executor,
    Failed,
    Outcome,
    Retry,
    TimedOut,
    call_job,
    stopped,
)
from assay.jobs.model import Job, JobStatus
from assay.jobs.registry import JobSpec

__all__ = [
    "KubernetesExecutor",
    "build_manifest",
    "main",
    "map_status",
    "parse_result",
    "pod_problem",
]

log = logging.getLogger("assay.executors.kubernetes")

Phase = Literal["running", "succeeded", "failed", "deadline"]

TERMINATION_MESSAGE_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT = 4096
"""Kubernetes keeps at most 4096 bytes of a container's termination message."""

_FATAL_WAITING = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]")


class KubernetesExecutor(Executor):
    name = "kubernetes"
    options = {
        "image": None,
        "namespace": "default",
        "cpu": "500m",
        "memory": "512Mi",
        "labels": {},
        "env": {},
        "ttl_seconds_after_finished": 300,
        "service_account": None,
        "image_pull_policy": None,
        "command": ["python", "-m", "assay.jobs.executors.kubernetes"],
        "poll_interval_s": 1.0,
        "kubeconfig": None,
        "context": None,
    }
    """``image`` is required (it must contain assay and the job modules). ``kubeconfig`` and
    ``context`` choose the cluster; without them the executor uses the in-cluster service
    account when it runs in a pod, else ``$KUBECONFIG`` / ``~/.kube/config``."""

    def __init__(
        self, settings: Settings, *, slots: int, options: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(settings, slots=slots, options=options)
        _check_options(self.config)
        self._batch: Any = None
        self._core: Any = None
        self._lock = threading.Lock()

    def start(self) -> None:
        try:
            from kubernetes import client
            from kubernetes import config as k8s_config
        except ImportError as exc:
            raise ConfigError(
                "the kubernetes executor needs the kubernetes package: "
                "pip install 'assay[kubernetes]'"
            ) from exc
        kubeconfig, context = self.config["kubeconfig"], self.config["context"]
        config: Any = k8s_config  # the client's config loaders are untyped
        try:
            if kubeconfig is None and context is None and "KUBERNETES_SERVICE_HOST" in os.environ:
                config.load_incluster_config()
            else:
                config.load_kube_config(config_file=kubeconfig, context=context)
        except Exception as exc:
            raise ConfigError(
                f"kubernetes executor: cannot load the cluster config: {exc}"
            ) from exc
        with self._lock:
            self._batch = client.BatchV1Api()
            self._core = client.CoreV1Api()

    def stop(self) -> None:
        with self._lock:
            self._batch = self._core = None

    def run(self, spec: JobSpec, ctx: JobContext) -> Outcome:
        from kubernetes.client import ApiClient
        from kubernetes.client.exceptions import ApiException

        batch, core = self._batch, self._core
        if batch is None or core is None:
            return Failed("the kubernetes executor is not started (or already stopped)")
        namespace = self.config["namespace"]
        manifest = build_manifest(ctx.job, spec, self.config, api_env=ctx.api_env())
        name = manifest["metadata"]["name"]
        try:
            batch.create_namespaced_job(namespace, manifest)
        except ApiException as exc:
            if exc.status != 409:  # 409: this very execution's Job exists already; follow it
                return Failed(f"cannot create Kubernetes Job {namespace}/{name}: {_api_error(exc)}")
            log.info("k8s.job_exists name=%s; following it", name)
        log.info("k8s.job_created name=%s job=%s", name, ctx.job.id)
        serialize: Any = ApiClient().sanitize_for_serialization
        selector = f"assay/job-id={ctx.job.id},assay/attempt={ctx.job.attempt}"
        while True:
            if ctx.cancelled:
                self._delete(namespace, name)
                return stopped(ctx)
            try:
                k8s_job = batch.read_namespaced_job_status(name, namespace)
                phase = map_status(serialize(k8s_job.status) or {})
                pods = [
                    serialize(p)
                    for p in core.list_namespaced_pod(namespace, label_selector=selector).items
                ]
            except ApiException as exc:
                if exc.status == 404:
                    return Failed(f"Kubernetes Job {namespace}/{name} disappeared (deleted?)")
                log.warning("k8s.poll_failed name=%s: %s", name, _api_error(exc))
                ctx.wait_cancelled(self.config["poll_interval_s"])
                continue
            if phase == "deadline":
                return TimedOut(f"Kubernetes Job {name} exceeded activeDeadlineSeconds")
            if phase in ("succeeded", "failed"):
                return self._result(namespace, name, pods, phase, ctx)
            for pod in pods:
                problem = pod_problem(pod)
                if problem is not None:
                    self._delete(namespace, name)
                    return Failed(f"Kubernetes Job {name} cannot start: {problem}")
            ctx.wait_cancelled(self.config["poll_interval_s"])

    def _delete(self, namespace: str, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._batch.delete_namespaced_job(name, namespace, propagation_policy="Foreground")
            log.info("k8s.job_deleted name=%s", name)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("k8s.delete_failed name=%s: %s", name, _api_error(exc))

    def _result(
        self, namespace: str, name: str, pods: list[dict[str, Any]], phase: Phase, ctx: JobContext
    ) -> Outcome:
        from kubernetes.client.exceptions import ApiException

        if not pods:
            return Failed(f"Kubernetes Job {name} {phase} but its pod is gone (no result)")
        pod = pods[-1]
        pod_name = pod.get("metadata", {}).get("name", "?")
        lines: list[str] = []
        try:
            text = self._core.read_namespaced_pod_log(
                pod_name, namespace, limit_bytes=LOG_TAIL_CHARS + TERMINATION_MESSAGE_LIMIT
            )
            lines = str(text).splitlines()
        except ApiException as exc:
            log.warning("k8s.log_failed pod=%s: %s", pod_name, _api_error(exc))
        outcome = parse_result(_termination(pod), lines[-1] if lines else None, job_name=name)
        if lines and _is_result_line(lines[-1]):
            lines = lines[:-1]
        ctx.append_log("\n".join(lines) + ("\n" if lines else ""))
        return outcome


# -- pure functions ------------------------------------------------------------------------------


def _check_options(config: Mapping[str, Any]) -> None:
    image = config.get("image")
    if not isinstance(image, str) or not image.strip():
        raise ConfigError(
            "the kubernetes executor needs an 'image' (one with assay and your job modules "
            'installed), e.g. ASSAY_EXECUTOR_OPTIONS=\'{"kubernetes": {"image": '
            '"registry.example.com/app:1.2"}}\''
        )
    command = config.get("command")
    if not isinstance(command, list | tuple) or not all(isinstance(c, str) for c in command):
        raise ConfigError("kubernetes executor: 'command' must be a list of strings")
    for key in ("labels", "env"):
        value = config.get(key)
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"kubernetes executor: {key!r} must map names to strings")
    ttl = config.get("ttl_seconds_after_finished")
    if ttl is not None and (not isinstance(ttl, int) or ttl < 0):
        raise ConfigError("kubernetes executor: 'ttl_seconds_after_finished' must be >= 0 or null")


def _label_value(value: str) -> str:
    """A valid label value (<= 63 characters of [A-Za-z0-9_.-], alphanumeric at both ends)."""
    return _LABEL_VALUE.sub("-", value)[:63].strip("-_.") or "x"


def job_resource_name(job: Job) -> str:
    """``assay-<first 12 characters of the id>-<attempt>``: a valid DNS-1123 name."""
    prefix = re.sub(r"[^a-z0-9]", "", job.id.lower())[:12] or "job"
    return f"assay-{prefix}-{job.attempt}"


def build_manifest(
    job: Job,
    spec: JobSpec,
    options: Mapping[str, Any],
    *,
    api_env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``batch/v1`` Job that runs one execution of ``job``."""
    labels = {
        **dict(options.get("labels") or {}),
        "app": "assay",
        "assay/job-id": _label_value(job.id),
        "assay/job-name": _label_value(job.name),
        "assay/attempt": str(job.attempt),
    }
    resources = {"cpu": options["cpu"], "memory": options["memory"]}
    env = {
        **dict(options.get("env") or {}),
        "ASSAY_JOB_ID": job.id,
        "ASSAY_JOB_NAME": job.name,
        "ASSAY_JOB_ATTEMPT": str(job.attempt),
        "ASSAY_JOB_TIMEOUT": str(job.timeout),
        "ASSAY_JOB_PARAMS": json.dumps(job.params),
        "ASSAY_JOB_MODULE": spec.fn.__module__,
        "ASSAY_JOB_FUNCTION": spec.fn.__qualname__,
        **dict(api_env or {}),
    }
    container: dict[str, Any] = {
        "name": "job",
        "image": options["image"],
        "command": list(options["command"]),
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "File",
    }
    if options.get("image_pull_policy"):
        container["imagePullPolicy"] = options["image_pull_policy"]
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if options.get("service_account"):
        pod_spec["serviceAccountName"] = options["service_account"]
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "activeDeadlineSeconds": max(1, math.ceil(job.timeout)),
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }
    if options.get("ttl_seconds_after_finished") is not None:
        job_spec["ttlSecondsAfterFinished"] = options["ttl_seconds_after_finished"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_resource_name(job),
            "labels": labels,
            "annotations": {"assay/job-name": job.name},
        },
        "spec": job_spec,
    }


def map_status(status: Mapping[str, Any]) -> Phase:
    """A Job's ``status`` (API shape: ``active``, ``succeeded``, ``failed``, ``conditions``) as
    one of running / succeeded / failed / deadline (``activeDeadlineSeconds`` passed)."""
    for condition in status.get("conditions") or []:
        if str(condition.get("status")) != "True":
            continue
        kind = condition.get("type")
        if kind in ("Failed", "FailureTarget"):
            return "deadline" if condition.get("reason") == "DeadlineExceeded" else "failed"
        if kind in ("Complete", "SuccessCriteriaMet"):
            return "succeeded"
    if (status.get("succeeded") or 0) >= 1:
        return "succeeded"
    if (status.get("failed") or 0) >= 1:
        return "failed"
    return "running"


def pod_problem(pod: Mapping[str, Any]) -> str | None:
    """Why a pod can never start (a bad image or container config), or None."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in _FATAL_WAITING:
            detail = waiting.get("message") or ""
            return f"{waiting['reason']}: {detail}".rstrip(": ")
    return None


def _termination(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The terminated state of the pod's container: message, exitCode, reason."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated:
            return dict(terminated)
    return None


def parse_result(
    terminated: Mapping[str, Any] | None, last_log_line: str | None, *, job_name: str
) -> Outcome:
    """The outcome from the container's terminated state (its termination message) and, when
    the message says ``in_log`` or is missing, the last line of its log."""
    message = (terminated or {}).get("message") or ""
    document: Any = None
    with contextlib.suppress(ValueError):
        document = json.loads(message)
    if isinstance(document, dict) and document.get("in_log"):
        document = None
        with contextlib.suppress(ValueError, TypeError):
            document = json.loads(last_log_line or "")
    elif not isinstance(document, dict) and last_log_line:
        with contextlib.suppress(ValueError):
            document = json.loads(last_log_line)
    if isinstance(document, dict) and document.get("status") in ("ok", "fail", "retry"):
        if document["status"] == "ok":
            return Completed(document.get("result"))
        error = str(document.get("error") or "")
        return Retry(error) if document["status"] == "retry" else Failed(error)
    how = ""
    if terminated:
        how = f" (exit code {terminated.get('exitCode')}, reason {terminated.get('reason')})"
    tail = f"; last log line: {last_log_line}" if last_log_line else ""
    return Failed(f"Kubernetes Job {job_name} left no assay result{how}{tail}")


def _is_result_line(line: str) -> bool:
    try:
        document = json.loads(line)
    except ValueError:
        return False
    return isinstance(document, dict) and document.get("status") in ("ok", "fail", "retry")


def _api_error(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    body = getattr(exc, "body", None)
    detail = body if isinstance(body, str) else ""
    with contextlib.suppress(ValueError, TypeError):
        detail = json.loads(detail).get("message", detail)
    return f"HTTP {status} {reason}: {detail}".strip().rstrip(":")


# -- the entry point inside the pod ---------------------------------------------------------------


def _emit(document: dict[str, Any], path: str) -> None:
    """Write the result document to the termination message, or (too big) to stdout."""
    text = json.dumps(document)
    if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
        print(text, flush=True)
        text = json.dumps({"status": document["status"], "in_log": True})
    try:
        with open(path, "w") as fh:
            fh.write(text)
    except OSError:  # not in a pod (or no termination log): stdout is the fallback
        print(text, flush=True)


def main(environ: Mapping[str, str] | None = None) -> int:
    """Run the job described by ``ASSAY_JOB_*`` and report it (see the module docs)."""
    env = os.environ if environ is None else environ
    path = env.get("ASSAY_RESULT_PATH", TERMINATION_MESSAGE_PATH)
    name = env.get("ASSAY_JOB_NAME", "?")
    try:
        params = json.loads(env.get("ASSAY_JOB_PARAMS") or "{}")
        target: Any = importlib.import_module(env["ASSAY_JOB_MODULE"])
        for part in env["ASSAY_JOB_FUNCTION"].split("."):
            target = getattr(target, part)
    except Exception:
        _emit(
            {"status": "fail", "error": f"cannot load job {name!r}:\n{traceback.format_exc()}"},
            path,
        )
        return 1
    spec = getattr(target, "__assay_job__", None)
    retry_on = spec.retry_on if isinstance(spec, JobSpec) else ()
    now = datetime.now(UTC)
    job = Job(
        id=env.get("ASSAY_JOB_ID", "?"),
        name=name,
        params=params,
        status=JobStatus.RUNNING,
        result=None,
        error=None,
        attempt=int(env.get("ASSAY_JOB_ATTEMPT", "1")),
        max_retries=spec.max_retries if isinstance(spec, JobSpec) else 0,
        timeout=float(env.get("ASSAY_JOB_TIMEOUT", "0")),
        created_at=now,
        started_at=now,
        finished_at=None,
        worker_id=None,
        progress=None,
    )
    ctx = JobContext(job, api_token=env.get("ASSAY_API_TOKEN"), api_url=env.get("ASSAY_API_URL"))
    status, payload = call_job(target, ctx, retry_on)
    if status == "ok":
        _emit({"status": "ok", "result": json.loads(payload)}, path)
        return 0
    _emit({"status": status, "error": payload}, path)
    return 1


if __name__ == "__main__":
    sys.exit(main())
