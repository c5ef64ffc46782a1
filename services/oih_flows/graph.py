"""Validation of a flow's definition, free of gRPC and of the database.

Every rule reports `(field path, what is wrong)` and all violations are collected, so a client
fixes a bad flow in one round instead of one error at a time. Paths follow the request
(`flow.graph.nodes[2].id`), which is what `google.rpc.BadRequest` and REST clients expect.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from datetime import timedelta

import jsonata
import jsonschema
from google.protobuf import duration_pb2, json_format, struct_pb2
from referencing.exceptions import Unresolvable

from oih.components.v1 import components_pb2
from oih.flows.v1 import flows_pb2
from oih.secrets.v1 import secrets_pb2
from oih_runtime import cron
from oih_runtime.names import is_name

Violations = list[tuple[str, str]]
#: Returns the component as the caller sees it, or None when it does not exist or is not
#: visible to the caller.
ComponentLookup = Callable[[str], components_pb2.Component | None]
#: Returns a secret's metadata as the caller sees it, or None when it is not visible.
SecretLookup = Callable[[str], secrets_pb2.Secret | None]

NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,30}")
EDGE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
HEADER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
MAX_DISPLAY_NAME = 200
#: The owners table's column (PostgreSQL enforces it; SQLite would store anything).
MAX_OWNER_ID = 300
MAX_ATTEMPTS = 100
MAX_MULTIPLIER = 100.0
MAX_DELAY = timedelta(days=1)
MAX_SYNC_TIMEOUT = timedelta(minutes=5)
MAX_CONCURRENCY = 1000
#: JSONata compiles in time that grows faster than the length (a 600 kB expression held a
#: server thread for half a minute); a mapping longer than this belongs in a component.
MAX_EXPRESSION = 10_000
HMAC_ALGORITHMS = ("", "sha256", "sha512")
HMAC_ENCODINGS = ("", "hex", "base64")
MAX_QUEUED_LIMIT = 10_000_000
MAX_TIMESTAMP_TOLERANCE = timedelta(hours=1)
OWNER_PREFIXES = {
    flows_pb2.OWNER_TYPE_USER: "users/",
    flows_pb2.OWNER_TYPE_TENANT: "tenants/",
    flows_pb2.OWNER_TYPE_SERVICE_ACCOUNT: "service-accounts/",
}


# --------------------------------------------------------------------------- the definition

def check_definition(flow: flows_pb2.Flow, *, tenant: str) -> Violations:
    """Every rule that needs nothing but the flow itself. `tenant` is the flow's tenant."""
    found: Violations = []
    name = flow.display_name.strip()
    if not name:
        found.append(("flow.display_name", "required field is missing"))
    elif len(name) > MAX_DISPLAY_NAME:
        found.append(("flow.display_name", f"at most {MAX_DISPLAY_NAME} characters"))
    found += check_graph(flow.graph)
    if flow.cron:
        found += _cron(flow.cron)
    found += _webhooks(flow.webhook_settings)
    found += _owners(flow.owners, tenant)
    return found


def _cron(expression: str) -> Violations:
    # The scheduler's own rules (oih_runtime.cron): five fields, or six with seconds first.
    problem = cron.check(expression)
    return [("flow.cron", problem)] if problem else []


def _webhooks(settings: flows_pb2.WebhookSettings) -> Violations:
    base = "flow.webhook_settings"
    found: Violations = []
    if settings.hmac_algorithm not in HMAC_ALGORITHMS:
        found.append((f"{base}.hmac_algorithm", "must be 'sha256' or 'sha512'"))
    if settings.hmac_header and not HEADER.fullmatch(settings.hmac_header):
        found.append((f"{base}.hmac_header", "not a valid HTTP header name"))
    if settings.hmac_secret and not is_name(settings.hmac_secret, "secrets"):
        found.append((f"{base}.hmac_secret", "must look like secrets/{secret}"))
    if settings.HasField("sync_timeout"):
        found += _duration(settings.sync_timeout, f"{base}.sync_timeout", MAX_SYNC_TIMEOUT)
    if settings.hmac_encoding not in HMAC_ENCODINGS:
        found.append((f"{base}.hmac_encoding", "must be 'hex' or 'base64'"))
    if settings.signature_scheme not in flows_pb2.WebhookSettings.SignatureScheme.values():
        found.append((f"{base}.signature_scheme", "not a known signature scheme"))
    if not 0 <= settings.max_queued_messages <= MAX_QUEUED_LIMIT:
        found.append((f"{base}.max_queued_messages", f"from 0 (default) to {MAX_QUEUED_LIMIT}"))
    if settings.HasField("timestamp_tolerance"):
        found += _duration(settings.timestamp_tolerance, f"{base}.timestamp_tolerance",
                           MAX_TIMESTAMP_TOLERANCE)
    return found


