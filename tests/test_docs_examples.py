"""Every ``$ flotilla ...`` line of a fenced ```console block in README.md and docs/*.md runs as
written (from the repository root, at 80 columns) when it can run offline and fast here: it exits
0 (or, when the block shows ``flotilla: error: ...`` right after it, exits 2 with that line), and
with ``--json`` prints exactly one JSON object on stdout. The lines that cannot run here are listed
in SKIP with the reason; a new console line that matches neither list fails the inventory test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

#: Subcommands whose examples are not run here, with the reason.
SKIP = {
    "serve": "starts a long-running server (tested in tests/shell/test_cli_zero_config.py and test_openai_api.py)",
    "demo": "starts Ray, a fleet and a gateway (1-4 minutes here; tested in tests/shell/test_demo.py)",
    "up": "starts Ray and probes a fleet (about a minute here; tested in tests/shell/test_cli.py)",
    "generate": "needs a running gateway",
    "status": "needs a running gateway or fleet registered in Redis",
    "stop": "needs a running gateway",
    "autoscale": "starts Ray and an autoscaling loop (tested in tests/shell/test_autoscale_loop.py)",
    "profile": "needs a serving target (grpc://... or an OpenAI endpoint)",
}
#: Individual lines not run, with the reason (a command that needs another example's output).
SKIP_LINES = {
    "flotilla plan --devices rtx4090,a100-80g-sxm --tables rtx4090.json --json":
        "needs rtx4090.json, written by the `flotilla profile` example before it",
}


def console_examples() -> list[tuple[str, int, str, str | None]]:
    """(file, line number, command, expected error line or None) for every ``$ flotilla`` line."""
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for block in re.finditer(r"^```console\n(.*?)^```", text, re.S | re.M):
            start = text[: block.start()].count("\n") + 2
            lines = block.group(1).splitlines()
            i = 0
            while i < len(lines):
                line, lineno = lines[i], start + i
                i += 1
                if not line.startswith("$ "):
                    continue
                cmd = line[2:]
                while cmd.rstrip().endswith("\\") and i < len(lines):
                    cmd = cmd.rstrip()[:-1] + " " + lines[i].strip()
                    i += 1
                nxt = lines[i] if i < len(lines) else ""
                expected = nxt if nxt.startswith("flotilla: error:") else None
                if cmd.startswith("flotilla "):
                    found.append((path.relative_to(REPO).as_posix(), lineno, cmd, expected))
    return found


def _argv(cmd: str) -> list[str]:
    words = shlex.split(cmd, comments=True)
    if words and words[-1] == "&":
        words = words[:-1]
    return words


EXAMPLES = console_examples()


def _skip_reason(cmd: str) -> str | None:
    argv = _argv(cmd)
    if " ".join(argv) in SKIP_LINES:
        return SKIP_LINES[" ".join(argv)]
    return SKIP.get(argv[1] if len(argv) > 1 else "")


def test_inventory_every_console_example_is_run_or_skipped_with_a_reason():
    assert len(EXAMPLES) >= 10, EXAMPLES  # the docs do have console examples; the parser finds them
    run = [e for e in EXAMPLES if _skip_reason(e[2]) is None]
    assert len(run) >= 5, [e[2] for e in EXAMPLES]
    from cluster.shell.cli.main import app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert set(SKIP) <= commands, set(SKIP) - commands  # each skip names a real command
    used = {_argv(e[2])[1] for e in EXAMPLES} | {" ".join(_argv(e[2])) for e in EXAMPLES}
    stale = [k for k in SKIP_LINES if k not in used]
    assert not stale, f"SKIP_LINES entries no docs example uses any more: {stale}"


@pytest.mark.parametrize("where, lineno, cmd, expected", [e for e in EXAMPLES],
                         ids=[f"{e[0]}:{e[1]}" for e in EXAMPLES])
def test_console_example_runs(where, lineno, cmd, expected):
    reason = _skip_reason(cmd)
    if reason is not None:
        pytest.skip(reason)
    argv = _argv(cmd)
    env = dict(os.environ, COLUMNS="80")
    p = subprocess.run([sys.executable, "-m", "cluster.shell.cli.main", *argv[1:]], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    if expected is not None:
        assert p.returncode == 2, f"{where}:{lineno} {cmd}: exit {p.returncode}\n{p.stderr}"
        shown = expected.split("...")[0].strip()
        assert p.stderr.startswith(shown), f"{where}:{lineno}: the docs show {expected!r}, it prints {p.stderr!r}"
        assert p.stderr.strip().count("\n") == 0
        return
    assert p.returncode == 0, f"{where}:{lineno} {cmd}: exit {p.returncode}\n{p.stderr[-2000:]}"
    if "--json" in argv:
        doc = json.loads(p.stdout)  # exactly one JSON object: json.loads refuses trailing text
        assert isinstance(doc, dict) and p.stdout.strip().count("\n") == 0
    else:
        assert p.stdout.strip(), f"{where}:{lineno} {cmd}: printed nothing"
        assert "…" not in p.stdout and max(len(line) for line in p.stdout.splitlines()) <= 80, p.stdout
