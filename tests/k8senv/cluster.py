"""Run etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok as local processes.

Why processes and not kind: CI has no container engine and can only reach package registries, so
`build.sh` compiles the upstream binaries and this module wires them together on 127.0.0.1 with
free ports picked at start-up (several clusters, e.g. a developer's and a test run's, can coexist).

What the cluster offers the tests:
- real validation, RBAC, watches, scale subresource, TokenRequest and the aggregation layer
  (front-proxy CA + requestheader flags; an extension server cert is generated for test servers);
- the real HPA controller with a short sync period and downscale stabilization;
- N fake GPU nodes (`nvidia.com/gpu`) managed by kwok, whose Pods turn Ready after a delay.

Library use: `LocalCluster(run_dir, ClusterConfig(...)).start()` returns a `ClusterInfo`;
`stop()` (also run by atexit and on SIGTERM/SIGHUP) kills every process group. CLI use:
`python -m tests.k8senv.cluster up|down|status` (see README.md next to this file).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"

# Where the CLI keeps its cluster when no --run-dir is given; pytest uses its own tmp dirs.
DEFAULT_RUN_DIR = Path(os.environ.get("TMPDIR", "/tmp")) / "pd-autoscaler-cluster"

# kwok manages only Nodes carrying this annotation, so a user's real nodes are never touched.
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
GPU_RESOURCE = "nvidia.com/gpu"
# Per-Pod override of the Ready delay, a Go duration string such as "20s".
POD_READY_DELAY_ANNOTATION = "pod-ready.stage.kwok.x-k8s.io/delay"
STATE_FILE = "cluster.json"


class ClusterError(RuntimeError):
    """The cluster could not be built, started or reached; the message names the log to read."""


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Knobs of a local cluster; durations in seconds."""

    gpu_nodes: int = 2
    gpus_per_node: int = 4
    # kwok marks a scheduled Pod Ready this long after it was bound (fixed, no jitter).
    pod_ready_delay_s: float = 2.0
    # The HPA defaults (15 s sync, 5 min downscale stabilization) would make HPA tests crawl.
    hpa_sync_period_s: float = 2.0
    hpa_downscale_stabilization_s: float = 5.0
    # Service the extension cert is issued for: the aggregator always verifies <svc>.<ns>.svc.
    ext_service: str = "ext-metrics"
    ext_namespace: str = "kube-system"
    # Must not be loopback (the `kubernetes` Endpoints write rejects it) and nothing dials it, so
    # an address from TEST-NET-1 is safe on isolated hosts without a default route.
    advertise_address: str = "192.0.2.10"
    startup_timeout_s: float = 120.0


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterInfo:
    """Everything a test needs to talk to the cluster; serialised to `cluster.json`."""

    run_dir: Path
    kubeconfig: Path
    api_url: str
    bin_dir: Path | None  # None for a user's cluster (KUBECONFIG mode) unless built anyway
    ca_cert: Path  # CA of the apiserver serving cert (and of the extension cert)
    ca_key: Path | None  # only when we own the PKI
    admin_cert: Path | None
    admin_key: Path | None
    front_proxy_ca: Path  # verifies the aggregator's client cert in extension servers
    front_proxy_client_cert: Path | None
    front_proxy_client_key: Path | None
    ext_cert: Path  # serving cert for extension API servers run by tests
    ext_key: Path
    ext_ca_cert: Path  # goes into APIService.spec.caBundle
    ext_service: str
    ext_namespace: str
    # Host name the aggregator dials for an ExternalName Service, and where test servers listen.
    ext_host: str
    ext_bind_host: str
    gpu_nodes: tuple[str, ...]
    gpus_per_node: int
    pod_ready_delay_s: float
    hpa_sync_period_s: float
    hpa_downscale_stabilization_s: float
    managed: bool  # True when this process (or `cluster up`) started the control plane
    # Our build's kubectl for a local cluster; in KUBECONFIG mode the one on PATH, if any.
    kubectl: Path | None = None
    pids: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def ext_service_dns(self) -> str:
        return f"{self.ext_service}.{self.ext_namespace}.svc"

    def to_json(self) -> str:
        raw = dataclasses.asdict(self)
        return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in raw.items()},
                          indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClusterInfo:
        raw: dict[str, Any] = json.loads(text)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in raw:  # written by an older version: keep the field's default
                continue
            value = raw[f.name]
            if value is not None and "Path" in str(f.type):
                value = Path(value)
            elif f.name == "gpu_nodes":
                value = tuple(value)
            kwargs[f.name] = value
        return cls(**kwargs)