def _owners(owners: Iterable[flows_pb2.Owner], tenant: str) -> Violations:
    found: Violations = []
    seen: set[str] = set()
    for index, owner in enumerate(owners):
        field = f"flow.owners[{index}]"
        prefix = OWNER_PREFIXES.get(owner.type)
        if prefix is None:
            found.append((f"{field}.type", "must be USER, TENANT or SERVICE_ACCOUNT"))
        elif not is_name(owner.id, prefix.rstrip("/")):
            found.append((f"{field}.id", f"a {flows_pb2.OwnerType.Name(owner.type)} owner "
                                         f"must look like {prefix}{{id}}"))
        elif owner.type == flows_pb2.OWNER_TYPE_TENANT and owner.id != tenant:
            # Another tenant could never see the flow: ownership would be a lie.
            found.append((f"{field}.id", f"only the flow's own tenant ({tenant}) can own it"))
        elif len(owner.id) > MAX_OWNER_ID:
            found.append((f"{field}.id", f"at most {MAX_OWNER_ID} characters"))
        elif owner.id in seen:
            found.append((f"{field}.id", f"{owner.id} is listed twice"))
        seen.add(owner.id)
    return found


# --------------------------------------------------------------------------- the graph

def check_graph(graph: flows_pb2.Graph) -> Violations:
    """Node and edge rules, then the shape: exactly one entry node and no cycle."""
    base = "flow.graph"
    found: Violations = []
    if not graph.nodes:
        return [(f"{base}.nodes", "a flow needs at least one node")]
    ids: set[str] = set()
    for index, node in enumerate(graph.nodes):
        field = f"{base}.nodes[{index}]"
        if not NODE_ID.fullmatch(node.id):
            found.append((f"{field}.id", "1 to 30 characters of letters, digits, '_' or '-'"))
        elif node.id in ids:
            found.append((f"{field}.id", f"node id {node.id!r} is used twice"))
        ids.add(node.id)
        found += _node(node, field)
    found += _edges(graph, ids)
    return found


def _node(node: flows_pb2.Node, field: str) -> Violations:
    found: Violations = []
    if not is_name(node.component, "components"):
        found.append((f"{field}.component", "must look like components/{component}"))
    if not node.function:
        found.append((f"{field}.function", "name one of the component's triggers or actions"))
    if node.credentials and not is_name(node.credentials, "secrets"):
        found.append((f"{field}.credentials", "must look like secrets/{secret}"))
    settings = node.settings
    if not 0 <= settings.concurrency <= MAX_CONCURRENCY:
        found.append((f"{field}.settings.concurrency",
                      f"must be between 0 (the default) and {MAX_CONCURRENCY}"))
    if settings.HasField("retry_policy"):
        found += _retry(settings.retry_policy, f"{field}.settings.retry_policy")
    found += non_finite(node.fields, f"{field}.fields")
    return found


def non_finite(struct: struct_pb2.Struct, field: str) -> Violations:
    """NaN and infinities have no JSON form: the node's fields could not be stored or sent."""
    found: Violations = []
    pending: list[tuple[struct_pb2.Value, str]] = [
        (value, f"{field}.{key}") for key, value in struct.fields.items()]
    while pending:
        value, path = pending.pop()
        kind = value.WhichOneof("kind")
        if kind == "number_value" and not math.isfinite(value.number_value):
            found.append((path, "must be a finite number (JSON has no NaN or Infinity)"))
        elif kind == "struct_value":
            pending += [(v, f"{path}.{k}") for k, v in value.struct_value.fields.items()]
        elif kind == "list_value":
            pending += [(v, f"{path}.{i}") for i, v in enumerate(value.list_value.values)]
    return sorted(found)


