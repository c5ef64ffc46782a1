"""The resources `oih get|list|describe|delete` knows: one table entry each.

Adding a resource (once its API is in the contract) is one `Resource(...)` below: its REST
collection, the key of its list response and the columns of its table.
"""

from __future__ import annotations

from dataclasses import dataclass

from oih_cli.client import CliError


@dataclass(frozen=True)
class Resource:
    plural: str  # as typed and shown: "service-accounts"
    singular: str  # "service-account"
    collection: str  # REST collection and name prefix: "service-accounts" (→ /v1/service-accounts)
    list_key: str  # key of the list in the list response: "service_accounts"
    columns: tuple[tuple[str, str], ...]
    #: Columns holding enum values (printed without their prefix in tables).
    enums: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    def name_of(self, ref: str) -> str:
        """`abc` or `flows/abc` → `flows/abc`; refuses another collection's name."""
        if "/" not in ref:
            return f"{self.collection}/{ref}"
        if not ref.startswith(self.collection + "/"):
            raise CliError(f"{ref!r} is not a {self.singular} name "
                           f"({self.collection}/…)", 2)
        return ref

    @property
    def path(self) -> str:
        return f"/v1/{self.collection}"


RESOURCES: tuple[Resource, ...] = (
    Resource("tenants", "tenant", "tenants", "tenants",
             (("NAME", "name"), ("DISPLAY NAME", "display_name"), ("STATE", "state"),
              ("CREATED", "create_time")), enums=("state",)),
    Resource("users", "user", "users", "users",
             (("NAME", "name"), ("USERNAME", "username"), ("TENANT", "tenant"),
              ("ROLES", "roles"), ("STATE", "state")), enums=("state",)),
    Resource("service-accounts", "service-account", "service-accounts", "service_accounts",
             (("NAME", "name"), ("DISPLAY NAME", "display_name"), ("TENANT", "tenant"),
              ("CLIENT ID", "client_id"), ("STATE", "state")),
             enums=("state",), aliases=("sa", "serviceaccounts", "serviceaccount")),
    Resource("roles", "role", "roles", "roles",
             (("NAME", "name"), ("DISPLAY NAME", "display_name"), ("TENANT", "tenant"),
              ("PERMISSIONS", "permissions"))),
    Resource("components", "component", "components", "components",
             (("NAME", "name"), ("DISPLAY NAME", "display_name"), ("ACCESS", "access"),
              ("TENANT", "tenant"), ("TRIGGERS", "triggers"), ("ACTIONS", "actions")),
             enums=("access",), aliases=("comp",)),
    Resource("flows", "flow", "flows", "flows",
             (("NAME", "name"), ("DISPLAY NAME", "display_name"), ("STATE", "state"),
              ("VERSION", "version"), ("UPDATED", "update_time")), enums=("state",)),
    Resource("schedules", "schedule", "schedules", "schedules",
             (("NAME", "name"), ("FLOW", "flow"), ("CRON", "cron"), ("STATE", "state"),
              ("NEXT RUN", "next_run_time")), enums=("state",)),
    Resource("secrets", "secret", "secrets", "secrets",
             (("NAME", "name"), ("DISPLAY NAME", "display_name"), ("TENANT", "tenant"),
              ("FINGERPRINT", "fingerprint"), ("UPDATED", "update_time"))),
)

_BY_WORD = {word: r for r in RESOURCES for word in (r.plural, r.singular, *r.aliases)}


def resource(word: str) -> Resource:
    found = _BY_WORD.get(word.lower())
    if found is None:
        known = ", ".join(r.plural for r in RESOURCES)
        raise CliError(f"unknown resource {word!r} (one of: {known})", 2)
    return found
