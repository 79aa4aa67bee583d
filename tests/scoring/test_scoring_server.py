"""Online scoring inside a real `assay server`: traces sent over OTLP are scored by the
server's own worker loop (the leader's scoring service starts the job), visible in the
decision log and in /metrics."""

from __future__ import annotations

import httpx
from opentelemetry.sdk.trace.export import SpanExportResult

from support.servers import ServerProcess, Servers
from support.timing import wait_until
from support.traces import build_agent, export, hex_trace_id, record


def test_a_trace_sent_over_otlp_is_scored_by_the_server(servers: Servers, tmp_path) -> None:
    server: ServerProcess = servers.start(f"sqlite:///{tmp_path / 'scoring.db'}",
                                          scoring_interval_s=0.2)  # fmt: skip
    with httpx.Client(base_url=server.url, timeout=10) as http:
        experiment = http.post("/api/v1/experiments", json={"name": "online"}).json()["id"]
        bad = http.put(
            f"/api/v1/experiments/{experiment}/scorers/length",
            json={"scorer": {"kind": "output_length", "definition": {"max_chars": 5000}},
                  "filter_string": "trace.status = "},
        )  # fmt: skip
        assert bad.status_code == 400
        assert "position" in bad.json()["error"]["message"]
        put = http.put(
            f"/api/v1/experiments/{experiment}/scorers/length",
            json={"scorer": {"kind": "output_length", "definition": {"max_chars": 5000}},
                  "sample_rate": 1.0},
        )  # fmt: skip
        assert put.status_code == 200, put.text
        assert put.json()["scorer"]["version"] == 1

        spans = record(experiment, build_agent)
        assert export(server, spans) is SpanExportResult.SUCCESS
        trace_id = hex_trace_id(spans[0])

        def assessed() -> list[dict[str, object]]:
            found = http.get(f"/api/v1/traces/{trace_id}/assessments").json()["assessments"]
            return [a for a in found if a["name"] == "length"]

        (assessment,) = wait_until(assessed, timeout=20)
        assert assessment["value"] is True
        assert assessment["source"]["id"] == "scorer:length"
        log = http.get(f"/api/v1/traces/{trace_id}/scoring").json()["decisions"]
        assert [(d["scorer"], d["state"]) for d in log] == [("length", "done")]
        metrics = http.get("/metrics").text
        assert 'assay_scoring_decisions_total{outcome="scored",scorer="length"} 1.0' in metrics
        jobs = http.get("/api/v1/jobs", params={"name": "assay.scoring.traces"}).json()["jobs"]
        assert jobs
        assert all(j["status"] == "SUCCEEDED" for j in jobs)
