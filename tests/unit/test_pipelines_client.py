"""The pipelines SDK and `gureum pipelines` without a server: the requests each call sends,
paging, waiting for a run's decision, error codes, and the CLI's output and exit codes, all
against httpx.MockTransport."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

from gureum.cli import pipelines as cli_pipelines
from gureum.cli.main import app
from gureum.client import Client
from gureum.client.base import Transport
from gureum.client.errors import BadRequestError, ConflictError, NotFoundError
from gureum.client.jobs import WaitTimeout
from gureum.client.pipelines import PipelinesAPI
from gureum.schemas.pipelines import STEPS, PipelineCreate

Handler = Callable[[httpx.Request], httpx.Response]
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
LATER = datetime(2025, 1, 2, 3, 5, 17, tzinfo=UTC)
runner = CliRunner()
BOX = re.compile("[\u2500-\u257f]")


def pipeline(**over: Any) -> dict[str, Any]:
    config = PipelineCreate(
        name="garments", model="garments", endpoint="garments", dataset="garments"
    ).model_dump(mode="json")
    config.update(over.pop("config", {}))
    data: dict[str, Any] = {
        "name": "garments",
        "model": "garments",
        "endpoint": "garments",
        "dataset": "garments",
        "config": config,
        "next_scheduled_at": None,
        "active_run": None,
        "last_run": 2,
        "created_by": "admin",
        "created_at": NOW.isoformat(),
    }
    data.update(over)
    return data


def step(name: str, state: str = "pending", message: str = "", done: bool = False) -> Any:
    started = NOW.isoformat() if state != "pending" else None
    return {
        "name": name,
        "state": state,
        "started_at": started,
        "finished_at": LATER.isoformat() if done else None,
        "message": message,
        "data": {},
    }


def run(number: int = 2, state: str = "running", **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "pipeline": "garments",
        "number": number,
        "state": state,
        "trigger": "by hand (admin)",
        "reason": "",
        "step": "curate" if state == "running" else None,
        "steps": [step(s.value) for s in STEPS],
        "dataset_version": None,
        "candidate": None,
        "production": "garments:3",
        "metrics": {},
        "created_at": NOW.isoformat(),
        "finished_at": None if state in ("running", "awaiting_approval") else LATER.isoformat(),
    }
    data.update(over)
    return data


def event(seq: int, message: str) -> dict[str, Any]:
    return {"seq": seq, "time": NOW.isoformat(), "step": "gate", "kind": "info", "message": message}


def error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"code": code, "message": message, "details": None}}
    )


def api(handler: Handler) -> PipelinesAPI:
    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://cp")
    return PipelinesAPI(Transport("http://cp", "gk_team", http=http))


def never(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"nothing should be sent, got {request.method} {request.url}")


def route(request: httpx.Request) -> tuple[str, str, dict[str, str], Any]:
    path = request.url.raw_path.decode().partition("?")[0]
    body = json.loads(request.content) if request.content else None
    return request.method, path, dict(request.url.params), body


# -- the SDK -----------------------------------------------------------------------------------


def test_the_client_has_pipelines() -> None:
    assert isinstance(Client("http://cp", "gk_team").pipelines, PipelinesAPI)


def test_create_sends_what_was_given_and_checks_it_first() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(201, json=pipeline(config={"approve": "manual"}))

    p = api(handler).create(
        "garments",
        model="garments",
        endpoint="garments",
        dataset="garments",
        approve="manual",
        canary_percent=25,
        params={"epochs": 3},
    )
    assert p.config.approve == "manual" and p.last_run == 2
    assert route(sent[0]) == (
        "POST",
        "/v1/pipelines",
        {},
        {
            "name": "garments",
            "model": "garments",
            "endpoint": "garments",
            "dataset": "garments",
            "approve": "manual",
            "canary_percent": 25,
            "params": {"epochs": 3},
        },
    )
    assert sent[0].headers["Authorization"] == "Bearer gk_team"

    bad = api(never)
    with pytest.raises(BadRequestError, match="canary_percent") as e:
        bad.create("garments", model="m", endpoint="e", dataset="d", canary_percent=100)
    assert (e.value.status, e.value.code) == (422, "invalid_request")
    with pytest.raises(BadRequestError, match="invalid pipeline: name"):
        bad.create("Not A Name", model="m", endpoint="e", dataset="d")
    with pytest.raises(BadRequestError, match="canary_pct"):  # a misspelt option is refused
        bad.create("garments", model="m", endpoint="e", dataset="d", canary_pct=5)
    with pytest.raises(BadRequestError, match="higher_is_better goes with metric"):
        bad.create("garments", model="m", endpoint="e", dataset="d", higher_is_better=False)


def test_list_follows_every_page() -> None:
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.url.params))
        if "cursor" not in request.url.params:
            return httpx.Response(200, json={"items": [pipeline()], "next_cursor": "c2"})
        return httpx.Response(200, json={"items": [pipeline(name="b")], "next_cursor": None})

    assert [p.name for p in api(handler).list()] == ["garments", "b"]
    assert seen == [{"limit": "1000"}, {"limit": "1000", "cursor": "c2"}]


def test_runs_reads_all_pages_or_only_the_newest_n() -> None:
    seen: list[dict[str, str]] = []
    pages = {None: ([run(5), run(4)], "c2"), "c2": ([run(3), run(2)], "c3"), "c3": ([run(1)], None)}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/pipelines/garments/runs"
        seen.append(dict(request.url.params))
        items, nxt = pages[request.url.params.get("cursor")]
        return httpx.Response(200, json={"items": items, "next_cursor": nxt})

    runs = api(handler)
    assert [r.number for r in runs.runs("garments")] == [5, 4, 3, 2, 1]
    seen.clear()
    assert [r.number for r in runs.runs("garments", limit=3)] == [5, 4, 3]
    assert seen == [{"limit": "3"}, {"limit": "3", "cursor": "c2"}]  # no third page read
    seen.clear()
    assert [r.number for r in runs.runs("garments", limit=2)] == [5, 4]
    assert len(seen) == 1


def test_reads_and_actions_use_the_contract_routes() -> None:
    seen: list[tuple[str, str, dict[str, str], Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(route(request))
        method, path = request.method, request.url.path
        if method == "DELETE":
            return httpx.Response(204)
        if path.endswith("/events"):
            return httpx.Response(200, json=[event(4, "candidate beats production")])
        if path.endswith("/runs") and method == "POST":
            return httpx.Response(202, json=run(3))
        if "/runs/" in path:
            return httpx.Response(200, json=run(2, "cancelled"))
        return httpx.Response(200, json=pipeline())

    p = api(handler)
    assert p.get("a/b").name == "garments"
    assert p.delete("garments") is None
    assert p.run("garments").number == 3
    assert p.get_run("garments", 2).state == "cancelled"
    p.get_run("garments", "latest")
    assert p.events("garments", 2, after=3)[0].message == "candidate beats production"
    p.cancel("garments")
    p.cancel("garments", 2)
    p.approve("garments")
    p.approve("garments", 2, approve=False, note="worse on shoes")
    assert seen == [
        ("GET", "/v1/pipelines/a%2Fb", {}, None),
        ("DELETE", "/v1/pipelines/garments", {}, None),
        ("POST", "/v1/pipelines/garments/runs", {}, None),
        ("GET", "/v1/pipelines/garments/runs/2", {}, None),
        ("GET", "/v1/pipelines/garments/runs/latest", {}, None),
        ("GET", "/v1/pipelines/garments/runs/2/events", {"after": "3"}, None),
        ("POST", "/v1/pipelines/garments/runs/latest/cancel", {}, None),
        ("POST", "/v1/pipelines/garments/runs/2/cancel", {}, None),
        ("POST", "/v1/pipelines/garments/runs/latest/approve", {}, {"approve": True, "note": ""}),
        (
            "POST",
            "/v1/pipelines/garments/runs/2/approve",
            {},
            {"approve": False, "note": "worse on shoes"},
        ),
    ]
    with pytest.raises(BadRequestError, match="note"):
        api(never).approve("garments", note="x" * 2001)


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (404, "not_found", NotFoundError),
        (409, "run_in_progress", ConflictError),
        (422, "invalid_request", BadRequestError),
    ],
)
def test_api_errors_surface_with_their_code(status: int, code: str, cls: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return error(status, code, f"refused with {code}")

    with pytest.raises(cls, match=f"refused with {code}") as e:
        api(handler).run("garments")
    assert (e.value.status, e.value.code) == (status, code)  # type: ignore[attr-defined]


def polling(*answers: dict[str, Any]) -> tuple[Handler, list[str]]:
    """A server whose run reads return ``answers`` in turn (the last one over and over)."""
    paths: list[str] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "GET"
        paths.append(request.url.path)
        return httpx.Response(200, json=queue.pop(0) if len(queue) > 1 else queue[0])

    return handler, paths


def test_wait_polls_until_the_decision_and_pins_latest() -> None:
    handler, paths = polling(
        run(7), run(7, step="train"), run(7, "not_promoted", reason="candidate is worse")
    )
    seen: list[str] = []
    final = api(handler).wait(
        "garments", "latest", poll_s=0, on_update=lambda r: seen.append(r.state)
    )
    assert final.state == "not_promoted" and final.reason == "candidate is worse"
    assert seen == ["running", "running", "not_promoted"]
    # "latest" names run 7 at the first poll; a run a trigger starts meanwhile is not followed
    assert paths == [
        "/v1/pipelines/garments/runs/latest",
        "/v1/pipelines/garments/runs/7",
        "/v1/pipelines/garments/runs/7",
    ]


@pytest.mark.parametrize("state", ["promoted", "failed", "cancelled", "awaiting_approval"])
def test_wait_returns_at_an_end_or_when_a_person_must_act(state: str) -> None:
    handler, paths = polling(run(2), run(2, state, step=None))
    assert api(handler).wait("garments", 2, timeout=2, poll_s=0.01).state == state
    assert len(paths) == 2


def test_wait_times_out_with_the_state_and_reason() -> None:
    handler, _ = polling(run(2, step="canary", reason="canary serves 10 % until 03:15"))
    with pytest.raises(
        WaitTimeout,
        match=r"run 2 of pipeline garments is still running \(canary\)"
        r" after 0\.05 s: canary serves 10 % until 03:15",
    ) as e:
        api(handler).wait("garments", 2, timeout=0.05, poll_s=0.01)
    assert e.value.code == "timeout"


def test_wait_on_a_missing_run_is_not_found() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return error(404, "not_found", "pipeline garments has no run 9")

    with pytest.raises(NotFoundError, match="no run 9"):
        api(handler).wait("garments", 9, poll_s=0)


def test_metrics_table_reads_both_shapes_with_candidate_first() -> None:
    def text(metrics: dict[str, dict[str, Any]]) -> list[list[str]]:
        out = Console(width=120, record=True)
        t = cli_pipelines.metrics_table(metrics)
        assert t is not None
        out.print(t)
        return [flat(line).split() for line in out.export_text().splitlines() if flat(line)]

    by_model = {"production": {"accuracy": 0.81234, "loss": 0.5}, "candidate": {"accuracy": 0.9}}
    assert text(by_model) == [
        ["metric", "candidate", "production"],
        ["accuracy", "0.9", "0.8123"],
        ["loss", "-", "0.5"],
    ]
    by_metric = {"accuracy": {"production": 0.8, "candidate": 0.9}}
    assert text(by_metric) == [["metric", "candidate", "production"], ["accuracy", "0.9", "0.8"]]
    assert cli_pipelines.metrics_table({}) is None


# -- the CLI -----------------------------------------------------------------------------------


class FakeServer:
    """One pipeline's routes, recording what the CLI sent; ``polls`` answer run reads in turn."""

    def __init__(self) -> None:
        self.pipeline: dict[str, Any] | None = pipeline()
        self.run = run(2, "promoted", step=None)
        self.polls: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.refuse: httpx.Response | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(route(request))
        method, path, _, body = self.requests[-1]
        if self.refuse is not None:
            return self.refuse
        if method == "GET" and path == "/v1/pipelines":
            return httpx.Response(200, json={"items": [self.pipeline] if self.pipeline else []})
        if method == "POST" and path == "/v1/pipelines":
            self.pipeline = pipeline(config=body)
            return httpx.Response(201, json=self.pipeline)
        if self.pipeline is None:
            return error(404, "not_found", "pipeline garments not found")
        if method == "DELETE":
            return httpx.Response(204)
        if path.endswith("/runs") and method == "POST":
            return httpx.Response(202, json=run(3))
        if path.endswith("/runs"):
            return httpx.Response(200, json={"items": [self.run, run(1, "failed")]})
        if path.endswith("/events"):
            return httpx.Response(200, json=[event(1, "curated garments:4")])
        if "/runs/" in path:
            if method == "GET" and self.polls:
                return httpx.Response(200, json=self.polls.pop(0))
            return httpx.Response(200, json=self.run)
        return httpx.Response(200, json=self.pipeline)

    def sent(self, method: str) -> list[tuple[str, dict[str, str], Any]]:
        return [(p, q, b) for m, p, q, b in self.requests if m == method]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    server = FakeServer()

    def client() -> Client:
        http = httpx.Client(transport=httpx.MockTransport(server), base_url="http://cp")
        return Client("http://cp", "gk_team", http=http)

    monkeypatch.setattr(cli_pipelines, "Client", client)
    monkeypatch.setattr(cli_pipelines, "POLL_S", 0)
    monkeypatch.setenv("COLUMNS", "200")
    yield server