# --- build ------------------------------------------------------------------------------------


def ensure_binaries(log_path: Path | None = None) -> Path:
    """Run build.sh (a no-op once its stamp exists) and return the bin directory.

    The cold build takes minutes, so its output goes to `log_path` rather than the terminal
    of a test run; on failure the tail of that log is in the exception.
    """
    cmd = ["bash", str(BUILD_SCRIPT)]
    if log_path is None:
        result = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, text=True)
        out = result.stdout
    else:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a") as log:
            result = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, stderr=log,
                                    text=True)
        out = result.stdout
    if result.returncode != 0:
        tail = _tail(log_path) if log_path else ""
        raise ClusterError(f"build.sh failed (exit {result.returncode}); log {log_path}\n{tail}")
    bin_dir = Path(out.strip().splitlines()[-1])
    missing = [b for b in _BINARIES if not (bin_dir / b).is_file()]
    if missing:
        raise ClusterError(f"build.sh reported {bin_dir} but {missing} are missing")
    return bin_dir


_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl",
             "kwok")


# --- PKI (openssl CLI: the venv has no `cryptography`, Debian always ships openssl) -----------

_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Pki:
    dir: Path

    def crt(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, check=False, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args)} failed: {result.stderr.strip()}")


def _ec_key(pki: Pki, name: str) -> None:
    # P-256 keys are generated instantly (RSA-2048 takes ~100 ms each); Go, OpenSSL and Python's
    # ssl module all accept them for TLS and the apiserver signs SA tokens with ES256.
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(pki.key(name)), cwd=pki.dir)


def _make_ca(pki: Pki, name: str, cn: str) -> None:
    _ec_key(pki, name)
    # Our own config, so the CA extensions do not depend on the distribution's openssl.cnf
    # (Go rejects CA certs without basicConstraints CA:TRUE).
    _openssl("req", "-x509", "-new", "-key", str(pki.key(name)), "-subj", f"/CN={cn}",
             "-days", "3650", "-sha256", "-config", "openssl.cnf", "-extensions", "v3_ca",
             "-out", str(pki.crt(name)), cwd=pki.dir)


def _make_leaf(pki: Pki, name: str, *, subject: str, ca: str, usage: str,
               sans: tuple[str, ...] = ()) -> None:
    _ec_key(pki, name)
    csr = pki.dir / f"{name}.csr"
    ext = pki.dir / f"{name}.ext"
    lines = ["basicConstraints = critical,CA:FALSE", "keyUsage = critical,digitalSignature",
             f"extendedKeyUsage = {usage}", "authorityKeyIdentifier = keyid",
             "subjectKeyIdentifier = hash"]
    if sans:
        lines.append("subjectAltName = " + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    _openssl("req", "-new", "-key", str(pki.key(name)), "-subj", subject, "-config",
             "openssl.cnf", "-out", str(csr), cwd=pki.dir)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(pki.crt(ca)), "-CAkey", str(pki.key(ca)),
             "-set_serial", str(secrets.randbits(63)), "-days", "3650", "-sha256",
             "-extfile", str(ext), "-out", str(pki.crt(name)), cwd=pki.dir)


def ext_sans(service: str, namespace: str, host: str) -> tuple[str, ...]:
    """SANs of the extension server cert.

    The aggregator sets ServerName to <svc>.<ns>.svc whatever the Service type, so that name
    is the one verified; the wildcard lets tests register further Services in the same
    namespace, and localhost/127.0.0.1 let tests call their server directly.
    """
    sans = [f"DNS:{service}.{namespace}.svc", f"DNS:*.{namespace}.svc", "DNS:localhost",
            "IP:127.0.0.1", "IP:::1"]
    if host not in ("localhost", "127.0.0.1"):
        sans.append(f"IP:{host}" if _is_ip(host) else f"DNS:{host}")
    return tuple(sans)


