"""The OpenAI-compatible HTTP server, called with the official ``openai`` client as a vLLM user
would: real Ray echo experts -> Router (Redis journal) -> HTTP server with a token; one test with
the real SmolLM2-135M-Instruct chat model."""

from __future__ import annotations

import json
import uuid

import urllib.error
import urllib.request

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

KIND = "rtx4090"
TOKEN = "s3cret-http-token"


def _http(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """(status, JSON body) of one plain HTTP request (no client library in between)."""
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def served(ray_session, redis_url):
    """Two rtx4090 echo experts -> Router -> OpenAI HTTP server (token) + gRPC gateway, one Metrics."""
    import ray

    from actors.device import spawn
    from actors.expert import ExpertConfig, spawn_expert
    from actors.routing import Replica
    from actors.router import Router, RouterConfig
    from cluster.catalog import default_catalog
    from cluster.shell.gateway import Gateway, GatewayConfig
    from cluster.shell.metrics import Metrics
    from cluster.shell.openai_api import ChatTemplate, HttpConfig, HttpServer, OpenAIApp
    from cluster.state import open_store

    spec = default_catalog().get(KIND)
    devs = [spawn(spec, f"{KIND}-{i}") for i in range(2)]
    exps = [spawn_expert(d, KIND, f"{KIND}-{i}", ExpertConfig(model="echo"), start=False) for i, d in enumerate(devs)]
    ray.get([e.start.remote() for e in exps])
    store = open_store(redis_url, namespace=f"test-http-{uuid.uuid4().hex[:8]}")
    # max_queue = the replicas' slots, so test_full_queue_is_429 can fill the queue without waiting
    router = Router(store, [Replica(f"{KIND}-{i}", KIND, e, 2) for i, e in enumerate(exps)], RouterConfig(max_queue=4))
    router.start()
    metrics = Metrics(router)
    gw = Gateway(router, store, GatewayConfig(port=0, token=TOKEN), "echo", metrics=metrics).start()
    http = HttpServer(HttpConfig(port=0, token=TOKEN))
    http.start(OpenAIApp(router, "echo", token=TOKEN, metrics=metrics, template=ChatTemplate.for_model("echo")))
    yield {"http": http, "gateway": gw, "store": store, "metrics": metrics, "router": router, "experts": exps}
    http.stop()
    gw.stop(0.5)
    store.clear()
    store.close()
    for a in exps + devs:
        ray.kill(a)


@pytest.fixture(scope="module")
def client(served):
    with openai.OpenAI(base_url=served["http"].base_url, api_key=TOKEN, max_retries=0, timeout=30) as c:
        yield c


def test_chat_completion_answers_with_usage(client, served):
    r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hello fleet of small boats"}],
                                       max_tokens=3)
    assert r.object == "chat.completion" and r.model == "echo" and r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == "hello fleet of"
    assert choice.finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (5, 3, 8)
    extra = r.model_extra["flotilla"]
    assert extra["device_kind"] == KIND and extra["simulated"] and extra["measured_ttft_ms"] > 0
    assert "modeled" not in extra  # echo has no model shape: nothing to model
    assert served["store"].journal_unacked() == []


def test_chat_messages_with_roles_reach_the_model(client):
    # echo has no chat template: the contents, joined by blank lines, are the prompt
    r = client.chat.completions.create(model="ECHO", temperature=0, messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "one two"}]},
        {"role": "assistant", "content": "three"},
        {"role": "user", "content": "four"},
    ])
    assert r.choices[0].message.content == "be brief one two three four"
    assert r.choices[0].finish_reason == "stop" and r.usage.prompt_tokens == 6


def test_chat_streaming_deltas_add_up_to_the_answer(client):
    words = " ".join(f"w{i}" for i in range(40))
    stream = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": words}], max_tokens=30,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(words.split()[:30])
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 30 and chunks[-1].usage.prompt_tokens == 40


