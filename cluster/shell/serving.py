"""Serving composition: fleet -> DeviceActors -> ExpertActors -> Router -> gRPC gateway, and the
OpenAI-compatible HTTP server (:mod:`cluster.shell.openai_api`) and Prometheus metrics
(:mod:`cluster.shell.metrics`) next to it.

:func:`start_serving` builds the whole path for ``flotilla serve`` and
``python -m cluster.shell.job serve``; :func:`run_until_stopped` runs it until SIGINT/SIGTERM.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.router import Router, RouterConfig
from cluster.exceptions import InputError
from cluster.shell.console import err, line, status
from cluster.shell.gateway import Gateway, GatewayConfig
from cluster.shell.hosting import compose_hooks
from cluster.shell.openai_api import HttpConfig


def example_fleet() -> str:
    """The packaged example fleet (``cluster/data/example_fleet.yaml``, a copy of
    ``examples/fleet.yaml``): what ``flotilla serve`` and ``flotilla demo`` use without ``--fleet``."""
    from pathlib import Path

    import cluster

    return str(Path(cluster.__file__).resolve().parent / "data" / "example_fleet.yaml")


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Everything ``flotilla serve`` starts. Precedence: file < environment < flags (cluster.config)."""

    fleet: str | None = None
    redis_url: str | None = None
    namespace: str = "default"
    ray_address: str | None = None
    model: str | None = None
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    max_concurrency: int = 2
    max_context: int = 2048
    #: A selection instance (JSON of ``flotilla experts build``) for SelectExperts; None: not served.
    experts: str | None = None
    #: The OpenAI-compatible HTTP server (with /metrics); None: not started.
    http: HttpConfig | None = None
    #: A port of its own for the Prometheus metrics (for a gRPC-only server); None: none.
    metrics_port: int | None = None
    #: Prompts longer than this many tokens are served context-parallel across the fleet's devices
    #: (:mod:`actors.cp_adapter`); None: never. Ignored for the echo model.
    context_parallel_above: int | None = None

    def __post_init__(self) -> None:
        from actors.cp_adapter import check_above

        check_above(self.context_parallel_above)


