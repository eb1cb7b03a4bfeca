"""The bubblewrap sandbox user code (script jobs) runs in, and the watchdog that bounds it.

User code is untrusted: it must not read GUREUM_HOME (the admin key, serving.key, the database),
the artifact store or other jobs' folders, and must not reach any loopback service (Ray,
PostgreSQL, Redis, the control plane) nor act as a Ray driver. bubblewrap gives that without
privileges: every namespace unshared (network included, so 127.0.0.1 is the sandbox's own
loopback), an unprivileged uid inside, no capabilities, a new session, killed with its parent,
read-only binds of the Python environment and the job's inputs, one writable run folder, a
size-capped tmpfs ``/tmp``. Its environment is built from an allow-list, never copied from ours.
It reaches the platform only through files in its run folder, which the supervisor (our code,
outside) reads: no socket, no Ray API.

rlimits (processes, open files, file size) are set by ``sandbox_init`` inside; memory (RSS of
the whole process tree), process count and the run folder's size are watched from outside by
``Watchdog``, which names the limit it enforced.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

import gureum

DEFAULT_BWRAP = "/usr/bin/bwrap"
BWRAP_ENV = "GUREUM_BWRAP"  # the bwrap binary every node uses (a site setting of `gureum up`)
SANDBOX_UID = SANDBOX_GID = 65534  # "nobody" inside; mapped onto our own uid outside
GiB = 1024**3
MiB = 1024**2
DEFAULT_MEMORY_BYTES = 16 * GiB  # per rank, when the job asked for no memory
DEFAULT_DISK_BYTES = 20 * GiB
TMP_BYTES = 512 * MiB
MAX_PROCS = 512  # processes in one sandbox (watchdog); the rlimit allows this many threads more
OPEN_FILES = 4096
PROBE_TIMEOUT_S = 10.0
DISK_EVERY_S = 2.0
# What the user's code may see of the job: the ``gureum.run`` channel, nothing else of ours.
JOB_ENV = frozenset(
    {
        "GUREUM_RUN_DIR",
        "GUREUM_PARAMS",
        "GUREUM_DEVICE",
        "GUREUM_JOB_ID",
        "GUREUM_DATA_DIR",
        "GUREUM_DATA_MANIFEST",
    }
)
# Passed through from the worker's environment when set: harmless and needed by the runtime.
HOST_ENV = ("LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS")
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives")
INIT = Path(__file__).with_name("sandbox_init.py")


class SandboxError(RuntimeError):
    """The sandbox cannot be built or started; the message says why."""


def bwrap_path() -> str:
    return os.environ.get(BWRAP_ENV) or DEFAULT_BWRAP


def _system_binds() -> list[str]:
    """/usr and the /lib* and /bin links (as links when they are links, as on merged-/usr)."""
    args: list[str] = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for f in ETC_FILES:
        args += ["--ro-bind-try", f, f]
    return args


@functools.lru_cache(maxsize=8)
def probe(bwrap: str) -> str | None:
    """None when ``bwrap`` can build our sandbox on this machine, else why not (cached: the
    answer only changes when an operator installs it or changes the kernel's settings)."""
    if not os.path.isfile(bwrap) or not os.access(bwrap, os.X_OK):
        return f"bubblewrap not found at {bwrap} (install the Debian package `bubblewrap`)"
    cmd = [bwrap, *_isolation(), *_system_binds(), "--", "/bin/sh", "-c", "exit 0"]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap at {bwrap} does not run: {exc}"
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()[:300]
        return f"bubblewrap at {bwrap} cannot build a sandbox here: {err or done.returncode}"
    return None


def _isolation() -> list[str]:
    return [
        "--unshare-all",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_GID),
        "--cap-drop",
        "ALL",
        "--new-session",
        "--die-with-parent",
        "--hostname",
        "sandbox",
    ]


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = DEFAULT_MEMORY_BYTES
    disk_bytes: int = DEFAULT_DISK_BYTES
    max_procs: int = MAX_PROCS
    open_files: int = OPEN_FILES


