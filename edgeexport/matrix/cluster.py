"""The Ray cluster the cells run on: a local one (loopback only) or one this driver joins, and what its
nodes offer.

``local`` (the default) starts a Ray instance on this machine, loopback only (every Ray server binds to
127.0.0.1, no dashboard, no usage statistics), sized to its cores; ``auto`` or an address
(``ray://HEAD:10001``, ``HEAD:6379``) joins a running cluster, whose nodes must have edgeexport
installed. Before a task is submitted its resources are compared with the cluster's: one no node offers
is reported at once as "no node can run <runtime>", never left pending.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import sys

from edgeexport.doctor import ray_resources
from edgeexport.errors import UserError
from edgeexport.targets import list_targets
from edgeexport.util import default_threads, one_line


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError("edgeexport matrix runs its cells on Ray, which is not installed here "
                        "(pip install 'edgeexport[ray]')") from None
    return ray


def start_local_cluster(cpus: int | None = None, backends: set[str] | None = None) -> None:
    """A Ray instance on this machine only: every server on 127.0.0.1, no dashboard, no usage
    statistics, ``cpus`` CPUs (default: every core) and this machine's runtimes as resources (those of
    ``backends`` only, when given: probing a runtime imports it)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's single-machine mode (its default on macOS and Windows): the node's address is the loopback
    # one, so the GCS, raylet, object manager and workers listen on 127.0.0.1 only.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray = _ray()
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # the same switch, when ray was imported before the variable was set
    ray.init(address="local", num_cpus=cpus or default_threads(), resources=ray_resources(backends),
             include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             namespace="edgeexport")


class Cluster:
    """The Ray cluster the cells run on, connected on first use (a matrix served entirely from the
    cache starts nothing)."""

    def __init__(self, address: str = "local", cpus: int | None = None, backends: set[str] | None = None):
        if not (address in ("local", "auto") or address.startswith("ray://")
                or re.fullmatch(r"[A-Za-z0-9_.\-\[\]:]+:\d+", address)):
            raise UserError(f"--cluster {address!r}: expected local, auto, ray://HOST:PORT or HOST:PORT")
        self.address, self.cpus, self.started, self.connected = address, cpus, False, False
        self.backends = backends  # the runtimes a local cluster offers, when this machine runs them
        self._local: dict | None = None

    def connect(self):
        ray = _ray()
        if not self.connected:
            if not ray.is_initialized():
                if self.address == "local":
                    start_local_cluster(self.cpus, self.backends)
                    self.started = True
                else:
                    try:
                        ray.init(address=self.address, log_to_driver=False, logging_level=logging.ERROR,
                                 namespace="edgeexport")
                    except Exception as exc:
                        raise UserError(f"cannot join the Ray cluster at {self.address}: {one_line(exc)}") from None
                    self.started = True
            self.connected = True
        return ray

    def resources(self) -> dict:
        running = "ray" in sys.modules and sys.modules["ray"].is_initialized()
        if not self.connected and self.address == "local" and not running:  # what a local instance will offer
            if self._local is None:
                self._local = {"CPU": float(self.cpus or default_threads()), **ray_resources(self.backends)}
                for t in list_targets():  # a local instance counts what a runtime here needs (a GPU)
                    if t.backend in self._local:
                        self._local.update({k: float(v) for k, v in t.ray_resources.items()})
            return dict(self._local)
        return dict(self.connect().cluster_resources())

    def nodes(self) -> list[dict]:
        if not self.connected:
            return [{"hostname": socket.gethostname(), "node_id": None, "alive": True, "resources": self.resources()}]
        return [{"hostname": n.get("NodeManagerHostname"), "node_id": n.get("NodeID"),
                 "ip": n.get("NodeManagerAddress"), "alive": n.get("Alive"), "resources": n.get("Resources")}
                for n in self.connect().nodes()]

    def close(self):
        if self.started:
            self.connect().shutdown()
            self.started = self.connected = False


def missing_resources(need: dict, offered: dict) -> list[str]:
    return [r for r, q in need.items() if offered.get(r, 0) < q]


def no_node_reason(cell, missing: list[str], why_here: str | None = None) -> str:
    names = ", ".join(f'"{m}"' for m in missing)
    plural = "s" if len(missing) > 1 else ""
    text = (f"no node can run {cell.backend} (no node of the cluster offers the Ray resource{plural} "
            f"{names}; on a machine that runs it: ray start --address=HEAD:6379 "
            "--resources=\"$(edgeexport doctor --ray-resources)\")")
    return text + (f"; here: {why_here}" if why_here else "")
