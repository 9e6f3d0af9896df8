"""The OpenAI-compatible HTTP server (FastAPI on uvicorn), next to the gRPC gateway.

Routes (``flotilla serve --http-port N``; default 8000, as vLLM; 0 disables it):

* ``POST /v1/chat/completions``: ``messages`` with roles (``system``/``developer``, ``user``,
  ``assistant``), rendered into one prompt by the model's chat template (the tokenizer's, here in
  the server; a model without one, such as ``echo``, gets the messages' contents joined by blank
  lines), then sent raw to the router. ``stream: true`` answers with server-sent events
  (``chat.completion.chunk`` objects, then ``data: [DONE]``); ``stream_options.include_usage``
  adds a last chunk with the usage.
* ``POST /v1/completions``: ``prompt`` (a string, or a list of one string) without a template.
* ``GET /v1/models``: the one model served. ``GET /health``: 200 while a replica is alive, else
  503. ``GET /metrics``: the Prometheus metrics (:mod:`cluster.shell.metrics`).

It is a thin surface over the same :class:`~actors.router.Router` (journal, plan, retries,
backpressure) as the gRPC gateway, validates with the same
:func:`cluster.shell.gateway.validate_generate`, and takes the same bearer token
(``Authorization: Bearer <token>`` on ``/v1/*``; ``/health`` and ``/metrics`` stay open).
An ``X-Request-Id`` header is the router's idempotency key: a retry with it gets the same answer.

Defaults follow the OpenAI API: ``temperature`` 1, ``top_p`` 1; ``max_tokens`` (or
``max_completion_tokens``) defaults to the gateway's 64. Options that would change the answer
and are not implemented (``n`` > 1, ``logprobs``, ``tools``, penalties, ``best_of``, ...) are
refused with 400 naming the field; others (``user``, ``metadata``, ...) are ignored.

Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with ``param``
the field: 400 bad input, 401 bad token, 404 unknown model, 429 router queue full, 503 no live
replica or state store down, 504 deadline passed, 500 anything else (logged; the server keeps
serving). An error after a stream has begun is sent as one ``data: {"error": ...}`` event.

Every non-streamed answer also carries a ``flotilla`` object: the device that answered, the
measured TTFT / TPOT on its hardware, and for a simulated device the *modeled* figures, labelled.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import Request  # at module level: FastAPI resolves the routes' annotations here

from cluster.exceptions import AlreadyExistsError, CapacityError, InputError, StoreUnavailableError

log = logging.getLogger("flotilla.http")

DEFAULT_HTTP_PORT = 8000
#: Fields accepted as "not used" only at these values (anything else: 400 naming the field).
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "n": (None, 1), "logprobs": (None, False, 0), "top_logprobs": (None, 0), "tools": (None, []),
    "functions": (None, []), "tool_choice": (None, "none", "auto"), "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0), "logit_bias": (None, {}), "best_of": (None, 1), "echo": (None, False),
    "suffix": (None, ""), "audio": (None,), "prediction": (None,),
}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """Where and how the HTTP server listens."""

    #: Interface to bind; 127.0.0.1 unless you mean to expose it.
    host: str = "127.0.0.1"
    #: Port; 0 picks a free one (see :attr:`HttpServer.port`).
    port: int = DEFAULT_HTTP_PORT
    #: Bearer token required on ``/v1/*``; None: no authentication.
    token: str | None = None
    #: Threads that run blocking router calls (requests in flight at once).
    threads: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise InputError(f"http_host: expected an interface address, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise InputError(f"http_port: {self.port!r}; allowed: 0..65535 (0 picks a free port)")
        if self.token is not None and (not isinstance(self.token, str) or not self.token or not self.token.isprintable()):
            raise InputError("token: expected a non-empty printable string")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or not 1 <= self.threads <= 4096:
            raise InputError(f"threads: {self.threads!r}; allowed: 1..4096")


# ------------------------------------------------------------------------------ chat template


class ChatTemplate:
    """Renders OpenAI ``messages`` into one prompt string for the served model."""

    def __init__(self, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer if tokenizer is not None and getattr(tokenizer, "chat_template", None) else None

    @classmethod
    def for_model(cls, model: str | None) -> ChatTemplate:
        """The template of ``model`` (see :func:`actors.llm.loader.resolve_source`): the tokenizer's
        from the model cache (built first if absent), or none for ``echo``. Rendered by
        :func:`actors.llm.tokenizer.load_tokenizer`'s tokenizer: jinja2 as transformers renders it,
        without importing transformers, when the model has a ``tokenizer.json``."""
        from actors.llm.loader import ensure_cached, resolve_source
        from actors.llm.tokenizer import load_tokenizer

        source = resolve_source(model)
        if source.kind == "echo":
            return cls(None)
        return cls(load_tokenizer(ensure_cached(source)))

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt: the template with a generation prompt, or the contents joined by blank lines."""
        if self.tokenizer is None:
            return "\n\n".join(m["content"] for m in messages if m["content"])
        try:
            return str(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        except Exception as exc:  # noqa: BLE001 - a template may refuse an order of roles
            raise InputError(f"messages: the model's chat template refused them ({exc})") from None


def parse_messages(messages: Any) -> list[dict[str, str]]:
    """``[{"role", "content"}]`` from OpenAI messages (InputError naming ``messages[i].field``)."""
    if not isinstance(messages, list) or not messages:
        raise InputError("messages: expected a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InputError(f"messages[{i}]: expected an object with role and content, got {type(m).__name__}")
        role = m.get("role")
        if role not in _ROLES:
            raise InputError(f"messages[{i}].role: {role!r}; allowed: {', '.join(_ROLES)}")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    got = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise InputError(f"messages[{i}].content[{j}]: only text parts are supported, got {got!r}")
                texts.append(part["text"])
            content = "".join(texts)
        if content is None and role == "assistant":
            content = ""
        if not isinstance(content, str):
            raise InputError(f"messages[{i}].content: expected a string or text parts, got {type(content).__name__}")
        out.append({"role": _ROLES[role], "content": content})
    if not any(m["role"] == "user" and m["content"].strip() for m in out):
        raise InputError("messages: expected at least one user message with non-empty content")
    return out


# ------------------------------------------------------------------------------ request fields


def _int_or_none(body: dict[str, Any], name: str) -> int | None:
    v = body.get(name)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
        raise InputError(f"{name}: expected an integer, got {v!r:.80}")
    return v


def _stop(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise InputError(f"stop: expected a string or a list of strings, got {stop!r:.80}")


def _check_unsupported(body: dict[str, Any]) -> None:
    for name, ok in _UNSUPPORTED.items():
        if name in body and body[name] not in ok:
            raise InputError(f"{name}: {body[name]!r:.80} is not supported by flotilla; omit it (or send {ok[-1]!r})")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise InputError(f"response_format: {fmt!r:.80} is not supported; only {{'type': 'text'}}")


def request_dict(body: Any, served_model: str, *, chat: bool, template: ChatTemplate | None, request_id: str) -> dict[str, Any]:
    """The router's request dict from an OpenAI request body (InputError naming the field)."""
    from cluster.shell.gateway import validate_generate

    if not isinstance(body, dict):
        raise InputError(f"body: expected a JSON object, got {type(body).__name__}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InputError(f"model: expected the model name (GET /v1/models lists it: {served_model!r}), got {model!r:.80}")
    _check_unsupported(body)
    if chat:
        messages = parse_messages(body.get("messages"))
        prompt = (template or ChatTemplate(None)).render(messages)
        max_tokens = _int_or_none(body, "max_completion_tokens")
        if max_tokens is None:
            max_tokens = _int_or_none(body, "max_tokens")
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise InputError(f"prompt: expected a string (or a list of one string), got {prompt!r:.80}")
        max_tokens = _int_or_none(body, "max_tokens")
    for name in ("stream",):
        if name in body and not isinstance(body[name], (bool, type(None))):
            raise InputError(f"{name}: expected true or false, got {body[name]!r:.80}")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise InputError(f"stream_options: expected an object, got {opts!r:.80}")
    temperature = body.get("temperature")
    top_p = body.get("top_p")
    return validate_generate(
        served_model, prompt=prompt, max_tokens=max_tokens, temperature=1.0 if temperature is None else temperature,
        top_p=top_p, model=model, seed=body.get("seed"), stop=_stop(body), chat=False, request_id=request_id,
    )


# ------------------------------------------------------------------------------ errors


def http_status_for(exc: BaseException) -> int:
    """The HTTP status of an error raised while serving."""
    from actors.router import DeadlineExceededError
    from actors.routing import NoReplicaError
    from cluster.shell.gateway import UnknownModelError

    if isinstance(exc, UnknownModelError):
        return 404
    if isinstance(exc, AlreadyExistsError):  # an X-Request-Id used by another request
        return 409
    if isinstance(exc, InputError):
        return 400
    if isinstance(exc, CapacityError):
        return 429
    if isinstance(exc, DeadlineExceededError):
        return 504
    if isinstance(exc, (NoReplicaError, StoreUnavailableError)):
        return 503
    return 500


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
          409: "invalid_request_error",
          429: "rate_limit_error", 503: "service_unavailable", 504: "timeout", 500: "internal_error"}
_CODES = {401: "invalid_api_key", 404: "model_not_found", 409: "request_id_in_use", 429: "queue_full"}


def error_body(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error object; ``param`` is the field an InputError message starts with."""
    param = None
    if status in (400, 404) and ": " in message:
        head = message.split(": ", 1)[0]
        if head and " " not in head:
            param = head
    return {"error": {"message": message, "type": _TYPES.get(status, "error"), "param": param, "code": _CODES.get(status)}}


def _error_of(exc: BaseException) -> tuple[int, dict[str, Any]]:
    status = http_status_for(exc)
    if status == 500:
        log.exception("internal error while serving", exc_info=exc)
        return 500, error_body(500, f"internal error ({type(exc).__name__}); see the server log")
    return status, error_body(status, str(exc))


# ------------------------------------------------------------------------------ responses


def _flotilla_extra(final: dict[str, Any]) -> dict[str, Any]:
    extra = {"device_id": final.get("device_id"), "device_kind": final.get("device_kind"),
             "device_label": final.get("label"), "simulated": final.get("simulated"),
             "measured_ttft_ms": final.get("ttft_s", 0.0) * 1e3, "measured_tpot_ms": final.get("tpot_s", 0.0) * 1e3,
             "attempts": final.get("attempts", 1), "replayed": bool(final.get("replayed"))}
    m = final.get("modeled")
    if m:
        extra["modeled"] = {"ttft_ms": m["ttft_s"] * 1e3, "tpot_ms": m["tpot_s"] * 1e3, "e2e_ms": m["e2e_s"] * 1e3,
                            "energy_j": m["energy_j"], "note": m.get("note", "modeled, not measured")}
    return extra


def _usage(final: dict[str, Any]) -> dict[str, int]:
    p, c = int(final["prompt_tokens"]), int(final["completion_tokens"])
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


# ------------------------------------------------------------------------------ the app


class OpenAIApp:
    """The FastAPI application around a router (see the module docstring)."""

    def __init__(self, router: Any, model_name: str, *, token: str | None = None, metrics: Any = None,
                 template: ChatTemplate | None = None, threads: int = 128) -> None:
        self.router = router
        self.model_name = model_name
        self.metrics = metrics
        self.template = template or ChatTemplate(None)
        self.threads = threads
        self.created = int(time.time())
        self._expected = f"Bearer {token}".encode() if token else None
        # A request, streamed or not, runs on one worker thread from start to end (a stream hands
        # its events to the event loop through a queue), so a stream holding a replica never waits
        # for a thread to take its next step.
        self._limiters: dict[str, Any] = {}
        self._pumps: set[Any] = set()
        self.app = self._build()

    # -- helpers
    async def _run(self, fn: Any, *args: Any, pool: str = "start") -> Any:
        import anyio

        limiter = self._limiters.get(pool)
        if limiter is None:
            limiter = self._limiters[pool] = anyio.CapacityLimiter(self.threads)
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)

    def _authorized(self, request: Any) -> bool:
        if self._expected is None:
            return True
        got = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(got, self._expected)

    def _build(self) -> Any:
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse, Response

        app = FastAPI(title="flotilla OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)

        @app.get("/health")
        async def health() -> Any:
            alive = sum(1 for r in self.router.replicas() if r["alive"])
            return JSONResponse({"status": "ok" if alive else "unavailable", "replicas_alive": alive},
                                status_code=200 if alive else 503)

        @app.get("/metrics")
        async def metrics() -> Any:
            if self.metrics is None:
                return JSONResponse(error_body(404, "metrics are not enabled on this server"), status_code=404)
            body, ctype = self.metrics.render()
            return Response(body, media_type=ctype)

        @app.get("/v1/models")
        async def models(request: Request) -> Any:
            if not self._authorized(request):
                return self._unauthorized()
            return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": self.created,
                                                "owned_by": "flotilla"}]}

        async def chat(request: Request) -> Any:
            return await self._complete(request, chat=True)

        async def completions(request: Request) -> Any:
            return await self._complete(request, chat=False)

        # The completion routes are plain Starlette routes (they take the request and return a
        # response): no dependency resolution per request on the hot path.
        app.add_route("/v1/chat/completions", chat, methods=["POST"])
        app.add_route("/v1/completions", completions, methods=["POST"])
        return app

    def _unauthorized(self) -> Any:
        from fastapi.responses import JSONResponse

        return JSONResponse(error_body(401, "missing or wrong bearer token in the Authorization header"), status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})

    async def _complete(self, request: Any, *, chat: bool) -> Any:
        from fastapi.responses import JSONResponse, StreamingResponse

        endpoint = "/v1/chat/completions" if chat else "/v1/completions"
        timer = self.metrics.request("http", endpoint) if self.metrics is not None else None
        if not self._authorized(request):
            if timer is not None:
                timer.fail(401)
            return self._unauthorized()
        try:
            raw = await request.body()
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise InputError(f"body: not valid JSON ({exc})") from None
            if not isinstance(body, dict):
                raise InputError(f"body: expected a JSON object, got {type(body).__name__}")
            rid = request.headers.get("x-request-id") or uuid.uuid4().hex
            stream = bool(body.get("stream"))
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            # one thread hop: validation and the template (Jinja) off the event loop, then the whole
            # request, or a stream's first event (so its errors still get their HTTP status)
            from cluster.shell.gateway import caller_of_token

            caller = caller_of_token(request.headers.get("authorization", ""))
            if stream:
                # One worker thread runs the whole stream (validation, the template, the router)
                # and hands its events over a queue: one thread hop per stream. Its first event,
                # or error, decides the status line.
                queue: asyncio.Queue[Any] = asyncio.Queue()
                stop = threading.Event()
                task = asyncio.ensure_future(self._run(self._pump, body, chat, rid, caller, asyncio.get_running_loop(),
                                                       queue, stop))
                self._pumps.add(task)  # the loop keeps only weak references to tasks
                task.add_done_callback(self._pumps.discard)
                first = await queue.get()
                if isinstance(first, Exception):
                    raise first
                if first is None:
                    raise RuntimeError("the router's stream ended without a final event")
            else:
                # one thread hop: validation and the template (Jinja) off the event loop, then the
                # whole request
                first = await self._run(self._whole_request, body, chat, rid, timer, caller)
        except Exception as exc:  # noqa: BLE001 - mapped to a status
            status, err_body = _error_of(exc)
            if timer is not None:
                timer.fail(status)
            return JSONResponse(err_body, status_code=status)
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{rid}"
        created = int(time.time())
        if not stream:
            return self._whole(first, ident, created, chat, timer)
        return StreamingResponse(self._events(queue, stop, first, ident, created, chat, include_usage, timer),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def _pump(self, body: dict[str, Any], chat: bool, rid: str, caller: str, loop: Any, queue: Any,
              stop: threading.Event) -> None:
        """Run a streamed request and put its events after the router's "accepted" (the id is the
        response's already, X-Request-Id), or its error, then None, into ``queue`` (in a worker
        thread). Told to ``stop`` (the client went away), it closes the router's stream after the
        event it is waiting for."""
        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the server's loop is gone
                pass

        try:
            req = request_dict(body, self.model_name, chat=chat, template=self.template, request_id=rid)
            gen = self.router.stream(req, caller=caller)
            try:
                for item in gen:
                    if item["type"] == "accepted":
                        continue
                    put(item)
                    if item["type"] == "done" or stop.is_set():
                        break
            finally:
                gen.close()  # releases the router's admission slot now
        except Exception as exc:  # noqa: BLE001 - handed to the response
            put(exc)
        finally:
            put(None)

    def _whole_request(self, body: dict[str, Any], chat: bool, rid: str, timer: Any, caller: str = "") -> dict[str, Any]:
        """The final dict of a request answered whole (in a worker thread)."""
        req = request_dict(body, self.model_name, chat=chat, template=self.template, request_id=rid)
        return self._generate(req, timer, caller)

    def _generate(self, req: dict[str, Any], timer: Any, caller: str = "") -> dict[str, Any]:
        """Run one request to its final dict (in a worker thread); the client gets the answer
        whole, so the router runs it with one unary actor call."""
        gen = self.router.stream(req, caller=caller, whole=True)
        try:
            for ev in gen:
                if ev["type"] == "done":
                    return ev
                if ev["type"] == "chunk" and timer is not None:
                    timer.first()
        finally:
            gen.close()  # releases the router's admission slot now
        raise RuntimeError("the router's stream ended without a final event")

    def _whole(self, final: dict[str, Any], ident: str, created: int, chat: bool, timer: Any) -> Any:
        from fastapi.responses import JSONResponse

        if timer is not None:
            timer.done(final, 200)
        text, finish = final["text"], final["finish_reason"]
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        return JSONResponse({"id": ident, "object": "chat.completion" if chat else "text_completion", "created": created,
                             "model": self.model_name, "choices": [choice], "usage": _usage(final),
                             "flotilla": _flotilla_extra(final)})

    async def _events(self, queue: Any, stop: threading.Event, first: dict[str, Any], ident: str, created: int,
                      chat: bool, include_usage: bool, timer: Any) -> Any:
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = {"id": ident, "object": obj, "created": created, "model": self.model_name}

        def choice(text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
            if not chat:
                return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}

        ended = False
        # Events already waiting are sent in one write (fewer sends and chunks on the wire).
        out = [_sse({**head, "choices": [choice("", None, role=True)]})] if chat else []
        try:
            ev: Any = first
            while True:
                if ev is None:
                    raise RuntimeError("the router's stream ended without a final event")
                if isinstance(ev, Exception):
                    raise ev
                if ev["type"] == "chunk":
                    if timer is not None:
                        timer.first()
                    out.append(_sse({**head, "choices": [choice(ev["text"], None)]}))
                else:
                    if timer is not None:
                        timer.done(ev, 200)
                    out.append(_sse({**head, "choices": [choice(None if chat else "", ev["finish_reason"])]}))
                    if include_usage:
                        out.append(_sse({**head, "choices": [], "usage": _usage(ev)}))
                    out.append(b"data: [DONE]\n\n")
                    ended = True
                    yield b"".join(out)
                    break
                if queue.empty():
                    yield b"".join(out)
                    out = []
                    ev = await queue.get()
                else:
                    ev = queue.get_nowait()
        except Exception as exc:  # noqa: BLE001 - the status line is sent already: one error event
            status, err_body = _error_of(exc)
            if timer is not None:
                timer.fail(status)
            yield b"".join(out) + _sse(err_body)
        finally:
            stop.set()
            if not ended and timer is not None:
                timer.fail(499)  # the client went away (nginx's "client closed request")


# ------------------------------------------------------------------------------ the server


class HttpServer:
    """uvicorn serving an :class:`OpenAIApp` from a background thread.

    The socket is bound in the constructor, so a busy port is reported at once (InputError naming
    ``http_port``), before anything else starts; :meth:`start` serves an app on it.
    """

    def __init__(self, config: HttpConfig) -> None:
        self.config = config
        self.app: OpenAIApp | None = None
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
        # listening socket says so (proto 0 left Nagle on: +40 ms per response from delayed ACKs)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((config.host, config.port))
        except OSError as exc:
            sock.close()
            raise InputError(f"http_port: cannot bind {config.host}:{config.port} ({exc.strerror}); "
                             "pick another --http-port (0 disables the HTTP server)") from None
        sock.listen(2048)
        sock.setblocking(False)
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    @property
    def base_url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}/v1"

    def start(self, app: OpenAIApp, timeout_s: float = 30.0) -> HttpServer:
        import uvicorn

        self.app = app
        cfg = uvicorn.Config(app.app, log_level="warning", access_log=False, lifespan="off",
                             timeout_graceful_shutdown=2, backlog=2048)
        self._server = uvicorn.Server(cfg)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="flotilla-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server on {self.address} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(5)
        self._sock.close()
