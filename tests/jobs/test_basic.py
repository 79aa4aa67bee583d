from __future__ import annotations

import pytest

from assay import InvalidParamsError, JobStatus, UnknownJobError
from support.jobs import running_worker


def test_submit_run_get(backend):
    with running_worker(backend):
        job = backend.submit("t_add", {"a": 2, "b": 3})
        done = backend.wait(job.id, timeout=10)
    assert done.status == JobStatus.SUCCEEDED
    assert done.result == 5
    assert done.attempt == 1
    assert done.started_at is not None
    assert done.finished_at is not None
    assert done.finished_at >= done.started_at


def test_unknown_and_bad_params(backend):
    with pytest.raises(UnknownJobError, match="did you mean 't_add'"):
        backend.submit("t_ad", {})
    with pytest.raises(InvalidParamsError, match="t_add"):
        backend.submit("t_add", {"a": 1})
