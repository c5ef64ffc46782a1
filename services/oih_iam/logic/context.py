"""What every IAM module shares: one `Context` (database, settings, token issuer, password
hasher, revocation list, outbox) and the small rules all of them apply (tenant names, update
masks, unique inserts). States are `oih.iam.v1.State` values, stored as their numbers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from google.protobuf.message import Message
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from oih_iam.credentials import Passwords
from oih_iam.settings import IamSettings
from oih_iam.tokens import TokenIssuer
from oih_runtime.bus import Outbox
from oih_runtime.errors import AlreadyExists, InvalidArgument
from oih_runtime.revocation import RevocationList

PLATFORM_TENANT = "platform"


@dataclass
class Context:
    engine: Engine
    settings: IamSettings
    issuer: TokenIssuer
    revocations: RevocationList
    passwords: Passwords = field(init=False)
    outbox: Outbox = field(init=False)

    def __post_init__(self) -> None:
        self.passwords = Passwords(self.settings)
        self.outbox = Outbox("oih-iam")

    def emit(self, session: Session, event_type: str, payload: Message, *, tenant_id: str = "",
             subject: str = "") -> None:
        """Announce a change in the transaction that makes it (transactional outbox)."""
        self.outbox.add(session, event_type, payload, tenant=tenant_name(tenant_id),
                        subject=subject)


def tenant_name(tenant_id: str) -> str:
    return f"tenants/{tenant_id}" if tenant_id else ""


@contextmanager
def unique(taken: AlreadyExists) -> Iterator[None]:
    """Answer `taken` when a concurrent call inserted the same unique value between our check
    and our insert."""
    try:
        yield
    except IntegrityError:
        raise taken from None


def mask(paths: Sequence[str], set_fields: Iterable[str], allowed: set[str],
         field: str = "update_mask") -> list[str]:
    """The fields an update changes: the mask's paths, or (no mask) the fields that are set."""
    chosen = list(paths) or [f for f in set_fields if f in allowed]
    bad = [p for p in chosen if p not in allowed]
    if bad:
        raise InvalidArgument.field(
            field, f"cannot update {', '.join(bad)}; allowed: {', '.join(sorted(allowed))}"
        )
    return chosen
