"""The ``flotilla`` command line: a thin surface that validates, forwards and renders.

Conventions for every command: ``--json`` prints exactly one JSON object on stdout and nothing
else; exit code 0 on success, 2 on bad input (one line on stderr), 1 on an internal failure.
Modeled figures are always labelled as modeled.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Optional

import typer
from rich.table import Table

from cluster.shell.console import MODELED_NOTE, emit_json, err, exit_code_for, json_option, out, reserve_stdout_for_json
from cluster.shell.console import fmt as _fmt
from cluster.exceptions import FlotillaError

app = typer.Typer(
    name="flotilla",
    help="Serve LLMs on a mixed fleet of GPUs and edge boards, on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonOpt = json_option()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("flotilla")
        except PackageNotFoundError:  # run from a checkout without an install
            v = "unknown (not installed)"
        out.print(f"flotilla {v}")
        raise typer.Exit(0)


@app.callback()
def _root(
    show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Serve LLMs on a mixed fleet of GPUs and edge boards, on Ray."""


# ------------------------------------------------------------------------------------ devices


@app.command()
def devices(
    kind: Optional[str] = typer.Argument(None, help="One kind or alias (e.g. 4090, A100-80GB); all when omitted."),
    as_json: bool = JsonOpt,
) -> None:
    """List the device catalog: figures, prices and the source of each figure."""
    from cluster.probe import probed_catalog

    catalog = probed_catalog()
    kinds = [catalog.resolve(kind)] if kind else list(catalog.kinds())
    specs = [catalog.get(k) for k in kinds]
    if as_json:
        emit_json({"version": catalog.version, "devices": [s.to_dict() for s in specs]})
        return
    table = Table(title=f"flotilla device catalog ({catalog.version})")
    for col in ("kind", "class", "GiB", "GB/s", "TFLOPS", "fp8", "max W", "$/h"):
        table.add_column(col, justify="left" if col in ("kind", "class") else "right")
    for s in specs:
        table.add_row(
            s.kind, s.category, _fmt(s.memory_gib, ".0f"), _fmt(s.mem_bw_gbs, ".0f"), _tflops(s.tflops_fp16),
            _tflops(s.tflops_fp8), _fmt(s.power_max_w, ".0f"), _fmt(s.price_per_hour, ".2f"),
        )
    out.print(table)
    out.print("TFLOPS: dense fp16/bf16 tensor (GeForce: FP32 accumulate); 'cpu' is measured on this host (fp32 GEMM).")
    out.print("Names, interconnects, sources and dates of every figure: flotilla devices KIND --json.")


def _tflops(v: float | None) -> str:
    """3 significant digits without an exponent (2250, 989, 121, 0.54)."""
    return _fmt(v, ",.0f" if v is not None and v >= 100 else ".3g")


# ----------------------------------------------------------------------------------------- up


def _fleet_table(title: str, reports: list[dict[str, Any]], specs: dict[str, Any]) -> Table:
    table = Table(title=title)
    for col in ("device", "runs on", "GEMM", "wall ms", "modeled ms", "modeled mJ", "GiB", "TFLOPS"):
        table.add_column(col, justify="left" if col in ("device", "runs on", "GEMM") else "right")
    for r in sorted(reports, key=lambda r: r["device_id"]):
        s = specs[r["device_id"]]
        runs_on = "cpu (simulated)" if r["simulated"] else r["label"].rsplit(" on ", 1)[-1]
        table.add_row(
            r["device_id"], runs_on, "ok" if r.get("checked") else "WRONG", f"{r['wall_s'] * 1e3:.2f}",
            f"{r['modeled_s'] * 1e3:.4f}", f"{r['modeled_j'] * 1e3:.3f}", _fmt(s.memory_gib, ".0f"), _fmt(s.tflops_fp16, ".3g"),
        )
    return table