def test_streaming_without_include_usage_has_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "a b"}], stream=True))
    assert all(c.usage is None and c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "a b"


def test_completions_plain_and_streamed(client):
    r = client.completions.create(model="echo", prompt="the quick brown fox jumps", max_tokens=4)
    assert r.object == "text_completion" and r.choices[0].text == "the quick brown fox"
    assert r.choices[0].finish_reason == "length" and r.usage.total_tokens == 5 + 4
    parts = list(client.completions.create(model="echo", prompt=["the quick brown fox jumps"], max_tokens=4, stream=True))
    assert "".join(p.choices[0].text for p in parts) == "the quick brown fox"
    assert parts[-1].choices[0].finish_reason == "length"


def test_stop_strings_cut_the_answer(client):
    r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "alpha beta gamma delta"}],
                                       stop=[" gamma", "zzz"])
    assert r.choices[0].message.content == "alpha beta" and r.choices[0].finish_reason == "stop"
    r = client.completions.create(model="echo", prompt="alpha beta gamma delta", stop="delta")
    assert r.choices[0].text == "alpha beta gamma "


def test_models_list_names_the_served_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["echo"]
    assert models.data[0].owned_by == "flotilla"


@pytest.mark.parametrize("kwargs, param", [
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 10**6}, "max_tokens"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 2}, "n"),
    ({"seed": -5}, "seed"),
    ({"stop": ["x" * 100]}, "stop"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages[0].content[0]"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "only a system turn"}]}, "messages"),
])
def test_bad_input_is_400_naming_the_field(client, kwargs, param):
    call = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], **kwargs}
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(**call)
    assert exc.value.status_code == 400
    assert exc.value.param == param
    assert exc.value.message.startswith(param) or param in exc.value.message


def test_bad_completion_prompt_names_prompt(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="echo", prompt=[1, 2, 3])
    assert exc.value.param == "prompt"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.param == "model" and "echo" in exc.value.message


def test_bad_token_is_401(served):
    with openai.OpenAI(base_url=served["http"].base_url, api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


def test_raw_http_errors_have_openai_shape(served):
    base = served["http"].base_url
    hdr = {"Authorization": f"Bearer {TOKEN}"}
    status, body = _http("POST", f"{base}/chat/completions", b"{not json", hdr)
    assert status == 400 and body["error"]["param"] == "body"
    bad = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}
    status, body = _http("POST", f"{base}/chat/completions", json.dumps(bad).encode(), hdr)
    assert status == 400 and body["error"] == {
        "message": "max_tokens: expected an integer, got 'ten'", "type": "invalid_request_error",
        "param": "max_tokens", "code": None}
    status, body = _http("POST", f"{base}/completions", json.dumps({"model": "echo", "prompt": "hi"}).encode())
    assert status == 401 and body["error"]["type"] == "authentication_error"


def test_health_is_open(served):
    status, body = _http("GET", served["http"].base_url.removesuffix("/v1") + "/health")
    assert status == 200 and body == {"status": "ok", "replicas_alive": 2}


def test_full_queue_is_429(served, client):
    """With max_queue requests held, the next one is refused with 429 (RateLimitError)."""
    router = served["router"]
    gens = []
    try:
        for _ in range(router.config.max_queue):
            g = router.stream({"prompt": "held", "max_tokens": 2})
            assert next(g)["type"] == "accepted"
            next(g)  # admitted and dispatched
            gens.append(g)
        with pytest.raises(openai.RateLimitError) as exc:
            client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
        assert exc.value.status_code == 429 and "queue is full" in exc.value.message
    finally:
        for g in gens:
            g.close()
    assert router.status()["admitted"] == 0


def test_request_id_header_is_an_idempotency_key(client):
    rid = uuid.uuid4().hex
    a = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "same answer twice"}],
                                       extra_headers={"X-Request-Id": rid})
    b = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "same answer twice"}],
                                       extra_headers={"X-Request-Id": rid})
    assert a.id == b.id == f"chatcmpl-{rid}" and a.choices[0].message.content == b.choices[0].message.content
    assert b.model_extra["flotilla"]["replayed"] is True