@dataclass
class Serving:
    """The running serving path; :meth:`shutdown` stops it in reverse order."""

    gateway: Gateway
    router: Router
    running: Any  # cluster.shell.fleet.RunningFleet
    store: Any
    experts: dict[str, Any]
    replayed: int = 0
    supervisor: Any = None  # actors.supervisor.Supervisor
    http: Any = None  # cluster.shell.openai_api.HttpServer or None
    metrics: Any = None  # cluster.shell.metrics.Metrics
    metrics_port: int | None = None
    cp_route: Any = None  # actors.cp_adapter.ContextParallelRoute or None
    #: The model's weights in the object store (actors.expert.SharedWeights), kept alive while
    #: the experts (and any the supervisor respawns) use them; None for echo.
    weights: Any = None
    hosting: Any = None  # cluster.shell.hosting.HostedExperts or None

    def shutdown(self) -> None:
        import ray

        if self.supervisor is not None:
            self.supervisor.stop()
        if self.cp_route is not None:
            self.cp_route.close()
        if self.http is not None:
            self.http.stop()
        if self.metrics is not None:
            self.metrics.close()
        self.gateway.stop(1.0)
        for actor in self.experts.values():
            try:
                ray.get(actor.stop.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - the actor may be dead; its reservation dies with its DeviceActor
                pass
            ray.kill(actor)
        self.running.shutdown()
        self.store.close()


def check_port_free(host: str, port: int, field_name: str, flag: str) -> None:
    """InputError naming ``field_name`` when ``host:port`` is taken (port 0: nothing to check).

    Called before Ray starts, so a busy port is reported in a second rather than after the fleet
    came up. The probe socket does not set SO_REUSEPORT, so a gRPC server that did (gRPC's
    default) still makes it fail; the real bind later reports a port taken in between."""
    import socket

    if not port:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise InputError(f"{field_name}: cannot bind {host}:{port} ({exc.strerror}); is another flotilla serve "
                             f"running (flotilla stop)? pick another {flag}") from None


def _quiet(_message: str) -> None:
    """The default progress callback of :func:`start_serving`: says nothing."""


def start_serving(cfg: ServeConfig, progress: Callable[[str], None] = _quiet) -> Serving:
    """Fleet -> one ExpertActor per device -> Router (replaying its journal) -> gRPC gateway (+ HTTP).

    The gRPC, HTTP and metrics ports are checked (HTTP and metrics bound) first, so a busy one is
    reported before Ray starts. The model's weights are put in Ray's object store once and every
    ExpertActor builds its model from that shared copy (:func:`actors.expert.put_weights`).
    ``progress`` gets one line per phase, with the seconds since the start (``flotilla serve``
    prints them, in a terminal or not).
    """
    import time

    import ray

    from cluster.shell.metrics import Metrics
    from cluster.shell.openai_api import ChatTemplate, HttpServer, OpenAIApp

    from actors.expert import ExpertConfig, put_weights, spawn_expert
    from actors.llm.loader import cache_dir, ensure_cached, is_cached, resolve_source
    from actors.routing import Replica
    from actors.supervisor import Supervisor
    from cluster.shell.fleet import bring_up
    from cluster.runtime import load_fleet
    from cluster.state import open_store

    t0 = time.monotonic()

    def say(message: str) -> None:
        progress(f"[{time.monotonic() - t0:5.1f} s] {message}")

    selector = None
    if cfg.experts is not None:
        from cluster.shell.selector import ExpertSelector

        selector = ExpertSelector.from_file(cfg.experts)  # fails fast on a bad file, before any actor starts
    source = resolve_source(cfg.model)
    fleet = load_fleet(cfg.fleet) if cfg.fleet else None  # a bad fleet file fails before anything starts
    check_port_free(cfg.gateway.host, cfg.gateway.port, "port", "--port")
    http = HttpServer(cfg.http) if cfg.http is not None else None
    metrics = Metrics()
    template: list[Any] = []  # the chat template, loaded in a thread while Ray starts
    loader: threading.Thread | None = None
    try:
        metrics_port = metrics.serve(cfg.gateway.host, cfg.metrics_port) if cfg.metrics_port is not None else None
        if source.kind == "bundled":
            if not is_cached(source):
                say(f"dequantising {source.name} into {cache_dir()} (once; a minute or two)…")
            ensure_cached(source)  # dequantise once here, not in every actor at the same time
        if http is not None:
            def load_template() -> None:
                try:
                    template.append(ChatTemplate.for_model(cfg.model))
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    template.append(exc)

            loader = threading.Thread(target=load_template, name="flotilla-chat-template", daemon=True)
            loader.start()
        store = open_store(cfg.redis_url, namespace=cfg.namespace)
    except BaseException:
        if http is not None:
            http.stop()
        metrics.close()
        raise
    try:
        from cluster.runtime import resolve_address

        join = resolve_address(cfg.ray_address)
        if join is not None:
            say(f"joining the Ray cluster at {join}…")
        elif fleet is not None:
            say(f"starting Ray for {fleet.size} devices (fleet {fleet.name!r})…")
        else:
            say("starting Ray with this host's GPUs…")
        running = bring_up(fleet, store, address=cfg.ray_address, progress=say, wait=False)
    except BaseException:
        if http is not None:
            http.stop()
        metrics.close()
        store.close()
        raise
    experts: dict[str, Any] = {}
    supervisor = None
    try:
        # The experts' processes start (and import their libraries) while the device actors come up.
        weights = None
        if source.kind != "echo":
            say(f"putting the {source.name} weights in the object store once…")
            weights = put_weights(cfg.model)
        econf = ExpertConfig(model=cfg.model, max_concurrency=cfg.max_concurrency, max_context=cfg.max_context)
        handles = {}
        slots = {s.device_id: s for s in running.runtime.slots}
        for device_id, dev in running.actors.items():
            spec = running.specs[device_id]
            handles[device_id] = spawn_expert(dev, spec.kind, device_id, econf, real_cuda=not slots[device_id].simulated,
                                              node_id=slots[device_id].node_id, start=False, weights=weights)
        experts.update(handles)
        shared = f" on one shared copy ({weights.nbytes / 2**20:.0f} MiB)" if weights is not None else ""
        say(f"starting {len(handles)} {source.name} experts{shared}…")
        started = [h.start.remote() for h in handles.values()]
        running.register_all()
        say(f"{len(running.actors)} device actors up")
        ray.get(started)
        say(f"{len(handles)} experts loaded; starting the router and the gateways…")
        replicas = [Replica(d, running.specs[d].kind, h, cfg.max_concurrency) for d, h in handles.items()]
        cp_route = None
        if cfg.context_parallel_above is not None and source.kind != "echo":
            from actors.cp_adapter import Candidate, ContextParallelRoute

            cands = [Candidate(d, running.specs[d].kind, running.actors[d]) for d in running.actors]
            try:
                cp_route = ContextParallelRoute(cfg.context_parallel_above, cfg.model, cands)
            except InputError as exc:  # e.g. a local model directory with no registry shape
                err.print(f"context-parallel serving is off: {exc}")
        hosting, experts_route = _hosted_experts(fleet, source.name, running.specs, lambda: router)
        router = Router(store, replicas, cfg.router, dispatch_hook=compose_hooks(experts_route, cp_route))
        metrics.attach(router)
        replayed = router.start()

        def respawn(device_id: str) -> Any:
            """A fresh ExpertActor for a dead one, next to the same DeviceActor (itself replaced
            when it is gone too), built from the same shared weights."""
            from actors.device import spawn

            slot, spec = slots[device_id], running.specs[device_id]
            dev = running.actors[device_id]
            try:
                ray.get(dev.info.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - the device actor died with it: start a new one
                dev = running.actors[device_id] = spawn(spec, device_id, real_cuda=not slot.simulated, node_id=slot.node_id)
            handle = spawn_expert(dev, spec.kind, device_id, econf, real_cuda=not slot.simulated, node_id=slot.node_id,
                                  weights=weights)
            experts[device_id] = handle
            return handle

        supervisor = Supervisor(router, respawn).start()
        gateway = Gateway(router, store, cfg.gateway, source.name, selector, metrics, hosting).start()
        if http is not None:
            assert loader is not None
            loader.join()
            if isinstance(template[0], BaseException):
                raise template[0]
            http.start(OpenAIApp(router, source.name, token=cfg.gateway.token, metrics=metrics, template=template[0]))
        running.start_heartbeats()  # devices stay in the store's registry while serving
        say("ready")
    except BaseException:
        if supervisor is not None:
            supervisor.stop()
        if http is not None:
            http.stop()
        metrics.close()
        for h in experts.values():
            ray.kill(h)
        running.shutdown()
        store.close()
        raise
    return Serving(gateway, router, running, store, experts, replayed, supervisor, http, metrics, metrics_port, cp_route,
                   weights, hosting)


def _hosted_experts(fleet: Any, model: str, specs: dict[str, Any], router: Any) -> tuple[Any, Any]:
    """The fleet's hosted experts for the served ``model`` and the ``routing: experts`` dispatch
    hook (:mod:`cluster.shell.hosting`); (None, None) when the fleet hosts none. ``router()``
    returns the Router once it exists (the hook hands back the router's own replicas)."""
    from cluster.shell.hosting import ExpertsRoute, HostedExperts

    names = fleet.experts if fleet is not None else ()
    if not names:
        return None, None
    hosting, skipped = HostedExperts.from_fleet(names, model, {d: s.kind for d, s in specs.items()})
    if skipped:
        err.print(f"fleet experts not hosted: {'; '.join(skipped)}")
    if hosting is None:
        return None, None
    return hosting, ExpertsRoute(hosting, lambda: list(router()._replicas))  # read only: the live pool


def pidfile_dir() -> Path:
    """Where running gateways leave their pidfiles: ``$XDG_CACHE_HOME/flotilla/run`` or
    ``~/.cache/flotilla/run`` (what ``flotilla stop`` reads)."""
    import os

    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flotilla" / "run"


def pidfile_path(port: int) -> Path:
    """The pidfile of the gateway on gRPC ``port`` of this host."""
    return pidfile_dir() / f"gateway-{int(port)}.json"


def write_pidfile(address: str, http_url: str | None = None) -> Path:
    """Record this process as the gateway on ``address`` (HOST:PORT); returns the file."""
    import json
    import os
    import time

    port = int(address.rsplit(":", 1)[1])
    path = pidfile_path(port)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "address": address, "http": http_url, "started": time.time()}))
    tmp.replace(path)
    return path


