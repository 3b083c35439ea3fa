"""The deployment files: generated from the roles registry, valid, and checked by CI.

``deploy/validate.sh`` is what CI runs; these tests run it on the repository
(it must pass) and on a copy with deliberately broken manifests (it must fail,
naming each one).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from workers.roles import ROLES, consumer_group

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VALIDATE = DEPLOY / "validate.sh"


def _docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _validate(*args: str) -> subprocess.CompletedProcess[str]:
    # First use installs the tools (minutes on a fresh machine); later runs take seconds.
    return subprocess.run(
        ["bash", str(VALIDATE), *args], capture_output=True, text=True, timeout=1500, check=False
    )


def test_generated_files_are_current_and_cover_every_role() -> None:
    from deploy.generate import outputs

    for path, text in outputs().items():
        assert path.read_text() == text, f"{path} is stale: run python deploy/generate.py"
    docs = _docs(DEPLOY / "k8s/base/roles.yaml")
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    pdbs = {d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget"}
    scaled = {d["metadata"]["name"]: d for d in _docs(DEPLOY / "k8s/base/scaledobjects.yaml")}
    hpas = {d["metadata"]["name"] for d in _docs(DEPLOY / "k8s/components/hpa/hpa.yaml")}
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    for role in ROLES.values():
        name = f"recstream-{role.name}"
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == ["worker", "--role", role.name]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RECSTREAM_WEB_BIND"] == "0.0.0.0"
        # Secrets only as mounted files.
        assert not any("secretKeyRef" in str(e) for e in container["env"])
        assert ("RECSTREAM_LLM_API_KEY_FILE" in env) == role.awaits_llm
        assert name in pdbs and name in hpas
        trigger = scaled[name]["spec"]["triggers"][0]["metadata"]
        assert trigger["consumerGroup"] == consumer_group("recstream", [role])
        assert trigger["topic"] == role.consumes
        assert services[f"worker-{role.name}"]["command"] == ["worker", "--role", role.name]
    assert len(deployments) == len(ROLES)
    assert {"kafka", "redis", "replay"} <= set(services)


def test_no_secret_values_in_manifests() -> None:
    for path in (DEPLOY / "k8s").rglob("*.yaml"):
        for doc in _docs(path):
            if not isinstance(doc, dict):  # a JSON-patch file is a list of operations
                continue
            assert doc.get("kind") != "Secret", f"{path}: a Secret in the manifests"
            assert not doc.get("secretGenerator"), f"{path}: secretGenerator puts values in git"


def test_dockerfile_targets_run_as_non_root_with_a_health_check() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    runtime = {s.split()[2]: s for s in stages if " AS " in s.split("\n")[0]}
    for target in ("cpu", "gpu"):
        stage = runtime[target]
        assert re.search(r"^USER 10001:10001$", stage, re.M), target
        assert "HEALTHCHECK" in stage and "/healthz" in stage, target
        assert 'ENTRYPOINT ["recstream"]' in stage, target
    assert "cudnn" in text.split("ARG CUDA_IMAGE=")[1].split()[0]


@pytest.mark.slow
def test_validation_passes_on_the_repository() -> None:
    result = _validate()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for line in (
        "generated files: up to date",
        "dev: kubeconform Summary",
        "prod: kubeconform Summary",
        "dev: checkov Passed",
        "prod: checkov Passed",
        "all deployment files valid",
    ):
        assert line in output, output
    assert "Invalid: 0, Errors: 0, Skipped: 0" in output
    print(output)  # the figures, for the CI log


@pytest.mark.slow
def test_validation_catches_broken_manifests(tmp_path: Path) -> None:
    k8s = tmp_path / "k8s"
    shutil.copytree(DEPLOY / "k8s", k8s)
    shutil.rmtree(k8s / "overlays")
    # 1. a schema error: a misspelt field (kubeconform, strict schemas).
    schema = k8s / "overlays" / "broken-schema"
    schema.mkdir(parents=True)
    (schema / "kustomization.yaml").write_text(
        "namespace: recstream-test\nresources: [../../base]\n"
        "patches:\n"
        "  - target: {kind: Deployment, name: recstream-requests}\n"
        "    patch: |-\n"
        "      - {op: add, path: /spec/template/spec/containers/0/livenesProbe, value: {}}\n"
    )
    # 2. a security error: a privileged container running as root (checkov).
    security = k8s / "overlays" / "broken-security"
    security.mkdir(parents=True)
    (security / "kustomization.yaml").write_text(
        "namespace: recstream-test\nresources: [../../base]\n"
        "patches:\n"
        "  - target: {kind: Deployment, name: recstream-chat}\n"
        "    patch: |-\n"
        "      - op: replace\n"
        "        path: /spec/template/spec/containers/0/securityContext\n"
        "        value: {privileged: true, runAsUser: 0, allowPrivilegeEscalation: true}\n"
    )
    # 3. a KEDA resource with a wrong type (CRD schema from KEDA's own module).
    crd = k8s / "overlays" / "broken-crd"
    crd.mkdir(parents=True)
    (crd / "kustomization.yaml").write_text(
        "namespace: recstream-test\nresources: [../../base]\n"
        "patches:\n"
        "  - target: {kind: ScaledObject, name: recstream-llm}\n"
        "    patch: |-\n"
        "      - {op: replace, path: /spec/maxReplicaCount, value: many}\n"
    )
    # 4. a compose file whose service depends on one that does not exist.
    compose = tmp_path / "compose.yaml"
    compose.write_text(
        (DEPLOY / "compose.yaml")
        .read_text()
        .replace("condition: service_completed_successfully", "condition: service_finished")
    )
    result = _validate("--k8s", str(k8s), "--compose", str(compose))
    output = result.stdout + result.stderr
    print(output[-6000:])
    assert result.returncode != 0
    failed = output.split("FAILED:")[-1]
    assert "broken-schema: kubeconform" in failed
    assert "livenesProbe" in output
    assert "broken-security: checkov" in failed
    assert "broken-crd: kubeconform" in failed
    assert "maxReplicaCount" in output
    assert "compose:" in failed
    # Each broken overlay is otherwise fine: only the injected fault is reported.
    assert "broken-security: kubeconform" not in failed
    assert "broken-schema: checkov" not in failed
