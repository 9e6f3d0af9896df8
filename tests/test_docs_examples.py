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


def _console_commands(text: str) -> list[list[str]]:
    """The ``$ ...`` commands of each console block of ``text`` (continuation lines joined,
    words re-joined without comments)."""
    blocks = []
    for block in re.finditer(r"^ *```console\n(.*?)^ *```", text, re.S | re.M):
        cmds, lines = [], block.group(1).splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            i += 1
            if not line.startswith("$ "):
                continue
            cmd = line[2:]
            while cmd.rstrip().endswith("\\") and i < len(lines):
                cmd = cmd.rstrip()[:-1] + " " + lines[i].strip()
                i += 1
            cmds.append(shlex.join(_argv(cmd)))
        blocks.append(cmds)
    return blocks


def test_first_steps_are_the_same_in_readme_and_getting_started():
    """README's top and getting-started's first ten minutes show the one sequence the issue asks
    for: make demo, then flotilla serve with no flags, then the openai client, each in order."""
    readme = _console_commands((REPO / "README.md").read_text(encoding="utf-8"))[0]
    guide = (REPO / "docs" / "getting-started.md").read_text(encoding="utf-8")
    first = _console_commands(guide.split("## The first ten minutes", 1)[1])[0]
    assert first[0].startswith("git clone ") and first[1:] == readme
    assert readme == ["make demo", "source .venv/bin/activate", "flotilla serve", readme[3], "flotilla stop"]
    assert readme[3].startswith("python examples/openai_chat.py ")


def test_python_example_lines_run_as_written():
    """Every ``$ python examples/openai_chat.py ...`` line parses and runs: with no server there
    (a free port, no waiting) it exits 1 with its one line, no traceback."""
    from testkit import free_ports

    lines = {c for path in DOCS for block in _console_commands(path.read_text(encoding="utf-8"))
             for c in block if c.startswith("python examples/")}
    assert lines, "no python examples/ line in the docs"
    (port,) = free_ports(1)
    for cmd in sorted(lines):
        argv = shlex.split(cmd)
        assert (REPO / argv[1]).is_file(), cmd
        p = subprocess.run([sys.executable, *argv[1:], "--base-url", f"http://127.0.0.1:{port}/v1", "--wait", "0"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
        assert p.returncode == 1, (cmd, p.stderr)
        assert p.stderr.strip().splitlines()[-1].startswith("openai_chat: no server answers at"), (cmd, p.stderr)
        assert "Traceback" not in p.stderr
