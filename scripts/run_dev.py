"""`make run`: a local 3-member dev cluster (once it exists) and the console under daphne.

Runs migrations, ensures the `admin` superuser, starts the members and daphne as child
processes, and on Ctrl-C / SIGTERM terminates them by PID and waits for them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CONSOLE_PORT = int(os.environ.get("CONSOLE_PORT", "8000"))
MEMBERS = [("infra1", 2379, 2380), ("infra2", 22379, 22380), ("infra3", 32379, 32380)]
CLUSTER_TOKEN = "etcd-py-dev"


class Stop(Exception):
    """Raised by the signal handler to unwind into the shutdown path."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def manage(*args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, check=True)


def member_command(name: str, client_port: int, peer_port: int) -> list[str]:
    initial_cluster = ",".join(f"{n}=http://{HOST}:{p}" for n, _, p in MEMBERS)
    return [
        sys.executable,
        "-m",
        "cluster",
        "--name",
        name,
        "--data-dir",
        str(ROOT / "var" / name),
        "--listen-client-urls",
        f"http://{HOST}:{client_port}",
        "--advertise-client-urls",
        f"http://{HOST}:{client_port}",
        "--listen-peer-urls",
        f"http://{HOST}:{peer_port}",
        "--initial-advertise-peer-urls",
        f"http://{HOST}:{peer_port}",
        "--initial-cluster",
        initial_cluster,
        "--initial-cluster-token",
        CLUSTER_TOKEN,
        "--initial-cluster-state",
        "new",
        # etcd 3.5's HTTP listeners: JSON gateway + health, and metrics + health
        "--listen-client-http-urls",
        f"http://{HOST}:{client_port + 2}",
        "--listen-metrics-urls",
        f"http://{HOST}:{client_port + 3}",
    ]


def daphne_command() -> list[str]:
    daphne = Path(sys.executable).parent / "daphne"
    prefix = [str(daphne)] if daphne.exists() else [sys.executable, "-m", "daphne"]
    return [*prefix, "-b", HOST, "-p", str(CONSOLE_PORT), "console.asgi:application"]


def start(name: str, argv: list[str], env: dict[str, str]) -> tuple[str, subprocess.Popen[bytes]]:
    # A session of its own: Ctrl-C reaches only us, and we stop the children in order.
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True)
    print(f"started {name} (pid {proc.pid})", flush=True)
    return name, proc


def stop_all(children: list[tuple[str, subprocess.Popen[bytes]]], grace: float = 10.0) -> None:
    for _, proc in reversed(children):
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace
    for name, proc in reversed(children):
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{name} (pid {proc.pid}) did not stop in {grace:.0f}s; killing", flush=True)
            proc.kill()
            proc.wait()


def main() -> int:
    os.chdir(ROOT)
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    env.setdefault("CONSOLE_DEBUG", "1")  # dev: daphne serves static files through Django
    os.environ.update(env)

    manage("migrate", "--noinput")
    manage("ensure_admin")

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        if (ROOT / "cluster" / "__main__.py").exists():
            for name, client_port, peer_port in MEMBERS:
                children.append(start(name, member_command(name, client_port, peer_port), env))
        else:
            print("the cluster member is not built yet (no cluster/__main__.py): console only")
        children.append(start("console", daphne_command(), env))

        print(f"console:  http://{HOST}:{CONSOLE_PORT}/  (login as 'admin')")
        print(f"health:   http://{HOST}:{CONSOLE_PORT}/healthz")
        if len(children) > 1:
            endpoints = ",".join(f"{HOST}:{c}" for _, c, _ in MEMBERS)
            print(f"cluster:  {endpoints}")
            http = ",".join(f"http://{HOST}:{c + 2}" for _, c, _ in MEMBERS)
            print(f"gateway:  {http}  (metrics and health on the next port)")
        print("Ctrl-C to stop", flush=True)

        while True:
            for name, proc in children:
                code = proc.poll()
                if code is not None:
                    print(f"{name} (pid {proc.pid}) exited with status {code}; stopping")
                    return code or 1
            time.sleep(0.5)
    except Stop as stop:
        print(f"\n{stop}: stopping", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_all(children)


if __name__ == "__main__":
    sys.exit(main())
