"""A user's own predictor (``gureum.serve``) in a pool of real bubblewrap-sandboxed workers:
discovery and schema export in the sandbox, inputs checked before any worker sees them, and
each fault a predictor can have (raise, hang, leak, bad output, a forged reply, a crash) ending
in its own error while the pool keeps serving; hostile code reads no secret; requirements.txt
installed once per content from wheels only; and the replica's ingress answering faults with a
request id and billing nothing for them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import socket
import textwrap
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from gureum.compute import sandbox, user_env
from gureum.recipes.base import BadInput
from gureum.recipes.predictor import Counted, counted_units
from gureum.serving import deployment
from gureum.serving import replica as replica_module
from gureum.serving.predictor_pool import PredictorPool
from gureum.serving.predictor_protocol import CODE_DIR, MANIFEST_FILE
from gureum.serving.predictor_sandbox import PredictorUnavailable, attach, export_manifest
from gureum.serving.replica import ReplicaCore
from gureum.serving.units import ModelFault
from tests.unit.test_serving_replica import FakeControl, QuietSpool, key, model, spec

pytestmark = pytest.mark.skipif(
    sandbox.probe(sandbox.bwrap_path()) is not None,
    reason=f"no working bubblewrap: {sandbox.probe(sandbox.bwrap_path())}",
)
SECRET = "gk_live_predictor_must_not_see_9d2e"
MiB = 1024 * 1024

PREDICTOR = """
import json, os, socket, stat, fcntl, time, uuid
from pathlib import Path
from pydantic import BaseModel
from gureum.serve import Predictor
from gureum.serving import predictor_protocol as proto

class In(BaseModel):
    text: str
    mode: str = "ok"
    arg: str = ""

class Out(BaseModel):
    label: str
    worker: str
    calls: int

def _probe(arg):
    seen = {}
    path, _, port = arg.partition("|")
    for name, path in [("pid1", "/proc/1/environ"), ("secret", path)]:
        try:
            seen[name] = Path(path).read_bytes().decode(errors="replace")
        except OSError as exc:
            seen[name] = "denied: " + type(exc).__name__
    seen["environ"] = dict(os.environ)
    seen["procs"] = sorted(p for p in os.listdir("/proc") if p.isdigit())
    try:
        socket.create_connection(("127.0.0.1", int(port)), 1)
        seen["net"] = "connected"
    except OSError as exc:
        seen["net"] = "denied: " + type(exc).__name__
    return json.dumps(seen)

def _forge():
    for fd in range(3, 64):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY
        if stat.S_ISFIFO(st.st_mode) and writable:
            reply = {"ok": True, "outputs": [{"label": 5}], "units": [-1000]}
            proto.send(fd, proto.dumps(reply))
            return

class Echo(Predictor):
    Input, Output = In, Out
    unit = "char"
    timeout_s = 2.0

    def load(self, model_dir):
        self.prefix = (model_dir / "prefix.txt").read_text().strip()
        self.token = uuid.uuid4().hex[:8]
        self.calls = 0

    def predict(self, input):
        self.calls += 1
        if input.mode == "raise":
            raise RuntimeError("boom: " + input.arg)
        if input.mode == "hang":
            time.sleep(120)
        if input.mode == "leak":
            hoard = []
            while True:
                hoard.append(bytearray(40 * 1024 * 1024))
                time.sleep(0.02)
        if input.mode == "bad":
            return {"wrong": 1}
        if input.mode == "crash":
            os._exit(3)
        if input.mode == "forge":
            _forge()
        if input.mode == "probe":
            return Out(label=_probe(input.arg), worker=self.token, calls=self.calls)
        return Out(label=self.prefix + input.text, worker=self.token, calls=self.calls)

    def units(self, input, output):
        return float(len(input.text))
