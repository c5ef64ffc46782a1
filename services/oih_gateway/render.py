"""Render the Envoy gateway config from the contract (the compiled descriptor set).

Everything the gateway knows about the API comes from the descriptor set:

- the gRPC services of the `oih.*` packages (one upstream cluster per service address),
- each RPC's `google.api.http` rule (and its `additional_bindings`): one REST route per pattern,
  matched by a regex derived from the path template and by the HTTP method,
- each RPC's `(oih.auth.v1.rule)` access rule: RPCs marked `public: true` get jwt_authn rules
  without requirements (REST route and native gRPC path); everything else falls through to a
  catch-all rule that requires a valid token from IAM.

The function is pure: same descriptor set and arguments, same dict. `write_envoy_config` dumps it
as JSON, which is valid YAML, so no YAML library is needed.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from oih.auth.v1 import auth_pb2

__all__ = [
    "HttpPattern",
    "Rpc",
    "read_rpcs",
    "render_envoy_config",
    "template_regex",
    "write_envoy_config",
]

MIB = 1024 * 1024
PROVIDER = "oih_iam"
PAYLOAD_HEADER = "x-oih-jwt-payload"
JWKS_PATH = "/.well-known/jwks.json"
JWKS_CLUSTER = "oih_gateway_self"
STAT_PREFIX = "oih_gateway"
HEADER_COMMENT = (
    "Rendered by `python -m oih_gateway render` from generated/descriptor_set.binpb. "
    "Do not edit by hand: change the protos (google.api.http, oih.auth.v1.rule) or "
    "services/oih_gateway/render.py, then re-render."
)

_TYPE = "@type"
_T = "type.googleapis.com/"

#: HTTP allows header names gRPC metadata does not (`+`, `!`, `|`, `~`…: gRPC takes only
#: `[0-9a-z_.-]`); forwarded, such a header makes the service's gRPC server fail the call as
#: INTERNAL before any of our code runs. They are dropped on the way in, like the headers with
#: underscores (`headers_with_underscores_action`); no header of ours is named like that.
DROP_NON_GRPC_HEADERS_LUA = """
function envoy_on_request(handle)
  local drop = {}
  for name, _ in pairs(handle:headers()) do
    if name:sub(1, 1) ~= ":" and name:find("[^0-9a-z_.%-]") then
      drop[#drop + 1] = name
    end
  end
  for _, name in ipairs(drop) do
    handle:headers():remove(name)
  end
end
"""
_REGEX_SPECIAL = set("\\.^$|?*+()[]{}")


@dataclass(frozen=True)
class HttpPattern:
    """One REST binding of an RPC: an HTTP method and a path template."""

    method: str
    template: str


@dataclass(frozen=True)
class Rpc:
    """An RPC as the gateway sees it."""

    service: str  # full name, e.g. "oih.iam.v1.IamService"
    name: str  # method name, e.g. "Login"
    public: bool
    http: tuple[HttpPattern, ...]
    #: The HTTP body is a `google.api.HttpBody` (raw bytes, any content type), not JSON.
    raw_body: bool = False

    @property
    def grpc_path(self) -> str:
        return f"/{self.service}/{self.name}"


# --------------------------------------------------------------------------------------------
# Reading the contract


def _http_patterns(rule: http_pb2.HttpRule) -> Iterator[HttpPattern]:
    kind = rule.WhichOneof("pattern")
    if kind == "custom":
        yield HttpPattern(rule.custom.kind.upper(), rule.custom.path)
    elif kind is not None:
        yield HttpPattern(kind.upper(), getattr(rule, kind))
    for extra in rule.additional_bindings:
        yield from _http_patterns(extra)


HTTP_BODY = ".google.api.HttpBody"


def _messages(files: descriptor_pb2.FileDescriptorSet) -> dict[str, descriptor_pb2.DescriptorProto]:
    """Every message of the set by its fully qualified name (".pkg.Outer.Inner")."""
    found: dict[str, descriptor_pb2.DescriptorProto] = {}

    def add(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}"
        found[name] = message
        for nested in message.nested_type:
            add(name, nested)

    for file in files.file:
        for message in file.message_type:
            add(f".{file.package}" if file.package else "", message)
    return found


def _body_type(
    messages: Mapping[str, descriptor_pb2.DescriptorProto], input_type: str, body: str
) -> str | None:
    """The type name the HTTP body maps onto: the request itself for "*", else the field's."""
    if not body:
        return None
    if body == "*":
        return input_type
    current = input_type
    for part in body.split("."):
        message = messages.get(current)
        field = next((f for f in message.field if f.name == part), None) if message else None
        if field is None:
            return None
        current = field.type_name
    return current


def _http_rules(rule: http_pb2.HttpRule) -> Iterator[http_pb2.HttpRule]:
    yield rule
    for extra in rule.additional_bindings:
        yield from _http_rules(extra)


def read_rpcs(descriptor_set: bytes) -> list[Rpc]:
    """Every RPC of every `oih.*` service in a serialized FileDescriptorSet, in file order."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    messages = _messages(files)
    rpcs = []
    for file in files.file:
        if not (file.package == "oih" or file.package.startswith("oih.")):
            continue
        for service in file.service:
            full_name = f"{file.package}.{service.name}"
            for method in service.method:
                options = method.options
                rule = options.Extensions[auth_pb2.rule]
                public = options.HasExtension(auth_pb2.rule) and rule.public
                patterns: tuple[HttpPattern, ...] = ()
                raw_body = False
                if options.HasExtension(annotations_pb2.http):
                    http = options.Extensions[annotations_pb2.http]
                    patterns = tuple(_http_patterns(http))
                    raw_body = any(
                        _body_type(messages, method.input_type, r.body) == HTTP_BODY
                        for r in _http_rules(http)
                    )
                rpcs.append(Rpc(full_name, method.name, public, patterns, raw_body))
    return rpcs


# --------------------------------------------------------------------------------------------
# Path templates → RE2 regexes
#
# Template = "/" Segments [ Verb ] ; Segments = Segment { "/" Segment } ;
# Segment = "*" | "**" | LITERAL | Variable ; Variable = "{" FieldPath [ "=" Segments ] "}" ;
# Verb = ":" LITERAL ;


def _parse_template(template: str) -> tuple[list[str], str | None]:
    """Split a path template into segments (literals, "*" or "**") and its verb."""
    if not template.startswith("/"):
        raise ValueError(f"path template must start with '/': {template!r}")
    segments: list[str] = []
    verb: str | None = None
    i, n = 1, len(template)
    while i <= n:
        if i < n and template[i] == "{":
            end = template.find("}", i)
            if end < 0:
                raise ValueError(f"unclosed variable in {template!r}")
            _field, _eq, sub = template[i + 1 : end].partition("=")
            segments.extend(sub.split("/") if sub else ["*"])
            i = end + 1
        else:
            j = i
            while j < n and template[j] not in "/:":
                j += 1
            segments.append(template[i:j])
            i = j
        if i >= n:
            break
        if template[i] == ":":
            verb = template[i + 1 :]
            break
        i += 1  # the "/"
    if any(s == "" for s in segments) or verb == "":
        raise ValueError(f"empty segment in path template {template!r}")
    return segments, verb


def _escape(literal: str) -> str:
    return "".join("\\" + c if c in _REGEX_SPECIAL else c for c in literal)


def template_regex(template: str, *, strict: bool = False) -> str:
    """The RE2 regex matching the paths of a template: `*` → `[^/]+`, `**` → `.+`.

    `strict` (used for public jwt_authn rules) also refuses ':' inside wildcards, so that a
    public pattern without a verb can never match another RPC's custom-verb path
    (`/hooks/x:admin`); such paths fall through to the catch-all rule and need a token.
    """
    one, many = ("[^/:]+", "[^:]+") if strict else ("[^/]+", ".+")
    segments, verb = _parse_template(template)
    parts = [one if s == "*" else many if s == "**" else _escape(s) for s in segments]
    regex = "^/" + "/".join(parts)
    if verb is not None:
        regex += ":" + _escape(verb)
    return regex + "$"


def _specificity(template: str) -> tuple[int, ...]:
    """Sort key: literal segments before `*` before `**`, a verb before none."""
    segments, verb = _parse_template(template)
    kinds = [2 if s == "**" else 1 if s == "*" else 0 for s in segments]
    return (*kinds, 0 if verb else 1)


# --------------------------------------------------------------------------------------------
# Envoy building blocks


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"upstream address must be host:port, got {address!r}")
    return host.strip("[]"), int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _cluster(name: str, address: str, *, http2: bool, connect_timeout: str) -> dict[str, Any]:
    host, port = _split_address(address)
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if _is_ip(host) else "STRICT_DNS",
        "connect_timeout": connect_timeout,
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket_address(host, port)}}]}
            ],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                _TYPE: _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def _cluster_names(upstreams: Mapping[str, str]) -> dict[str, str]:
    """One cluster per distinct address, named after the packages served there."""
    packages: dict[str, set[str]] = {}
    for service, address in upstreams.items():
        package = ".".join(service.split(".")[:-1]) or service
        packages.setdefault(address, set()).add(package)
    names = {}
    for address, pkgs in packages.items():
        names[address] = "__".join(sorted(pkgs)).replace(".", "_")
    return names


def _cel_filter(expression: str) -> dict[str, Any]:
    """An access-log filter (as used by local reply mappers) from a CEL expression."""
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                _TYPE: _T + "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                "expression": expression,
            },
        }
    }


def _method_header(method: str) -> dict[str, Any]:
    return {"name": ":method", "string_match": {"exact": method}}


def _regex_match(regex: str, method: str) -> dict[str, Any]:
    return {"safe_regex": {"regex": regex}, "headers": [_method_header(method)]}


# --------------------------------------------------------------------------------------------
# The config


def render_envoy_config(
    descriptor_set: bytes,
    upstreams: Mapping[str, str],
    *,
    listen_port: int,
    admin_port: int,
    descriptor_path: str,
    issuer: str,
    audience: str,
    # IAM publishes a rotated-in key OIH_IAM_KEY_ANNOUNCE_SECONDS (60) before signing with it;
    # refetching every 10 s leaves room for IAM replicas' 30 s key reload.
    jwks_cache_seconds: int = 10,
    clock_skew_seconds: int = 5,
    max_request_bytes: int = MIB,
    raw_body_max_request_bytes: int = 10 * MIB,
    listen_host: str = "0.0.0.0",
    admin_host: str = "127.0.0.1",
    jwks_path: str = JWKS_PATH,
    connect_timeout_seconds: float = 1.0,
    rest_timeout_seconds: int = 30,
    max_connections: int = 10000,
) -> dict[str, Any]:
    """The Envoy bootstrap (as a dict) that serves the contract's REST and gRPC APIs.

    `upstreams` maps gRPC service full names to `host:port`. Services of the descriptor set that
    are not in `upstreams` are not exposed (their paths answer 401/404: fail closed); an
    upstream naming a service the descriptor does not contain is an error.
    """
    # A relative descriptor_path resolves against Envoy's working directory: the committed
    # gateway/envoy.yaml uses one (run Envoy from the repository root) so that it is the same in
    # every clone; `oih up` and the tests render absolute paths.
    rpcs = read_rpcs(descriptor_set)
    known = {rpc.service for rpc in rpcs}
    unknown = sorted(set(upstreams) - known)
    if unknown:
        raise ValueError(f"upstreams name services missing from the descriptor set: {unknown}")
    rpcs = [rpc for rpc in rpcs if rpc.service in upstreams]
    services = sorted({rpc.service for rpc in rpcs})
    cluster_of_address = _cluster_names(upstreams)
    cluster_of = {s: cluster_of_address[upstreams[s]] for s in services}

    transcoder: dict[str, Any] = {
        _TYPE: _T + "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
        "proto_descriptor": descriptor_path,
        "services": services,
        "match_incoming_request_route": True,
        "convert_grpc_status": True,
        "print_options": {
            "always_print_primitive_fields": True,
            "preserve_proto_field_names": True,
        },
        "request_validation_options": {
            "reject_unknown_method": True,
            "reject_unknown_query_parameters": True,
            "reject_binding_body_field_collisions": True,
        },
    }

    # REST routes, one per (method, template), most specific template first.
    rest: dict[tuple[str, str], tuple[str, str, bool]] = {}  # (method, regex) → (template,
    for rpc in rpcs:  # cluster, raw body)
        for pattern in rpc.http:
            key = (pattern.method, template_regex(pattern.template))
            cluster = cluster_of[rpc.service]
            template, seen, raw = rest.get(key, (pattern.template, cluster, False))
            if seen != cluster:
                raise ValueError(
                    f"{pattern.method} {pattern.template} is bound by services on two "
                    f"clusters ({seen}, {cluster})"
                )
            rest[key] = (template, cluster, raw or rpc.raw_body)
    # Raw-body RPCs (a google.api.HttpBody body, e.g. webhooks) take any content and any query
    # parameters: the transcoder captures unknown ones in HttpBody.extensions instead of
    # rejecting them, and their body limit is raw_body_max_request_bytes.
    raw_body_filters = {
        "envoy.filters.http.grpc_json_transcoder": {
            **transcoder,
            "capture_unknown_query_parameters": True,
            "request_validation_options": {
                **transcoder["request_validation_options"],
                "reject_unknown_query_parameters": False,
            },
        },
        "envoy.filters.http.buffer": {
            _TYPE: _T + "envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
            "buffer": {"max_request_bytes": raw_body_max_request_bytes},
        },
    }
    ordered = sorted(rest.items(), key=lambda item: _specificity(item[1][0]))
    routes: list[dict[str, Any]] = []
    for (method, regex), (template, cluster, raw) in ordered:
        route: dict[str, Any] = {
            "name": f"{method} {template}",
            "match": _regex_match(regex, method),
            "route": {"cluster": cluster, "timeout": f"{rest_timeout_seconds}s"},
        }
        if raw:
            route["typed_per_filter_config"] = raw_body_filters
        routes.append(route)
    # Native gRPC on the same listener: one prefix route per service. No route timeout (streams
    # may be long); the client's grpc-timeout is honoured instead. Not buffered: the gRPC
    # servers enforce their own message size limit, and buffering would break streaming.
    for service in services:
        routes.append(
            {
                "name": f"grpc {service}",
                "match": {"prefix": f"/{service}/"},
                "route": {
                    "cluster": cluster_of[service],
                    "timeout": "0s",
                    "max_stream_duration": {"grpc_timeout_header_max": "0s"},
                },
                "typed_per_filter_config": {
                    "envoy.filters.http.buffer": {
                        _TYPE: _T + "envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
                        "disabled": True,
                    }
                },
            }
        )

    # jwt_authn: public RPCs first (no requirement), then everything else needs a token.
    jwt_rules: list[dict[str, Any]] = []
    public_seen: set[str] = set()
    for rpc in rpcs:
        if not rpc.public:
            continue
        matches = [
            _regex_match(template_regex(p.template, strict=True), p.method) for p in rpc.http
        ]
        matches.append({"path": rpc.grpc_path})
        for match in matches:
            match_key = json.dumps(match, sort_keys=True)
            if match_key not in public_seen:
                public_seen.add(match_key)
                jwt_rules.append({"match": match})
    jwt_rules.append({"match": {"prefix": "/"}, "requires": {"provider_name": PROVIDER}})

    jwt_authn = {
        _TYPE: _T + "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {
            PROVIDER: {
                "issuer": issuer,
                "audiences": [audience],
                "require_expiration": True,
                "clock_skew_seconds": clock_skew_seconds,
                # Only the Authorization header: no `?access_token=` (it ends up in logs).
                "from_headers": [{"name": "Authorization", "value_prefix": "Bearer "}],
                # Services verify the token again (defense in depth), so pass it on.
                "forward": True,
                "forward_payload_header": PAYLOAD_HEADER,
                "remote_jwks": {
                    # The JWKS RPC is public and transcoded: fetch it through our own listener.
                    "http_uri": {
                        "uri": f"http://127.0.0.1:{listen_port}{jwks_path}",
                        "cluster": JWKS_CLUSTER,
                        "timeout": "5s",
                    },
                    "cache_duration": f"{jwks_cache_seconds}s",
                    # Refetch in the background every cache_duration (key rotation needs no
                    # restart); don't hold the listener back for the first fetch, which goes
                    # through that very listener; retry a failed fetch after a second.
                    "async_fetch": {"fast_listener": True, "failed_refetch_duration": "1s"},
                    # The very first fetch races the listener coming up: retry it quickly.
                    "retry_policy": {
                        "num_retries": 3,
                        "retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"},
                    },
                },
            }
        },
        "rules": jwt_rules,
    }

    buffer = {
        _TYPE: _T + "envoy.extensions.filters.http.buffer.v3.Buffer",
        "max_request_bytes": max_request_bytes,
    }

    local_reply_config = {
        "mappers": [
            {
                # jwt_authn answers 403 for a token of another audience; to a client that is
                # an invalid token like any other (RFC 6750 invalid_token): 401.
                "filter": _cel_filter(
                    "response.code == 403 && "
                    "response.code_details.startsWith('jwt_authn_access_denied')"
                ),
                "status_code": 401,
            },
            {
                # Rejected by path normalization (e.g. an escaped slash): no text of its own.
                "filter": _cel_filter("response.code_details == 'path_normalization_failed'"),
                "body": {"inline_string": "malformed or disallowed request path"},
            },
            {
                # HTTP QUERY (a method with a body) without a content-type: no text of its own.
                "filter": _cel_filter("response.code_details == 'query_missing_content_type'"),
                "body": {"inline_string": "a QUERY request needs a content-type"},
            },
            {
                # The router's "no route" reply has no text of its own.
                "filter": {"response_flag_filter": {"flags": ["NR"]}},
                "body": {"inline_string": "no route matches this path and method"},
            },
        ],
        "body_format": {
            "json_format": {"code": "%RESPONSE_CODE%", "message": "%LOCAL_REPLY_BODY%"},
            "content_type": "application/json",
        },
    }

    hcm = {
        _TYPE: _T + "envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager",
        "stat_prefix": STAT_PREFIX,
        "codec_type": "AUTO",  # HTTP/1.1 for REST, h2c prior knowledge for native gRPC
        "use_remote_address": True,
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "common_http_protocol_options": {
            "idle_timeout": "300s",
            "headers_with_underscores_action": "DROP_HEADER",
        },
        "http2_protocol_options": {
            "max_concurrent_streams": 100,
            "initial_stream_window_size": 65536,
            "initial_connection_window_size": 1048576,
        },
        "stream_idle_timeout": "300s",
        # A client's copy of the payload header is dropped before any filter runs, so upstreams
        # only ever see the one jwt_authn writes (and none at all on public routes).
        "early_header_mutation_extensions": [
            {
                "name": "envoy.http.early_header_mutation.header_mutation",
                "typed_config": {
                    _TYPE: _T + "envoy.extensions.http.early_header_mutation.header_mutation.v3."
                    "HeaderMutation",
                    "mutations": [{"remove": PAYLOAD_HEADER}],
                },
            }
        ],
        "route_config": {
            "name": "oih",
            "virtual_hosts": [{"name": "oih", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    _TYPE: _T + "envoy.extensions.filters.http.lua.v3.Lua",
                    "default_source_code": {"inline_string": DROP_NON_GRPC_HEADERS_LUA},
                },
            },
            {"name": "envoy.filters.http.jwt_authn", "typed_config": jwt_authn},
            {"name": "envoy.filters.http.buffer", "typed_config": buffer},
            {"name": "envoy.filters.http.grpc_json_transcoder", "typed_config": transcoder},
            {
                "name": "envoy.filters.http.router",
                "typed_config": {_TYPE: _T + "envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
        "local_reply_config": local_reply_config,
    }

    connect_timeout = f"{connect_timeout_seconds:g}s"
    clusters = [
        _cluster(name, address, http2=True, connect_timeout=connect_timeout)
        for address, name in sorted(cluster_of_address.items(), key=lambda kv: kv[1])
        if name in cluster_of.values()
    ]
    clusters.append(
        _cluster(
            JWKS_CLUSTER,
            f"127.0.0.1:{listen_port}",
            http2=False,
            connect_timeout=connect_timeout,
        )
    )

    return {
        "admin": {"address": _socket_address(admin_host, admin_port)},
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        _TYPE: _T + "envoy.extensions.resource_monitors.downstream_connections.v3."
                        "DownstreamConnectionsConfig",
                        "max_active_downstream_connections": max_connections,
                    },
                }
            ]
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "oih_gateway",
                    "address": _socket_address(listen_host, listen_port),
                    "per_connection_buffer_limit_bytes": 1048576,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


def dumps_envoy_config(config: Mapping[str, Any]) -> str:
    """The config as text: a comment line, then indented JSON (which is valid YAML)."""
    return f"# {HEADER_COMMENT}\n" + json.dumps(config, indent=2) + "\n"


def write_envoy_config(
    path: str | Path, descriptor_set: bytes, upstreams: Mapping[str, str], **options: Any
) -> dict[str, Any]:
    """Render (see `render_envoy_config` for the options) and write the config to `path`."""
    config = render_envoy_config(descriptor_set, upstreams, **options)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(dumps_envoy_config(config))
    return config
