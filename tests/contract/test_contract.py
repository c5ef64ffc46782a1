"""The contract itself: generated code is fresh, and every RPC declares its REST mapping and
who may call it (an RPC without an access rule would be refused to everyone)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from oih.auth.v1 import auth_pb2

ROOT = Path(__file__).resolve().parents[2]
DESCRIPTOR_SET = ROOT / "generated" / "descriptor_set.binpb"

#: The only RPCs callable without a token; each checks what the request carries itself.
PUBLIC = {
    "oih.iam.v1.IamService.Login",
    "oih.iam.v1.IamService.ExchangeToken",
    "oih.iam.v1.IamService.GetJwks",
    "oih.webhooks.v1.WebhookService.ReceiveWebhook",
}


def oih_methods() -> dict[str, descriptor_pb2.MethodOptions]:
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    return {
        f"{proto.package}.{service.name}.{method.name}": method.options
        for proto in files.file if proto.package.startswith("oih.")
        for service in proto.service for method in service.method
    }


def test_generated_code_is_fresh() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


#: RPCs deliberately unreachable through REST: only platform services call them, over gRPC.
INTERNAL = ["oih.secrets.v1.SecretService.ResolveSecret"]


def test_every_rpc_has_a_rest_mapping_and_an_access_rule() -> None:
    methods = oih_methods()
    assert len(methods) > 50
    missing_http = [m for m, o in methods.items() if not o.HasExtension(annotations_pb2.http)]
    missing_rule = [m for m, o in methods.items() if not o.HasExtension(auth_pb2.rule)]
    assert missing_http == INTERNAL
    assert missing_rule == []
    # An internal RPC is never public and always needs a permission.
    for method in INTERNAL:
        rule = methods[method].Extensions[auth_pb2.rule]
        assert not rule.public and rule.permission


def test_only_the_intended_rpcs_are_public() -> None:
    public = {m for m, o in oih_methods().items() if o.Extensions[auth_pb2.rule].public}
    assert public == PUBLIC
