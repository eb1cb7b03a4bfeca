"""A local head whose Ray autoscaler adds and removes simulated nodes (Ray's fake multi-node
provider), for tests and demos of node autoscaling on one machine.

Ray's own ``AutoscalingCluster`` cannot be used here: it reads an example file its wheel lacks,
runs ``ray stop --force`` (every Ray on the machine) and puts the GCS on port 6379, Redis's.
This writes a complete autoscaler config of our own (so Ray never looks for its defaults file)
naming our head's GCS address, and starts the head with ``local_ray.start_head``: explicit free
ports, a temp dir of its own, ``RAY_FAKE_CLUSTER=1``. The autoscaler (the head's monitor) starts
each added node as a raylet of this machine in the head's session, so ``stop_head`` takes the
added nodes down with the head; no ``ray stop``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gureum.compute.local_ray import HeadNetwork, RayHead, start_head
from gureum.local.procs import free_port

HEAD_TYPE = "ray.head.default"
# The ids Ray's fake provider gives its head (it sets RAY_OVERRIDE_NODE_ID_FOR_TESTING when
# RAY_FAKE_CLUSTER is set) and its nodes: this prefix, then 00001, 00002...
FAKE_NODE_ID_PREFIX = "f" * 51
# An added node's object store: small, since every simulated node shares this machine's memory.
NODE_OBJECT_STORE_BYTES = 100 * 1024**2


@dataclass(frozen=True)
class FakeNodeType:
    """A kind of node the autoscaler may add: its Ray resources and how many of it at most."""

    name: str
    resources: Mapping[str, float]
    max_workers: int
    min_workers: int = 0


@dataclass(frozen=True)
class FakeCluster:
    """The head's resources, the node types, and how fast the autoscaler acts (seconds)."""

    node_types: tuple[FakeNodeType, ...]
    head_cpus: int = 0
    idle_timeout_s: float = 10.0
    update_interval_s: int = 1
    # How long an added node may stay silent before the autoscaler replaces it.
    heartbeat_timeout_s: int = 5

    def config(self, gcs_address: str) -> dict[str, Any]:
        """A complete autoscaler config (nothing left for Ray to fill from its defaults)."""
        types: dict[str, Any] = {
            HEAD_TYPE: {
                "resources": {"CPU": self.head_cpus},
                "node_config": {},
                "max_workers": 0,
            }
        }
        for t in self.node_types:
            types[t.name] = {
                "resources": {"object_store_memory": NODE_OBJECT_STORE_BYTES, **t.resources},
                "node_config": {},
                "min_workers": t.min_workers,
                "max_workers": t.max_workers,
            }
        return {
            "cluster_name": "gureum-fake",
            "max_workers": sum(t.max_workers for t in self.node_types),
            "provider": {
                "type": "fake_multinode",
                # Every simulated node has this machine's address: Ray tells them apart by id.
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
                # Without it the provider's nodes join 127.0.0.1:6379 (Redis's port).
                "gcs_address": gcs_address,
            },
            "available_node_types": types,
            "head_node_type": HEAD_TYPE,
            "auth": {},
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": self.idle_timeout_s / 60.0,
            "docker": {},
            "initialization_commands": [],
            "setup_commands": [],
            "head_setup_commands": [],
            "worker_setup_commands": [],
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
        }

    def env(self) -> dict[str, str]:
        """What the head's monitor (Ray's autoscaler) reads from its environment."""
        return {
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": str(self.update_interval_s),
            "AUTOSCALER_HEARTBEAT_TIMEOUT_S": str(self.heartbeat_timeout_s),
        }


def write_config(cluster: FakeCluster, path: Path, gcs_address: str) -> Path:
    """The config as a file ``ray start --autoscaling-config`` reads (JSON is YAML)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cluster.config(gcs_address), indent=2))
    return path


def start_fake_cluster(
    cluster: FakeCluster,
    temp_dir: Path,
    log_path: Path,
    config_path: Path,
    *,
    object_store_memory: int | None = NODE_OBJECT_STORE_BYTES,
    env: Mapping[str, str] | None = None,
) -> RayHead:
    """Start a loopback head with ``cluster``'s autoscaler; its config is written to
    ``config_path`` (the file ``Settings.autoscaling_config`` names for the server). ``env``:
    more for the head's processes (Ray's ``RAY_<setting>`` variables, say)."""
    network = HeadNetwork()
    gcs_port = free_port()
    write_config(cluster, config_path, f"{network.host}:{gcs_port}")
    return start_head(
        temp_dir,
        log_path,
        num_cpus=cluster.head_cpus,
        object_store_memory=object_store_memory,
        network=network,
        autoscaling_config=config_path,
        gcs_port=gcs_port,
        env={**cluster.env(), **(env or {})},
    )