"""


def _model(root: Path, source: str = PREDICTOR, **files: str) -> Path:
    """A version's folder as registration leaves it: the model's files, the code under
    code/, and predictor.json exported in the sandbox."""
    model_dir = root / "model"
    code = model_dir / CODE_DIR
    code.mkdir(parents=True)
    (code / "predictor.py").write_text(textwrap.dedent(source))
    for name, text in files.items():
        (code / name).write_text(text)
    (model_dir / "prefix.txt").write_text("hi-")
    found = export_manifest(code)
    assert found is not None
    (model_dir / MANIFEST_FILE).write_text(found.model_dump_json())
    return model_dir


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PredictorPool]:
    root = tmp_path_factory.mktemp("pool")
    home = root / "home"
    home.mkdir()
    (home / "credentials.json").write_text(json.dumps({"token": SECRET}))
    p = PredictorPool(_model(root), workers=1, memory_bytes=300 * MiB, forbidden=(home,))
    p.home = home  # type: ignore[attr-defined]
    yield p
    p.close()


def _ok(pool: PredictorPool, text: str = "ok") -> dict[str, Any]:
    (out,) = pool.predict([{"text": text}])
    return dict(out)


def _fault(pool: PredictorPool, mode: str, arg: str = "") -> ModelFault:
    with pytest.raises(ModelFault) as caught:
        pool.predict([{"text": "x", "mode": mode, "arg": arg}])
    return caught.value


# -- discovery and export -------------------------------------------------------------------


def test_export_reads_the_class_in_the_sandbox_into_json_schemas(tmp_path: Path) -> None:
    found = export_manifest(_model(tmp_path) / CODE_DIR)
    assert found is not None
    assert (found.class_name, found.unit, found.timeout_s) == ("Echo", "char", 2.0)
    assert found.input_schema["required"] == ["text"]
    assert set(found.output_schema["properties"]) == {"label", "worker", "calls"}
    assert found.counts_units and not found.batched and found.requirements_sha256 is None


def test_a_folder_without_predictor_py_has_no_predictor(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("print('train')\n")
    assert export_manifest(tmp_path) is None


def test_two_predictor_classes_need_predictor_to_name_one(tmp_path: Path) -> None:
    two = PREDICTOR + "\nclass Other(Echo):\n    unit = 'word'\n"
    (tmp_path / "predictor.py").write_text(two)
    with pytest.raises(PredictorUnavailable) as caught:
        export_manifest(tmp_path)
    assert "exactly one subclass" in str(caught.value) and "Echo, Other" in str(caught.value)
    (tmp_path / "predictor.py").write_text(two + "PREDICTOR = Other\n")
    found = export_manifest(tmp_path)
    assert found is not None and (found.class_name, found.unit) == ("Other", "word")


def test_an_output_that_is_not_a_json_object_is_refused_at_export(tmp_path: Path) -> None:
    source = PREDICTOR + "\nfrom pydantic import RootModel\nEcho.Output = RootModel[int]\n"
    (tmp_path / "predictor.py").write_text(source)
    with pytest.raises(PredictorUnavailable, match="Output must be a model whose JSON is an obj"):
        export_manifest(tmp_path)


def test_registration_writes_the_manifest_and_drops_the_scripts_own(tmp_path: Path) -> None:
    code, model_dir = tmp_path / "code", tmp_path / "model"
    code.mkdir()
    (code / "predictor.py").write_text(PREDICTOR)
    (model_dir / "code").mkdir(parents=True)
    (model_dir / "code" / "evil.py").write_text("x")
    (model_dir / MANIFEST_FILE).write_text('{"forged": true}')
    lines: list[str] = []
    found = attach(
        code,
        model_dir,
        [("predictor.py", "ab")],
        forbidden=(),
        memory_bytes=1 << 30,
        log_line=lines.append,
    )
    assert found is not None and found.code_hash and found.code_hash.startswith("sha256:")
    assert not (model_dir / "code").exists()
    assert json.loads((model_dir / MANIFEST_FILE).read_text())["class_name"] == "Echo"
    assert any("dropped code" in ln for ln in lines)


# -- serving and faults -----------------------------------------------------------------------


def test_outputs_come_back_with_the_users_units(pool: PredictorPool) -> None:
    outputs = pool.predict([{"text": "abc"}, {"text": "de"}])
    assert [o["label"] for o in outputs] == ["hi-abc", "hi-de"]
    assert all(isinstance(o, Counted) for o in outputs)
    assert counted_units([{}, {}], outputs) == 5.0
    assert pool.unit == "char"


def test_an_input_outside_the_schema_is_refused_before_a_worker_sees_it(
    pool: PredictorPool,
) -> None:
    before = _ok(pool)["calls"]
    with pytest.raises(BadInput, match=r"inputs\[1\]: 'text' is a required property"):
        pool.predict([{"text": "a"}, {"txt": "b"}])
    with pytest.raises(BadInput, match=r"inputs\[0\]\['text'\]: 5 is not of type 'string'"):
        pool.predict([{"text": 5}])
    assert _ok(pool)["calls"] == before + 1  # the refused calls never reached it


def test_a_predictor_that_raises_is_a_model_error_and_its_worker_lives_on(
    pool: PredictorPool,
) -> None:
    worker = _ok(pool)["worker"]
    fault = _fault(pool, "raise", "detail-for-the-log")
    assert (fault.status, fault.code) == (500, "model_error")
    assert "detail-for-the-log" in fault.detail and "detail" not in fault.what
    assert _ok(pool)["worker"] == worker


def test_a_predictor_that_hangs_times_out_and_its_worker_is_replaced(
    pool: PredictorPool,
) -> None:
    worker = _ok(pool)["worker"]
    fault = _fault(pool, "hang")
    assert (fault.status, fault.code) == (504, "model_timeout")
    assert "within 2 s" in fault.what
    assert _ok(pool)["worker"] != worker


def test_a_predictor_that_leaks_memory_is_killed_and_replaced(pool: PredictorPool) -> None:
    worker = _ok(pool)["worker"]
    fault = _fault(pool, "leak")
    assert (fault.status, fault.code) == (500, "model_out_of_memory")
    assert "300 MiB" in fault.what and "memory" in fault.detail
    assert _ok(pool)["worker"] != worker


def test_an_output_outside_the_schema_is_a_bad_output(pool: PredictorPool) -> None:
    fault = _fault(pool, "bad")
    assert (fault.status, fault.code) == (500, "bad_output")
    assert "label" in fault.detail
    assert _ok(pool)["label"] == "hi-ok"


def test_a_forged_reply_is_checked_by_the_replica_and_the_worker_replaced(
    pool: PredictorPool,
) -> None:
    worker = _ok(pool)["worker"]
    fault = _fault(pool, "forge")
    assert (fault.status, fault.code) == (500, "bad_output")
    assert _ok(pool)["worker"] != worker


def test_a_worker_that_exits_is_replaced(pool: PredictorPool) -> None:
    worker = _ok(pool)["worker"]
    fault = _fault(pool, "crash")
    assert (fault.status, fault.code) == (500, "model_crashed")
    assert _ok(pool)["worker"] != worker


def test_hostile_predictor_code_reads_no_secret_and_reaches_no_loopback(
    pool: PredictorPool,
) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        creds = str(pool.home / "credentials.json")  # type: ignore[attr-defined]
        arg = f"{creds}|{listener.getsockname()[1]}"
        (out,) = pool.predict([{"text": "", "mode": "probe", "arg": arg}])
    finally:
        listener.close()
    seen = json.loads(out["label"])
    assert SECRET not in out["label"]
    assert seen["secret"] == "denied: FileNotFoundError"
    assert not any(k.startswith(("GUREUM_", "RAY_", "AWS_")) for k in seen["environ"])
    assert seen["net"].startswith("denied")
    assert len(seen["procs"]) <= 3  # its own sandbox: bwrap, the worker; nothing of ours


def test_a_closed_pool_leaves_no_process(tmp_path: Path) -> None:
    p = PredictorPool(_model(tmp_path), workers=2, memory_bytes=300 * MiB)
    assert {_ok(p)["label"] for _ in range(2)} == {"hi-ok"}
    pids = [w.proc.pid for w in p._live.values()]
    assert len(pids) == 2
    p.close()
    assert not any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids
    )
    with pytest.raises(ModelFault) as caught:
        p.predict([{"text": "late"}])
    assert (caught.value.status, caught.value.code) == (503, "model_unavailable")


def test_a_predictor_that_fails_to_load_says_why(tmp_path: Path) -> None:
    model_dir = _model(tmp_path)
    (model_dir / "prefix.txt").unlink()
    with pytest.raises(PredictorUnavailable, match=r"prefix\.txt"):
        PredictorPool(model_dir, workers=1, memory_bytes=300 * MiB)


# -- requirements.txt ---------------------------------------------------------------------------


def _wheel(folder: Path, name: str, value: str) -> None:
    """A pure-Python wheel built by hand (no network, no build backend)."""
    files = {
        f"{name}/__init__.py": f"VALUE = {value!r}\n",
        f"{name}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{name}-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{name}-1.0.dist-info/RECORD,,")
    files[f"{name}-1.0.dist-info/RECORD"] = "\n".join(record) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / f"{name}-1.0-py3-none-any.whl", "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)


def test_requirements_lines_only_no_options_urls_or_paths() -> None:
    assert user_env.parse("numpy>=1.0  # pinned\n\n# note\nrequests[socks]==2.0\n") == [
        "numpy>=1.0",
        "requests[socks]==2.0",
    ]
    for bad, why in [
        ("--index-url http://evil/simple\nnumpy", "pip options are not allowed"),
        ("-e .", "pip options are not allowed"),
        ("pkg @ https://evil/pkg.whl", "URLs are not allowed"),
        ("../../etc/passwd", "not a package requirement"),
    ]:
        with pytest.raises(user_env.RequirementsError, match=why):
            user_env.parse(bad)


def test_requirements_install_once_per_content_and_reach_the_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels = tmp_path / "wheels"
    _wheel(wheels, "gureumtestpkg", "from-the-wheel")
    monkeypatch.setenv(user_env.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # offline: the operator's pip config is honoured
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    source = PREDICTOR.replace(
        'self.prefix = (model_dir / "prefix.txt").read_text().strip()',
        "import gureumtestpkg; self.prefix = gureumtestpkg.VALUE + ':'",
    )
    model_dir = _model(tmp_path, source, **{"requirements.txt": "gureumtestpkg==1.0\n"})
    env = user_env.ensure(model_dir / CODE_DIR)
    assert env is not None and (env / "gureumtestpkg" / "__init__.py").is_file()
    shutil.rmtree(wheels)  # a second install would fail now: it must come from the cache
    assert user_env.ensure(model_dir / CODE_DIR) == env
    p = PredictorPool(model_dir, workers=1, memory_bytes=300 * MiB)
    try:
        assert _ok(p)["label"] == "from-the-wheel:ok"
    finally:
        p.close()


def test_requirements_that_pip_cannot_install_fail_with_pips_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(user_env.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    (tmp_path / "requirements.txt").write_text("no-such-package-gureum==9.9\n")
    with pytest.raises(user_env.RequirementsError, match="no-such-package-gureum"):
        user_env.ensure(tmp_path)
    assert not list((tmp_path / "cache" / "envs").glob("*/[!.]*[!k]"))  # nothing half-written


# -- through the replica's ingress ---------------------------------------------------------------


ACME = "gck_k1_s3cret"


@pytest.fixture
def server(
    pool: PredictorPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[deployment.ModelServer, FakeControl]]:
    monkeypatch.setattr(replica_module, "UsageSpool", QuietSpool)
    monkeypatch.setattr(replica_module, "REFRESH_S", 3600.0)
    control = FakeControl([key("k1", "s3cret", 7, "acme")])

    def core(spec_: Any, model_: Any, **kw: Any) -> ReplicaCore:
        return ReplicaCore(spec_, model_, predictor=pool, control=control, **kw)

    monkeypatch.setattr(deployment, "ReplicaCore", core)
    s = deployment.ModelServer(spec(tmp_path).model_dump())
    s.reconfigure({"model": model(recipe="predictor").model_dump(), "max_batch_size": 1})
    yield s, control
    s.core.close()


def _post(s: deployment.ModelServer, inputs: list[Any]) -> tuple[int, dict[str, str], Any]:
    headers = {"authorization": f"Bearer {ACME}", "content-type": "application/json"}
    body = json.dumps({"inputs": inputs}).encode()
    response = asyncio.run(s._ingress("predict", "POST", headers, body, None))
    return response.status_code, dict(response.headers), json.loads(bytes(response.body))


def test_the_ingress_answers_faults_with_a_request_id_and_bills_them_nothing(
    server: tuple[deployment.ModelServer, FakeControl],
) -> None:
    s, control = server
    status, _, body = _post(s, [{"text": "abcd"}, {"text": "ef"}])
    assert status == 200, body
    assert (body["units"], body["unit"]) == (6.0, "char")
    assert [o["label"] for o in body["outputs"]] == ["hi-abcd", "hi-ef"]
    answers = {}
    for mode in ("raise", "hang", "bad"):
        status, headers, err = _post(s, [{"text": "xyz", "mode": mode, "arg": "private"}])
        rid = err["error"]["details"]["request_id"]
        assert headers["x-request-id"] == rid and rid in err["error"]["message"]
        assert "private" not in json.dumps(err)  # the model's error text stays in our log
        answers[mode] = (status, err["error"]["code"])
    assert answers == {
        "raise": (500, "model_error"),
        "hang": (504, "model_timeout"),
        "bad": (500, "bad_output"),
    }
    status, _, err = _post(s, [{"txt": 1}])
    assert (status, err["error"]["code"]) == (422, "bad_input")
    status, _, body = _post(s, [{"text": "g"}])
    assert status == 200 and body["units"] == 1.0
    s.core.spool.flush()
    billed = [(r["status"], r["units"], r["unit"]) for r in control.records]
    assert billed == [
        (200, 6.0, "char"),
        (500, 0.0, "char"),
        (504, 0.0, "char"),
        (500, 0.0, "char"),
        (422, 0.0, "char"),
        (200, 1.0, "char"),
    ]


def test_a_catastrophic_pattern_cannot_stall_the_replica(tmp_path: Path) -> None:
    """The replica skips regular expressions (Python's re backtracks exponentially on this
    one); the worker's pydantic, with a linear-time engine, still refuses the input."""
    source = PREDICTOR.replace("    text: str\n", "    text: str = Field(pattern=r'^(a+)+$')\n")
    source = source.replace(
        "from pydantic import BaseModel", "from pydantic import BaseModel, Field"
    )
    p = PredictorPool(_model(tmp_path, source), workers=1, memory_bytes=300 * MiB)
    try:
        started = time.monotonic()
        with pytest.raises(BadInput, match="should match pattern"):
            p.predict([{"text": "a" * 64 + "!"}])
        assert time.monotonic() - started < 5
        assert _ok(p, "aaa")["label"] == "hi-aaa"
    finally:
        p.close()
