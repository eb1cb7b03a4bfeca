"""The cluster examples in docs/deploy/ stay valid: the Ray cluster launcher YAML passes Ray's
own config validation, the KubeRay manifest passes KubeRay's RayCluster schema and
Kubernetes' own (vendored under docs/deploy/schema/), and both keep what docs/deploy/README.md
promises about the sandbox. Each validator is also shown rejecting a broken copy, so a check
that silently accepts everything would fail here. Nothing is started or downloaded."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DEPLOY = Path(__file__).resolve().parents[2] / "docs" / "deploy"
SCHEMA = DEPLOY / "schema"
K8S_DEFS = "kubernetes-v1.33-defs.json"
LAUNCHER_PORT = "6380"  # never Ray's default 6379, Redis's port (DESIGN.md)


# -- the Ray cluster launcher YAML ------------------------------------------------------------


def launcher() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def ray_validate(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does to a config before it talks to the cloud: merge the provider's
    defaults, then validate against ray-schema.json and Ray's own cross-field rules."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_launcher_yaml_passes_rays_validation() -> None:
    prepared = ray_validate(launcher())
    types = prepared["available_node_types"]
    assert set(types) == {"head", "cpu-worker", "gpu-worker"}
    assert prepared["provider"]["type"] == "aws"
    assert types["gpu-worker"]["resources"]["GPU"] >= 1
    # Every node type says what it offers, so the autoscaler (and gureum's "can never run"
    # check) know it without asking AWS.
    assert all(t["resources"] for t in types.values())


def test_launcher_head_runs_no_work_and_the_api_stays_on_loopback() -> None:
    config = launcher()
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0, "GPU": 0}
    head = " ".join(config["head_start_ray_commands"])
    assert "--num-cpus=0" in head and "--num-gpus=0" in head
    up = [c for c in config["head_start_ray_commands"] if "gureum up" in c]
    assert len(up) == 1
    assert "--host" not in up[0]  # `gureum up` listens on 127.0.0.1 unless told otherwise
    assert f"--ray-address 127.0.0.1:{LAUNCHER_PORT}" in up[0]
    workers = " ".join(config["worker_start_ray_commands"])
    for cmd in (head, workers):
        assert f":{LAUNCHER_PORT}" in cmd or f"--port={LAUNCHER_PORT}" in cmd
        assert "6379" not in cmd
        assert "RAY_AUTH_MODE=token" in cmd


def test_launcher_installs_gureum_and_a_working_sandbox_everywhere() -> None:
    setup = " ".join(launcher()["setup_commands"])
    assert "bubblewrap" in setup
    assert "gureum-*.whl" in setup and "[s3]" in setup
    assert "sandbox.probe" in setup  # a node where bwrap cannot work fails its setup
    assert any("server.env" in c for c in launcher()["worker_setup_commands"])


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda c: c.__setitem__("max_workers", "ten"), jsonschema.ValidationError,
         "'ten' is not of type 'integer'"),
        (lambda c: c["available_node_types"]["cpu-worker"]["resources"].update(CPU=-1),
         jsonschema.ValidationError, "-1 is less than the minimum of 0"),
        (lambda c: c.__setitem__("setup_comands", []), jsonschema.ValidationError,
         "'setup_comands' was unexpected"),
        (lambda c: c.__setitem__("head_node_type", "nope"), ValueError,
         "must be one of `available_node_types`"),
    ],
    ids=["max_workers-not-int", "negative-cpus", "misspelled-key", "unknown-head-type"],
)  # fmt: skip
def test_rays_validation_rejects_a_broken_launcher_yaml(
    mutate: Any, error: type[Exception], match: str
) -> None:
    config = launcher()
    mutate(config)
    with pytest.raises(error, match=re.escape(match)):
        ray_validate(config)


# -- the KubeRay manifest ---------------------------------------------------------------------


def manifests() -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kuberay.yaml").read_text()) if d]
    assert all(isinstance(d, dict) for d in docs)
    return docs


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, (kind, name)
    return found[0]


def strict(node: Any) -> Any:
    """KubeRay's schema as `kubectl apply` (server-side strict field validation) treats it: an
    unknown field is an error, not silently pruned, so a misspelled field fails here."""
    if isinstance(node, dict):
        out = {k: strict(v) for k, v in node.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node


def registry() -> Registry:
    defs = json.loads((SCHEMA / K8S_DEFS).read_text())
    return Registry().with_resource(
        K8S_DEFS, Resource.from_contents(defs, default_specification=DRAFT202012)
    )


def validator(kind: str) -> jsonschema.Draft202012Validator:
    if kind == "RayCluster":
        schema = strict(json.loads((SCHEMA / "raycluster-crd-v1.json").read_text()))
    else:
        group = {"Deployment": "apps.v1", "Service": "core.v1"}[kind]
        schema = {"$ref": f"{K8S_DEFS}#/$defs/io.k8s.api.{group}.{kind}"}
    return jsonschema.Draft202012Validator(schema, registry=registry())


def errors(doc: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator(doc["kind"]).iter_errors(doc)
    ]


def test_every_manifest_is_valid_against_its_schema() -> None:
    docs = manifests()
    assert [d["kind"] for d in docs] == ["RayCluster", "Deployment", "Service", "Service"]
    for doc in docs:
        assert errors(doc) == [], doc["kind"]
    assert one(docs, "RayCluster")["apiVersion"] == "ray.io/v1"


def pods(cluster: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "head", cluster["spec"]["headGroupSpec"]["template"]["spec"]
    for group in cluster["spec"]["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]


def seccomp(pod: dict[str, Any], container: dict[str, Any]) -> str:
    own = container.get("securityContext", {}).get("seccompProfile")
    return str((own or pod["securityContext"]["seccompProfile"])["type"])


def test_only_pods_that_need_bubblewrap_leave_runtime_default() -> None:
    """The head keeps RuntimeDefault and takes no work; every container that has seccomp
    Unconfined (what bubblewrap needs) is paid for with its own user namespace, a non-root
    user, no capabilities and no privilege escalation."""
    docs = manifests()
    cluster = one(docs, "RayCluster")
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["num-gpus"] == "0"
    api = one(docs, "Deployment", "gureum-api")["spec"]["template"]["spec"]
    checked = {name: pod for name, pod in pods(cluster)} | {"api": api}
    assert set(checked) == {"head", "cpu", "gpu", "api"}
    for name, pod in checked.items():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for c in pod["containers"]:
            ctx = c["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["capabilities"]["drop"] == ["ALL"], name
            if name == "head":
                assert seccomp(pod, c) == "RuntimeDefault"
                assert "procMount" not in ctx and "hostUsers" not in pod
            else:
                assert seccomp(pod, c) == "Unconfined", name
                assert ctx["appArmorProfile"]["type"] == "Unconfined", name
                assert ctx["procMount"] == "Unmasked", name
                assert pod["hostUsers"] is False, name


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_the_pieces_point_at_each_other() -> None:
    docs = manifests()
    cluster = one(docs, "RayCluster")
    deployment = one(docs, "Deployment", "gureum-api")
    api_service = one(docs, "Service", "gureum-api")
    template = deployment["spec"]["template"]
    assert api_service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"] == api_service["spec"]["selector"]
    api = env(template["spec"]["containers"][0])
    ns = cluster["metadata"]["namespace"]
    port = api_service["spec"]["ports"][0]["port"]
    assert api["GUREUM_CONTROL_URL"] == f"http://gureum-api.{ns}.svc.cluster.local:{port}"
    # KubeRay names the head's Service <cluster>-head-svc; 6379 is its GCS port.
    head_svc = f"{cluster['metadata']['name']}-head-svc.{ns}.svc.cluster.local:6379"
    assert api["GUREUM_RAY_ADDRESS"] == head_svc
    assert "GUREUM_HOST" not in api  # --host 0.0.0.0 inside the pod, said on the command line
    data_plane = one(docs, "Service", "gureum-data-plane")
    assert data_plane["spec"]["selector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert data_plane["spec"]["ports"][0]["targetPort"] == int(api["GUREUM_SERVE_PORT"])
    # Every Ray process and the server run with Ray's token auth; workers reach S3.
    containers = [c for _, pod in pods(cluster) for c in pod["containers"]]
    for c in [*containers, template["spec"]["containers"][0]]:
        assert env(c)["RAY_AUTH_MODE"] == "token"
    for _, pod in list(pods(cluster))[1:]:
        assert "AWS_ENDPOINT_URL_S3" in env(pod["containers"][0])


def test_every_mount_has_its_volume_and_every_secret_is_documented() -> None:
    """What no schema sees: a volumeMount naming a volume the pod lacks (the pod never starts),
    and a Secret the instructions at the top of kuberay.yaml do not say how to create."""
    docs = manifests()
    cluster = one(docs, "RayCluster")
    api = one(docs, "Deployment", "gureum-api")["spec"]["template"]["spec"]
    header = (DEPLOY / "kuberay.yaml").read_text().split("\n---", 1)[0]
    autoscaler = cluster["spec"]["autoscalerOptions"]["volumeMounts"]
    for name, pod in [*pods(cluster), ("api", api)]:
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = [m for c in pod["containers"] for m in c.get("volumeMounts", [])]
        if name == "head":
            mounts += autoscaler  # KubeRay adds the autoscaler beside the head container
        assert mounts and {m["name"] for m in mounts} <= volumes.keys(), name
        secrets = {v["secret"]["secretName"] for v in volumes.values() if "secret" in v}
        for c in pod["containers"]:
            secrets |= {s["secretRef"]["name"] for s in c.get("envFrom", [])}
            secrets |= {
                e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", []) if "valueFrom" in e
            }
        for secret in secrets:
            assert f"create secret generic {secret} " in header, (name, secret)


def test_the_ray_version_is_the_one_gureum_pins() -> None:
    cluster = one(manifests(), "RayCluster")
    assert cluster["spec"]["rayVersion"] == ray.__version__
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"ARG RAY_IMAGE=rayproject/ray:{ray.__version__}-py311\n" in dockerfile


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node: Any = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value


NOT_INT = "is not of type 'integer'"


@pytest.mark.parametrize(
    ("kind", "path", "value", "expected"),
    [
        ("RayCluster", "spec.workerGroupSpecs.0.maxReplicas", "two", NOT_INT),
        ("RayCluster", "spec.workerGroupSpecs.0.rayStartParams", {"num-cpus": 8},
         "8 is not of type 'string'"),
        ("RayCluster", "spec.workerGroupSpec", [], "'workerGroupSpec' was unexpected"),
        ("RayCluster", "spec.autoscalerOptions.upscalingMode", "Eager",
         "'Eager' is not one of"),
        ("RayCluster", "spec.headGroupSpec.template.spec.containers.0.securityContext."
         "seccompProfile", {"localhostProfile": "gureum-bwrap.json"},
         "'type' is a required property"),
        ("RayCluster", "spec.workerGroupSpecs.1.template.spec.hostUsers", "no",
         "'no' is not of type 'boolean'"),
        ("RayCluster", "spec.workerGroupSpecs.1.template.spec.containers.0.resourcez", {},
         "'resourcez' was unexpected"),
        ("Deployment", "spec.replicas", "1", NOT_INT),
        ("Deployment", "spec.template.spec.containers.0.ports.0.containerPort", "http",
         NOT_INT),
        ("Service", "spec.ports.0.port", "eighty", NOT_INT),
    ],
    ids=[
        "maxReplicas-not-int", "rayStartParams-not-str", "misspelled-field", "unknown-enum",
        "seccomp-without-type", "hostUsers-not-bool", "misspelled-pod-field",
        "replicas-not-int", "port-not-int", "service-port-not-int",
    ],
)  # fmt: skip
def test_the_schemas_reject_a_broken_manifest(
    kind: str, path: str, value: Any, expected: str
) -> None:
    docs = manifests()
    doc = copy.deepcopy(next(d for d in docs if d["kind"] == kind))
    set_path(doc, path, value)
    found = errors(doc)
    assert len(found) == 1 and expected in found[0], found
    assert found[0].startswith(path.replace(".", "/").rsplit("/", 1)[0]), found


def test_a_required_field_is_required() -> None:
    cluster = copy.deepcopy(one(manifests(), "RayCluster"))
    del cluster["spec"]["headGroupSpec"]
    assert any("headGroupSpec" in e for e in errors(cluster))


def test_the_docs_say_why_workers_leave_runtime_default() -> None:
    for doc in (DEPLOY / "kuberay.yaml", DEPLOY / "README.md"):
        text = doc.read_text()
        for word in ("RuntimeDefault", "bubblewrap", "CLONE_NEWUSER", "hostUsers"):
            assert word in text, (doc.name, word)