@dataclass(frozen=True)
class Layout:
    """What the sandbox sees: ``run_dir`` writable, the rest read-only, ``forbidden`` never."""

    run_dir: Path
    code_dir: Path
    data_dir: Path | None = None
    forbidden: tuple[Path, ...] = ()
    gpu: bool = False
    python_roots: tuple[Path, ...] = field(default_factory=lambda: python_roots())


def python_roots() -> tuple[Path, ...]:
    """This interpreter's environment (venv and base install) and the gureum package, for
    ``import gureum.run``, torch and whatever else the environment has installed."""
    found = [
        Path(sys.prefix),
        Path(sys.base_prefix),
        Path(os.path.realpath(sys.executable)).parent.parent,
        Path(gureum.__file__).resolve().parent,
    ]
    roots: list[Path] = []
    for p in sorted({q.resolve() for q in found}, key=lambda q: len(q.parts)):
        if not any(p.is_relative_to(r) for r in roots):
            roots.append(p)
    return tuple(roots)


def _check_binds(sources: Sequence[Path], forbidden: Sequence[Path]) -> None:
    for src in sources:
        for f in forbidden:
            if f == src or f.is_relative_to(src) or src.is_relative_to(f):
                raise SandboxError(f"refusing to show {src} to user code: it holds {f}")


def bwrap_args(layout: Layout) -> list[str]:
    """bubblewrap's options for ``layout`` (everything before ``--``)."""
    run_dir, code_dir = layout.run_dir.resolve(), layout.code_dir.resolve()
    ro = [*layout.python_roots, code_dir]
    if layout.data_dir is not None:
        ro.append(layout.data_dir.resolve())
    forbidden = [f.resolve() for f in layout.forbidden]
    _check_binds([*ro, run_dir], forbidden)
    args = [*_isolation(), *_system_binds(), "--proc", "/proc", "--dev", "/dev"]
    # Fresh, size-capped tmpfs inside the sandbox (the host's /tmp is never shown).
    args += ["--size", str(TMP_BYTES), "--tmpfs", "/tmp"]  # noqa: S108
    args += ["--size", str(TMP_BYTES), "--tmpfs", "/dev/shm"]  # noqa: S108
    if layout.gpu:
        for dev in sorted(Path("/dev").glob("nvidia*")):
            args += ["--dev-bind-try", str(dev), str(dev)]
    for p in ro:
        args += ["--ro-bind", str(p), str(p)]
    args += ["--bind", str(run_dir), str(run_dir), "--chdir", str(code_dir)]
    return args


