"""Regenerate the Python code for every .proto file under cluster/proto/.

    python -m cluster.proto.generate           # rewrite the generated files
    python -m cluster.proto.generate --check   # exit 1 if they are out of date

(`make proto` runs the first.)

The .proto files import each other by their path from the repository root
(``import "cluster/proto/mvccpb/kv.proto";``) and protoc runs with the
repository root as its only include directory of ours. protoc derives Python
module names from those paths, so the generated modules import each other as
``from cluster.proto.mvccpb import kv_pb2`` with no post-processing. Each
.proto yields ``*_pb2.py`` and a typed ``*_pb2.pyi`` stub (mypy-protobuf);
files that declare a service also get ``*_pb2_grpc.py`` and its
``*_pb2_grpc.pyi``. The protobuf package names (etcdserverpb, mvccpb, ...) are
what goes on the wire and are unaffected by the file paths.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parents[1]
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
_SERVICE = re.compile(r"^\s*service\s+\w+\s*\{", re.MULTILINE)


def proto_files() -> list[Path]:
    """Every .proto under cluster/proto/, relative to the repository root."""
    return sorted(p.relative_to(ROOT) for p in PROTO_DIR.rglob("*.proto"))


def generated_files(base: Path) -> list[Path]:
    """The generated modules under base/cluster/proto/, relative to base."""
    top = base / PROTO_DIR.relative_to(ROOT)
    if not top.is_dir():
        return []
    return sorted(
        p.relative_to(base)
        for p in top.rglob("*")
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    )


def _plugin(name: str) -> str:
    """--plugin flag for a protoc plugin installed beside this interpreter (the venv)."""
    candidates = [Path(sys.executable).parent / name]
    found = shutil.which(name)
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file():
            return f"--plugin={name}={path}"
    raise SystemExit(f"{name} not found: install the dev extra (mypy-protobuf)")


def _protoc(args: list[str]) -> None:
    from grpc_tools import protoc  # imported late: only this script needs grpcio-tools

    well_known = resources.files("grpc_tools") / "_proto"
    argv = ["grpc_tools.protoc", f"-I{ROOT}", f"-I{well_known}", *args]
    if protoc.main(argv) != 0:
        raise SystemExit(f"protoc failed: {' '.join(args)}")


def generate(out: Path) -> None:
    """Write the generated modules for all .proto files into out/cluster/proto/..."""
    protos = proto_files()
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_DIR}")
    with_services = [p for p in protos if _SERVICE.search((ROOT / p).read_text())]
    # Paths handed to protoc must be spelled relative to an include directory
    # (the root), which is also how they are recorded in the descriptors.
    names = [p.as_posix() for p in protos]
    _protoc([_plugin("protoc-gen-mypy"), f"--python_out={out}", f"--mypy_out=quiet:{out}", *names])
    if with_services:
        _protoc(
            [
                _plugin("protoc-gen-mypy_grpc"),
                f"--grpc_python_out={out}",
                f"--mypy_grpc_out=quiet,generate_concrete_servicer_stubs:{out}",
                *(p.as_posix() for p in with_services),
            ]
        )


def ensure_packages() -> list[Path]:
    """Give every directory holding a .proto an __init__.py; return those created."""
    created = []
    for directory in sorted({(ROOT / p).parent for p in proto_files()} | {PROTO_DIR}):
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text(f'"""Generated protobuf modules: {directory.name}."""\n')
            created.append(init.relative_to(ROOT))
    return created


def write() -> None:
    """Replace the generated files with a fresh generation (built aside first)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp)
        generate(fresh_root)
        for old in generated_files(ROOT):
            (ROOT / old).unlink()
        for path in generated_files(fresh_root):
            shutil.copyfile(fresh_root / path, ROOT / path)
            print(f"wrote {path}")
    for init in ensure_packages():
        print(f"created {init}")


def check() -> bool:
    """True when the checked-in generated files match a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp)
        generate(fresh_root)
        fresh = generated_files(fresh_root)
        current = generated_files(ROOT)
        ok = True
        for path in sorted(set(fresh) | set(current)):
            if path not in current:
                print(f"missing: {path}")
                ok = False
            elif path not in fresh:
                print(f"stale (no .proto generates it): {path}")
                ok = False
            elif not filecmp.cmp(fresh_root / path, ROOT / path, shallow=False):
                print(f"out of date: {path}")
                ok = False
        return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the protobuf modules.")
    parser.add_argument(
        "--check", action="store_true", help="only verify the generated files are up to date"
    )
    args = parser.parse_args(argv)
    if args.check:
        if check():
            print("generated protobuf code is up to date")
            return 0
        print("run `make proto` (python -m cluster.proto.generate) to regenerate")
        return 1
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