def _retry(policy: flows_pb2.RetryPolicy, field: str) -> Violations:
    found: Violations = []
    if not 0 <= policy.max_attempts <= MAX_ATTEMPTS:
        found.append((f"{field}.max_attempts",
                      f"must be between 0 (the default) and {MAX_ATTEMPTS}"))
    if not (policy.multiplier == 0 or 1 <= policy.multiplier <= MAX_MULTIPLIER):
        found.append((f"{field}.multiplier",
                      f"must be 0 (the default) or between 1 and {MAX_MULTIPLIER:g}"))
    if math.isnan(policy.jitter) or not 0 <= policy.jitter <= 1:
        found.append((f"{field}.jitter", "must be a fraction between 0 and 1"))
    delays_ok = True
    for name in ("initial_delay", "max_delay"):
        if policy.HasField(name):
            problems = _duration(getattr(policy, name), f"{field}.{name}", MAX_DELAY)
            delays_ok = delays_ok and not problems
            found += problems
    if (delays_ok and policy.HasField("initial_delay") and policy.HasField("max_delay")
            and policy.max_delay.ToTimedelta() < policy.initial_delay.ToTimedelta()):
        found.append((f"{field}.max_delay", "must not be shorter than initial_delay"))
    for index, error in enumerate(policy.non_retryable_errors):
        if not error.strip():
            found.append((f"{field}.non_retryable_errors[{index}]", "must not be empty"))
    return found


def _duration(value: duration_pb2.Duration, field: str, limit: timedelta) -> Violations:
    if value.seconds < 0 or value.nanos < 0 or not 0 <= value.nanos < 1_000_000_000:
        return [(field, "must not be negative")]
    # Seconds first: a Duration may hold more than a timedelta (OverflowError).
    if value.seconds > limit.total_seconds() or value.ToTimedelta() > limit:
        return [(field, f"at most {int(limit.total_seconds())} s")]
    return []


def _edges(graph: flows_pb2.Graph, node_ids: set[str]) -> Violations:
    base = "flow.graph.edges"
    found: Violations = []
    edge_ids: set[str] = set()
    sound: list[tuple[int, str, str]] = []  # edges whose ends both exist
    for index, edge in enumerate(graph.edges):
        field = f"{base}[{index}]"
        if edge.id:
            if not EDGE_ID.fullmatch(edge.id):
                found.append((f"{field}.id", "1 to 64 characters of letters, digits, '_' or '-'"))
            elif edge.id in edge_ids:
                found.append((f"{field}.id", f"edge id {edge.id!r} is used twice"))
            edge_ids.add(edge.id)
        ends_ok = True
        for end in ("source", "target"):
            value = getattr(edge, end)
            if value not in node_ids:
                found.append((f"{field}.{end}", f"no node has the id {value!r}"))
                ends_ok = False
        if ends_ok:
            sound.append((index, edge.source, edge.target))
        for end in ("condition", "mapper"):
            expression = getattr(edge, end)
            if len(expression) > MAX_EXPRESSION:
                found.append((f"{field}.{end}", f"at most {MAX_EXPRESSION} characters"))
            elif expression.strip():
                problem = _jsonata(expression)
                if problem:
                    found.append((f"{field}.{end}", f"not a JSONata expression: {problem}"))
    cycle = _find_cycle([n.id for n in graph.nodes], sound)
    if cycle is not None:
        index, path = cycle
        found.append((f"{base}[{index}]", "closes a cycle: " + " → ".join(path)))
    elif node_ids and len(sound) == len(graph.edges):
        # Checked only on a sound, acyclic graph: otherwise the count would be misleading.
        entries = sorted(node_ids - {target for _, _, target in sound})
        if len(entries) != 1:
            found.append((base, "exactly one node may be no edge's target (the first step); "
                                f"these nodes are: {', '.join(entries)}"))
    return found


def _jsonata(expression: str) -> str:
    try:
        jsonata.Jsonata(expression)
    except Exception as error:  # jsonata raises JException (a RuntimeError) and others
        return str(error) or type(error).__name__
    return ""


def _find_cycle(nodes: list[str], edges: list[tuple[int, str, str]]
                ) -> tuple[int, list[str]] | None:
    """An edge that closes a cycle, with the cycle's path; None if the graph is acyclic.

    The search follows the flow's direction, from the entry nodes first and then in the
    client's node order, so the edge reported is the one that leads *back*, which is the one
    a user thinks of as wrong.
    """
    outgoing: dict[str, list[tuple[int, str]]] = {node: [] for node in nodes}
    for index, source, target in edges:
        outgoing[source].append((index, target))
    targets = {target for _, _, target in edges}
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(nodes, white)
    for start in [n for n in nodes if n not in targets] + nodes:
        if colour[start] != white:
            continue
        # Iterative DFS: the stack holds (node, position in its outgoing list).
        stack: list[tuple[str, int]] = [(start, 0)]
        colour[start] = grey
        while stack:
            node, position = stack[-1]
            if position == len(outgoing[node]):
                colour[node] = black
                stack.pop()
                continue
            stack[-1] = (node, position + 1)
            index, target = outgoing[node][position]
            if colour[target] == grey:
                path = [n for n, _ in stack]
                return index, [*path[path.index(target):], target]
            elif colour[target] == white:
                colour[target] = grey
                stack.append((target, 0))
    return None


