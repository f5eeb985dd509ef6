"""``python -m cluster``: one member (``cluster/cli.py``), or a tool.

``python -m cluster [member flags]``            a member, as ``etcd``
``python -m cluster snapshot save|status|restore``  ``cluster/snapshot.py`` (etcdctl/etcdutl)
``python -m cluster grpc-proxy start ...``       ``cluster/proxy.py`` (etcd grpc-proxy)
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    if command == "snapshot":
        from cluster.snapshot import main as snapshot_main

        return snapshot_main(argv[1:])
    if command == "grpc-proxy":
        from cluster.proxy import main as proxy_main

        return proxy_main(argv[1:])
    from cluster.cli import main as member_main

    return member_main(argv)


sys.exit(main(sys.argv[1:]))