def make_ext_pki(pki: Pki, *, service: str, namespace: str, host: str) -> None:
    """Only what an extension API server needs: a CA and its serving cert (KUBECONFIG mode)."""
    pki.dir.mkdir(parents=True, exist_ok=True)
    (pki.dir / "openssl.cnf").write_text(_OPENSSL_CNF)
    _make_ca(pki, "ext-ca", "pd-e2e-extension-ca")
    _make_leaf(pki, "ext-server", subject=f"/CN={service}", ca="ext-ca", usage="serverAuth",
               sans=ext_sans(service, namespace, host))


def make_mtls_pki(cert_dir: Path, *, sans: tuple[str, ...] = ("DNS:localhost",
                                                              "IP:127.0.0.1")) -> Path:
    """A CA and one cert for both ends of an mTLS link (serverAuth and clientAuth), in the
    layout KEDA's operator and adapter read from `--cert-dir`: ca.crt, tls.crt, tls.key."""
    pki = Pki(cert_dir)
    cert_dir.mkdir(parents=True, exist_ok=True)
    (cert_dir / "openssl.cnf").write_text(_OPENSSL_CNF)
    _make_ca(pki, "ca", "pd-e2e-mtls-ca")
    _make_leaf(pki, "tls", subject="/CN=pd-e2e-mtls", ca="ca", usage="serverAuth,clientAuth",
               sans=sans)
    return cert_dir


def make_pki(pki: Pki, cfg: ClusterConfig, host: str) -> None:
    """All certificates and keys of a local cluster (file names as in kubeadm where it has one)."""
    pki.dir.mkdir(parents=True, exist_ok=True)
    (pki.dir / "openssl.cnf").write_text(_OPENSSL_CNF)
    _make_ca(pki, "ca", "pd-e2e-kube-ca")
    _make_ca(pki, "front-proxy-ca", "pd-e2e-front-proxy-ca")
    _make_leaf(pki, "apiserver", subject="/CN=kube-apiserver", ca="ca", usage="serverAuth",
               sans=("DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
                     "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local",
                     "IP:127.0.0.1", "IP:10.96.0.1", f"IP:{cfg.advertise_address}"))
    # O=system:masters: bootstrap RBAC binds it to cluster-admin.
    _make_leaf(pki, "admin", subject="/O=system:masters/CN=pd-e2e-admin", ca="ca",
               usage="clientAuth")
    # CN must match --requestheader-allowed-names.
    _make_leaf(pki, "front-proxy-client", subject="/CN=front-proxy-client",
               ca="front-proxy-ca", usage="clientAuth")
    _make_leaf(pki, "ext-server", subject=f"/CN={cfg.ext_service}", ca="ca",
               usage="serverAuth", sans=ext_sans(cfg.ext_service, cfg.ext_namespace, host))
    _ec_key(pki, "sa")
    _openssl("pkey", "-in", str(pki.key("sa")), "-pubout", "-out", str(pki.dir / "sa.pub"),
             cwd=pki.dir)


def write_kubeconfig(path: Path, *, server: str, ca: Path, cert: Path, key: Path) -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "pd-e2e", "cluster": {"server": server,
                                                    "certificate-authority": str(ca)}}],
        "users": [{"name": "admin", "user": {"client-certificate": str(cert),
                                             "client-key": str(key)}}],
        "contexts": [{"name": "pd-e2e", "context": {"cluster": "pd-e2e", "user": "admin"}}],
        "current-context": "pd-e2e",
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


# --- small synchronous REST client ------------------------------------------------------------
# The start-up path must work without an event loop (session fixtures, the CLI), and it only
# needs a handful of JSON calls, so plain urllib with the admin client cert is enough.


