"""Prometheus metrics of a served fleet (``start_serving`` with the HTTP server and a metrics port):
scraped after a known set of requests over HTTP and gRPC, the counters moved by exactly the
requests sent."""

from __future__ import annotations

import urllib.error
import urllib.request

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

KIND = "rtx4090"


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a /metrics page."""
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(m: dict, name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def serving(ray_session, tmp_path_factory):
    """One simulated rtx4090 with the echo model, served with HTTP (port 0) and a metrics port."""
    from cluster.shell.gateway import GatewayConfig
    from cluster.shell.openai_api import HttpConfig
    from cluster.shell.serving import ServeConfig, start_serving

    fleet = tmp_path_factory.mktemp("fleet") / "fleet.yaml"
    fleet.write_text(f"name: metrics-test\ndevices:\n  - kind: {KIND}\n    count: 1\n")
    s = start_serving(ServeConfig(fleet=str(fleet), model="echo", gateway=GatewayConfig(port=0),
                                  http=HttpConfig(port=0), metrics_port=0))
    yield s
    s.shutdown()


def test_counters_move_by_exactly_the_requests_sent(serving):
    from cluster.shell.client import Client

    http_url = f"http://{serving.http.address}/metrics"
    port_url = f"http://127.0.0.1:{serving.metrics_port}/metrics"
    before = scrape(http_url)
    chat, ep = "/v1/chat/completions", "/v1/completions"
    with openai.OpenAI(base_url=serving.http.base_url, api_key="EMPTY", max_retries=0, timeout=30) as c:
        for i in range(3):
            c.chat.completions.create(model="echo", messages=[{"role": "user", "content": f"one two three {i}"}], max_tokens=2)
        list(c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "a b c d"}], stream=True))
        for _ in range(2):
            c.completions.create(model="echo", prompt="x y z", max_tokens=5)
        for _ in range(2):
            with pytest.raises(openai.BadRequestError):
                c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}], max_tokens=0)
        with pytest.raises(openai.NotFoundError):
            c.completions.create(model="nope", prompt="hi")
    with Client(serving.gateway.address) as g:
        for _ in range(2):
            g.generate("grpc words here", max_tokens=2)
    after = scrape(http_url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("flotilla_requests_total", api="http", endpoint=chat, code="200") == 4
    assert moved("flotilla_requests_total", api="http", endpoint=chat, code="400") == 2
    assert moved("flotilla_requests_total", api="http", endpoint=ep, code="200") == 2
    assert moved("flotilla_requests_total", api="http", endpoint=ep, code="404") == 1
    assert moved("flotilla_requests_total", api="grpc", endpoint="Generate", code="OK") == 2
    # histograms count successful requests only: 6 over HTTP, 2 over gRPC
    for h in ("flotilla_time_to_first_token_seconds", "flotilla_e2e_request_latency_seconds"):
        assert moved(f"{h}_count", api="http") == 6 and moved(f"{h}_count", api="grpc") == 2
        assert moved(f"{h}_sum", api="http") > 0
    # tokens: chat 3 x 2 + 4 (stream, "a b c d") ; completions 2 x 3 ("x y z" stops at 3 words); gRPC 2 x 2
    assert moved("flotilla_generation_tokens_total", api="http", device_kind=KIND) == 3 * 2 + 4 + 2 * 3
    assert moved("flotilla_generation_tokens_total", api="grpc", device_kind=KIND) == 2 * 2
    assert moved("flotilla_prompt_tokens_total", api="http") == 3 * 4 + 4 + 2 * 3
    # TPOT: requests with more than one token (all 6 HTTP ones, both gRPC ones)
    assert moved("flotilla_time_per_output_token_seconds_count", api="http") == 6
    # scrape-time gauges
    assert value(after, "flotilla_queue_depth") == 0
    assert value(after, "flotilla_queue_capacity") == serving.router.config.max_queue
    assert value(after, "flotilla_replicas", state="idle") == 1
    assert value(after, "flotilla_replicas", state="dead") == 0
    # the metrics port serves the same registry
    other = scrape(port_url)
    assert value(other, "flotilla_requests_total", api="grpc", endpoint="Generate", code="OK") == \
        value(after, "flotilla_requests_total", api="grpc", endpoint="Generate", code="OK")


def test_health_and_metrics_need_no_token_but_v1_does(ray_session, tmp_path):
    """A token-protected server: /health and /metrics open, /v1/models 401 without the token."""
    from cluster.shell.metrics import Metrics
    from cluster.shell.openai_api import HttpConfig, HttpServer, OpenAIApp

    class _NoReplicas:  # a router with nothing alive: /health must say 503
        def replicas(self):
            return []

        def status(self):
            return {"admitted": 0, "max_queue": 8, "replicas": [], "plan_version": None}

    router = _NoReplicas()
    http = HttpServer(HttpConfig(port=0, token="t0k")).start(OpenAIApp(router, "echo", token="t0k", metrics=Metrics(router)))
    try:
        base = f"http://{http.address}"
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"{base}/health", timeout=10)
        assert exc.value.code == 503
        m = scrape(f"{base}/metrics")
        assert value(m, "flotilla_replicas", state="idle") == 0 and value(m, "flotilla_queue_capacity") == 8
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"{base}/v1/models", timeout=10)
        assert exc.value.code == 401
    finally:
        http.stop()


def test_modeled_energy_is_counted_from_the_final_and_labelled(ray_session):
    from cluster.shell.metrics import Metrics

    m = Metrics()
    final = {"prompt_tokens": 7, "completion_tokens": 3, "device_kind": "a100-80g-sxm",
             "modeled": {"ttft_s": 0.001, "tpot_s": 0.0005, "e2e_s": 0.002, "energy_j": 0.25}}
    for _ in range(4):
        t = m.request("http", "/v1/completions")
        t.first()
        t.done(final, 200)
        t.done(final, 200)  # a second done is ignored: a request is recorded once
    body, _ = m.render()
    text = body.decode()
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert got[("flotilla_modeled_energy_joules_total", (("device_kind", "a100-80g-sxm"), ("modeled", "true")))] == pytest.approx(1.0)
    assert got[("flotilla_requests_total", (("api", "http"), ("code", "200"), ("endpoint", "/v1/completions")))] == 4
    assert got[("flotilla_prompt_tokens_total", (("api", "http"),))] == 28
    assert "MODELED energy" in text and "not measured" in text


def test_busy_ports_are_refused_naming_the_flag():
    import socket

    from cluster.exceptions import InputError
    from cluster.shell.metrics import Metrics
    from cluster.shell.openai_api import HttpConfig, HttpServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(InputError, match=r"^http_port: cannot bind 127.0.0.1:\d+"):
            HttpServer(HttpConfig(port=port))
        with pytest.raises(InputError, match=r"^metrics_port: cannot bind"):
            Metrics().serve("127.0.0.1", port)


def test_serving_keeps_its_devices_registered_and_supervised(serving):
    """`flotilla serve` starts the device heartbeats (devices stayed in the registry only 15 s
    before) and the supervisor."""
    assert serving.running._beat is not None and serving.running._beat.is_alive()
    assert set(serving.store.devices()) == set(serving.running.actors)
    assert serving.supervisor is not None and serving.supervisor._thread.is_alive()