def gureum(*args: str) -> Result:
    return runner.invoke(app, list(args))


def flat(text: str) -> str:
    """The words of ``text`` with tables' lines taken out."""
    return " ".join(BOX.sub(" ", text).split())


def test_cli_create_maps_every_flag(fake: FakeServer) -> None:
    result = gureum(
        "pipelines", "create", "garments", "--model", "garments", "--endpoint", "garments-ep",
        "--dataset", "garments", "--schedule", "0 3 * * 1", "--after-labels", "50",
        "--on-drift", "0.25", "--cooldown-minutes", "30", "--canary", "20",
        "--canary-minutes", "15", "--approve", "manual", "--min-requests", "40",
        "--min-feedback", "5", "--max-rating-drop", "0.5", "--min-rating", "4",
        "--labelled-only", "--metric", "loss", "--lower-is-better", "--param", "epochs=3",
        "--param", "optimizer=adam", "-o", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [(path, _, body)] = fake.sent("POST")
    assert path == "/v1/pipelines"
    assert body == {
        "name": "garments",
        "model": "garments",
        "endpoint": "garments-ep",
        "dataset": "garments",
        "schedule": "0 3 * * 1",
        "after_labels": 50,
        "on_drift": 0.25,
        "cooldown_minutes": 30.0,
        "canary_percent": 20.0,
        "canary_minutes": 15.0,
        "approve": "manual",
        "min_requests": 40,
        "min_feedback": 5,
        "max_rating_drop": 0.5,
        "min_rating": 4,
        "labelled_only": True,
        "metric": "loss",
        "higher_is_better": False,
        "params": {"epochs": 3, "optimizer": "adam"},
    }
    out = json.loads(result.stdout)
    assert out["name"] == "garments" and out["config"]["approve"] == "manual"

    result = gureum(
        "pipelines", "create", "garments", "--model", "garments", "--endpoint", "garments",
        "--dataset", "garments",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert fake.sent("POST")[-1][2] == {  # unset flags keep the server's defaults
        "name": "garments",
        "model": "garments",
        "endpoint": "garments",
        "dataset": "garments",
    }
    text = flat(result.stdout)
    assert "by hand only" in text and "10 % of the traffic for 10 min" in text
    assert "no runs yet: start one with `gureum pipelines run garments`" in text


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--canary", "100"], "--canary: Input should be less than 100"),
        (["--min-rating", "6"], "--min-rating: Input should be less than or equal to 5"),
        (["--lower-is-better"], "higher_is_better goes with metric"),
        (["--param", "epochs"], "--param 'epochs' is not KEY=VALUE"),
    ],
)
def test_cli_create_refuses_bad_flags_before_sending(
    fake: FakeServer, flags: list[str], message: str
) -> None:
    base = ["pipelines", "create", "garments", "--model", "m", "--endpoint", "e", "--dataset", "d"]
    result = gureum(*base, *flags, "-o", "json")
    assert result.exit_code == 1
    err = json.loads(result.stdout)["error"]
    assert message in err["message"]
    assert err["code"] in ("invalid_request", "bad_request")
    assert fake.requests == []


