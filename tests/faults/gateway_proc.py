"""A gateway in its own process, for fault injection: joins the test session's Ray cluster, finds
the echo experts by name, serves them through a Router on the given Redis store, prints
``READY <address>`` and runs until killed.

    python tests/faults/gateway_proc.py RAY_ADDRESS RAY_NAMESPACE REDIS_URL STORE_NS KIND NAME [NAME...]
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv: list[str]) -> None:
    import ray

    from actors.router import Router, RouterConfig
    from actors.routing import Replica
    from cluster.shell.gateway import Gateway, GatewayConfig
    from cluster.state import open_store

    address, ray_ns, redis_url, store_ns, kind, *names = argv
    ray.init(address=address, namespace=ray_ns, logging_level="ERROR", log_to_driver=False)
    store = open_store(redis_url, namespace=store_ns)
    replicas = [Replica(n, kind, ray.get_actor(n), 2) for n in names]
    router = Router(store, replicas, RouterConfig(lease_ttl_s=1.0))
    router.start()
    gateway = Gateway(router, store, GatewayConfig(port=0), "echo").start()
    print(f"READY {gateway.address}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
