"""IAM's rules, free of gRPC: who may see, create, change and grant what.

One module per concern, all sharing one `Context` (`context.py`):
- `sessions.py`: login with lockout, client-credential exchange, token revocation;
- `access.py`: tenant isolation, grant and takeover checks;
- `tenants.py`, `principals.py` (users and service accounts), `roles.py`;
- `bootstrap.py`: built-in roles, the platform tenant, the first administrator.
`Iam` holds one object per concern; the servicer calls them (`iam.users.create(…)`).
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from oih_iam.logic.bootstrap import bootstrap
from oih_iam.logic.context import Context, tenant_name
from oih_iam.logic.principals import ServiceAccounts, Users
from oih_iam.logic.roles import Roles
from oih_iam.logic.sessions import Sessions
from oih_iam.logic.tenants import Tenants
from oih_iam.settings import IamSettings
from oih_iam.tokens import TokenIssuer
from oih_runtime.revocation import RevocationList

__all__ = ["Context", "Iam", "tenant_name"]


class Iam:
    def __init__(self, engine: Engine, settings: IamSettings, issuer: TokenIssuer,
                 revocations: RevocationList) -> None:
        self.context = Context(engine, settings, issuer, revocations)
        self.engine = engine
        self.issuer = issuer
        self.sessions = Sessions(self.context)
        self.tenants = Tenants(self.context)
        self.users = Users(self.context)
        self.service_accounts = ServiceAccounts(self.context)
        self.roles = Roles(self.context)

    def bootstrap(self, internal_client_id: str = "", internal_secret: str = "") -> str | None:
        return bootstrap(self.context, internal_client_id, internal_secret)