def test_cli_create_refuses_an_unknown_approval_mode(fake: FakeServer) -> None:
    result = gureum(
        "pipelines", "create", "g", "--model", "m", "--endpoint", "e", "--dataset", "d",
        "--approve", "sometimes",
    )  # fmt: skip
    assert result.exit_code == 2 and "sometimes" in result.output
    assert fake.requests == []


def test_cli_run_wait_prints_each_step_and_the_decision(fake: FakeServer) -> None:
    steps = [step(s.value) for s in STEPS]
    curating = steps.copy()
    curating[0] = step("curate", "running")
    training = steps.copy()
    training[0] = step("curate", "succeeded", "curated garments:4", done=True)
    training[1] = step("train", "running", "job j-7")
    done = [step(s.value, "succeeded", done=True) for s in STEPS]
    done[0], done[1] = training[0], step("train", "succeeded", "job j-7", done=True)
    fake.polls = [
        run(3, steps=curating),
        run(3, steps=curating),
        run(3, steps=training, step="train"),
        run(
            3,
            "promoted",
            step=None,
            steps=done,
            reason="canary no worse than production",
            metrics={"candidate": {"accuracy": 0.91}, "production": {"accuracy": 0.88}},
        ),
    ]
    result = gureum("pipelines", "run", "garments", "--wait")
    assert result.exit_code == 0, result.output
    lines = [flat(line) for line in result.stdout.splitlines() if line.strip()]
    assert lines[0] == "run 3 of garments started by hand (admin)"
    assert lines[1] == "curate running"  # printed once though polled twice
    assert lines[2] == "curate succeeded 1 min 12 s curated garments:4"
    assert lines[3] == "train running job j-7"
    assert "run 3 of garments: promoted: canary no worse than production" in lines
    assert [line for line in lines if line.startswith("accuracy")] == ["accuracy 0.91 0.88"]
    assert [p for p, _, _ in fake.sent("POST")] == ["/v1/pipelines/garments/runs"]
    assert {p for p, _, _ in fake.sent("GET")} == {"/v1/pipelines/garments/runs/3"}


