"""Ask a running ``flotilla serve`` one question through the official ``openai`` client, as a vLLM
user would, and stream the answer as it is generated.

    flotilla serve &
    python examples/openai_chat.py "What is the capital of France?"

It waits (up to ``--wait`` seconds, one line every few seconds) for the server to answer, so it
can be started right after ``flotilla serve &``. The model is the one the server lists at
``/v1/models`` unless ``--model`` names one; the bearer token is ``$FLOTILLA_TOKEN`` when set.
A request the server refuses exits 2 with one line (its HTTP status and message).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from openai import APIConnectionError, APIStatusError, OpenAI


def wait_for_server(client: OpenAI, base_url: str, wait_s: float) -> str:
    """The first model the server lists, once it answers; exits 1 after ``wait_s`` seconds."""
    t0 = time.monotonic()
    said = -1.0
    while True:
        try:
            # a short timeout: the port may be bound (and accept) before the server answers
            return client.with_options(timeout=5).models.list().data[0].id
        except APIConnectionError:  # refused, or timed out (APITimeoutError is one)
            waited = time.monotonic() - t0
            if said < 0 or waited - said >= 5:
                print(f"waiting for the server at {base_url} ({waited:.0f} s; `flotilla serve` prints "
                      "\"ready\" when it answers)…", file=sys.stderr, flush=True)
                said = waited
            if waited > wait_s:
                print(f"openai_chat: no server answers at {base_url} after {wait_s:g} s; start one with "
                      "`flotilla serve`", file=sys.stderr)
                raise SystemExit(1) from None
            time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Ask flotilla one question through the openai client.")
    ap.add_argument("prompt", nargs="?", default="What is the capital of France?")
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="the server's OpenAI API (default: %(default)s)")
    ap.add_argument("--model", default=None, help="default: the model the server lists")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default: %(default)s)")
    ap.add_argument("--wait", type=float, default=300.0, help="seconds to wait for the server (default: %(default)s)")
    args = ap.parse_args(argv)
    client = OpenAI(base_url=args.base_url, api_key=os.environ.get("FLOTILLA_TOKEN") or "none", max_retries=0)
    try:
        listed = wait_for_server(client, args.base_url, args.wait)  # also when --model is given
        model = args.model or listed
        stream = client.chat.completions.create(model=model, max_tokens=args.max_tokens, stream=True,
                                                temperature=args.temperature,
                                                messages=[{"role": "user", "content": args.prompt}])
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                sys.stdout.write(chunk.choices[0].delta.content)
                sys.stdout.flush()
    except APIStatusError as exc:  # e.g. 401 without $FLOTILLA_TOKEN, 400 naming a bad field
        print(f"openai_chat: the server refused the request: HTTP {exc.status_code}: {exc.message}", file=sys.stderr)
        return 2
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