def test_python_example_in_the_docs_runs(served):
    """docs/openai-api.md's python example, run as written against this server."""
    import pathlib
    import re

    doc = (pathlib.Path(__file__).parents[2] / "docs" / "openai-api.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    code = code.replace("http://127.0.0.1:8000/v1", served["http"].base_url).replace('"EMPTY"', repr(TOKEN))
    code = code.replace('model="smollm2-135m"', 'model="echo"')
    scope: dict = {}
    exec(compile(code, "docs/openai-api.md", "exec"), scope)  # noqa: S102 - our own doc example
    assert scope["reply"].choices[0].message.content


@pytest.fixture(scope="module")
def real_http(ray_session):
    """The real SmolLM2-135M-Instruct on one a100 -> Router -> HTTP server (no token)."""
    import ray

    from actors.device import spawn
    from actors.expert import ExpertConfig, spawn_expert
    from actors.llm.loader import ensure_cached, resolve_source
    from actors.routing import Replica
    from actors.router import Router
    from cluster.catalog import default_catalog
    from cluster.shell.metrics import Metrics
    from cluster.shell.openai_api import ChatTemplate, HttpConfig, HttpServer, OpenAIApp
    from cluster.state import open_store

    kind = "a100-80g-sxm"
    ensure_cached(resolve_source(None))
    dev = spawn(default_catalog().get(kind), f"{kind}-0")
    exp = spawn_expert(dev, kind, f"{kind}-0", ExpertConfig(max_concurrency=1, max_context=1024))
    store = open_store(None, namespace=f"test-http-real-{uuid.uuid4().hex[:8]}")
    router = Router(store, [Replica(f"{kind}-0", kind, exp, 1)])
    router.start()
    template = ChatTemplate.for_model(None)
    metrics = Metrics(router)
    http = HttpServer(HttpConfig(port=0)).start(OpenAIApp(router, "smollm2-135m", template=template, metrics=metrics))
    yield http, template, metrics
    http.stop()
    router.close()
    ray.get(exp.stop.remote())
    for a in (exp, dev):
        ray.kill(a)


def test_real_chat_model_through_the_template(real_http):
    http, template, metrics = real_http
    messages = [{"role": "system", "content": "You answer with one word."},
                {"role": "user", "content": "What is the capital of France?"}]
    with openai.OpenAI(base_url=http.base_url, api_key="EMPTY", max_retries=0, timeout=120) as c:
        r = c.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=8, temperature=0)
        chunks = list(c.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=8, temperature=0,
                                                stream=True))
    assert "Paris" in r.choices[0].message.content
    assert r.model_extra["flotilla"]["modeled"]["note"] == "modeled for a100-80g-sxm by cluster/perf, not measured"
    # the prompt the model saw is exactly the chat template's token ids (system turn included)
    ids = template.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert r.usage.prompt_tokens == len(ids["input_ids"])
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == r.choices[0].message.content
    # both requests (same tokens) added their modeled energy to the labelled counter
    samples = {s.name: s.value for fam in text_string_to_metric_families(metrics.render()[0].decode()) for s in fam.samples
               if s.labels.get("device_kind") == "a100-80g-sxm" and s.labels.get("modeled") == "true"}
    energy = r.model_extra["flotilla"]["modeled"]["energy_j"]
    assert energy > 0 and samples["flotilla_modeled_energy_joules_total"] == pytest.approx(2 * energy, rel=1e-9)


def test_responses_are_not_held_by_nagle(served):
    """Keep-alive requests answer in well under the 40 ms that Nagle + delayed ACKs would add
    (the listening socket must be IPPROTO_TCP for asyncio to set TCP_NODELAY on connections)."""
    import http.client
    import statistics
    import time

    conn = http.client.HTTPConnection("127.0.0.1", served["http"].port, timeout=10)
    times = []
    for _ in range(15):
        t0 = time.perf_counter()
        conn.request("GET", "/health")
        conn.getresponse().read()
        times.append(time.perf_counter() - t0)
    conn.close()
    assert statistics.median(times) < 0.030