class Rest:
    def __init__(self, base: str, *, ca: Path, cert: Path | None, key: Path | None) -> None:
        self.base = base.rstrip("/")
        self.ctx = ssl.create_default_context(cafile=str(ca))
        if cert and key:
            self.ctx.load_cert_chain(str(cert), str(key))

    def call(self, method: str, path: str, body: object | None = None,
             *, timeout: float = 10.0) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,  # noqa: S310
                                     headers={"Content-Type": "application/json",
                                              "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=timeout) as resp:  # noqa: S310
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")


# --- processes --------------------------------------------------------------------------------


def free_port() -> int:
    """A port that was free a moment ago; components bind it within a second, so races are rare
    and a bind failure shows in that component's log."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the test process is SIGKILLed (no atexit, no
    # signal handler), the kernel still SIGKILLs the components, so nothing outlives a test run.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it no longer runs anything.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _pid_runs(pid: int, exe: str) -> bool:
    """True if `pid` still runs our binary (pids are reused, so never kill on the pid alone)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    return _pid_alive(pid) and cmdline == exe


# Stop order: clients first, then the apiserver while etcd still answers (with etcd gone its
# graceful termination hangs), then etcd. Each step takes ~0.1-1 s; SIGKILL after the grace.
_STOP_ORDER = (("kwok", "kube-scheduler", "kube-controller-manager"), ("kube-apiserver",),
               ("etcd",))


def kill_groups(pids: dict[str, int], exes: dict[str, str], *, grace_s: float = 5.0) -> None:
    """SIGTERM each component's process group in `_STOP_ORDER`, SIGKILL stragglers."""
    targets = {name: pid for name, pid in pids.items() if _pid_runs(pid, exes.get(name, ""))}
    known = {n for step in _STOP_ORDER for n in step}
    steps = [*_STOP_ORDER, tuple(n for n in targets if n not in known)]
    for step in steps:
        group = [targets[n] for n in step if n in targets]
        for pid in group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_pid_alive(p) for p in group):
            time.sleep(0.05)
        for pid in group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


_ACTIVE: set[LocalCluster] = set()
_ACTIVE_LOCK = threading.Lock()
_HANDLERS_INSTALLED = False


def _stop_all() -> None:
    with _ACTIVE_LOCK:
        clusters = list(_ACTIVE)
    for c in clusters:
        c.stop()


def _install_cleanup_handlers() -> None:
    """atexit covers normal exit and KeyboardInterrupt; SIGTERM/SIGHUP would otherwise end the
    interpreter without running atexit, so they stop the clusters first and then behave as
    before (previous handler, or the default action)."""
    global _HANDLERS_INSTALLED  # noqa: PLW0603 - process-wide, installed once
    if _HANDLERS_INSTALLED:
        return
    _HANDLERS_INSTALLED = True
    atexit.register(_stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: FrameType | None,
                    previous: Callable[[int, FrameType | None], Any] | int | None = previous
                    ) -> None:
            _stop_all()
            if callable(previous):
                previous(signum, frame)
                return
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

        signal.signal(sig, handler)