@pytest.mark.parametrize(
    ("state", "exit_code"),
    [
        ("promoted", 0),
        ("not_promoted", 0),
        ("awaiting_approval", 0),
        ("failed", 1),
        ("cancelled", 1),
    ],
)
def test_cli_run_wait_exit_code_says_whether_a_decision_was_made(
    fake: FakeServer, state: str, exit_code: int
) -> None:
    fake.polls = [run(3), run(3, state, step=None, reason=f"it is {state}")]
    result = gureum("pipelines", "run", "garments", "--wait", "-o", "json")
    assert result.exit_code == exit_code, result.output
    out = json.loads(result.stdout)  # only the run, nothing else on stdout
    assert (out["number"], out["state"], out["reason"]) == (3, state, f"it is {state}")
    if state == "awaiting_approval":
        fake.polls = [run(3, state, step=None)]
        text = flat(gureum("pipelines", "run", "garments", "--wait").stdout)
        assert "approve it: gureum pipelines approve garments --run 3" in text


def test_cli_run_wait_times_out(fake: FakeServer) -> None:
    fake.polls = [run(3)] * 50
    result = gureum("pipelines", "run", "garments", "--wait", "--timeout", "0", "-o", "json")
    assert result.exit_code == 1
    err = json.loads(result.stdout)["error"]
    assert (
        err["code"] == "timeout" and "run 3 of pipeline garments is still running" in err["message"]
    )


