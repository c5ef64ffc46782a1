"""Regenerate `generated/` from `proto/`: messages, gRPC stubs, mypy stubs and the descriptor set.

    python scripts/generate.py          # rewrite generated/
    python scripts/generate.py --check  # exit 1 when generated/ is stale (CI and a test use this)

buf cannot generate Python here (grpcio-tools ships no protoc plugins), so this drives
grpc_tools.protoc directly; buf is used for lint, format and breaking checks.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
THIRD_PARTY = ROOT / "third_party" / "proto"
GENERATED = ROOT / "generated"
DESCRIPTOR_SET = "descriptor_set.binpb"
# mypy-protobuf's plugins live beside the interpreter (the venv's bin/).
BIN = Path(sys.executable).parent


def generate(out: Path) -> None:
    """Compile every proto under proto/ into `out`."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{THIRD_PARTY}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out=quiet:{out}",
        f"--mypy_grpc_out=quiet:{out}",
        # The descriptor set Envoy's transcoder loads: with imports, because it needs
        # google/rpc/error_details.proto to render rich error details.
        f"--descriptor_set_out={out / DESCRIPTOR_SET}",
        "--include_imports",
        # The proto comments too: the OpenAPI document (services/oih_gateway/openapi.py) takes
        # its descriptions from them.
        "--include_source_info",
        *protos,
        "google/rpc/error_details.proto",
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Only our own packages belong in generated/: google.* comes from googleapis-common-protos.
    shutil.rmtree(out / "google", ignore_errors=True)


def differences(left: Path, right: Path) -> list[str]:
    """Relative paths that differ between two trees."""
    cmp = filecmp.dircmp(left, right)
    found = [str(Path(cmp.left, n).relative_to(left)) for n in cmp.left_only + cmp.diff_files]
    found += [str(Path(cmp.right, n).relative_to(right)) for n in cmp.right_only]
    for name, sub in cmp.subdirs.items():
        found += [f"{name}/{d}" for d in differences(Path(sub.left), Path(sub.right))]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when generated/ is stale")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "generated"
        fresh.mkdir()
        generate(fresh)
        if options.check:
            stale = differences(fresh, GENERATED) if GENERATED.exists() else ["generated/"]
            stale = [s for s in stale if "__pycache__" not in s]
            if stale:
                print("generated/ is stale; run: python scripts/generate.py", file=sys.stderr)
                print("\n".join(f"  {s}" for s in stale), file=sys.stderr)
                return 1
            return 0
        shutil.rmtree(GENERATED, ignore_errors=True)
        shutil.copytree(fresh, GENERATED)
    print(f"generated/ rewritten from {PROTO_ROOT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