class LocalCluster:
    """One control plane under `run_dir`: pki/, logs/<component>.log, admin.kubeconfig, etcd data.

    `detach=True` (the CLI's `up`) lets the processes outlive this Python process; `stop_run_dir`
    then stops them from another process using `cluster.json`.
    """

    def __init__(self, run_dir: Path, cfg: ClusterConfig | None = None, *,
                 bin_dir: Path | None = None, detach: bool = False) -> None:
        self.run_dir = run_dir.resolve()
        self.cfg = cfg or ClusterConfig()
        self.bin_dir = bin_dir
        self.detach = detach
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.info: ClusterInfo | None = None

    def __enter__(self) -> ClusterInfo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> ClusterInfo:
        t0 = time.monotonic()
        if self.bin_dir is None:
            self.bin_dir = ensure_binaries(self.run_dir.parent / "build.log")
        if self.run_dir.exists():
            stop_run_dir(self.run_dir)  # a previous `up` in the same dir must not keep ports
            shutil.rmtree(self.run_dir)
        (self.run_dir / "logs").mkdir(parents=True)
        if not self.detach:
            with _ACTIVE_LOCK:
                _ACTIVE.add(self)
            _install_cleanup_handlers()
        try:
            self.info = self._start()
        except BaseException:
            self.stop()
            raise
        (self.run_dir / STATE_FILE).write_text(self.info.to_json())
        (self.run_dir / "startup_seconds").write_text(f"{time.monotonic() - t0:.1f}\n")
        return self.info

    def _spawn(self, name: str, args: list[str]) -> None:
        assert self.bin_dir is not None
        log = self.run_dir / "logs" / f"{name}.log"
        self.logs[name] = log
        with log.open("ab") as out:
            self.procs[name] = subprocess.Popen(
                [str(self.bin_dir / name), *args], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=self.run_dir, start_new_session=True,
                preexec_fn=None if self.detach else _die_with_parent)  # noqa: PLW1509

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ClusterError(f"{name} exited with {proc.returncode}; log {self.logs[name]}:"
                                   f"\n{_tail(self.logs[name])}")

    def _wait(self, what: str, probe: Callable[[], bool], deadline: float) -> None:
        while True:
            self._check_alive()
            with contextlib.suppress(OSError, ssl.SSLError, ValueError):
                if probe():
                    return
            if time.monotonic() > deadline:
                logs = ", ".join(str(p) for p in self.logs.values())
                raise ClusterError(f"timed out waiting for {what}; logs: {logs}")
            time.sleep(0.2)

    def _start(self) -> ClusterInfo:
        cfg, run = self.cfg, self.run_dir
        assert self.bin_dir is not None
        deadline = time.monotonic() + cfg.startup_timeout_s
        pki = Pki(run / "pki")
        make_pki(pki, cfg, "localhost")
        etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
        kcm_port, sched_port = free_port(), free_port()
        api_url = f"https://127.0.0.1:{api_port}"
        kubeconfig = run / "admin.kubeconfig"
        write_kubeconfig(kubeconfig, server=api_url, ca=pki.crt("ca"), cert=pki.crt("admin"),
                         key=pki.key("admin"))
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{etcd_peer}"

        self._spawn("etcd", [
            "--name=pd-e2e", f"--data-dir={run / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=pd-e2e={peer_url}",
            # Test data is disposable: skipping fsync makes etcd (and thus every write) fast.
            "--unsafe-no-fsync", "--quota-backend-bytes=2147483648", "--log-level=warn",
        ])

        def etcd_healthy() -> bool:
            with urllib.request.urlopen(etcd_url + "/health", timeout=2) as r:  # noqa: S310
                return bool(json.loads(r.read()).get("health") == "true")

        self._wait("etcd /health", etcd_healthy, deadline)

        self._spawn("kube-apiserver", [
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", f"--secure-port={api_port}",
            f"--advertise-address={cfg.advertise_address}",
            f"--tls-cert-file={pki.crt('apiserver')}",
            f"--tls-private-key-file={pki.key('apiserver')}",
            f"--client-ca-file={pki.crt('ca')}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={run / 'pki' / 'sa.pub'}",
            f"--service-account-signing-key-file={pki.key('sa')}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            # Aggregation layer: the apiserver proxies to extension servers with the
            # front-proxy client cert and passes the user in X-Remote-* headers.
            f"--requestheader-client-ca-file={pki.crt('front-proxy-ca')}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.crt('front-proxy-client')}",
            f"--proxy-client-key-file={pki.key('front-proxy-client')}",
            f"--cert-dir={run / 'apiserver-certs'}",
            "--profiling=false", "--v=1",
        ])
        rest = Rest(api_url, ca=pki.crt("ca"), cert=pki.crt("admin"), key=pki.key("admin"))
        self._wait("kube-apiserver /readyz", lambda: rest.call("GET", "/readyz")[0] == 200,
                   deadline)

        hpa_sync = f"{cfg.hpa_sync_period_s:g}s"
        hpa_down = f"{cfg.hpa_downscale_stabilization_s:g}s"
        common = [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                  f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false",
                  "--bind-address=127.0.0.1", "--kube-api-qps=100", "--kube-api-burst=200",
                  "--v=1"]
        self._spawn("kube-controller-manager", [
            *common, f"--secure-port={kcm_port}", "--controllers=*",
            # The serviceaccount controller must run: admission rejects Pods until the
            # namespace's `default` ServiceAccount exists.
            f"--service-account-private-key-file={pki.key('sa')}",
            f"--root-ca-file={pki.crt('ca')}", "--use-service-account-credentials=false",
            f"--horizontal-pod-autoscaler-sync-period={hpa_sync}",
            f"--horizontal-pod-autoscaler-downscale-stabilization={hpa_down}",
        ])
        self._spawn("kube-scheduler", [*common, f"--secure-port={sched_port}"])
        kwok_cfg = run / "kwok.yaml"
        kwok_cfg.write_text(kwok_stages(self.bin_dir.parent / "stages", cfg.pod_ready_delay_s))
        key, value = KWOK_NODE_ANNOTATION
        self._spawn("kwok", [
            f"--kubeconfig={kubeconfig}", f"--config={kwok_cfg}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={key}={value}",
            "--cidr=10.244.0.0/16", "--node-ip=10.0.0.1", "--node-lease-duration-seconds=40",
        ])

        nodes = tuple(f"gpu-node-{i}" for i in range(cfg.gpu_nodes))
        for name in nodes:
            status, body = rest.call("POST", "/api/v1/nodes", gpu_node(name, cfg.gpus_per_node))
            if status not in (201, 409):
                raise ClusterError(f"creating node {name}: {status} {body}")

        for name, port in (("kube-controller-manager", kcm_port),
                           ("kube-scheduler", sched_port)):
            self._wait(f"{name} /healthz", _healthz_probe(port), deadline)
        self._wait("ServiceAccount default/default",
                   lambda: rest.call("GET", "/api/v1/namespaces/default/serviceaccounts/default"
                                     )[0] == 200, deadline)
        self._wait("GPU nodes Ready", lambda: _nodes_ready(rest, nodes), deadline)

        return ClusterInfo(
            run_dir=run, kubeconfig=kubeconfig, api_url=api_url, bin_dir=self.bin_dir,
            ca_cert=pki.crt("ca"), ca_key=pki.key("ca"),
            admin_cert=pki.crt("admin"), admin_key=pki.key("admin"),
            front_proxy_ca=pki.crt("front-proxy-ca"),
            front_proxy_client_cert=pki.crt("front-proxy-client"),
            front_proxy_client_key=pki.key("front-proxy-client"),
            ext_cert=pki.crt("ext-server"), ext_key=pki.key("ext-server"),
            ext_ca_cert=pki.crt("ca"), ext_service=cfg.ext_service,
            ext_namespace=cfg.ext_namespace, ext_host="localhost", ext_bind_host="127.0.0.1",
            gpu_nodes=nodes, gpus_per_node=cfg.gpus_per_node,
            pod_ready_delay_s=cfg.pod_ready_delay_s, hpa_sync_period_s=cfg.hpa_sync_period_s,
            hpa_downscale_stabilization_s=cfg.hpa_downscale_stabilization_s, managed=True,
            kubectl=self.bin_dir / "kubectl", pids={name: p.pid for name, p in self.procs.items()},
        )

    # -- stop ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Kill every component's process group; idempotent, safe from atexit/signal handlers."""
        with _ACTIVE_LOCK:
            _ACTIVE.discard(self)
        procs, self.procs = self.procs, {}
        if not procs:
            return
        assert self.bin_dir is not None
        kill_groups({n: p.pid for n, p in procs.items()},
                    {n: str(self.bin_dir / n) for n in procs})
        for p in procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)  # reap, so no zombies linger in long test sessions


