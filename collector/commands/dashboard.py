"""``runmeter dashboard``: the Streamlit cost explorer over a store, as a child process of the CLI."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from collector import settings
from collector.commands._args import add_db_flag

NAME = "dashboard"
HELP = ("Open the cost explorer (Streamlit) over a store: spend, storage, retrieval what-ifs, threads, runs "
        "and reconciliation. It reads while recorders write.")

DEFAULT_PORT = 8501


def app_path() -> Path:
    """The explorer's Streamlit entry script (``dashboards/app.py`` of the installed package)."""
    import dashboards

    return Path(dashboards.__file__).resolve().parent / "app.py"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--db``, ``--host`` and ``--port``, each defaulting to its ``RUNMETER_*`` variable."""
    add_db_flag(p)
    p.add_argument("--host", default=settings.env_str(settings.RUNMETER_HOST, "127.0.0.1"),
                   help="interface to bind (env RUNMETER_HOST; default 127.0.0.1; 0.0.0.0 shows your costs "
                        "to the whole network)")
    p.add_argument("--port", type=int,
                   default=settings.env_int(settings.RUNMETER_DASHBOARD_PORT, DEFAULT_PORT),
                   help=f"port to bind, 0 for a free one (env RUNMETER_DASHBOARD_PORT; "
                        f"default {DEFAULT_PORT})")


def free_port(host: str, port: int = 0) -> int:
    """``port`` when it can be bound on ``host`` now (``0``: a free one the OS picks); a port taken by
    another server is a ``ValueError``, before anything says the dashboard is there."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Streamlit's server binds
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ValueError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
        bound: int = s.getsockname()[1]
        return bound


def streamlit_command(app: Path, host: str, port: int) -> list[str]:
    """The ``streamlit run`` command line of the explorer (headless, no telemetry, no file watcher)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.address", host, "--server.port", str(port), "--server.headless", "true",
        "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
        "--global.developmentMode", "false", "--client.toolbarMode", "viewer",
    ]


def url_of(host: str, port: int) -> str:
    """The URL a person opens."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def run(args: argparse.Namespace) -> int:
    """Run Streamlit until interrupted; prints the URL on stdout first."""
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port} is not a port number (0-65535)")
    app = app_path()
    if not app.is_file():
        raise FileNotFoundError(f"the dashboard app is missing at {app}")
    port = free_port(args.host, args.port)
    db = str(Path(args.db).expanduser().resolve())
    env = {**os.environ, settings.RUNMETER_DB: db}
    if not Path(db).exists():
        print(f"runmeter dashboard: no store at {db} yet; the pages say how to make one", file=sys.stderr)
    child = subprocess.Popen(streamlit_command(app, args.host, port), env=env, stdout=subprocess.DEVNULL)
    return _supervise(child, args.host, port, db)


def _supervise(child: subprocess.Popen[bytes], host: str, port: int, db: str,
               signals: Sequence[signal.Signals] = (signal.SIGTERM,)) -> int:
    """Print where to look, then wait for the child; a signal or Ctrl-C stops it."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, stop) for s in signals}
    print(url_of(host, port), flush=True)
    print(f"runmeter dashboard on {url_of(host, port)} reading {db}; Ctrl-C stops", file=sys.stderr,
          flush=True)
    try:
        return child.wait()
    except KeyboardInterrupt:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
