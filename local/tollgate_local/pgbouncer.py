"""PgBouncer in transaction mode: the local stand-in for RDS Proxy.

It pools like RDS Proxy does (a server connection per transaction, no prepared statements kept), so whatever
relies on session state or splits one statement's protocol messages across syncs breaks here as it would there.
The binary comes from the distribution's own package, unpacked into `.tools/pgbouncer` (no system service is
installed or started); `python -m tollgate_local.pgbouncer ensure` finds or unpacks it and says why when it cannot.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tollgate_local import PROJECT_ROOT

PACKAGE = "pgbouncer"
LOCAL_ROOT = PROJECT_ROOT / ".tools" / "pgbouncer"
# Protocol-level prepared statements are off (the default, and all 1.18 can do): RDS Proxy pins on them.
PREPARED_STATEMENTS_SETTING = (1, 21)
START_TIMEOUT_SECONDS = 10.0


class PgBouncerUnavailable(RuntimeError):
    """PgBouncer is neither installed nor installable here; the message says why."""


def _local_binary(root: Path) -> Path:
    return root / "usr" / "sbin" / "pgbouncer"


def find_binary(root: Path = LOCAL_ROOT) -> Path | None:
    """An unpacked or installed pgbouncer, `PGBOUNCER` first."""
    candidates = [os.environ.get("PGBOUNCER"), str(_local_binary(root)), shutil.which(PACKAGE), "/usr/sbin/pgbouncer"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def _library_env(binary: Path) -> dict[str, str]:
    # Libraries unpacked beside the binary (c-ares is rarely installed) come before the system's.
    env = dict(os.environ)
    lib_dirs = [str(d) for d in (binary.parents[2] / "usr" / "lib").glob("*-linux-gnu") if d.is_dir()]
    lib_dirs += [str(binary.parents[2] / "usr" / "lib")]
    if env.get("LD_LIBRARY_PATH"):
        lib_dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(lib_dirs)
    return env


def _run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)


def _missing_library_packages() -> list[str]:
    """pgbouncer's library dependencies that are not installed (dpkg -x unpacks them beside it)."""
    depends = _run(["apt-cache", "depends", "--important", PACKAGE])
    names = re.findall(r"^\s*\|?Depends: (lib[\w.+-]+)$", depends.stdout, flags=re.MULTILINE)
    missing = []
    for name in dict.fromkeys(names):
        status = _run(["dpkg-query", "-W", "-f=${Status}", name])
        if "install ok installed" not in status.stdout:
            missing.append(name)
    return missing


def install(root: Path = LOCAL_ROOT) -> Path:
    """Download the distribution's pgbouncer (and missing libraries) and unpack them into `root`."""
    if not (shutil.which("apt-get") and shutil.which("dpkg")):
        raise PgBouncerUnavailable("no apt-get/dpkg on this machine to fetch Debian's pgbouncer package")
    if _run(["apt-cache", "show", PACKAGE]).returncode != 0:
        if os.geteuid() != 0:
            raise PgBouncerUnavailable("the apt package lists do not know pgbouncer and `apt-get update` needs root")
        updated = _run(["apt-get", "update"])
        if updated.returncode != 0:
            raise PgBouncerUnavailable(f"apt-get update failed: {updated.stderr.strip()[-300:]}")
    with tempfile.TemporaryDirectory(prefix="tollgate-pgbouncer-deb-") as tmp:
        # World-writable so apt's own download user may write there (it drops root when it can).
        Path(tmp).chmod(0o777)
        packages = [PACKAGE, *_missing_library_packages()]
        fetched = _run(["apt-get", "download", *packages], cwd=Path(tmp))
        debs = sorted(Path(tmp).glob("*.deb"))
        if fetched.returncode != 0 or not debs:
            raise PgBouncerUnavailable(f"apt-get download {' '.join(packages)} failed: {fetched.stderr.strip()[-300:]}")
        staging = Path(tempfile.mkdtemp(prefix=".pgbouncer-", dir=root.parent if root.parent.exists() else None))
        staging.chmod(0o755)  # mkdtemp makes it private; the unprivileged user PgBouncer runs as must enter it
        for deb in debs:
            unpacked = _run(["dpkg", "-x", str(deb), str(staging)])
            if unpacked.returncode != 0:
                shutil.rmtree(staging, ignore_errors=True)
                raise PgBouncerUnavailable(f"dpkg -x {deb.name} failed: {unpacked.stderr.strip()}")
    # Swapped in whole, so a half-unpacked folder is never taken for an installation.
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(root)
    return _local_binary(root)


