"""Client and peer TLS with etcd's flags, against 3 real member processes and the real etcdctl."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scripts.make_certs import CertFiles, make_certs
from tests.e2e.procs import ROOT, Cluster, needs_etcdctl

pytestmark = needs_etcdctl


def _tls_cluster(tmp: Path, certs: CertFiles) -> Cluster:
    c = Cluster(tmp)
    for m in c.members:
        m.args = [a.replace("http://", "https://") for a in m.args]
        m.args += [
            "--cert-file", str(certs.server_cert), "--key-file", str(certs.server_key),
            "--trusted-ca-file", str(certs.ca), "--client-cert-auth",
            "--peer-cert-file", str(certs.server_cert), "--peer-key-file", str(certs.server_key),
            "--peer-trusted-ca-file", str(certs.ca), "--peer-client-cert-auth",
        ]  # fmt: skip
    return c


def _tls_flags(certs: CertFiles, *, client_cert: bool = True) -> list[str]:
    flags = [f"--cacert={certs.ca}"]
    if client_cert:
        flags += [f"--cert={certs.client_cert}", f"--key={certs.client_key}"]
    return flags


def test_client_and_peer_tls_with_certificate_auth(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    c = _tls_cluster(tmp_path, certs)
    c.start()
    try:
        tls = _tls_flags(certs)
        c.leader(c.members, extra=tls)
        assert c.etcdctl(*tls, "put", "secret", "s3cr3t").strip() == "OK"
        # the write reached every member over TLS peer streams
        for m in c.members:
            got = c.etcdctl(*tls, "get", "secret", "--consistency=s", endpoints=[m]).split()
            assert got == ["secret", "s3cr3t"]
        # a client without a certificate signed by the CA is refused
        done = c.run_etcdctl(*_tls_flags(certs, client_cert=False), "get", "secret")
        assert done.returncode != 0
        # a plaintext client against the TLS port fails with a clear error
        done = c.run_etcdctl("--dial-timeout=2s", "get", "secret")
        assert done.returncode != 0 and done.stderr.strip()
        # with auth enabled, the certificate's common name ("root") is the user
        c.etcdctl(*tls, "user", "add", "root", "--new-user-password=root-pw-1")
        c.etcdctl(*tls, "role", "add", "root")
        c.etcdctl(*tls, "user", "grant-role", "root", "root")
        c.etcdctl(*tls, "auth", "enable")
        assert c.etcdctl(*tls, "get", "secret", "--print-value-only").strip() == "s3cr3t"
        assert "root" in c.etcdctl(*tls, "user", "list").split()
    finally:
        c.stop()


def test_https_without_certificate_files_is_one_clear_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cluster", "--name", "x", "--data-dir", str(tmp_path / "x"),
         "--listen-client-urls", "https://127.0.0.1:23790",
         "--advertise-client-urls", "https://127.0.0.1:23790",
         "--listen-peer-urls", "http://127.0.0.1:23800",
         "--initial-advertise-peer-urls", "http://127.0.0.1:23800",
         "--initial-cluster", "x=http://127.0.0.1:23800"],
        capture_output=True, text=True, timeout=30, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: client URL https://127.0.0.1:23790 is https but --cert-file and --key-file "
        "are not both set"
    ]