@app.command()
def up(
    fleet: Optional[str] = typer.Option(None, "--fleet", help="Fleet YAML file (e.g. examples/fleet.yaml)."),
    address: Optional[str] = typer.Option(None, "--address", help="Join this Ray cluster instead of starting one (or set RAY_ADDRESS)."),
    redis: Optional[str] = typer.Option(None, "--redis", help="State store URL (redis://...); in-memory when omitted."),
    namespace: Optional[str] = typer.Option(None, "--namespace", help="Cluster namespace in the state store."),
    once: bool = typer.Option(False, "--once", help="Probe every device, print the fleet and shut down."),
    as_json: bool = JsonOpt,
) -> None:
    """Start the fleet: one DeviceActor per device, registered in the state store, probed with a real GEMM."""
    from cluster.config import load_config
    from cluster.shell.fleet import bring_up
    from cluster.runtime import load_fleet
    from cluster.state import open_store

    cfg = load_config(redis_url=redis, namespace=namespace, ray_address=address, fleet=fleet)
    fleet_obj = load_fleet(cfg.fleet) if cfg.fleet else None
    store = open_store(cfg.redis_url, namespace=cfg.namespace)
    with err.status("starting Ray and the device actors…", spinner="dots"):
        t0 = time.perf_counter()
        running = bring_up(fleet_obj, store, address=cfg.ray_address)
        startup_s = time.perf_counter() - t0
    try:
        with err.status(f"probing {len(running.actors)} devices with a real 512x512 GEMM…", spinner="dots"):
            reports = running.probe()
        if as_json:
            emit_json({
                "fleet": running.runtime.fleet_name,
                "embedded": running.runtime.embedded,
                "startup_s": startup_s,
                "devices": reports,
                "note": MODELED_NOTE,
            })
        else:
            out.print(_fleet_table(f"fleet '{running.runtime.fleet_name}': {len(reports)} devices, up in {startup_s:.1f} s", reports, running.specs))
            out.print(f"wall = measured on the hardware the actor runs on; {MODELED_NOTE}.")
        if not once:
            running.start_heartbeats()
            err.print(f"fleet is up (state store: {type(store).__name__}, namespace {cfg.namespace!r}); Ctrl-C to stop")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                err.print("stopping…")
    finally:
        running.shutdown()
        store.close()


# ------------------------------------------------------------------------------------- status


@app.command()
def status(
    server: Optional[str] = typer.Option(None, "--server", envvar="FLOTILLA_SERVER", help="Ask this gateway (HOST:PORT) for its ClusterStatus."),
    token: Optional[str] = typer.Option(None, "--token", envvar="FLOTILLA_TOKEN", help="Bearer token for the gateway."),
    redis: Optional[str] = typer.Option(None, "--redis", help="Read the shared state store (redis://...) instead."),
    namespace: Optional[str] = typer.Option(None, "--namespace", help="Cluster namespace in the state store."),
    as_json: bool = JsonOpt,
) -> None:
    """Show the cluster: a gateway's replicas and counters (--server; default the local gateway), or the state store's live devices, plan and counters (--redis)."""
    from cluster.config import load_config
    from cluster.state import open_store

    cfg = load_config(redis_url=redis, namespace=namespace)
    if (server and not redis) or not cfg.redis_url or cfg.redis_url.startswith("memory"):
        from cluster.shell.cli.serve import gateway_status

        gateway_status(server, token, as_json)  # no --server: $FLOTILLA_SERVER or 127.0.0.1:50051, as generate
        return
    from cluster.load import public_counters

    store = open_store(cfg.redis_url, namespace=cfg.namespace)
    try:
        devs = store.devices()
        plan = store.get_plan()
        counters = public_counters(store.counters())  # the autoscaler's load window is not shown
    finally:
        store.close()
    if as_json:
        emit_json({
            "namespace": cfg.namespace,
            "devices": devs,
            "plan_version": plan[0] if plan else None,
            "counters": counters,
        })
        return
    table = Table(title=f"flotilla cluster '{cfg.namespace}': {len(devs)} live devices")
    for col in ("device", "kind", "runs as", "host", "fleet"):
        table.add_column(col)
    for device_id, info in sorted(devs.items()):
        table.add_row(device_id, info.get("kind", "?"), info.get("label", "?"), info.get("host", "?"), info.get("fleet", "?"))
    out.print(table)
    out.print(f"plan version: {plan[0] if plan else 'none'}")
    if counters:
        out.print("counters: " + ", ".join(f"{k}={v:g}" for k, v in sorted(counters.items())))