def _healthz_probe(port: int) -> Callable[[], bool]:
    # kcm and the scheduler serve /healthz with a self-signed cert, and /healthz is on their
    # default always-allow list, so an unauthenticated, unverified probe is the right check.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def probe() -> bool:
        url = f"https://127.0.0.1:{port}/healthz"
        with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
            return bool(r.status == 200)

    return probe


def _nodes_ready(rest: Rest, names: tuple[str, ...]) -> bool:
    status, body = rest.call("GET", "/api/v1/nodes")
    if status != 200:
        return False
    ready = {
        n["metadata"]["name"]
        for n in body["items"]
        for c in n.get("status", {}).get("conditions") or []
        if c["type"] == "Ready" and c["status"] == "True"
    }
    return set(names) <= ready


def gpu_node(name: str, gpus: int) -> dict[str, Any]:
    """A fake node: kwok keeps the status we create it with and adds conditions/heartbeats."""
    key, value = KWOK_NODE_ANNOTATION
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110", GPU_RESOURCE: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {key: value},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name,
                       "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                       "nvidia.com/gpu.present": "true"},
        },
        # No taint: test Pods then need no toleration, and kwok nodes are the only nodes.
        "spec": {},
        "status": {"allocatable": dict(resources), "capacity": dict(resources)},
    }


