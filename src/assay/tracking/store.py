"""The tracking store: every SQL statement about experiments and runs lives here.

Rules this module keeps:

- A param is written once. Writes insert-if-absent and then read back what is stored, in the
  same transaction: the same value again is fine, a different one is a :class:`ConflictError`
  naming the key and both values, and the whole batch is rolled back. The primary key decides
  between concurrent writers on every database, so two racing writers of different values
  never both succeed.
- Every metric value is kept (one row per logged point); a run shows the latest per key.
- Times are epoch milliseconds from the database clock unless the caller gives them.
- Input is checked against :mod:`assay.tracking.limits` before any SQL runs.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from assay.db.base import SqlStore, require_rows
from assay.db.dialects import MYSQL
from assay.db.tables import (
    experiment_tags,
    experiments,
    run_inputs,
    run_metrics,
    run_params,
    run_tags,
    runs,
)
from assay.errors import ConflictError, InvalidRequestError, NotFoundError
from assay.pagetoken import decode_parts, encode_parts
from assay.tracking import limits
from assay.tracking.mlflow_search import Clause
from assay.tracking.model import (
    Experiment,
    ExperimentPage,
    Metric,
    MetricPage,
    Run,
    RunInput,
    RunPage,
    RunStatus,
)
from assay.util import chunks

__all__ = [
    "DEFAULT_EXPERIMENT_ID",
    "DEFAULT_EXPERIMENT_NAME",
    "MAX_PAGE",
    "ParamValue",
    "TrackingStore",
]

MAX_PAGE = 1000
"""The most experiments, runs or metric values one page holds."""
DEFAULT_EXPERIMENT_ID = "0"
"""Names the default experiment wherever an experiment id is taken (MLflow's id for it)."""
DEFAULT_EXPERIMENT_NAME = "Default"
_CHUNK = 500
ParamValue = str | int | float | bool
"""Param values are stored as text: ``str(value)`` for numbers and booleans."""


class TrackingStore(SqlStore):
    """Experiments, runs, params, metrics, tags and inputs in one database.

    Usable directly (``TrackingStore(create_engine(uri))`` on a migrated store) and behind the
    REST API. Every method is one transaction.
    """

    def _upsert(self, table: sa.Table, keys: Sequence[str], update: str | None) -> Any:
        """INSERT that, on a primary-key clash, sets ``update`` from the new row (or, with
        None, leaves the stored row alone)."""
        stmt = self._insert(table)
        if self.dialect == MYSQL:
            # Not INSERT IGNORE: that would also turn real errors into warnings.
            column = update or next(c.name for c in table.c if c.name not in keys)
            value = stmt.inserted[column] if update else table.c[column]
            return stmt.on_duplicate_key_update({column: value})
        if update is None:
            return stmt.on_conflict_do_nothing(index_elements=list(keys))
        return stmt.on_conflict_do_update(
            index_elements=list(keys), set_={update: stmt.excluded[update]}
        )

    def _db_now(self, conn: sa.Connection) -> int:
        return int(conn.execute(sa.select(self._now)).scalar_one())

    # -- experiments ---------------------------------------------------------------------------

    def create_experiment(self, name: str, tags: Mapping[str, str] | None = None) -> Experiment:
        """A new experiment; :class:`ConflictError` if one of that name exists."""
        limits.check_name("experiment name", name)
        tags = dict(tags or {})
        if len(tags) > limits.MAX_PARAMS_TAGS_PER_BATCH:
            raise InvalidRequestError(
                f"{len(tags)} tags in one request: over the limit of "
                f"{limits.MAX_PARAMS_TAGS_PER_BATCH} params and tags (together) per request"
            )
        limits.check_tags(tags)
        experiment_id = str(uuid.uuid4())

        def body(conn: sa.Connection) -> Experiment:
            try:
                # A savepoint, so that the clash leaves the transaction usable on PostgreSQL.
                with conn.begin_nested():
                    conn.execute(
                        experiments.insert().values(
                            id=experiment_id, name=name, created_at_ms=self._now
                        )
                    )
            except sa.exc.IntegrityError:
                if self._experiment_row(conn, experiments.c.name == name) is None:
                    raise
                raise ConflictError(f"an experiment named {name!r} already exists") from None
            if tags:
                conn.execute(
                    experiment_tags.insert(),
                    [
                        {"experiment_id": experiment_id, "key": k, "value": v}
                        for k, v in tags.items()
                    ],
                )
            found = self._experiments(conn, experiments.c.id == experiment_id)
            return found[0]

        return self._tx(body)

    def default_experiment(self) -> Experiment:
        """Where runs go when a request names no experiment: MLflow's ``Default`` (id ``"0"``),
        made on first use, so a store starts without it. ``"0"`` names it wherever an
        experiment id is taken; an experiment already named ``Default`` under another id is
        the default itself."""

        def body(conn: sa.Connection) -> Experiment:
            default = sa.or_(
                experiments.c.id == DEFAULT_EXPERIMENT_ID,
                experiments.c.name == DEFAULT_EXPERIMENT_NAME,
            )
            if self._experiment_row(conn, default) is None:
                # Racing creators: the primary key (or the unique name) lets one row in.
                self._insert_if_absent(
                    conn,
                    experiments,
                    id=DEFAULT_EXPERIMENT_ID,
                    name=DEFAULT_EXPERIMENT_NAME,
                    created_at_ms=self._now,
                )
            return self._experiments(conn, default)[0]

        return self._tx(body)

    def _experiment_id(self, experiment_id: str) -> str:
        """``experiment_id``, with the alias of the default experiment resolved."""
        if experiment_id == DEFAULT_EXPERIMENT_ID:
            return self.default_experiment().id
        return experiment_id

    def get_experiment(self, experiment_id: str) -> Experiment:
        """The experiment; :class:`NotFoundError` if there is none with that id."""
        if experiment_id == DEFAULT_EXPERIMENT_ID:
            return self.default_experiment()
        _require_storable("experiment", experiment_id)
        found = self._tx(
            lambda conn: self._experiments(conn, experiments.c.id == experiment_id), write=False
        )
        if not found:
            raise NotFoundError(f"experiment {experiment_id!r} not found")
        return found[0]

    def get_experiment_by_name(self, name: str) -> Experiment:
        """The experiment named ``name``; :class:`NotFoundError` if there is none."""
        if name == DEFAULT_EXPERIMENT_NAME:
            return self.default_experiment()
        if not _storable(name):
            raise NotFoundError(f"no experiment named {name!r}")
        found = self._tx(
            lambda conn: self._experiments(conn, experiments.c.name == name), write=False
        )
        if not found:
            raise NotFoundError(f"no experiment named {name!r}")
        return found[0]

    def list_experiments(
        self, *, limit: int = 100, page_token: str | None = None, name: str | None = None
    ) -> ExperimentPage:
        """Experiments newest first, one page at a time; ``name``: only the one of that name."""
        _check_limit(limit)
        where: list[sa.ColumnElement[bool]] = []
        if name is not None:
            if not _storable(name):
                return ExperimentPage(experiments=[], next_page_token=None)
            where.append(experiments.c.name == name)
        if page_token:
            created, last_id = decode_parts(page_token, int, str)
            where.append(
                sa.or_(
                    experiments.c.created_at_ms < created,
                    sa.and_(experiments.c.created_at_ms == created, experiments.c.id < last_id),
                )
            )
        found = self._tx(lambda conn: self._experiments(conn, *where, limit=limit), write=False)
        token = None
        if len(found) == limit:
            token = encode_parts(found[-1].created_at_ms, found[-1].id)
        return ExperimentPage(experiments=found, next_page_token=token)

    def _experiment_row(self, conn: sa.Connection, where: sa.ColumnElement[bool]) -> Any:
        return conn.execute(sa.select(experiments).where(where)).first()

    def _experiments(
        self, conn: sa.Connection, *where: sa.ColumnElement[bool], limit: int | None = None
    ) -> list[Experiment]:
        query = (
            sa.select(experiments)
            .where(*where)
            .order_by(experiments.c.created_at_ms.desc(), experiments.c.id.desc())
            .limit(limit)
        )
        rows = conn.execute(query).all()
        tags: dict[str, dict[str, str]] = {row.id: {} for row in rows}
        for chunk in chunks(list(tags), _CHUNK):
            tag_rows = conn.execute(
                sa.select(experiment_tags).where(experiment_tags.c.experiment_id.in_(chunk))
            )
            for tag in tag_rows:
                tags[tag.experiment_id][tag.key] = tag.value
        return [
            Experiment(
                id=row.id,
                name=row.name,
                created_at_ms=int(row.created_at_ms),
                tags=dict(sorted(tags[row.id].items())),
            )
            for row in rows
        ]

    # -- runs ----------------------------------------------------------------------------------

    def create_run(
        self,
        experiment_id: str,
        name: str | None = None,
        start_time: int | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Run:
        """A new RUNNING run; ``start_time`` in epoch ms (default: now)."""
        _require_storable("experiment", experiment_id)
        experiment_id = self._experiment_id(experiment_id)
        if name is not None:
            limits.check_name("run name", name)
        limits.check_time("start_time", start_time)
        tags = dict(tags or {})
        limits.check_batch((), {}, tags)
        run_id = str(uuid.uuid4())

        def body(conn: sa.Connection) -> Run:
            if self._experiment_row(conn, experiments.c.id == experiment_id) is None:
                raise NotFoundError(f"experiment {experiment_id!r} not found")
            conn.execute(
                runs.insert().values(
                    id=run_id,
                    experiment_id=experiment_id,
                    name=name,
                    status=RunStatus.RUNNING.value,
                    start_time_ms=self._now if start_time is None else start_time,
                    created_at_ms=self._now,
                )
            )
            if tags:
                conn.execute(
                    run_tags.insert(),
                    [{"run_id": run_id, "key": k, "value": v} for k, v in sorted(tags.items())],
                )
            return self._runs(conn, runs.c.id == run_id)[0]

        return self._tx(body)

    def get_run(self, run_id: str) -> Run:
        """The run with its params, tags, inputs and latest metrics; :class:`NotFoundError`."""
        _require_storable("run", run_id)
        found = self._tx(lambda conn: self._runs(conn, runs.c.id == run_id), write=False)
        if not found:
            raise NotFoundError(f"run {run_id!r} not found")
        return found[0]

    def list_runs(
        self,
        experiment_id: str,
        *,
        limit: int = 100,
        page_token: str | None = None,
        narrowed_by: Sequence[Clause] = (),
    ) -> RunPage:
        """The runs of one experiment, latest start first, one page at a time.

        ``narrowed_by`` (an MLflow filter's clauses) leaves out, in the query, runs that cannot
        match it: a run that lacks a param, tag or metric a clause needs, or whose value or
        attribute rules it out. What SQL cannot decide the same way on every database (MySQL
        compares text without case, LIKE differs) is left in: the caller still evaluates the
        clauses on each run it gets (``mlflow_search.matches``)."""
        _require_storable("experiment", experiment_id)
        experiment_id = self._experiment_id(experiment_id)
        _check_limit(limit)
        where: list[sa.ColumnElement[bool]] = [runs.c.experiment_id == experiment_id]
        where.extend(_narrowing(narrowed_by))
        if page_token:
            started, last_id = decode_parts(page_token, int, str)
            where.append(
                sa.or_(
                    runs.c.start_time_ms < started,
                    sa.and_(runs.c.start_time_ms == started, runs.c.id < last_id),
                )
            )

        def body(conn: sa.Connection) -> list[Run]:
            if self._experiment_row(conn, experiments.c.id == experiment_id) is None:
                raise NotFoundError(f"experiment {experiment_id!r} not found")
            return self._runs(conn, *where, limit=limit)

        found = self._tx(body, write=False)
        token = None
        if len(found) == limit:
            token = encode_parts(found[-1].start_time_ms, found[-1].id)
        return RunPage(runs=found, next_page_token=token)

    def runs_newest(
        self,
        experiment_ids: Sequence[str],
        *,
        limit: int,
        after: tuple[int, str] | None = None,
    ) -> list[Run]:
        """Up to ``limit`` runs of the experiments in MLflow's default order (latest start
        first, then run id), those after the run at ``after`` (its start time and id): a page
        of a search without a filter, read from ``ix_runs_experiment_start``, not every run.
        NotFoundError for an unknown experiment."""
        for experiment_id in experiment_ids:
            _require_storable("experiment", experiment_id)
        ids = sorted({self._experiment_id(e) for e in experiment_ids})
        where: list[sa.ColumnElement[bool]] = [runs.c.experiment_id.in_(ids)]
        if after is not None:
            started, last_id = after
            where += [  # the first bound alone makes it a range of the index
                runs.c.start_time_ms <= started,
                sa.or_(
                    runs.c.start_time_ms < started,
                    sa.and_(runs.c.start_time_ms == started, runs.c.id > last_id),
                ),
            ]

        def body(conn: sa.Connection) -> list[Run]:
            require_rows(conn, experiments.c.id, ids, "experiment")
            order = (runs.c.start_time_ms.desc(), runs.c.id.asc())
            return self._runs(conn, *where, limit=limit, order=order)

        return self._tx(body, write=False)

    def update_run(
        self,
        run_id: str,
        status: RunStatus | str | None = None,
        end_time: int | None = None,
    ) -> Run:
        """Set a run's status and/or end time (epoch ms).

        Ending a run (FINISHED, FAILED, KILLED) without an ``end_time`` stamps it with the
        database clock; setting it RUNNING again clears the end time unless one is given.
        """
        _require_storable("run", run_id)
        new_status = _parse_status(status) if status is not None else None
        limits.check_time("end_time", end_time)
        values: dict[str, Any] = {}
        if new_status is not None:
            values["status"] = new_status.value
            if end_time is None:
                values["end_time_ms"] = self._now if new_status.is_terminal else None
        if end_time is not None:
            values["end_time_ms"] = end_time

        def body(conn: sa.Connection) -> Run:
            if values:
                conn.execute(runs.update().where(runs.c.id == run_id).values(**values))
            found = self._runs(conn, runs.c.id == run_id)
            if not found:
                raise NotFoundError(f"run {run_id!r} not found")
            return found[0]

        return self._tx(body)

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[Metric] = (),
        params: Mapping[str, ParamValue] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Log metrics, params and tags of one run in one transaction: all of it, or none.

        :class:`InvalidRequestError` over a limit (:mod:`assay.tracking.limits`),
        :class:`NotFoundError` for an unknown run, :class:`ConflictError` when a param is
        already logged with a different value.
        """
        _require_storable("run", run_id)
        metrics = list(metrics)
        texts = {key: _param_text(value) for key, value in (params or {}).items()}
        tags = dict(tags or {})
        limits.check_batch(metrics, texts, tags)

        def body(conn: sa.Connection) -> None:
            self._require_run(conn, run_id)
            if texts:
                self._insert_params(conn, run_id, texts)
            if metrics:
                now = None
                if any(m.timestamp_ms is None for m in metrics):
                    now = self._db_now(conn)
                conn.execute(
                    run_metrics.insert(),
                    [
                        {
                            "run_id": run_id,
                            "key": m.key,
                            "value": float(m.value),
                            "step": m.step,
                            "timestamp_ms": now if m.timestamp_ms is None else m.timestamp_ms,
                        }
                        for m in metrics
                    ],
                )
            if tags:
                conn.execute(
                    self._upsert(run_tags, ["run_id", "key"], "value"),
                    [{"run_id": run_id, "key": k, "value": v} for k, v in sorted(tags.items())],
                )

        self._tx(body)

    def _insert_params(self, conn: sa.Connection, run_id: str, texts: Mapping[str, str]) -> None:
        """Insert-if-absent, then compare what is stored: race-free on every database, since
        the insert waits for (and then yields to) a concurrent writer of the same key."""
        keys = sorted(texts)  # one order for every writer: fewer deadlocks
        conn.execute(
            self._upsert(run_params, ["run_id", "key"], None),
            [{"run_id": run_id, "key": k, "value": texts[k]} for k in keys],
        )
        stored: dict[str, str] = {}
        for chunk in chunks(keys, _CHUNK):
            rows = conn.execute(
                sa.select(run_params.c.key, run_params.c.value).where(
                    run_params.c.run_id == run_id, run_params.c.key.in_(chunk)
                )
            )
            stored.update((row.key, row.value) for row in rows)
        clashes = [k for k in keys if stored.get(k) != texts[k]]
        if clashes:
            key = clashes[0]
            more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
            raise ConflictError(
                f"param {key!r} of run {run_id} is already logged as {_clip(stored.get(key))}; "
                f"params cannot change (got {_clip(texts[key])}){more}"
            )

    def log_metric(
        self, run_id: str, key: str, value: float, step: int = 0, timestamp_ms: int | None = None
    ) -> None:
        self.log_batch(run_id, metrics=[Metric(key, value, step, timestamp_ms)])

    def log_param(self, run_id: str, key: str, value: ParamValue) -> None:
        self.log_batch(run_id, params={key: value})

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.log_batch(run_id, tags={key: value})

    def log_inputs(self, run_id: str, inputs: Sequence[RunInput]) -> None:
        """Record datasets a run read; logging the same (name, digest) again updates its
        source."""
        _require_storable("run", run_id)
        inputs = list(inputs)
        limits.check_inputs(inputs)
        rows = {(i.name, i.digest): i.source for i in inputs}

        def body(conn: sa.Connection) -> None:
            self._require_run(conn, run_id)
            if not rows:
                return
            now = self._db_now(conn)
            conn.execute(
                self._upsert(run_inputs, ["run_id", "name", "digest"], "source"),
                [
                    {
                        "run_id": run_id,
                        "name": name,
                        "digest": digest,
                        "source": source,
                        "created_at_ms": now,
                    }
                    for (name, digest), source in sorted(rows.items())
                ],
            )

        self._tx(body)

    def metric_history(
        self, run_id: str, key: str, *, limit: int = MAX_PAGE, page_token: str | None = None
    ) -> MetricPage:
        """Every logged value of one metric, by step, then timestamp, then logging order."""
        _require_storable("run", run_id)
        _check_limit(limit)
        if not _storable(key):
            key = ""  # no metric has it
        m = run_metrics.c
        where: list[sa.ColumnElement[bool]] = [m.run_id == run_id, m.key == key]
        if page_token:
            step, ts, last_id = decode_parts(page_token, int, int, int)
            where.append(sa.tuple_(m.step, m.timestamp_ms, m.id) > sa.tuple_(step, ts, last_id))

        def body(conn: sa.Connection) -> list[tuple[int, Metric]]:
            self._require_run(conn, run_id)
            query = (
                sa.select(m.id, m.value, m.step, m.timestamp_ms)
                .where(*where)
                .order_by(m.step, m.timestamp_ms, m.id)
                .limit(limit)
            )
            return [
                (int(r.id), Metric(key, float(r.value), int(r.step), int(r.timestamp_ms)))
                for r in conn.execute(query)
            ]

        found = self._tx(body, write=False)
        token = None
        if len(found) == limit:
            last_id, last = found[-1]
            token = encode_parts(last.step, last.timestamp_ms or 0, last_id)
        return MetricPage(metrics=[metric for _, metric in found], next_page_token=token)

    def run_experiment_id(self, run_id: str) -> str:
        """The experiment of a run (one cheap query); :class:`NotFoundError`."""
        _require_storable("run", run_id)
        query = sa.select(runs.c.experiment_id).where(runs.c.id == run_id)
        found = self._tx(lambda conn: conn.execute(query).scalar(), write=False)
        if found is None:
            raise NotFoundError(f"run {run_id!r} not found")
        return str(found)

    def _require_run(self, conn: sa.Connection, run_id: str) -> None:
        if conn.execute(sa.select(runs.c.id).where(runs.c.id == run_id)).first() is None:
            raise NotFoundError(f"run {run_id!r} not found")

    def _runs(
        self,
        conn: sa.Connection,
        *where: sa.ColumnElement[bool],
        limit: int | None = None,
        order: Sequence[sa.ColumnElement[Any]] = (runs.c.start_time_ms.desc(), runs.c.id.desc()),
    ) -> list[Run]:
        """Runs with their params, tags, inputs and latest metrics: five queries for a page."""
        query = sa.select(runs).where(*where).order_by(*order).limit(limit)
        rows = conn.execute(query).all()
        ids = [row.id for row in rows]
        params: dict[str, dict[str, str]] = {i: {} for i in ids}
        tags: dict[str, dict[str, str]] = {i: {} for i in ids}
        inputs: dict[str, list[RunInput]] = {i: [] for i in ids}
        metrics: dict[str, dict[str, Metric]] = {i: {} for i in ids}
        for chunk in chunks(ids, _CHUNK):
            for row in conn.execute(sa.select(run_params).where(run_params.c.run_id.in_(chunk))):
                params[row.run_id][row.key] = row.value
            for row in conn.execute(sa.select(run_tags).where(run_tags.c.run_id.in_(chunk))):
                tags[row.run_id][row.key] = row.value
            input_rows = conn.execute(
                sa.select(run_inputs)
                .where(run_inputs.c.run_id.in_(chunk))
                .order_by(run_inputs.c.created_at_ms, run_inputs.c.name, run_inputs.c.digest)
            )
            for row in input_rows:
                inputs[row.run_id].append(RunInput(row.name, row.digest, row.source))
            for row in conn.execute(_latest_metrics(chunk)):
                metrics[row.run_id][row.key] = Metric(
                    row.key, float(row.value), int(row.step), int(row.timestamp_ms)
                )
        return [
            Run(
                id=row.id,
                experiment_id=row.experiment_id,
                name=row.name,
                status=RunStatus(row.status),
                start_time_ms=int(row.start_time_ms),
                end_time_ms=None if row.end_time_ms is None else int(row.end_time_ms),
                params=dict(sorted(params[row.id].items())),
                metrics=dict(sorted(metrics[row.id].items())),
                tags=dict(sorted(tags[row.id].items())),
                inputs=inputs[row.id],
            )
            for row in rows
        ]


_NARROWING_SUBQUERIES = 4
"""At most this many of a filter's clauses narrow the query with a subquery. PostgreSQL plans
each as a semi-join, and its planning time grows faster than their number: on 50 runs, 4 cost
10 ms, 8 50 ms, 20 200 ms, and 500 (a 10,000-character filter) ran for many minutes. The
others are left to Python, which checks every clause anyway."""
_KEYED = {"param": run_params, "tag": run_tags, "metric": run_metrics}
_NUMBER_ATTRIBUTES = {"start_time": runs.c.start_time_ms, "end_time": runs.c.end_time_ms}
_TEXT_ATTRIBUTES = {"run_id": runs.c.id, "status": runs.c.status}
_COMPARE: dict[str, Callable[[Any, Any], sa.ColumnElement[bool]]] = {
    "=": sa.sql.operators.eq,
    "!=": sa.sql.operators.ne,
    "<": sa.sql.operators.lt,
    "<=": sa.sql.operators.le,
    ">": sa.sql.operators.gt,
    ">=": sa.sql.operators.ge,
}


def _narrowing(clauses: Sequence[Clause]) -> list[sa.ColumnElement[bool]]:
    """Conditions every run that matches ``clauses`` meets, so that the query leaves out the
    runs that fail them (MLflow's filters are conjunctions: each clause's condition holds for
    every match, and any subset of them keeps every match):

    - ``status``, ``run_id``, ``start_time`` and ``end_time`` are columns, compared in SQL;
    - a param, tag or metric clause other than ``IS NULL`` needs the key (a missing key
      matches nothing else); a param's or tag's ``=`` also its value; a metric comparison one
      of the metric's values that passes it (the latest one must). Those stating a value
      first, up to :data:`_NARROWING_SUBQUERIES` of them.

    Only what every database decides as Python does, or more loosely, is stated: MySQL's
    ``=`` ignores case and trailing spaces, so it keeps more runs, never fewer; numbers are
    bound only where the comparison is exact (no infinity, no integer a double rounds)."""
    columns: list[sa.ColumnElement[bool]] = []
    valued: list[sa.ColumnElement[bool]] = []
    keyed: list[sa.ColumnElement[bool]] = []
    for clause in dict.fromkeys(clauses):
        value = clause.value
        table = _KEYED.get(clause.entity)
        if table is not None and clause.op != "IS NULL" and clause.key != "mlflow.runName":
            found = [table.c.run_id == runs.c.id, table.c.key == clause.key]
            if clause.entity != "metric" and clause.op == "=" and isinstance(value, str):
                found.append(table.c.value == value)
            if clause.entity == "metric" and clause.op in _COMPARE and _exact_double(value):
                found.append(_COMPARE[clause.op](table.c.value, value))
            (valued if len(found) > 2 else keyed).append(sa.exists().where(*found))
        elif clause.entity == "attribute":
            columns.extend(_attribute_condition(clause))
    return columns + (valued + keyed)[:_NARROWING_SUBQUERIES]


def _attribute_condition(clause: Clause) -> list[sa.ColumnElement[bool]]:
    """``clause`` on an attribute stored as a column, as SQL (empty: not one of those)."""
    value = clause.value
    number = _NUMBER_ATTRIBUTES.get(clause.key)
    bound = _exact_bigint(value)
    if number is not None and clause.op in _COMPARE and bound is not None:
        return [_COMPARE[clause.op](number, bound)]
    text = _TEXT_ATTRIBUTES.get(clause.key)
    if text is not None and clause.op == "=" and isinstance(value, str):
        return [text == value]
    if text is not None and clause.op == "IN" and isinstance(value, tuple):
        return [text.in_(value)]
    return []


def _exact_double(value: object) -> bool:
    """A number every database compares with a DOUBLE column as Python compares it with a
    float: a finite float, or an integer a double holds exactly."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and abs(value) <= 2**53


def _exact_bigint(value: object) -> int | None:
    """``value`` as an integer every database binds and compares with a BIGINT column
    exactly (an integral float becomes one), or None: a fraction, infinity, or more than 64
    bits (SQLite cannot bind those, MySQL has no infinity)."""
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            return None
        value = int(value)
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return value
    return None


def _latest_metrics(run_ids: Sequence[str]) -> sa.Select[Any]:
    """The latest value of each metric of these runs: highest step, then latest timestamp,
    then logged last (window functions: SQLite 3.25+, PostgreSQL, MariaDB 10.2+, MySQL 8)."""
    m = run_metrics.c
    rank = (
        sa.func.row_number()
        .over(
            partition_by=(m.run_id, m.key),
            order_by=(m.step.desc(), m.timestamp_ms.desc(), m.id.desc()),
        )
        .label("rank")
    )
    ranked = (
        sa.select(m.run_id, m.key, m.value, m.step, m.timestamp_ms, rank)
        .where(m.run_id.in_(list(run_ids)))
        .subquery()
    )
    return sa.select(ranked).where(ranked.c.rank == 1)


def _storable(text: object) -> bool:
    """Whether ``text`` can be compared in SQL on every database (PostgreSQL refuses NUL)."""
    if not isinstance(text, str) or "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _require_storable(what: str, object_id: str) -> None:
    """An id no row can have is simply not found (rather than an error from the driver)."""
    if not _storable(object_id):
        raise NotFoundError(f"{what} {object_id!r} not found")


def _param_text(value: ParamValue) -> str:
    return value if isinstance(value, str) else str(value)


def _clip(text: str | None, size: int = 100) -> str:
    if text is None:
        return "nothing"
    return repr(text if len(text) <= size else text[:size] + "…")


def _parse_status(value: RunStatus | str) -> RunStatus:
    try:
        return RunStatus(value)
    except ValueError:
        known = ", ".join(s.value for s in RunStatus)
        raise InvalidRequestError(
            f"unknown run status {value!r} (expected one of {known})"
        ) from None


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequestError(f"max_results must be between 1 and {MAX_PAGE}, not {limit}")