# --------------------------------------------------------------------------------------- main

#: Modules that add their own commands with ``register(app)`` (each area's CLI lives next to it).
COMMAND_MODULES: tuple[str, ...] = ("cluster.shell.cli.select", "cluster.shell.cli.plan", "cluster.shell.cli.serve",
                                    "cluster.shell.cli.simulate",
                                    "cluster.shell.cli.perf", "cluster.shell.cli.calibrate", "cluster.shell.cli.profile",
                                    "cluster.shell.cli.shards")


def _register_commands() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)


_register_commands()



def _click_exceptions() -> tuple[type[Exception], type[Exception]]:
    """(UsageError, ClickException) of the click that typer runs on (typer >= 0.20 vendors it)."""
    try:
        from typer._click.exceptions import ClickException, UsageError
    except ImportError:  # an older typer on the real click
        from click.exceptions import ClickException, UsageError
    return UsageError, ClickException


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _store_error(exc: BaseException) -> int | None:
    """One line for the state store's (redis-py's) errors; None for anything else. A command the
    server refuses (``DB index is out of range`` for ``redis://HOST:PORT/99``) is bad input (2);
    an unreachable server, 1."""
    mod = type(exc).__module__ or ""
    if not mod.startswith("redis"):
        return None
    msg = _one_line(str(exc)) or type(exc).__name__
    if type(exc).__name__ in ("ResponseError", "AuthenticationError", "AuthenticationWrongNumberOfArgsError"):
        print(f"flotilla: error: --redis: the Redis server refused: {msg}", file=sys.stderr)
        return 2
    print(f"flotilla: failed: the state store (Redis): {msg}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point: maps errors to exit codes (2 bad input, 1 internal failure) with one line on
    stderr each: usage errors, flotilla errors, the state store's errors and SIGTERM."""
    import os
    import signal

    # Ray's C++ core prints a stack dump on SIGTERM ("*** SIGTERM received ...") unless told not to.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    if threading_main():
        signal.signal(signal.SIGTERM, _on_sigterm)  # ray.init installs its own (sys.exit(15)); both end up below
    usage_error, click_exception = _click_exceptions()
    args = sys.argv[1:] if argv is None else list(argv)
    reserve = reserve_stdout_for_json() if "--json" in args else contextlib.nullcontext()
    try:
        with reserve:
            rv = app(args=args, prog_name="flotilla", standalone_mode=False)
    except usage_error as exc:
        ctx = getattr(exc, "ctx", None)
        where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        print(f"flotilla: error: {_one_line(exc.format_message())}{where}", file=sys.stderr)  # type: ignore[attr-defined]
        return 2
    except click_exception as exc:
        code = getattr(exc, "exit_code", 1)
        print(f"flotilla: {'error' if code == 2 else 'failed'}: {_one_line(exc.format_message())}", file=sys.stderr)  # type: ignore[attr-defined]
        return code
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted")
        return 130
    except FlotillaError as exc:
        return exit_code_for(exc)
    except SystemExit as exc:
        if exc.code == signal.SIGTERM:  # Ray's handler, or ours
            _stop_ray()
            print("flotilla: stopped by SIGTERM", file=sys.stderr, flush=True)
            sys.stdout.flush()
            # Ray's core worker can crash in interpreter teardown after a signal mid-start; the
            # local Ray it started is already stopped, so leave without the teardown.
            os._exit(128 + signal.SIGTERM)
        raise
    except Exception as exc:  # noqa: BLE001 - only the state store's errors become one line here
        code = _store_error(exc)
        if code is None:
            raise
        return code
    return rv if isinstance(rv, int) else 0


def _stop_ray() -> None:
    """Stop the Ray this process started or joined, if any (quietly: we are exiting)."""
    ray = sys.modules.get("ray")
    if ray is None:
        return
    try:
        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001 - best effort on the way out
        pass


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(signum)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