def assign_edge_ids(graph: flows_pb2.Graph) -> None:
    """Give every edge without an id one that is unique within the flow (`e1`, `e2`, …)."""
    used = {edge.id for edge in graph.edges if edge.id}
    counter = 0
    for edge in graph.edges:
        if edge.id:
            continue
        counter += 1
        while f"e{counter}" in used:
            counter += 1
        edge.id = f"e{counter}"
        used.add(edge.id)


# --------------------------------------------------------------------------- components

def check_components(graph: flows_pb2.Graph, lookup: ComponentLookup) -> Violations:
    """Each node's component exists and is visible to the caller, offers the node's function,
    and accepts the node's `fields` when the function declares a config schema.

    Each distinct component is looked up once per call; nothing is kept across requests, so
    a component deleted or hidden a second ago is noticed.
    """
    found: Violations = []
    seen: dict[str, components_pb2.Component | None] = {}
    for index, node in enumerate(graph.nodes):
        if not is_name(node.component, "components"):
            continue  # already reported by check_graph
        field = f"flow.graph.nodes[{index}]"
        if node.component not in seen:
            seen[node.component] = lookup(node.component)
        component = seen[node.component]
        if component is None:
            found.append((f"{field}.component",
                          f"{node.component} does not exist or is not visible to you"))
            continue
        function = _function(component, node.function)
        if function is None:
            offered = sorted(f.name for f in [*component.triggers, *component.actions])
            found.append((f"{field}.function", f"{node.component} has no trigger or action "
                                               f"{node.function!r}; it offers: "
                                               f"{', '.join(offered) or 'nothing'}"))
        elif function.HasField("config_schema"):
            found += _fields(node, function.config_schema, f"{field}.fields")
    return found


def check_secrets(flow: flows_pb2.Flow, lookup: SecretLookup, *, tenant: str) -> Violations:
    """Each secret the flow names (a node's `credentials`, the webhook's `hmac_secret`) exists
    in the flow's tenant; an HMAC key is of type TYPE_HMAC_KEY. A secret of another tenant is
    reported exactly like a missing one (even to platform administrators, who could see it:
    the flow runs in its own tenant and could never resolve it)."""
    wanted = [(f"flow.graph.nodes[{index}].credentials", node.credentials)
              for index, node in enumerate(flow.graph.nodes)]
    wanted.append(("flow.webhook_settings.hmac_secret", flow.webhook_settings.hmac_secret))
    found: Violations = []
    seen: dict[str, secrets_pb2.Secret | None] = {}
    for field, name in wanted:
        if not is_name(name, "secrets"):
            continue  # unset, or already reported by check_definition
        if name not in seen:
            seen[name] = lookup(name)
        secret = seen[name]
        if secret is None or secret.tenant != tenant:
            found.append((field, f"{name} does not exist in the flow's tenant"))
        elif field.endswith("hmac_secret") and secret.type != secrets_pb2.Secret.TYPE_HMAC_KEY:
            found.append((field, f"{name} is not an HMAC key (type TYPE_HMAC_KEY)"))
    return found


def _function(component: components_pb2.Component,
              name: str) -> components_pb2.ComponentFunction | None:
    for function in [*component.triggers, *component.actions]:
        if function.name == name:
            return function
    return None


def _fields(node: flows_pb2.Node, schema_struct: object, field: str) -> Violations:
    try:
        schema = json_format.MessageToDict(schema_struct)  # type: ignore[arg-type]
        fields = json_format.MessageToDict(node.fields)
    except ValueError:
        return []  # NaN or infinity: reported by check_graph
    try:
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
        errors = sorted(validator_class(schema).iter_errors(fields), key=lambda e: list(e.path))
    except (jsonschema.SchemaError, Unresolvable):
        # The component's author is at fault (an invalid schema, a `$ref` that leads
        # nowhere), not the flow's: do not block the flow on it.
        return []
    return [
        (".".join([field, *(str(p) for p in error.absolute_path)]), error.message)
        for error in errors
    ]
