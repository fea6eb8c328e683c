"""Writes server/NAME_pb2.py from each server/NAME.proto (needs grpcio-tools, a dev dependency).

    python scripts/gen_proto.py            # after editing a .proto; tests/server/test_grpc.py checks they agree

protoc registers generated messages in protobuf's process-wide default pool, where they would collide with any
other copy of the same protocol loaded in the process (tritonclient's and kserve's clients define the same
`inference.*` names, grpcio-health-checking the `grpc.health.v1.*` ones). The generated modules are therefore
changed in one place: each adds its file to a descriptor pool of its own.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

SERVER = Path(__file__).resolve().parent.parent / "server"
PROTOS = ("open_inference.proto", "grpc_health.proto")
DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
OWN_POOL = "POOL = _descriptor_pool.DescriptorPool()  # not the default pool: see scripts/gen_proto.py\n" \
           "DESCRIPTOR = POOL.AddSerializedFile("


def generate(proto: str, out_dir: Path) -> Path:
    """Runs protoc on server/`proto` into `out_dir`, switches the module to its own pool; returns the module's
    path."""
    from grpc_tools import protoc

    if protoc.main(["protoc", f"-I{SERVER}", f"--python_out={out_dir}", str(SERVER / proto)]) != 0:
        raise SystemExit(f"protoc failed on {SERVER / proto}")
    module = out_dir / proto.replace(".proto", "_pb2.py")
    text = module.read_text()
    if text.count(DEFAULT_POOL) != 1:
        raise SystemExit(f"protoc's output no longer has the line `{DEFAULT_POOL}...`: update scripts/gen_proto.py")
    module.write_text(text.replace(DEFAULT_POOL, OWN_POOL))
    return module


if __name__ == "__main__":
    for name in PROTOS:
        with tempfile.TemporaryDirectory() as tmp:
            target = SERVER / name.replace(".proto", "_pb2.py")
            target.write_text(generate(name, Path(tmp)).read_text())
        print(f"wrote {target}", file=sys.stderr)
