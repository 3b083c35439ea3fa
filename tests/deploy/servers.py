"""Real servers for the security tests, started on free loopback ports and stopped after.

- :class:`AclRedis`: a redis-server with ACL users only (the default user is off),
  optionally on TLS only.
- :class:`ScramKafka`: a single KRaft node from the jars that deploy/local/infra.sh
  caches, with a SASL_SSL listener (SCRAM-SHA-512 users formatted into its
  storage, ``--add-scram``) and a TLS certificate from a CA made for the test.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.streams.harness import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]

# What the worker needs and nothing else (docs/operations.md, "Redis ACL"):
# its own keys, reads, writes, scripts (state updates are Lua), transactions.
WORKER_ACL = (
    "~rs:* resetchannels -@all +@read +@write +@scripting +@connection +@transaction -@dangerous"
)


@dataclass
class AclRedis:
    port: int
    users: dict[str, str]  # name -> password
    process: subprocess.Popen[bytes]
    workdir: Path
    # With TLS: the CA of the server's certificate (and no plaintext port).
    ca: Path | None = None

    @classmethod
    def start(cls, workdir: Path, *, tls: bool = False) -> AclRedis:
        users = {"recstream": "w0rker-" + uuid.uuid4().hex, "reader": "r3ader-" + uuid.uuid4().hex}
        acl = workdir / "users.acl"
        acl.write_text(
            "user default off\n"
            f"user recstream on >{users['recstream']} {WORKER_ACL}\n"
            # A user that may connect and read, but not run the state scripts.
            f"user reader on >{users['reader']} ~* resetchannels -@all +@read +@connection\n"
        )
        port = free_port()
        ca: Path | None = None
        listen = ["--port", str(port)]
        if tls:
            ca, cert, key = make_tls(workdir)
            listen = [
                "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
                "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        process = subprocess.Popen(
            [
                "redis-server", *listen, "--bind", "127.0.0.1",
                "--dir", str(workdir), "--aclfile", str(acl), "--save", "",
                "--appendonly", "no", "--logfile", str(workdir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        server = cls(port, users, process, workdir, ca)
        server._wait()
        return server

    def _wait(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited: {(self.workdir / 'redis.log').read_text()}"
                )
            tls = ["--tls", "--cacert", str(self.ca)] if self.ca else []
            probe = subprocess.run(
                ["redis-cli", *tls, "-p", str(self.port), "ping"],
                check=False,
                capture_output=True,
                text=True,
            )
            if "NOAUTH" in probe.stdout + probe.stderr or "PONG" in probe.stdout:
                return
            time.sleep(0.1)
        raise RuntimeError("redis-server not up in 20 s")

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_tls(workdir: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost: (ca.pem, server.pem, key.pem)."""
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-subj", "/CN=recstream-test-ca", "-keyout", "ca.key", "-out", "ca.pem", cwd=workdir,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "server.key", "-out", "server.csr", cwd=workdir,
    )  # fmt: skip
    (workdir / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", "server.pem", cwd=workdir,
    )  # fmt: skip
    # Kafka's PEM key store wants a PKCS#8 key.
    _openssl("pkcs8", "-topk8", "-nocrypt", "-in", "server.key", "-out", "server.pk8", cwd=workdir)
    return workdir / "ca.pem", workdir / "server.pem", workdir / "server.pk8"


@dataclass
class ScramKafka:
    port: int
    username: str
    password: str
    ca: Path
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, workdir: Path) -> ScramKafka:
        subprocess.run(["bash", str(REPO_ROOT / "deploy/local/infra.sh"), "jars"], check=True)
        pom = (REPO_ROOT / "deploy/local/kafka-pom.xml").read_text()
        version = pom.split("<kafka.version>")[1].split("</kafka.version>")[0]
        cache = Path(
            os.environ.get("RECSTREAM_CACHE")
            or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recstream"
        )
        classpath = str(cache / f"kafka-{version}" / "libs" / "*")
        ca, cert, key = make_tls(workdir)
        (workdir / "keystore.pem").write_text(key.read_text() + cert.read_text())
        port, internal, controller = free_port(), free_port(), free_port()
        username, password = "recstream", "scram-" + uuid.uuid4().hex
        props = workdir / "server.properties"
        jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        props.write_text(
            f"""process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller}
listeners=SASL_SSL://127.0.0.1:{port},INTERNAL://127.0.0.1:{internal},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=SASL_SSL://127.0.0.1:{port},INTERNAL://127.0.0.1:{internal}
controller.listener.names=CONTROLLER
inter.broker.listener.name=INTERNAL
listener.security.protocol.map=SASL_SSL:SASL_SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}
ssl.keystore.type=PEM
ssl.keystore.location={workdir / "keystore.pem"}
ssl.truststore.type=PEM
ssl.truststore.location={ca}
log.dirs={workdir / "data"}
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
"""
        )
        log4j = workdir / "log4j2.properties"
        log4j.write_text(
            "status = warn\nappender.file.type = File\nappender.file.name = file\n"
            "appender.file.fileName = ${sys:kafka.log.file}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\nrootLogger.appenderRef.file.ref = file\n"
        )
        log = workdir / "kafka.log"
        java = ["java", f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.log.file={log}"]
        cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # KRaft has no ZooKeeper to add SCRAM users to later: they are formatted in.
        subprocess.run(
            [
                *java, "-cp", classpath, "kafka.tools.StorageTool", "format", "-t", cluster,
                "-c", str(props), "--standalone",
                "--add-scram", f"SCRAM-SHA-512=[name={username},password={password}]",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        with (workdir / "kafka.out").open("wb") as out:  # the child keeps its own descriptor
            process = subprocess.Popen(
                [*java, "-Xms128m", "-Xmx384m", "-cp", classpath, "kafka.Kafka", str(props)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        server = cls(port, username, password, ca, process, log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"kafka exited: {(workdir / 'kafka.out').read_text()[-3000:]}")
            if log.exists() and "Kafka Server started" in log.read_text(errors="replace"):
                return server
            time.sleep(0.3)
        server.stop()
        raise RuntimeError(f"kafka not up in 120 s: {log.read_text(errors='replace')[-3000:]}")

    def log_size(self) -> int:
        return self.log.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.log.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