def environment(
    job: Mapping[str, str],
    *,
    home: Path,
    code_dir: Path,
    cpus: float,
    host: Mapping[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The sandbox's whole environment: an allow-list, never a copy of ours, so no GUREUM_*
    key, database URL, cloud or Ray credential can leak in by being set on the worker."""
    unknown = set(job) - JOB_ENV
    if unknown:
        raise SandboxError(f"not a job variable: {sorted(unknown)}")
    host = os.environ if host is None else host
    package_parent = str(Path(gureum.__file__).resolve().parent.parent)
    env = {k: host[k] for k in HOST_ENV if host.get(k)}
    env.setdefault("LANG", "C.UTF-8")
    threads = str(max(1, int(cpus)))
    env.update({k: threads for k in THREAD_ENV})
    env.update(
        PATH=os.pathsep.join(
            [str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]
        ),
        HOME=str(home),
        USER="sandbox",
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONPATH=os.pathsep.join([str(code_dir), package_parent]),
    )
    for name in secrets or {}:
        if name in env or name in job or name.startswith(("GUREUM_", "RAY_", "PYTHON", "LD_")):
            raise SandboxError(f"secret {name!r} would shadow a variable the sandbox sets")
    env.update(secrets or {})
    env.update(job)
    return env


def init_argv(command: Sequence[str], limits: Limits, *, ranks: int, run_dir: Path) -> list[str]:
    """``sandbox_init`` in front of ``command``: rlimits, then one or ``ranks`` copies."""
    return [
        sys.executable,
        "-I",
        "-S",
        str(INIT),
        "--nproc",
        str(_nproc_limit(limits)),
        "--nofile",
        str(limits.open_files),
        "--fsize",
        str(limits.disk_bytes),
        "--ranks",
        str(ranks),
        "--run-dir",
        str(run_dir),
        "--",
        *command,
    ]


def _nproc_limit(limits: Limits) -> int:
    """RLIMIT_NPROC counts every thread of our uid on the machine, not just the sandbox's: allow
    today's total (an upper bound, read cheaply from /proc/loadavg) plus the sandbox's share."""
    try:
        with open("/proc/loadavg") as fh:
            total = int(fh.read().split()[3].split("/")[1])
    except (OSError, ValueError, IndexError):
        total = 0
    return total + limits.max_procs * 8


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def signal_tree(pid: int, sig: signal.Signals, *, include_root: bool = True) -> None:
    """``sig`` to ``pid`` and everything under it (the sandbox's processes live in their own
    session, out of reach of a process-group signal)."""
    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return
    for p in _tree(root)[0 if include_root else 1 :]:
        with contextlib.suppress(psutil.Error, OSError):
            p.send_signal(sig)


def _disk_usage(root: Path, cap: int) -> int:
    """Bytes under ``root``, stopping early once past ``cap`` (a scan, bounded by the cap)."""
    total = 0
    stack = [str(root)]
    while stack and total <= cap:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as it:
            for e in it:
                with contextlib.suppress(OSError):
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif e.is_file(follow_symlinks=False):
                        total += e.stat(follow_symlinks=False).st_blocks * 512
    return total


class Watchdog:
    """Checks the sandbox from outside: RSS summed over its process tree, its process count,
    and the size of its run folder; ``check`` returns why it must be killed, or None."""

    def __init__(self, pid: int, limits: Limits, run_dir: Path) -> None:
        self.limits = limits
        self._run_dir = run_dir
        self._next_disk = 0.0
        try:
            self._root: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:
            self._root = None
        self.peak_rss = 0

    def check(self, now: float) -> str | None:
        if self._root is None:
            return None
        procs = _tree(self._root)
        rss = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                rss += p.memory_info().rss
        self.peak_rss = max(self.peak_rss, rss)
        lim = self.limits
        if rss > lim.memory_bytes:
            return (
                f"used {rss / GiB:.2f} GiB of memory, over the job's limit of "
                f"{lim.memory_bytes / GiB:.2f} GiB (ask for more with resources.memory_gb)"
            )
        if len(procs) > lim.max_procs:
            return f"ran {len(procs)} processes, over the limit of {lim.max_procs}"
        if now >= self._next_disk:
            self._next_disk = now + DISK_EVERY_S
            used = _disk_usage(self._run_dir, lim.disk_bytes)
            if used > lim.disk_bytes:
                return (
                    f"wrote over {lim.disk_bytes / GiB:.2f} GiB into its work folder, "
                    "over the job's disk limit"
                )
        return None


@dataclass(frozen=True)
class Policy:
    """How the platform runs one attempt's user code: in the sandbox unless ``bwrap`` is
    missing and a site admin allowed unsandboxed code, or ``host_network`` (one rank of a job
    spread over nodes, allowed only with unsandboxed code) says the ranks must meet outside."""

    limits: Limits = field(default_factory=Limits)
    ranks: int = 1
    cpus: float = 1.0
    unsandboxed_ok: bool = False
    host_network: bool = False
    forbidden: tuple[Path, ...] = ()
    secrets: tuple[tuple[str, str], ...] = field(default=(), repr=False)


def memory_limit(memory_gb: float | None, ranks: int) -> int:
    """The job's memory request for the whole sandbox, or a default bounded by this machine."""
    if memory_gb:
        return int(memory_gb * GiB * ranks)
    physical = psutil.virtual_memory().total
    return int(min(DEFAULT_MEMORY_BYTES * ranks, physical * 0.9))
