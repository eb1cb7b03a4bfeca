"""Regenerate kubernetes-v1.33-defs.json: the Kubernetes 1.33 object schemas the examples use.

Not run by the tests (nothing is downloaded at test time); run it by hand when moving to a
newer Kubernetes. Input: the ``v1.33.0-local-strict/_definitions.json`` shipped inside the
PyPI package kubernetes-validate 1.37.0 (Apache-2.0), e.g.

    pip download --no-deps kubernetes-validate==1.37.0 -d /tmp/kv
    unzip -o /tmp/kv/kubernetes_validate-1.37.0-py3-none-any.whl -d /tmp/kv
    python docs/deploy/schema/vendor_kubernetes.py \
        /tmp/kv/kubernetes_validate/kubernetes-json-schema/v1.33.0-local-strict/_definitions.json

Keeps only the definitions reachable from ROOTS and drops descriptions (as KubeRay's CRDs
do), so the vendored file stays small; types, enums, required fields and the strict
``additionalProperties: false`` are kept as they are.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOTS = (
    "io.k8s.api.apps.v1.Deployment",
    "io.k8s.api.core.v1.Service",
    "io.k8s.api.core.v1.PodTemplateSpec",
    "io.k8s.api.core.v1.SecurityContext",
    "io.k8s.api.core.v1.ResourceRequirements",
)
PREFIX = "#/$defs/"
OUT = Path(__file__).with_name("kubernetes-v1.33-defs.json")


def _strip(node: Any, refs: set[str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                continue
            if key == "$ref" and isinstance(value, str):
                refs.add(value.removeprefix(PREFIX))
            out[key] = _strip(value, refs)
        return out
    if isinstance(node, list):
        return [_strip(v, refs) for v in node]
    return node


def main(source: str) -> None:
    defs = json.loads(Path(source).read_text())["$defs"]
    kept: dict[str, Any] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in kept:
            continue
        refs: set[str] = set()
        kept[name] = _strip(defs[name], refs)
        todo += sorted(refs - kept.keys())
    doc = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "kubernetes-v1.33-defs.json",
        "$comment": "Kubernetes v1.33.0 object schemas (strict), from kubernetes-validate "
        "1.37.0; descriptions removed. Regenerate with vendor_kubernetes.py.",
        "$defs": dict(sorted(kept.items())),
    }
    OUT.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    print(f"{OUT}: {len(kept)} definitions")


if __name__ == "__main__":
    main(sys.argv[1])