def remove_pidfile(path: Path) -> None:
    """Remove ``path`` if it is still this process's pidfile."""
    import json
    import os

    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def run_until_stopped(sc: Any, ready: threading.Event | None = None) -> None:
    """Start serving, report the address on stderr, write the pidfile ``flotilla stop`` reads,
    block until SIGINT/SIGTERM, shut down."""
    with status("starting…"):
        serving = start_serving(sc, progress=line)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    kinds = sorted({r["kind"] for r in serving.router.replicas()})
    err.print(f"flotilla gateway on {serving.gateway.address}: {len(serving.experts)} experts ({', '.join(kinds)}), "
              f"replaying {serving.replayed} journaled requests")
    if serving.hosting is not None:
        err.print(f"edge experts hosted (SelectExperts, generate --routing experts): {', '.join(serving.hosting.names())}")
    if serving.http is not None:
        err.print(f"OpenAI-compatible API on {serving.http.base_url} (metrics: /metrics)")
    if serving.metrics_port is not None:
        err.print(f"Prometheus metrics on http://{sc.gateway.host}:{serving.metrics_port}/metrics")
    pidfile = write_pidfile(serving.gateway.address, serving.http.base_url if serving.http is not None else None)
    err.print(f"Ctrl-C (or flotilla stop --server {serving.gateway.address}) to stop")
    if ready is not None:
        ready.set()
    try:
        stop.wait()
    finally:
        err.print("stopping…")
        try:
            serving.shutdown()
        finally:
            remove_pidfile(pidfile)
