"""Generate the Python stubs of ``flotilla.proto`` with grpcio-tools.

``python -m cluster.shell.proto.build`` writes ``flotilla_pb2.py``, ``flotilla_pb2.pyi`` and
``flotilla_pb2_grpc.py`` next to the .proto (they are committed, so nothing is generated at import
time); ``python -m cluster.shell.proto.build --check`` exits 1 when the committed stubs differ from what
the .proto generates now (the test suite runs the same check). The grpc module's absolute import
``import flotilla_pb2`` is rewritten to the package-relative ``from . import flotilla_pb2``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "flotilla.proto"
OUTPUTS = ("flotilla_pb2.py", "flotilla_pb2.pyi", "flotilla_pb2_grpc.py")


def generate(out_dir: Path) -> dict[str, str]:
    """Run protoc on the .proto into ``out_dir``; ``{file name: content}``."""
    from grpc_tools import protoc

    rc = protoc.main(["grpc_tools.protoc", f"-I{HERE}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
                      f"--grpc_python_out={out_dir}", str(PROTO)])
    if rc != 0:
        raise RuntimeError(f"protoc failed on {PROTO} (exit {rc})")
    files = {name: (out_dir / name).read_text() for name in OUTPUTS}
    files["flotilla_pb2_grpc.py"] = files["flotilla_pb2_grpc.py"].replace(
        "import flotilla_pb2 as flotilla__pb2", "from . import flotilla_pb2 as flotilla__pb2")
    return files


def stale() -> list[str]:
    """Names of committed stubs that differ from a fresh generation (empty when up to date)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    return [n for n, text in fresh.items() if not (HERE / n).is_file() or (HERE / n).read_text() != text]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--check"]:
        bad = stale()
        if bad:
            print(f"stale gRPC stubs: {', '.join(bad)}; run python -m cluster.shell.proto.build", file=sys.stderr)
            return 1
        return 0
    if args:
        print("usage: python -m cluster.shell.proto.build [--check]", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in generate(Path(tmp)).items():
            (HERE / name).write_text(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