def kwok_stages(stage_dir: Path, pod_ready_delay_s: float) -> str:
    """kwok's own "fast" stages, with a fixed delay before a Pod turns Ready.

    kwok picks `duration + rand(jitter - duration)`, or exactly `jitter` when jitter <= duration,
    so equal values give a fixed delay; the per-Pod annotation overrides both for the same reason.
    """
    files = ["node/fast/node-initialize.yaml",
             "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
             "pod/fast/pod-ready.yaml", "pod/fast/pod-complete.yaml", "pod/fast/pod-delete.yaml"]
    docs = []
    ms = int(pod_ready_delay_s * 1000)
    expr = {"expressionFrom": f'.metadata.annotations["{POD_READY_DELAY_ANNOTATION}"]'}
    for rel in files:
        doc = yaml.safe_load((stage_dir / rel).read_text())
        if doc["metadata"]["name"] == "pod-ready" and ms > 0:
            doc["spec"]["delay"] = {"durationMilliseconds": ms, "durationFrom": expr,
                                    "jitterDurationMilliseconds": ms,
                                    "jitterDurationFrom": expr}
        docs.append(doc)
    return yaml.safe_dump_all(docs, sort_keys=False)


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def stop_run_dir(run_dir: Path) -> bool:
    """Stop a cluster started (possibly by another process) in `run_dir`; False if none ran."""
    state = run_dir / STATE_FILE
    if not state.exists():
        return False
    info = ClusterInfo.from_json(state.read_text())
    if not info.bin_dir or not info.pids:
        return False
    exes = {name: str(info.bin_dir / name) for name in info.pids}
    running = any(_pid_runs(pid, exes[name]) for name, pid in info.pids.items())
    kill_groups(info.pids, exes)
    state.unlink()
    return running


def load_running(run_dir: Path) -> ClusterInfo | None:
    """The cluster in `run_dir` if all its processes still run."""
    state = run_dir / STATE_FILE
    if not state.exists():
        return None
    info = ClusterInfo.from_json(state.read_text())
    if info.bin_dir is None:
        return None
    alive = all(_pid_runs(pid, str(info.bin_dir / n)) for n, pid in info.pids.items())
    return info if alive else None


# --- CLI ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.k8senv.cluster",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("command", choices=["up", "down", "status", "build", "run"],
                        help="up: start in the background and print `export KUBECONFIG=...`; "
                             "run: start in the foreground until Ctrl-C; down: stop; "
                             "status: print cluster.json; build: only build the binaries")
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    defaults = ClusterConfig()
    parser.add_argument("--gpu-nodes", type=int, default=defaults.gpu_nodes)
    parser.add_argument("--gpus-per-node", type=int, default=defaults.gpus_per_node)
    parser.add_argument("--pod-ready-delay", type=float, default=defaults.pod_ready_delay_s,
                        metavar="SECONDS")
    parser.add_argument("--hpa-sync-period", type=float, default=defaults.hpa_sync_period_s,
                        metavar="SECONDS")
    args = parser.parse_args(argv)
    run_dir: Path = args.run_dir.resolve()

    if args.command == "build":
        print(ensure_binaries())
        return 0
    if args.command == "down":
        print("stopped" if stop_run_dir(run_dir) else "no cluster was running", file=sys.stderr)
        return 0
    if args.command == "status":
        info = load_running(run_dir)
        if info is None:
            print(f"no cluster running in {run_dir}", file=sys.stderr)
            return 1
        print(info.to_json())
        return 0

    existing = load_running(run_dir) if args.command == "up" else None
    if existing is not None:
        print(f"# already running in {run_dir}", file=sys.stderr)
        print(f"export KUBECONFIG={existing.kubeconfig}")
        return 0
    cfg = ClusterConfig(gpu_nodes=args.gpu_nodes, gpus_per_node=args.gpus_per_node,
                        pod_ready_delay_s=args.pod_ready_delay,
                        hpa_sync_period_s=args.hpa_sync_period)
    print("# building binaries (minutes on first run, log: "
          f"{run_dir.parent / 'build.log'})", file=sys.stderr)
    bin_dir = ensure_binaries(run_dir.parent / "build.log")
    t0 = time.monotonic()
    cluster = LocalCluster(run_dir, cfg, bin_dir=bin_dir, detach=args.command == "up")
    info = cluster.start()
    print(f"# cluster up in {time.monotonic() - t0:.1f}s; logs in {run_dir / 'logs'}; "
          f"kubectl: {info.kubectl}", file=sys.stderr)
    print(f"export KUBECONFIG={info.kubeconfig}", flush=True)
    if args.command == "up":
        return 0
    with contextlib.suppress(KeyboardInterrupt):
        signal.pause()
    cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