def version(binary: Path) -> tuple[int, int]:
    out = subprocess.run([str(binary), "--version"], env=_library_env(binary), capture_output=True, text=True)
    if out.returncode != 0:
        raise PgBouncerUnavailable(f"{binary} does not run: {(out.stderr or out.stdout).strip()[-300:]}")
    found = re.search(r"PgBouncer (\d+)\.(\d+)", out.stdout)
    if not found:
        raise PgBouncerUnavailable(f"{binary} --version printed no PgBouncer version: {out.stdout.strip()}")
    return int(found.group(1)), int(found.group(2))


def ensure(root: Path = LOCAL_ROOT) -> Path:
    """A working pgbouncer binary, unpacked on first use; PgBouncerUnavailable with the reason otherwise."""
    binary = find_binary(root) or install(root)
    version(binary)  # it runs, with the libraries unpacked beside it
    return binary


def self_signed_certificate(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> tuple[Path, Path]:
    """A throwaway certificate and key for `hosts` (the client trusts the certificate itself)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.crt", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Backend:
    """Where PgBouncer's database alias leads: a PostgreSQL socket folder (or host), port, database and user."""

    host: str
    port: int
    database: str
    user: str


@dataclass
class PgBouncer:
    """One PgBouncer process in `folder`, listening on 127.0.0.1:`port` (TLS offered, transaction pooling)."""

    binary: Path
    folder: Path
    databases: dict[str, Backend]
    port: int = 0
    host: str = "127.0.0.1"
    pool_size: int = 20
    run_as: str | None = None  # PgBouncer refuses to run as root
    cert_file: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_file(self) -> Path:
        return self.folder / "pgbouncer.log"

    def config_text(self) -> str:
        lines = ["[databases]"]
        for alias, backend in self.databases.items():
            lines.append(
                f"{alias} = host={backend.host} port={backend.port} dbname={backend.database} user={backend.user}"
            )
        cert, key = self.folder / "server.crt", self.folder / "server.key"
        lines += [
            "[pgbouncer]",
            f"listen_addr = {self.host}",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            # Any password is accepted and the alias's user logs in: the client's IAM token is not checkable here.
            "auth_type = any",
            "pool_mode = transaction",
            f"default_pool_size = {self.pool_size}",
            "max_client_conn = 500",
            # TLS when the client asks for it (the engine's IAM mode does); plain for direct test helpers.
            "client_tls_sslmode = allow",
            f"client_tls_cert_file = {cert}",
            f"client_tls_key_file = {key}",
            # The server sees which pooled client a statement came from (and that it came through the pooler).
            "application_name_add_host = 1",
            f"logfile = {self.log_file}",
            f"pidfile = {self.folder / 'pgbouncer.pid'}",
            "admin_users = pgbouncer",
        ]
        if version(self.binary) >= PREPARED_STATEMENTS_SETTING:
            lines.append("max_prepared_statements = 0")
        return "\n".join(lines) + "\n"

    def start(self) -> PgBouncer:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        self.cert_file, _ = self_signed_certificate(self.folder)
        config = self.folder / "pgbouncer.ini"
        config.write_text(self.config_text(), encoding="utf-8")
        args = [str(self.binary)]
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam(self.run_as or "nobody")
            for path in [self.folder, *self.folder.iterdir()]:
                os.chown(path, user.pw_uid, user.pw_gid)
            args += ["-u", user.pw_name]
        args.append(str(config))
        self.process = subprocess.Popen(
            args, env=_library_env(self.binary), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PgBouncerUnavailable(f"pgbouncer exited at start ({self.process.returncode}):\n{self.log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise PgBouncerUnavailable(f"pgbouncer did not listen on {self.host}:{self.port}:\n{self.log()}")

    def log(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace") if self.log_file.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tollgate_local.pgbouncer")
    parser.add_argument("command", choices=["ensure"], help="find or unpack pgbouncer; print its path")
    parser.parse_args(argv)
    try:
        binary = ensure()
    except PgBouncerUnavailable as exc:
        print(f"pgbouncer unavailable: {exc}", file=sys.stderr)
        return 1
    print(binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
