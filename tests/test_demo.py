"""`assay demo`: the README's first command, run for real (server, stand-in judge, OTLP)."""

from __future__ import annotations

import os
import random
import re
import socket
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from assay.demo import demo_scorers, listen, plan_conversations, scorer_stats
from assay.scoring.scorers import Scorer


def test_demo_scores_every_trace_and_prints_the_summary(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")}
    env["COLUMNS"] = "120"
    args = ["--no-serve", "--store", f"sqlite:///{db}", "--port", "0", "--traces", "60"]
    done = subprocess.run(
        [sys.executable, "-m", "assay", "demo", *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    out = done.stdout
    assert done.returncode == 0, f"{out}\n{done.stderr}"
    assert "a local stand-in judge, not a model" in out
    assert "sent 60 traces" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
    for scorer, _ in demo_scorers():
        assert scorer.name in rows, out
    assert re.search(r"│\s+60 │", rows["no_pii"]), rows["no_pii"]  # every trace scored
    # It ends by saying how to serve the store again, not with a URL of the server it stopped.
    demo_server = re.search(r"server: (http://127\.0\.0\.1:\d+) on ", out)
    assert demo_server is not None, out
    assert f"{demo_server.group(1)}/ui" not in out
    assert f"assay server --store sqlite:///{db}" in out
    url = re.search(r"open http://127\.0\.0\.1:8400/ui/experiments/([0-9a-f-]{36})", out)
    assert url is not None, out

    with closing(sqlite3.connect(db)) as conn:
        by_name = dict(
            conn.execute(
                "SELECT a.name, COUNT(*) FROM assessments a JOIN traces t USING (trace_id) "
                "WHERE t.experiment_id = ? GROUP BY a.name",
                (url.group(1),),
            ).fetchall()
        )
    assert {name: by_name.get(name, 0) for name in ("length", "no_pii", "fast")} == {
        "length": 60,
        "no_pii": 60,
        "fast": 60,
    }
    assert 0 < by_name["helpful"] < 60  # sampled at 0.5
    assert by_name["resolved"] > 0  # session-level, one per conversation


def test_the_plan_has_the_asked_traces_in_conversations_of_one_to_four_turns() -> None:
    conversations = plan_conversations(300, random.Random(1))
    turns = [t for c in conversations for t in c.turns]
    assert len(turns) == 300
    assert all(1 <= len(c.turns) <= 4 for c in conversations)
    assert len({c.session_id for c in conversations}) == len(conversations)
    assert 0 < sum(t.fails for t in turns) < 40
    assert 10 < sum(t.llm_s > 1.5 for t in turns) < 60
    assert any("@example.com" in t.answer for t in turns)
    assert any("Sorry" in t.answer for t in turns)
    assert plan_conversations(300, random.Random(1)) == conversations


def test_a_taken_port_is_replaced_by_a_free_one() -> None:
    with closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sock, moved = listen(port)
        with closing(sock):
            assert moved
            assert sock.getsockname()[1] not in (0, port)
    sock, moved = listen(port)
    with closing(sock):
        assert not moved
        assert sock.getsockname()[1] == port


def test_stats_count_pass_rates_failures_and_latency() -> None:
    scorer = Scorer.heuristic("no_pii", "pii")
    traces = [{"trace_id": f"t{i}", "completed_at_ms": 1000, "session_id": None} for i in range(20)]
    assessments = [
        {
            "id": f"a{i}",
            "trace_id": f"t{i}",
            "name": "no_pii",
            "value": i % 4 != 0,
            "error": "boom" if i == 19 else None,
            "created_at_ms": 1000 + 100 * (i + 1),
        }
        for i in range(20)
    ]
    decisions = {"t0": [{"scorer": "no_pii", "state": "failed"}]}
    (stats,) = scorer_stats([scorer], traces, assessments, decisions)
    assert (stats.scored, stats.failures) == (20, 2)
    assert stats.pass_rate == 14 / 19  # the errored assessment has no verdict
    assert stats.p95_latency_s == 1.9
