from __future__ import annotations

import pytest

from assay import Backend, InvalidParamsError, JobStatus, UnknownJobError, load_settings
from assay.jobs.context import current_job
from assay.jobs.registry import Registry, job
from support.jobs import FAST, running_worker
from support.timing import scaled


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


def test_resources_are_made_once_per_backend_and_closed_with_it(tmp_path):
    """What assay's scoring jobs keep between executions (their engine) lives in the backend's
    Resources: made on first use, shared by its workers' jobs, closed when the backend closes."""

    class Pool(list[str]):
        def close(self) -> None:
            self.append("closed")

    made: list[Pool] = []

    def make() -> Pool:
        made.append(Pool())
        return made[-1]

    registry = Registry()

    @job(executor="inline", registry=registry)
    def uses_pool(n: int) -> int:
        resources = current_job().resources
        assert resources is not None
        pool = resources.get("pool", make)
        pool.append(str(n))
        return id(pool)

    results = set()
    settings = load_settings(store_uri=f"sqlite:///{tmp_path}/r.db", **FAST)
    with Backend(settings, registry=registry) as b:
        for _ in range(2):  # two workers of one backend, one after the other
            with running_worker(b):
                ids = [b.submit("uses_pool", {"n": n}).id for n in range(3)]
                results |= {b.wait(i, timeout=scaled(10)).result for i in ids}
        assert len(results) == 1
        assert len(made) == 1
        assert "closed" not in made[0]
    assert sorted(made[0]) == ["0", "0", "1", "1", "2", "2", "closed"]
