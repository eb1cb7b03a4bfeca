"""The jobs SDK and CLI helpers without a server: SSE parsing, streaming with resume, log
paging, waiting, script uploads, option parsing and the progress bar."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from rich.console import Console

from gureum.cli import jobs_submit
from gureum.cli.jobs import StateLines, progress_text, resources_text, state_text
from gureum.cli.jobs_submit import JobBar, build_resources, parse_param
from gureum.cli.output import Format
from gureum.client import Client
from gureum.client import jobs as jobs_module
from gureum.client.base import Transport
from gureum.client.errors import BadRequestError, ConnectionFailed, GureumError
from gureum.client.jobs import (
    IntegrityError,
    JobEnded,
    JobsAPI,
    LogChunk,
    SSEMessage,
    StateChange,
    WaitTimeout,
    decode_event,
    parse_sse,
)
from gureum.client.upload import LocalPathError
from gureum.schemas.jobs import JobOut, Resources

Handler = Callable[[httpx.Request], httpx.Response]
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def job(**over: Any) -> JobOut:
    data: dict[str, Any] = {
        "id": "j-1",
        "kind": "train",
        "state": "queued",
        "recipe": "tabular",
        "dataset": "rows:1",
        "model": "rows",
        "model_version": None,
        "params": {},
        "resources": {},
        "workers": 1,
        "priority": 0,
        "max_retries": 2,
        "timeout_s": None,
        "attempt": 1,
        "wait_reason": None,
        "progress": {},
        "metrics": {},
        "error": None,
        "code_hash": None,
        "created_by": "admin",
        "created_at": NOW,
        "started_at": None,
        "finished_at": None,
    }
    data.update(over)
    return JobOut.model_validate(data)


def api(handler: Handler) -> JobsAPI:
    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://test")
    return JobsAPI(Transport("http://test", "key", http=http))


def sse(*events: tuple[str, str]) -> bytes:
    return "".join(f"event: {name}\ndata: {data}\n\n" for name, data in events).encode()


def sse_response(body: bytes) -> httpx.Response:
    return httpx.Response(200, content=body, headers={"Content-Type": "text/event-stream"})


# -- SSE parsing -------------------------------------------------------------------------------


def test_parse_sse_follows_the_wire_rules() -> None:
    lines = [
        ": ping",
        "event: log",
        'data: {"offset": 3,',
        'data:  "text": "hi\\n"}',
        "",
        "",  # a second blank line dispatches nothing
        "data: no event name",
        "id: 7",
        "",
        "event: state\r",
        "data:",
        "",
        "event: end",
        "data: cut off by the end of input",
    ]
    got = list(parse_sse(lines))
    assert got == [
        SSEMessage("log", '{"offset": 3,\n "text": "hi\\n"}'),
        SSEMessage("message", "no event name", "7"),
        SSEMessage("state", "", "7"),
    ]
    assert decode_event(got[0]) == LogChunk(3, "hi\n")


def test_decode_event_kinds() -> None:
    j = job(state="running")
    state = decode_event(SSEMessage("state", j.model_dump_json()))
    end = decode_event(SSEMessage("end", j.model_dump_json()))
    assert state == StateChange(j) and end == JobEnded(j)
    assert decode_event(SSEMessage("something-new", "{}")) is None
    with pytest.raises(GureumError, match="malformed 'log'"):
        decode_event(SSEMessage("log", '{"text": "no offset"}'))
    with pytest.raises(GureumError, match="malformed 'end'"):
        decode_event(SSEMessage("end", "not json"))


# -- stream ------------------------------------------------------------------------------------


def test_stream_yields_events_until_end() -> None:
    queued, done = job(), job(state="succeeded")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        assert request.url.raw_path.startswith(b"/v1/jobs/j%2F1/logs/stream?")
        body = b": ping\n\n" + sse(
            ("state", queued.model_dump_json()),
            ("log", json.dumps({"offset": 6, "text": "hello\n"})),
            ("end", done.model_dump_json()),
        )
        return sse_response(body + sse(("log", json.dumps({"offset": 9, "text": "late"}))))

    events = list(api(handler).stream("j/1", offset=0))
    assert events == [StateChange(queued), LogChunk(6, "hello\n"), JobEnded(done)]
    assert seen[0].url.params["offset"] == "0"
    assert seen[0].headers["Accept"] == "text/event-stream"
    assert seen[0].extensions["timeout"]["read"] is None


def test_stream_resumes_from_the_last_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_module, "RESUME_PAUSE_S", 0)
    offsets: list[str] = []
    done = job(state="failed", error="boom")

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/logs/stream"):
            offsets.append(request.url.params["offset"])
            if len(offsets) == 1:  # dropped before the end
                return sse_response(sse(("log", json.dumps({"offset": 4, "text": "abcd"}))))
            return sse_response(
                sse(
                    ("log", json.dumps({"offset": 6, "text": "ef"})),
                    ("end", done.model_dump_json()),
                )
            )
        assert path == "/v1/jobs/j-1"
        return httpx.Response(200, json=job(state="running").model_dump(mode="json"))

    events = list(api(handler).stream("j-1", offset=0))
    assert offsets == ["0", "4"]
    assert [e.text for e in events if isinstance(e, LogChunk)] == ["abcd", "ef"]
    assert events[-1] == JobEnded(done)


def test_stream_of_a_job_that_ended_meanwhile_drains_the_log() -> None:
    done = job(state="cancelled")
    log = b"line one\nline two\n"

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/logs/stream"):
            return sse_response(b": ping\n\n")
        if path.endswith("/logs"):
            start = int(request.url.params["offset"])
            part = log[start : start + 9]
            return httpx.Response(
                200, content=part, headers={"X-Next-Offset": str(start + len(part))}
            )
        return httpx.Response(200, json=done.model_dump(mode="json"))

    events = list(api(handler).stream("j-1"))
    assert events == [LogChunk(9, "line one\n"), LogChunk(18, "line two\n"), JobEnded(done)]


def test_stream_without_resume_reports_a_broken_stream() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        def body() -> Iterator[bytes]:
            yield sse(("log", json.dumps({"offset": 1, "text": "a"})))
            raise httpx.ReadError("connection reset")

        return httpx.Response(200, content=body(), headers={"Content-Type": "text/event-stream"})

    events = api(handler).stream("j-1", resume=False)
    assert next(events) == LogChunk(1, "a")
    with pytest.raises(ConnectionFailed, match="connection reset"):
        next(events)


def test_stream_raises_api_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"error": {"code": "not_found", "message": "no job 'x'"}}
        return httpx.Response(404, json=body)

    with pytest.raises(GureumError, match="no job 'x'"):
        list(api(handler).stream("x"))


# -- logs, wait, submit ------------------------------------------------------------------------


def test_logs_keep_a_split_character_for_the_next_read() -> None:
    text = "héllo".encode()  # é is two bytes: cut after its first

    def handler(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params["offset"])
        part = text[start : start + 2]
        return httpx.Response(200, content=part, headers={"X-Next-Offset": str(start + len(part))})

    jobs = api(handler)
    assert jobs.logs("j", 0) == ("h", 1)
    assert jobs.logs("j", 1) == ("é", 3)


def test_wait_polls_to_a_terminal_state() -> None:
    states = iter(["queued", "running", "running", "succeeded"])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=job(state=next(states)).model_dump(mode="json"))

    seen: list[str] = []
    final = api(handler).wait("j-1", poll_s=0, on_update=lambda j: seen.append(j.state))
    assert final.state == "succeeded"
    assert seen == ["queued", "running", "running", "succeeded"]


def test_wait_times_out_without_touching_the_job() -> None:
    methods: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        methods.append(request.method)
        return httpx.Response(
            200, json=job(wait_reason="no compute cluster").model_dump(mode="json")
        )

    with pytest.raises(WaitTimeout, match="still queued"):
        api(handler).wait("j-1", poll_s=0.01, timeout_s=0.05)
    assert set(methods) == {"GET"}


def test_submit_checks_the_body_before_sending() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing should be sent")

    jobs = api(handler)
    with pytest.raises(BadRequestError, match="needs a recipe"):
        jobs.submit({"kind": "train"})
    with pytest.raises(BadRequestError, match="resources"):
        jobs.train("tabular", "rows", resources={"cpus": -1})
    with pytest.raises(BadRequestError, match="needs its code folder"):
        jobs.train("script", "rows")
    with pytest.raises(BadRequestError, match="for recipe 'script'"):
        jobs.train("tabular", "rows", entrypoint="main.py")


def recording(bodies: list[dict[str, Any]]) -> Handler:
    """A fake server: blobs are all missing and accepted, jobs echo as queued."""

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/blobs/missing":
            return httpx.Response(200, json={"missing": json.loads(request.content)["sha256"]})
        if path.startswith("/v1/blobs"):
            request.read()
            return httpx.Response(200, json={})
        assert path == "/v1/jobs" and request.method == "POST"
        body = json.loads(request.content)
        bodies.append(body)
        out = job(recipe=body.get("recipe") or "tabular", params=body["params"])
        return httpx.Response(201, json=out.model_dump(mode="json"))

    return handler


def test_train_script_uploads_the_folder(tmp_path: Path) -> None:
    code = tmp_path / "code"
    (code / "lib").mkdir(parents=True)
    (code / "train.py").write_text("print('hi')\n")
    (code / "lib" / "util.py").write_text("X = 1\n")
    (code / ".git").mkdir()
    (code / ".git" / "HEAD").write_text("ref")
    bodies: list[dict[str, Any]] = []
    jobs = api(recording(bodies))
    jobs.train(
        "script",
        "rows:2",
        params={"epochs": 3},
        resources=Resources(cpus=2, gpus=1, custom={"TPU": 4}),
        code_dir=code,
        args=["--lr", "0.1"],
    )
    body = bodies[0]
    assert body["code"]["entrypoint"] == "train.py"
    assert body["code"]["args"] == ["--lr", "0.1"]
    files = {f["path"]: f for f in body["code"]["files"]}
    assert set(files) == {"lib/util.py", "train.py"}
    assert files["train.py"]["sha256"] == hashlib.sha256(b"print('hi')\n").hexdigest()
    assert body["resources"] == {"cpus": 2.0, "gpus": 1.0, "custom": {"TPU": 4.0}}
    assert (body["params"], body["dataset"], body["kind"]) == ({"epochs": 3}, "rows:2", "train")

    with pytest.raises(LocalPathError, match=r"no main\.py or train\.py"):
        jobs.train("script", None, code_dir=code / "lib")
    with pytest.raises(LocalPathError, match=r"'run\.py' is not a file"):
        jobs.train("script", None, code_dir=code, entrypoint="run.py")


def test_evaluate_and_predict_send_the_model_version() -> None:
    bodies: list[dict[str, Any]] = []
    jobs = api(recording(bodies))
    jobs.evaluate("rows:3", "rows:1", priority=5)
    jobs.predict("rows:production", "rows")
    assert [(b["kind"], b["model"], b["dataset"]) for b in bodies] == [
        ("evaluate", "rows:3", "rows:1"),
        ("predict", "rows:production", "rows"),
    ]
    assert bodies[0]["priority"] == 5 and "recipe" not in bodies[0]


def test_download_output_quotes_checks_and_stays_inside(tmp_path: Path) -> None:
    data = b"a,b\n1,2\n"

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.raw_path == b"/v1/jobs/j-1/outputs/preds/a%20b%3F.csv"
        return httpx.Response(200, content=data)

    jobs = api(handler)
    sha = hashlib.sha256(data).hexdigest()
    out = jobs.download_output("j-1", "preds/a b?.csv", tmp_path, sha256=sha)
    assert out == (tmp_path / "preds" / "a b?.csv").resolve() and out.read_bytes() == data
    with pytest.raises(IntegrityError, match="hashes to"):
        jobs.download_output("j-1", "preds/a b?.csv", tmp_path / "x", sha256="0" * 64)
    assert not list((tmp_path / "x").rglob("*.csv"))
    with pytest.raises(IntegrityError, match="refusing"):
        jobs.download_output("j-1", "../escape.csv", tmp_path)


# -- CLI helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("epochs=3", ("epochs", 3)),
        ("lr=0.1", ("lr", 0.1)),
        ("shuffle=true", ("shuffle", True)),
        ("layers=[64, 32]", ("layers", [64, 32])),
        ("target=label", ("target", "label")),
        ("expr=a=b", ("expr", "a=b")),
        ("empty=", ("empty", "")),
        ('quoted="3"', ("quoted", "3")),
        ("x=NaN", ("x", "NaN")),
    ],
)
def test_parse_param(text: str, expected: tuple[str, Any]) -> None:
    assert parse_param(text) == expected


def test_parse_param_and_resources_refuse_nonsense() -> None:
    with pytest.raises(typer.Exit):
        parse_param("no-equals-sign")
    with pytest.raises(typer.Exit):
        build_resources(None, None, None, None, ["TPU"], Format.table)
    with pytest.raises(typer.Exit):
        build_resources(None, None, None, None, ["CPU=2"], Format.table)


def test_build_resources() -> None:
    fmt = Format.table
    assert build_resources(None, None, None, None, None, fmt) is None
    r = build_resources(4, 1, 16, "A100", ["TPU=4"], fmt)
    assert r == Resources(cpus=4, gpus=1, memory_gb=16, accelerator_type="A100", custom={"TPU": 4})
    assert resources_text(r) == "4 CPU, 1 GPU (A100), 16 GB, TPU=4"


def bar_text(bar: JobBar, out: Console) -> str:
    out.print(bar.progress.get_renderable())
    assert isinstance(out.file, io.StringIO)
    return out.file.getvalue()


def test_progress_bar_follows_the_job() -> None:
    out = Console(file=io.StringIO(), width=160, color_system=None)
    bar = JobBar(out)
    task = bar.progress.tasks[0]

    bar.update(job(wait_reason="no compute cluster connected [cpu]"))
    assert task.description.endswith("queued: no compute cluster connected \\[cpu]")
    assert task.total is None and task.fields["detail"] == ""
    assert "queued: no compute cluster connected [cpu]" in bar_text(bar, out)

    running = job(
        state="running",
        attempt=2,
        progress={"epoch": 2, "step": 50, "total_steps": 200, "loss": 0.12345, "eta_s": 125},
    )
    bar.update(running)
    task = bar.progress.tasks[0]
    assert (task.completed, task.total) == (50, 200)
    assert task.description.endswith("running (attempt 2)")
    assert task.fields["detail"] == "epoch 2  step 50/200  loss 0.1235  ETA 2:05"

    bar.update(job(state="succeeded", progress={"step": 190, "total_steps": 200}))
    task = bar.progress.tasks[0]
    assert (task.completed, task.total) == (200, 200)
    assert progress_text(job(state="succeeded", progress={"step": 7})) == "step 7/?"
    assert state_text(job(state="starting", wait_reason="pulling image")) == (
        "starting: pulling image"
    )


def test_state_lines_print_only_changes() -> None:
    out = Console(file=io.StringIO(), width=200, color_system=None)
    lines = StateLines(out)
    for j in (job(), job(), job(state="running"), job(state="running"), job(state="failed")):
        lines.update(j)
    assert isinstance(out.file, io.StringIO)
    assert out.file.getvalue().splitlines() == ["j-1 queued", "j-1 running", "j-1 failed"]


def polling_client(handler: Handler) -> Client:
    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://test")
    return Client("http://test", "key", http=http)


def test_wait_draws_the_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    out = Console(file=io.StringIO(), width=120, force_terminal=True, color_system=None)
    monkeypatch.setattr(jobs_submit, "err_console", out)
    monkeypatch.setattr(jobs_submit, "POLL_S", 0)
    states = iter(
        [
            job(wait_reason="workspace quota: 2 of 2 concurrent jobs running"),
            job(state="running", progress={"epoch": 1, "step": 3, "total_steps": 6, "loss": 0.5}),
            job(state="succeeded", progress={"step": 6, "total_steps": 6}),
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=next(states).model_dump(mode="json"))

    with polling_client(handler) as client:
        final = jobs_submit._wait(client, job(), Format.table)
    assert final.state == "succeeded"
    assert isinstance(out.file, io.StringIO)
    assert "j-1 succeeded" in out.file.getvalue()


def test_ctrl_c_while_waiting_leaves_the_job_running(capsys: pytest.CaptureFixture[str]) -> None:
    methods: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        methods.append(request.method)
        raise KeyboardInterrupt

    with polling_client(handler) as client, pytest.raises(typer.Exit) as exit_info:
        jobs_submit._wait(client, job(), Format.json)
    assert exit_info.value.exit_code == 130
    assert methods == ["GET"]  # nothing was cancelled
    err = capsys.readouterr().err
    assert "keeps running" in err and "gureum jobs logs j-1 -f" in err
