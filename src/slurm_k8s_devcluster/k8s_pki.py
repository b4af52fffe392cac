"""Certificates and kubeconfigs of the local Kubernetes clusters (the openssl CLI does the work).

``ensure_cluster_pki`` makes a control plane's PKI once under its ``pki/`` (CA, the
apiserver's serving certificate, client certificates for admin, kwok, controller manager,
scheduler and the apiserver towards kubelets, the ServiceAccount key pair, the admin
token); ``sign_leaf`` signs one more certificate with that CA (real nodes use it for their
kubelet certificates). ``_kubeconfig_text`` writes self-contained kubeconfigs,
``_write_private`` files only root may read.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from slurm_k8s_devcluster.errors import KubeClusterError


def _run(cmd: Sequence[str], timeout: float = 30.0) -> None:
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                         check=False, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise KubeClusterError(f"{' '.join(cmd)} failed (rc={res.returncode}): "
                               f"{(res.stderr or res.stdout).strip()[-1500:]}")


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _kubeconfig_text(server: str, ca: Path, user: str, *, token: str | None = None,
                     cert: Path | None = None, key: Path | None = None,
                     namespace: str | None = None) -> str:
    """A self-contained kubeconfig (CA and client credentials embedded), as JSON (= YAML)."""
    user_entry: dict[str, str] = {}
    if token is not None:
        user_entry["token"] = token
    if cert is not None and key is not None:
        user_entry["client-certificate-data"] = _b64(cert)
        user_entry["client-key-data"] = _b64(key)
    context: dict[str, str] = {"cluster": "local", "user": user}
    if namespace:
        context["namespace"] = namespace
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {
            "server": server, "certificate-authority-data": _b64(ca)}}],
        "users": [{"name": user, "user": user_entry}],
        "contexts": [{"name": "local", "context": context}],
        "current-context": "local",
        "preferences": {},
    }
    return json.dumps(cfg, indent=2) + "\n"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def sign_leaf(pki_dir: Path, name: str, subject: str, ext: str, cnf: Path, *, ca_crt: Path,
              ca_key: Path, run: Callable[[list[str]], Any] = _run) -> None:
    """``pki_dir/<name>.key`` (a new P-256 key) and ``<name>.crt`` for ``subject``, signed
    by ``ca_crt``/``ca_key`` with the extensions of section ``ext`` of ``cnf``."""
    p = pki_dir
    run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout",
         "-out", str(p / f"{name}.key")])
    run(["openssl", "req", "-new", "-config", str(cnf), "-key", str(p / f"{name}.key"),
         "-subj", subject, "-out", str(p / f"{name}.csr")])
    run(["openssl", "x509", "-req", "-in", str(p / f"{name}.csr"), "-CA", str(ca_crt),
         "-CAkey", str(ca_key), "-set_serial", "0x" + secrets.token_hex(16),
         "-days", "825", "-sha256", "-extfile", str(cnf), "-extensions", ext,
         "-out", str(p / f"{name}.crt")])
    (p / f"{name}.csr").unlink(missing_ok=True)


def _cluster_openssl_cnf(pki_dir: Path, service_ip: str) -> Path:
    cnf = pki_dir / "openssl.cnf"
    cnf.write_text(
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n"
        "[v3_ca]\nbasicConstraints = critical,CA:TRUE\n"
        "keyUsage = critical,keyCertSign,cRLSign,digitalSignature\n"
        "subjectKeyIdentifier = hash\n"
        "[server]\nbasicConstraints = CA:FALSE\n"
        "keyUsage = critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectAltName = IP:127.0.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc,"
        "DNS:kubernetes.default.svc.cluster.local,IP:" + service_ip + "\n"
        "[client]\nbasicConstraints = CA:FALSE\n"
        "keyUsage = critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage = clientAuth\n")
    return cnf


def ensure_cluster_pki(pki_dir: Path, service_ip: str, token_auth: bool) -> str | None:
    """CA, apiserver serving cert, client certs, SA key pair (kept across restarts).
    Returns the admin bearer token (and writes ``tokens.csv``) with ``token_auth``."""
    p = pki_dir

    def leaf(name: str, subject: str, ext: str, cnf: Path) -> None:
        sign_leaf(p, name, subject, ext, cnf, ca_crt=p / "ca.crt", ca_key=p / "ca.key")

    stamp = p / ".complete"
    if not stamp.exists():
        if shutil.which("openssl") is None:
            raise KubeClusterError("the openssl CLI is needed (apt-get install openssl)")
        shutil.rmtree(p, ignore_errors=True)
        p.mkdir(parents=True)
        os.chmod(p, 0o700)
        cnf = _cluster_openssl_cnf(p, service_ip)
        _run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout",
              "-out", str(p / "ca.key")])
        _run(["openssl", "req", "-x509", "-new", "-config", str(cnf), "-key",
              str(p / "ca.key"), "-subj", "/CN=slurm-k8s-bridge-local-ca", "-days", "3650",
              "-sha256", "-extensions", "v3_ca", "-out", str(p / "ca.crt")])
        leaf("apiserver", "/CN=kube-apiserver", "server", cnf)
        leaf("admin", "/O=system:masters/CN=kubernetes-admin", "client", cnf)
        leaf("kwok", "/O=system:masters/CN=kwok-controller", "client", cnf)
        leaf("controller-manager", "/CN=system:kube-controller-manager", "client", cnf)
        leaf("scheduler", "/CN=system:kube-scheduler", "client", cnf)
        _run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
              "rsa_keygen_bits:2048", "-out", str(p / "sa.key")])
        _run(["openssl", "pkey", "-in", str(p / "sa.key"), "-pubout",
              "-out", str(p / "sa.pub")])
        _write_private(p / "admin.token", secrets.token_hex(24) + "\n")
        for key in p.glob("*.key"):
            os.chmod(key, 0o600)
        stamp.write_text("ok\n")
    if not (p / "apiserver-kubelet-client.crt").exists():
        # The apiserver's identity towards real kubelets (logs, exec); added after the
        # first PKI layout, so made on demand for clusters created before it.
        leaf("apiserver-kubelet-client",
             "/O=system:masters/CN=kube-apiserver-kubelet-client", "client",
             _cluster_openssl_cnf(p, service_ip))
        os.chmod(p / "apiserver-kubelet-client.key", 0o600)
    admin_token = (p / "admin.token").read_text().strip() if token_auth else None
    if token_auth:
        _write_private(p / "tokens.csv",
                       f"{admin_token},kubernetes-admin-token,admin-token-uid,"
                       f"system:masters\n")
    return admin_token