def test_streams_in_progress_never_wait_behind_requests_waiting_for_a_replica(served):
    """One replica slot, one worker thread, more streams than slots: each stream's next step
    must not wait for a thread held by a request that waits for the slot that stream holds (a
    stream runs on one thread from start to end)."""
    from concurrent.futures import ThreadPoolExecutor

    from actors.routing import Replica
    from actors.router import Router, RouterConfig
    from cluster.shell.openai_api import HttpConfig, HttpServer, OpenAIApp
    from cluster.state import open_store

    router = Router(open_store(None), [Replica(f"{KIND}-0", KIND, served["experts"][0], 1)],
                    RouterConfig(max_queue=16, default_deadline_s=60))
    http = HttpServer(HttpConfig(port=0)).start(OpenAIApp(router, "echo", threads=1))
    words = " ".join(f"w{i}" for i in range(300))
    try:
        with openai.OpenAI(base_url=http.base_url, api_key="EMPTY", max_retries=0, timeout=30) as c:
            def one(_: int) -> str:
                chunks = c.chat.completions.create(model="echo", messages=[{"role": "user", "content": words}],
                                                   max_tokens=300, stream=True)
                return "".join(ch.choices[0].delta.content or "" for ch in chunks)

            with ThreadPoolExecutor(4) as pool:
                texts = list(pool.map(one, range(4)))
        assert texts == [words] * 4
    finally:
        http.stop()
        router.close()


def test_a_client_that_goes_away_frees_its_replica_and_counts_499(served):
    """Mid-stream disconnect: the router's stream is closed (admission and replica slot freed,
    journal acknowledged) and the request is counted with code 499."""
    import socket
    import time

    import ray

    from actors.device import spawn
    from actors.expert import ExpertConfig, spawn_expert
    from actors.routing import Replica
    from actors.router import Router
    from cluster.catalog import default_catalog
    from cluster.shell.metrics import Metrics
    from cluster.shell.openai_api import HttpConfig, HttpServer, OpenAIApp
    from cluster.state import open_store

    kind = "jetson-agx-orin-64"
    dev = spawn(default_catalog().get(kind), f"{kind}-9")
    exp = spawn_expert(dev, kind, f"{kind}-9", ExpertConfig(model="echo", echo_delay_s=0.02, stream_interval_s=0.0))
    store = open_store(None, namespace=f"test-http-gone-{uuid.uuid4().hex[:8]}")
    router = Router(store, [Replica(f"{kind}-9", kind, exp, 1)])
    metrics = Metrics(router)
    http = HttpServer(HttpConfig(port=0)).start(OpenAIApp(router, "echo", metrics=metrics))
    try:
        body = json.dumps({"model": "echo", "stream": True, "max_tokens": 500,
                           "messages": [{"role": "user", "content": " ".join(["word"] * 500)}]}).encode()
        with socket.create_connection(("127.0.0.1", http.port), timeout=10) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            got = b""
            while got.count(b"data: ") < 3:  # the role chunk and two words
                got += s.recv(4096)
            assert router.status()["admitted"] == 1
        deadline = time.monotonic() + 10  # 500 words x 20 ms = 10 s if nobody stopped it
        while router.status()["admitted"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert router.status()["admitted"] == 0 and time.monotonic() < deadline - 5
        assert [r["active"] for r in router.replicas()] == [0]
        assert store.journal_unacked() == []
        samples = {(s.name, s.labels.get("code")): s.value for fam in text_string_to_metric_families(metrics.render()[0].decode())
                   for s in fam.samples if s.name == "flotilla_requests_total"}
        assert samples == {("flotilla_requests_total", "499"): 1.0}
    finally:
        http.stop()
        router.close()
        for a in (exp, dev):
            ray.kill(a)
