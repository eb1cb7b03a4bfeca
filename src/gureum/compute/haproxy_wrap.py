"""A wrapper around Ray Serve's HAProxy that closes what Ray 2.60's template leaves open.

Ray renders HAProxy's configuration itself and offers no setting for the parts gureum needs:
its stats and Prometheus frontends bind every address (``bind *:PORT``, ``bind :PORT``), the
admin socket is created mode 666, and there is no request (header) timeout, so a client that
sends its headers one byte a minute holds a connection forever. Ray starts HAProxy through
``RAY_SERVE_HAPROXY_BINARY_PATH``; the local head points that at a script gureum writes (see
``local_ray.serve_env``) which runs this module: it rewrites the configuration file in place
(under the same lock Ray writes it with) and then execs the real HAProxy with Ray's
arguments unchanged, so Ray still finds its process by the config path on the command line.

Only the standard library is imported: this runs on every HAProxy start and reload.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

LOOPBACK = "127.0.0.1"
# Ray's frontends for consumers; every other `bind` is a side port (stats, metrics).
DATA_PLANE_SECTIONS = ("frontend http_frontend", "frontend grpc_frontend")
SECTION = re.compile(r"^(global|defaults|frontend|backend|listen|peers|resolvers)\b")
BIND = re.compile(r"^(?P<indent>\s+)bind\s+(?P<addr>\S+)(?P<rest>.*)$")
OUR_TIMEOUTS = (["timeout", "client"], ["timeout", "http-request"], ["timeout", "http-keep-alive"])
STATS_SOCKET_MODE = re.compile(r"^(\s+stats socket\s+\S+.*?\bmode\s+)\d+")


class RewriteError(ValueError):
    """The configuration does not look like Ray's: refuse to start rather than guess."""


@dataclass(frozen=True)
class Limits:
    """What a client may take of HAProxy: time to send the request head, idle time, headers."""

    http_request_s: int = 10
    client_s: int = 60
    keep_alive_s: int = 30
    max_headers: int = 100


def _bind_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _port_of(addr: str) -> str:
    """The port of a bind address (``*:80``, ``:80``, ``1.2.3.4:80``, ``[::]:80``)."""
    _, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise RewriteError(f"unexpected bind address {addr!r}")
    return port


def _sections(lines: Sequence[str]) -> Iterator[tuple[str, str]]:
    """Each line with the header of the section it belongs to (``""`` before the first)."""
    section = ""
    for line in lines:
        if SECTION.match(line):
            section = " ".join(line.split()[:2])
        yield section, line


def rewrite(config: str, *, data_plane_host: str = LOOPBACK, limits: Limits = Limits()) -> str:
    """Ray's HAProxy configuration with every side port on loopback, the consumer frontends
    on ``data_plane_host``, a private admin socket and bounded requests."""
    out: list[str] = []
    seen_global = seen_defaults = False
    for section, line in _sections(config.splitlines()):
        bind = BIND.match(line)
        if bind:
            host = data_plane_host if section in DATA_PLANE_SECTIONS else LOOPBACK
            port = _port_of(bind["addr"])
            line = f"{bind['indent']}bind {_bind_host(host)}:{port}{bind['rest']}"
        elif section == "global":
            line = STATS_SOCKET_MODE.sub(r"\g<1>600", line)
            if line.split()[:1] == ["tune.http.maxhdr"]:
                continue  # ours below
        elif section == "defaults" and line.split()[:2] in OUR_TIMEOUTS:
            continue  # ours below
        out.append(line)
        if line == "global":
            seen_global = True
            out.append(f"    tune.http.maxhdr {limits.max_headers}")
        elif line == "defaults":
            seen_defaults = True
            out += [
                f"    timeout http-request {limits.http_request_s}s",
                f"    timeout client {limits.client_s}s",
                f"    timeout http-keep-alive {limits.keep_alive_s}s",
            ]
    if not (seen_global and seen_defaults):
        raise RewriteError("no `global` or `defaults` section: not a Ray Serve HAProxy config")
    return "\n".join(out) + "\n"


def config_path(args: Sequence[str]) -> str:
    """The file after ``-f`` in HAProxy's arguments (Ray passes exactly one)."""
    paths = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-f"]
    if len(paths) != 1:
        raise RewriteError(f"expected one `-f FILE` in HAProxy's arguments, got {list(args)}")
    return paths[0]


@contextlib.contextmanager
def _ray_lock(path: str) -> Iterator[None]:
    """Ray writes the file under an flock on ``<config>.lock``: take the same lock."""
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def rewrite_file(path: str, *, data_plane_host: str, limits: Limits) -> None:
    with _ray_lock(path):
        with open(path) as fh:
            text = fh.read()
        new = rewrite(text, data_plane_host=data_plane_host, limits=limits)
        if new != text:
            with open(path, "w") as fh:
                fh.write(new)


def main(argv: Sequence[str] | None = None) -> None:
    """``haproxy_wrap.py --haproxy BIN [options] -- <HAProxy's arguments>``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="gureum-haproxy")
    parser.add_argument("--haproxy", required=True)
    parser.add_argument("--data-plane-host", default=LOOPBACK)
    parser.add_argument("--http-request-timeout", type=int, default=Limits.http_request_s)
    parser.add_argument("--client-timeout", type=int, default=Limits.client_s)
    parser.add_argument("--keep-alive-timeout", type=int, default=Limits.keep_alive_s)
    parser.add_argument("--max-headers", type=int, default=Limits.max_headers)
    opts = parser.parse_args(argv[:split])
    haproxy_args = argv[split + 1 :]
    limits = Limits(
        http_request_s=opts.http_request_timeout,
        client_s=opts.client_timeout,
        keep_alive_s=opts.keep_alive_timeout,
        max_headers=opts.max_headers,
    )
    if "-f" in haproxy_args:  # `haproxy -v` and the like carry no configuration
        try:
            rewrite_file(
                config_path(haproxy_args), data_plane_host=opts.data_plane_host, limits=limits
            )
        except (OSError, RewriteError) as exc:
            print(f"gureum: refusing to start HAProxy: {exc}", file=sys.stderr)
            raise SystemExit(2) from exc
    os.execv(opts.haproxy, [opts.haproxy, *haproxy_args])  # noqa: S606 (no shell: exact args)


if __name__ == "__main__":
    main()
