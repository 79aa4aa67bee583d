"""The experiments, traces, trace and scorers pages of the web UI, against a real `assay server`
that scores a trace sent over OTLP with its own worker loop."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
from opentelemetry.sdk.trace.export import SpanExportResult

from assay.server.ui.experiments import bucket_size, span_tree
from assay.tracing.model import Span
from support.servers import ServerProcess, Servers
from support.timing import wait_until
from support.traces import build_agent, export, hex_trace_id, record


def _span(span_id: str, parent: str | None, start: int, end: int) -> Span:
    return Span("t" * 32, span_id, parent, span_id, "INTERNAL", "OK", None, start, end)


def test_span_tree_is_depth_first_with_bars_relative_to_the_trace() -> None:
    spans = [
        _span("child", "root", 20, 60),
        _span("root", None, 0, 100),
        _span("orphan", "missing", 50, 100),
        _span("grandchild", "child", 30, 40),
    ]
    rows = [(r.span.span_id, r.depth, r.left, r.width) for r in span_tree(spans)]
    assert rows == [
        ("root", 0, 0.0, 100.0),
        ("child", 1, 20.0, 40.0),
        ("grandchild", 2, 30.0, 10.0),
        ("orphan", 0, 50.0, 50.0),
    ]
    cycle = [_span("a", "b", 0, 1), _span("b", "a", 0, 1)]
    assert sorted(r.span.span_id for r in span_tree(cycle)) == ["a", "b"]


def test_chart_buckets_are_hours_until_the_range_needs_more() -> None:
    assert bucket_size(1) == 3_600_000
    assert bucket_size(2) == 3_600_000
    assert bucket_size(7) == 4 * 3_600_000


def test_pages_show_traces_scores_decisions_and_manage_scorers(servers: Servers, tmp_path) -> None:
    server: ServerProcess = servers.start(f"sqlite:///{tmp_path / 'ui.db'}",
                                          scoring_interval_s=0.2)  # fmt: skip
    # Origin: as a browser sends with the UI's forms (the CSRF check); the API ignores it.
    with httpx.Client(base_url=server.url, headers={"Origin": server.url}, timeout=10) as http:
        experiment = http.post("/api/v1/experiments", json={"name": "ui-online"}).json()["id"]
        put = http.put(
            f"/api/v1/experiments/{experiment}/scorers/length",
            json={"scorer": {"kind": "output_length", "definition": {"max_chars": 5000}}},
        )
        assert put.status_code == 200, put.text
        spans = record(experiment, build_agent)
        assert export(server, spans) is SpanExportResult.SUCCESS
        trace_id = hex_trace_id(spans[0])

        listing = http.get("/ui/experiments")
        assert listing.status_code == 200
        assert "ui-online" in listing.text
        assert f'href="/ui/experiments/{experiment}"' in listing.text

        def scored_row() -> str | None:
            page = http.get(f"/ui/experiments/{experiment}").text
            match = re.search(r'<td data-scorer="length" class="value-yes">(.*?)</td>', page)
            return page if match and match.group(1) == "true" else None

        page = wait_until(scored_row, timeout=15)
        assert f'<tr data-trace-id="{trace_id}">' in page
        assert f'href="/ui/traces/{trace_id}"' in page
        assert 'class="preview"' in page
        assert "because" in page
        assert f'href="/ui/experiments/{experiment}/scorers"' in page

        matching = http.get(
            f"/ui/experiments/{experiment}", params={"filter": "trace.status = 'OK'"}
        )
        assert trace_id in matching.text
        none = http.get(
            f"/ui/experiments/{experiment}", params={"filter": "trace.status = 'ERROR'"}
        )
        assert trace_id not in none.text
        # The live table alone, for assay.js's refresh, which keeps the filter.
        live = http.get(
            f"/ui/experiments/{experiment}",
            params={"filter": "trace.status = 'OK'"},
            headers={"X-Fragment": "1"},
        )
        assert live.text.startswith('<section id="traces-live" data-refresh="')
        assert f'<tr data-trace-id="{trace_id}">' in live.text
        assert "<html" not in live.text
        assert 'id="filter"' not in live.text
        refresh = re.search(r'data-refresh="([^"]+)"', live.text)
        assert refresh
        assert refresh.group(1) == (
            f"/ui/experiments/{experiment}?filter=trace.status+%3D+%27OK%27"
        )
        bad = http.get(f"/ui/experiments/{experiment}", params={"filter": "trace.status = "})
        assert bad.status_code == 400
        error = re.search(r'<p id="filter-error" class="error" role="alert">(.*?)</p>', bad.text)
        assert error
        assert "position" in error.group(1)
        assert 'value="trace.status = "' in bad.text
        assert "data-refresh" not in bad.text.split('id="traces-live"')[1]

        trace = http.get(f"/ui/traces/{trace_id}")
        assert trace.status_code == 200
        tree = trace.text.split('id="span-tree"')[1].split("</table>")[0]
        assert [n for n in ("agent", "retrieve", "llm") if n in tree] == [
            "agent",
            "retrieve",
            "llm",
        ]
        assert 'style="left:0.0%;width:100.0%"' in tree  # the root spans the whole trace
        assessments = trace.text.split('id="assessments"')[1].split("</table>")[0]
        assert "length" in assessments
        assert "scorer:length" in assessments
        assert "within the limits" in assessments
        log = trace.text.split('id="decision-log"')[1].split("</table>")[0]
        assert 'class="status status-done">done</span>' in log
        assert "&#34;question&#34;: &#34;why?&#34;" in trace.text  # the inputs, pretty JSON
        assert "data-refresh" not in trace.text  # every scorer decided: nothing to watch

        # A missing page is a page that says so; the API still answers JSON.
        for path, reason in (
            ("/ui/traces/" + "0" * 32, "not found"),
            ("/ui/experiments/no-such-experiment", "not found"),
            ("/ui/experiments/no-such-experiment/scorers", "not found"),
            ("/ui/no-such-page", "Not Found"),
        ):
            missing = http.get(path)
            assert missing.status_code == 404, path
            assert missing.headers["content-type"].startswith("text/html"), path
            assert '<p class="error" role="alert">' in missing.text
            assert reason in missing.text
        api = http.get("/api/v1/traces/" + "0" * 32)
        assert api.status_code == 404
        assert api.json()["error"]["code"] == "not_found"

        scorers_url = f"/ui/experiments/{experiment}/scorers"
        scorers = http.get(scorers_url)
        assert scorers.status_code == 200
        assert '<tr data-scorer="length">' in scorers.text
        assert '<svg class="chart" id="chart-length"' in scorers.text
        assert "pass rate: 100%" in scorers.text

        form = {
            "name": "judge",
            "kind": "llm_judge",
            "level": "trace",
            "sample_rate": "0.5",
            "filter": "trace.status = 'OK'",
            "definition": '{"output": "yes_no"}',
        }
        rejected = http.post(scorers_url, data=form)
        assert rejected.status_code == 400
        message = re.search(
            r'<p id="scorer-error" class="error" role="alert">(.*?)</p>', rejected.text
        )
        assert message
        assert "instructions" in message.group(1)
        assert "trace.status = &#39;OK&#39;" in rejected.text  # the values are kept
        not_json = http.post(scorers_url, data={**form, "definition": "{nope"})
        assert not_json.status_code == 400
        assert "not valid JSON" in not_json.text

        added = http.post(
            scorers_url,
            data={**form, "kind": "output_length", "name": "short", "sample_rate": "1",
                  "definition": '{"max_chars": 3}'},
        )  # fmt: skip
        assert added.status_code == 303
        listed = http.get(scorers_url).text
        assert '<tr data-scorer="short">' in listed

        paused = http.post(f"{scorers_url}/short/status", data={"status": "PAUSED"})
        assert paused.status_code == 303
        row = http.get(scorers_url).text.split('<tr data-scorer="short">')[1].split("</tr>")[0]
        assert "status-PAUSED" in row
        assert 'data-action="resume"' in row

        now = datetime.now(UTC)
        window = {
            "start": (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
            "end": (now + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M"),
        }
        counted = http.post(f"{scorers_url}/short/backfill", data={**window, "dry_run": "true"})
        assert counted.status_code == 200
        out = counted.text.split('id="backfill-count-short"')[1].split("</output>")[0]
        assert 'data-count="1"' in out
        assert "of 1 in range" in out
        submitted = http.post(f"{scorers_url}/short/backfill", data={**window, "dry_run": "false"})
        assert submitted.status_code == 200
        job = re.search(
            r'<a href="/ui/jobs/([^"]+)" data-testid="backfill-job-short">', submitted.text
        )
        assert job
        assert http.get(f"/api/v1/jobs/{job.group(1)}").json()["name"] == "assay.scoring.backfill"
        backwards = http.post(
            f"{scorers_url}/short/backfill",
            data={"start": window["end"], "end": window["start"], "dry_run": "true"},
        )
        assert backwards.status_code == 400
        assert "end must be after start" in backwards.text

        deleted = http.post(f"{scorers_url}/short/delete")
        assert deleted.status_code == 303
        assert '<tr data-scorer="short">' not in http.get(scorers_url).text

        # A trace still in progress: its scoring part refreshes until the scorer has decided.
        later = record(experiment, build_agent)
        root = next(span for span in later if span.parent is None)
        export(server, [span for span in later if span is not root])
        later_url = f"/ui/traces/{hex_trace_id(root)}"
        waiting = http.get(later_url)
        assert f'<section id="trace-scoring" data-refresh="{later_url}"' in waiting.text
        assert 'class="status status-waiting">waiting</span>' in waiting.text
        export(server, [root])

        def settled() -> str | None:
            live = http.get(later_url, headers={"X-Fragment": "1"}).text
            return live if 'class="status status-done">done</span>' in live else None

        live = wait_until(settled, timeout=15)
        assert live.startswith('<section id="trace-scoring">')
        assert 'id="span-tree"' not in live
        assert 'data-assessment="length"' in live
