"""Whether a flow can run as defined, checked before anything is created: one first step,
ids the topology accepts, each node's component and function exist and the driver can run the
component, and the steps' credentials resolve. A failure is `StartFailed` with the reason the
user sees."""

from __future__ import annotations

from collections.abc import Iterable

from oih.components.v1 import components_pb2
from oih.flows.v1 import flows_pb2
from oih_dataplane import topology
from oih_dataplane.spec import StepSpec, spec_from_flow

from . import components as component_info
from .context import Context, StartFailed
from .credentials import CredentialsFailed, step_credentials


def entry_step(flow: flows_pb2.Flow) -> str:
    """The first step: the node that is no edge's target."""
    targets = {edge.target for edge in flow.graph.edges}
    firsts = [node.id for node in flow.graph.nodes if node.id not in targets]
    if len(firsts) != 1:
        raise StartFailed(f"the flow needs exactly one first step, it has {len(firsts)}")
    return firsts[0]


def check_ids(flow_id: str, steps: Iterable[str]) -> None:
    for step_id in steps:
        try:
            topology.check_ids(flow_id, step_id)
        except ValueError as error:
            raise StartFailed(str(error)) from None


def component(ctx: Context, node: flows_pb2.Node) -> components_pb2.Component:
    """The node's component, if it has the node's function and the driver can run it."""
    found = ctx.components(node.component)
    if found is None:
        raise StartFailed(f"step {node.id}: component {node.component} does not exist")
    functions = {f.name for f in [*found.triggers, *found.actions]}
    if node.function not in functions:
        raise StartFailed(f"step {node.id}: component {node.component} has no function "
                          f"{node.function!r}")
    reason = ctx.driver.refusal(found)
    if reason:
        raise StartFailed(f"step {node.id}: {reason}")
    return found


def credentials(ctx: Context, flow: flows_pb2.Flow,
                steps: Iterable[str] | None = None) -> dict[str, bytes]:
    """The resolved credentials of the flow's steps (of `steps`) that name a secret."""
    wanted = None if steps is None else set(steps)
    if ctx.resolve is None:
        if any(n.credentials for n in flow.graph.nodes if wanted is None or n.id in wanted):
            raise StartFailed("this orchestrator has no Secrets service to resolve "
                              "credentials with")
        return {}
    try:
        return step_credentials(flow, ctx.resolve, wanted)
    except CredentialsFailed as error:
        raise StartFailed(str(error)) from None


def spec(ctx: Context, flow: flows_pb2.Flow, node: flows_pb2.Node,
         found: components_pb2.Component) -> StepSpec:
    return spec_from_flow(flow, node.id, ctx.worker_url, component_info.entry_point(found))
