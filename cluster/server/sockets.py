"""Private Unix sockets a member serves gRPC on for itself (the JSON gateway's, the one
pygrpc-native passes request streams through): in a 0700 directory of the data dir, where a
killed member's leftover is found and replaced at its next start."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Final

MAX_SOCKET_PATH: Final = 100  # sun_path holds 108 bytes


def private_socket(data_dir: str, name: str) -> tuple[str, bool]:
    """``<data-dir>/member/<name>/grpc.sock``, or a new private temp directory's when that
    path is too long for a Unix socket: (path, whether its directory is a temp one)."""
    directory = os.path.join(os.path.abspath(data_dir), "member", name)
    path = os.path.join(directory, "grpc.sock")
    if len(path.encode()) > MAX_SOCKET_PATH:
        return os.path.join(tempfile.mkdtemp(prefix=f"etcd-py-{name}-"), "grpc.sock"), True
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by a killed process
    return path, False


def remove_private_socket(path: str, in_temp: bool) -> None:
    directory = os.path.dirname(path)
    if in_temp:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)
            os.rmdir(directory)