def test_cli_run_without_wait_and_refused(fake: FakeServer) -> None:
    result = gureum("pipelines", "run", "garments", "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["number"] == 3
    assert [m for m, *_ in fake.requests] == ["POST"]
    result = gureum("pipelines", "run", "garments")
    assert "follow it: gureum pipelines show garments --run 3" in flat(result.stdout)

    fake.refuse = error(409, "run_in_progress", "run 2 of garments is still running")
    result = gureum("pipelines", "run", "garments", "--wait", "-o", "json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "error": {"code": "run_in_progress", "message": "run 2 of garments is still running"}
    }


def test_cli_show_prints_config_steps_metrics_and_reason(fake: FakeServer) -> None:
    steps = [step(s.value, "succeeded", done=True) for s in STEPS]
    steps[3] = step("gate", "failed", "worse on accuracy", done=True)
    fake.run = run(
        2,
        "not_promoted",
        step=None,
        steps=steps[:4],
        candidate="garments:5",
        reason="the candidate does not beat production on accuracy",
        metrics={"candidate": {"accuracy": 0.8}, "production": {"accuracy": 0.85}},
    )
    fake.pipeline = pipeline(config={"schedule": "0 3 * * 1", "approve": "manual"})
    result = gureum("pipelines", "show", "garments")
    assert result.exit_code == 0, result.output
    text = flat(result.stdout)
    for expected in (
        "cron 0 3 * * 1 (runs at least 60 min apart)",
        "by a person (pipelines approve)",
        "garments #2, started by hand (admin)",
        "not_promoted",
        "the candidate does not beat production on accuracy",
        "gate failed 2025-01-02 03:04:05 1 min 12 s worse on accuracy",
        "metric candidate production",
        "accuracy 0.8 0.85",
    ):
        assert expected in text
    assert fake.sent("GET")[-1][0] == "/v1/pipelines/garments/runs/latest"

    data = json.loads(gureum("pipelines", "show", "garments", "--run", "1", "-o", "json").stdout)
    assert data["name"] == "garments" and data["run"]["candidate"] == "garments:5"
    assert fake.sent("GET")[-1][0] == "/v1/pipelines/garments/runs/1"

    fake.pipeline = pipeline(last_run=None)
    fake.requests.clear()
    result = gureum("pipelines", "show", "garments", "-o", "json")
    assert json.loads(result.stdout)["run"] is None
    assert [p for p, _, _ in fake.sent("GET")] == ["/v1/pipelines/garments"]


def test_cli_list_runs_and_events(fake: FakeServer) -> None:
    fake.pipeline = pipeline(config={"after_labels": 50}, active_run=3)
    result = gureum("pipelines", "list")
    assert result.exit_code == 0, result.output
    assert "garments garments garments 50 new labels auto 2 3" in flat(result.stdout)
    assert [p["name"] for p in json.loads(gureum("pipelines", "list", "-o", "json").stdout)] == [
        "garments"
    ]

    result = gureum("pipelines", "runs", "garments", "--limit", "1", "-o", "json")
    assert result.exit_code == 0, result.output
    assert [r["number"] for r in json.loads(result.stdout)] == [2]
    assert fake.sent("GET")[-1][1] == {"limit": "1"}
    assert "1 failed by hand (admin)" in flat(gureum("pipelines", "runs", "garments").stdout)

    result = gureum("pipelines", "events", "garments", "--run", "2", "--after", "0", "-o", "json")
    assert json.loads(result.stdout)[0]["message"] == "curated garments:4"
    assert fake.sent("GET")[-1][:2] == ("/v1/pipelines/garments/runs/2/events", {"after": "0"})

    fake.pipeline = None
    assert "no pipelines: create one" in gureum("pipelines", "list").stdout


def test_cli_cancel_approve_and_delete(fake: FakeServer) -> None:
    fake.run = run(2, "cancelled", step=None, reason="cancelled by admin")
    result = gureum("pipelines", "cancel", "garments")
    assert result.exit_code == 0, result.output
    assert "run 2 of garments: cancelled: cancelled by admin" in flat(result.stdout)
    result = gureum("pipelines", "cancel", "garments", "--run", "2", "-o", "json")
    assert json.loads(result.stdout)["state"] == "cancelled"
    assert [p for p, _, _ in fake.sent("POST")] == [
        "/v1/pipelines/garments/runs/latest/cancel",
        "/v1/pipelines/garments/runs/2/cancel",
    ]

    fake.run = run(2, "not_promoted", step=None, reason="rejected: worse on shoes")
    result = gureum(
        "pipelines", "approve", "garments", "--run", "2", "--reject", "--note", "worse on shoes"
    )
    assert result.exit_code == 0, result.output
    assert "not_promoted: rejected: worse on shoes" in flat(result.stdout)
    gureum("pipelines", "approve", "garments")
    assert fake.sent("POST")[-2:] == [
        ("/v1/pipelines/garments/runs/2/approve", {}, {"approve": False, "note": "worse on shoes"}),
        ("/v1/pipelines/garments/runs/latest/approve", {}, {"approve": True, "note": ""}),
    ]

    result = gureum("pipelines", "delete", "garments", "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"name": "garments", "deleted": True}
    assert fake.sent("DELETE") == [("/v1/pipelines/garments", {}, None)]
    fake.pipeline = None
    result = gureum("pipelines", "delete", "garments", "-o", "json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"]["code"] == "not_found"
    result = gureum("pipelines", "show", "garments")
    assert result.exit_code == 1 and "pipeline garments not found" in result.output
