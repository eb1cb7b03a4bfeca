"""The packages a code folder's ``requirements.txt`` asks for, installed once per file content.

Installed outside the sandbox (it needs the package registry) but without running any of the
user's code: wheels only (``--only-binary=:all:``, so no ``setup.py`` runs) into a folder of
their own (``--target``), and the file may hold requirement lines only (no pip options, URLs
or paths, which would point pip at other indexes or at this machine's files). The operator's
pip configuration (``PIP_INDEX_URL`` and the like, a mirror for offline sites) applies.

The folder is cached by the file's SHA-256 under the sandbox cache (outside GUREUM_HOME, which
user code never sees), shared by jobs and replicas of the node, and bound read-only into the
sandbox. A code folder without ``requirements.txt`` needs nothing and works offline.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
from collections.abc import Callable
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from gureum.recipes.base import RecipeError

REQUIREMENTS = "requirements.txt"
CACHE_ENV = "GUREUM_SANDBOX_CACHE"
MAX_FILE_BYTES = 64 * 1024
MAX_LINES = 200
INSTALL_TIMEOUT_S = 900.0
COMPLETE = ".complete"


class RequirementsError(RecipeError):
    """The code folder's requirements.txt cannot be installed; the message says why."""

    code = "bad_requirements"


def cache_root() -> Path:
    """Node-local cache for what the sandbox may read: ``$GUREUM_SANDBOX_CACHE``, else
    ``$XDG_CACHE_HOME/gureum`` or ``~/.cache/gureum``."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gureum"


def parse(text: str) -> list[str]:
    """The requirement lines of ``text``; ``RequirementsError`` for anything else."""
    found: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        where = f"{REQUIREMENTS} line {number}"
        if line.startswith("-"):
            raise RequirementsError(
                f"{where}: pip options are not allowed ({line.split()[0]}); list packages only"
            )
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise RequirementsError(f"{where}: not a package requirement: {exc}") from None
        if req.url:
            raise RequirementsError(f"{where}: URLs are not allowed; name a package and version")
        found.append(str(req))
    if len(found) > MAX_LINES:
        raise RequirementsError(f"{REQUIREMENTS} lists {len(found)} packages; at most {MAX_LINES}")
    return found


def digest_of(code_dir: Path) -> str | None:
    """SHA-256 of the folder's requirements.txt, or None when it has none."""
    path = code_dir / REQUIREMENTS
    if not path.is_file():
        return None
    return hashlib.sha256(_read(path)).hexdigest()


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    if len(data) > MAX_FILE_BYTES:
        raise RequirementsError(f"{REQUIREMENTS} is {len(data)} bytes; at most {MAX_FILE_BYTES}")
    return data


def _interpreter() -> str:
    """Wheels fit one Python and platform: the cache is kept per interpreter."""
    ver = f"py{sys.version_info.major}{sys.version_info.minor}"
    return f"{ver}-{sysconfig.get_platform().replace('-', '_')}"


def ensure(code_dir: Path, log: Callable[[str], None] = print) -> Path | None:
    """The installed folder for ``code_dir``'s requirements.txt (installed now if it is not
    cached yet), or None when the folder has none."""
    path = code_dir / REQUIREMENTS
    if not path.is_file():
        return None
    data = _read(path)
    try:
        packages = parse(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise RequirementsError(f"{REQUIREMENTS} is not UTF-8 text") from None
    digest = hashlib.sha256(data).hexdigest()
    root = cache_root() / "envs" / _interpreter()
    target = root / digest
    if (target / COMPLETE).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install per file content at a time on the node
        if (target / COMPLETE).is_file():
            return target
        log(f"installing {len(packages)} package(s) of {REQUIREMENTS} (wheels only)")
        _install(packages, root, target)
    return target


def _install(packages: list[str], root: Path, target: Path) -> None:
    tmp = root / f".{target.name}.{uuid.uuid4().hex[:8]}"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--only-binary=:all:",
        "--no-input",
        "--disable-pip-version-check",
        "--no-warn-script-location",
        "--target",
        str(tmp),
        "--",
        *packages,
    ]
    try:
        if packages:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
            )
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
                raise RequirementsError(f"pip could not install {REQUIREMENTS}:\n{tail}")
        else:
            tmp.mkdir()
        (tmp / COMPLETE).write_text("")
        shutil.rmtree(target, ignore_errors=True)  # a half-written folder of a killed install
        os.rename(tmp, target)
    except subprocess.TimeoutExpired:
        raise RequirementsError(
            f"installing {REQUIREMENTS} took over {INSTALL_TIMEOUT_S:.0f} s"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
