"""IAM's rules, free of gRPC: who may see, create, change and grant what.

Tenant isolation: a principal sees its own tenant's objects only, unless it holds `all`; any
other tenant's object answers NOT_FOUND, as if it did not exist. Grants: a principal grants
only permissions it holds itself (directly or through the roles it grants), and only roles that
are global or of the target's tenant.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TypeVar

from google.protobuf.message import Message
from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col, or_, select

from oih.events.v1 import iam_pb2 as events
from oih_iam import permissions as catalogue
from oih_iam.credentials import (
    Passwords,
    client_secret_matches,
    hash_client_secret,
    new_client_secret,
)
from oih_iam.models import (
    RevocationRow,
    RoleRow,
    ServiceAccountRow,
    TenantRow,
    UnknownLoginRow,
    UserRow,
)
from oih_iam.settings import IamSettings
from oih_iam.tokens import Issued, TokenIssuer
from oih_runtime import paging
from oih_runtime.bus import Outbox
from oih_runtime.clock import aware, utcnow
from oih_runtime.db import transaction
from oih_runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from oih_runtime.names import resource_id
from oih_runtime.principal import Principal
from oih_runtime.revocation import RevocationList

log = logging.getLogger(__name__)

ACTIVE, DISABLED = 1, 2
PLATFORM_TENANT = "platform"
MIN_PASSWORD_LENGTH = 12

Row = TypeVar("Row", bound=SQLModel)


def tenant_name(tenant_id: str) -> str:
    return f"tenants/{tenant_id}" if tenant_id else ""


@contextmanager
def _unique(taken: AlreadyExists) -> Iterator[None]:
    """Answer `taken` when a concurrent call inserted the same unique value between our check
    and our insert."""
    try:
        yield
    except IntegrityError:
        raise taken from None


def revocation_message(row: RevocationRow) -> events.TokensRevoked:
    return events.TokensRevoked(token_id=row.token_id, subject=row.subject,
                                issued_before=row.issued_before, expires=row.expires)


class Iam:
    def __init__(self, engine: Engine, settings: IamSettings, issuer: TokenIssuer,
                 revocations: RevocationList) -> None:
        self.engine = engine
        self.settings = settings
        self.issuer = issuer
        self.passwords = Passwords(settings)
        self.revocations = revocations
        self.outbox = Outbox("oih-iam")

    def _emit(self, session: Session, event_type: str, payload: Message, *, tenant_id: str = "",
              subject: str = "") -> None:
        """Announce a change in the transaction that makes it (transactional outbox)."""
        self.outbox.add(session, event_type, payload, tenant=tenant_name(tenant_id),
                        subject=subject)

    # ----------------------------------------------------------------- bootstrap

    def bootstrap(self, internal_client_id: str = "", internal_secret: str = "") -> str | None:
        """Create built-in roles, the platform tenant and the first admin; returns the admin's
        generated password when one was generated (to be shown once), else None."""
        generated = None
        with transaction(self.engine) as session:
            for role in catalogue.BUILT_IN_ROLES:
                row = session.get(RoleRow, role.id) or RoleRow(id=role.id, display_name="")
                row.display_name = role.display_name
                row.description = role.description
                row.permissions = list(role.permissions)
                row.built_in = True
                session.add(row)
            if session.get(TenantRow, PLATFORM_TENANT) is None:
                session.add(TenantRow(id=PLATFORM_TENANT, display_name="platform"))
            has_admin = session.exec(
                select(UserRow).where(UserRow.username == self.settings.admin_username)
            ).first()
            if has_admin is None:
                password = self.settings.admin_password
                if not password:
                    password = generated = new_client_secret()[5:29]
                session.add(UserRow(
                    id=uuid.uuid4().hex, username=self.settings.admin_username,
                    display_name="Platform administrator", tenant_id=PLATFORM_TENANT,
                    roles=["roles/platform-admin"], password_hash=self.passwords.hash(password),
                ))
            if internal_client_id and internal_secret:
                self._ensure_internal_account(session, internal_client_id, internal_secret)
            for revocation in session.exec(select(RevocationRow)):
                self._remember(revocation)
        return generated

    def _ensure_internal_account(self, session: Session, client_id: str, secret: str) -> None:
        """The platform's own services call each other with this account's tokens."""
        row = session.exec(
            select(ServiceAccountRow).where(ServiceAccountRow.client_id == client_id)
        ).first() or ServiceAccountRow(
            id=client_id, client_id=client_id, display_name="OIH platform services",
            tenant_id=PLATFORM_TENANT, secret_hash="",
        )
        row.roles = ["roles/platform-admin"]
        # "secrets.resolve" is held by name, not only through "all": the Secrets service hands
        # values to service tokens that carry it explicitly, never to administrators as such.
        row.permissions = ["secrets.resolve"]
        row.secret_hash = hash_client_secret(secret)
        row.state = ACTIVE
        session.add(row)

    # ----------------------------------------------------------------- tokens

    def login(self, username: str, password: str) -> Issued:
        username = username.strip().lower()
        with Session(self.engine) as session:
            user = session.exec(select(UserRow).where(UserRow.username == username)).first()
            self._refuse_if_locked(user or session.get(UnknownLoginRow, username), utcnow())
        # The memory-hard check runs outside the write transaction (on SQLite that holds the
        # database's write lock); the outcome is then recorded against the row as it is now.
        verified = self.passwords.verify(user.password_hash if user else None, password)
        now = utcnow()
        try:
            return self._record_login(user, username, verified, now)
        except IntegrityError:
            # (PostgreSQL) a concurrent failure created the same unknown username's counter
            # first: that username has no user, so this is a failure too.
            raise Unauthenticated("wrong username or password", reason="BAD_CREDENTIALS") from None

    def _record_login(self, user: UserRow | None, username: str, verified: bool,
                      now: datetime) -> Issued:
        with transaction(self.engine, lock=True) as session:
            current = None
            if user is not None:
                current = session.exec(
                    select(UserRow).where(UserRow.id == user.id).with_for_update()
                ).first()
            # A username without a user is counted and locked like one, so the answers (401s,
            # then 429) do not tell an attacker which usernames exist.
            counter = current or self._unknown_login(session, username, now)
            # Concurrent failures may have locked the account while we were checking.
            self._refuse_if_locked(counter, now)
            # A password changed (or the user deleted) meanwhile voids the check.
            if (verified and user is not None and current is not None
                    and current.password_hash == user.password_hash):
                if current.failed_logins or current.locked_until is not None:
                    current.failed_logins = 0
                    current.locked_until = None
                    session.add(current)
                failure = None
            else:
                self._count_failure(counter, now)
                session.add(counter)
                self._emit(session, "oih.iam.login.failed", events.LoginFailed(username=username),
                           tenant_id=current.tenant_id if current else "")
                failure = Unauthenticated("wrong username or password", reason="BAD_CREDENTIALS")
        if failure is not None:
            log.info("login failed", extra={"username": username})
            raise failure
        assert current is not None
        with Session(self.engine) as session:
            self._require_active(session, current.state, current.tenant_id)
            return self._issue(session, f"users/{current.id}", current.tenant_id, "user",
                               current.roles, current.permissions)

    def _unknown_login(self, session: Session, username: str, now: datetime) -> UnknownLoginRow:
        """The failure counter of a username no user has (created at its first failure)."""
        row = session.exec(select(UnknownLoginRow).where(UnknownLoginRow.username == username)
                           .with_for_update()).first()
        if row is None:
            # Forget usernames whose last lock ran out long ago: the table stays small however
            # many names are tried.
            horizon = now - timedelta(seconds=2 * self.settings.lock_max_seconds)
            session.execute(delete(UnknownLoginRow)
                            .where(col(UnknownLoginRow.update_time) < horizon))
            row = UnknownLoginRow(username=username)
        row.update_time = now
        return row

    @staticmethod
    def _refuse_if_locked(user: UserRow | UnknownLoginRow | None, now: datetime) -> None:
        locked_until = aware(user.locked_until) if user and user.locked_until else None
        if locked_until is not None and locked_until > now:
            raise ResourceExhausted(
                "too many failed logins; the account is locked for a while",
                retry_after=(locked_until - now).total_seconds(), reason="ACCOUNT_LOCKED",
            )

    def _count_failure(self, user: UserRow | UnknownLoginRow, now: datetime) -> None:
        user.failed_logins += 1
        beyond = user.failed_logins - self.settings.lock_after_failures
        if beyond >= 0:
            seconds = min(self.settings.lock_base_seconds * 2**beyond,
                          self.settings.lock_max_seconds)
            user.locked_until = now + timedelta(seconds=seconds)

    def exchange(self, client_id: str, client_secret: str) -> Issued:
        with Session(self.engine) as session:
            account = session.exec(
                select(ServiceAccountRow).where(ServiceAccountRow.client_id == client_id)
            ).first()
            if account is None or not client_secret_matches(account.secret_hash, client_secret):
                raise Unauthenticated("wrong client id or secret", reason="BAD_CREDENTIALS")
            self._require_active(session, account.state, account.tenant_id)
            return self._issue(session, f"service-accounts/{account.id}", account.tenant_id,
                               "service", account.roles, account.permissions)

    @staticmethod
    def _require_active(session: Session, state: int, tenant_id: str) -> None:
        tenant = session.get(TenantRow, tenant_id)
        if state != ACTIVE or tenant is None or tenant.state != ACTIVE:
            raise Unauthenticated("the account or its tenant is disabled", reason="DISABLED")

    def _issue(self, session: Session, subject: str, tenant_id: str, typ: str,
               roles: list[str], direct: list[str]) -> Issued:
        return self.issuer.issue(
            subject=subject, tenant=tenant_name(tenant_id), typ=typ, roles=list(roles),
            permissions=sorted(self._effective(session, roles, direct)),
            not_before=int(self.revocations.subject_cutoff(subject)),
        )

    @staticmethod
    def _effective(session: Session, roles: Iterable[str], direct: Iterable[str]) -> set[str]:
        granted = set(direct)
        for role_name in roles:
            row = session.get(RoleRow, role_name.removeprefix("roles/"))
            if row is not None:
                granted.update(row.permissions)
        return granted

    def effective_permissions(self, roles: Iterable[str], direct: Iterable[str]) -> list[str]:
        with Session(self.engine) as session:
            return sorted(self._effective(session, roles, direct))

    def revoke(self, *, token_id: str = "", subject: str = "", expires: int,
               session: Session | None = None) -> None:
        """Refuse a token id, or every token a subject holds now, in every service: the row
        and the `oih.iam.token.revoked` event commit together; services follow the event."""
        row = RevocationRow(token_id=token_id, subject=subject, expires=expires,
                            issued_before=int(time.time()) + 1 if subject else 0)
        if session is None:
            with transaction(self.engine) as own:
                self._store_revocation(own, row)
        else:
            self._store_revocation(session, row)
        self._remember(row)

    def _store_revocation(self, session: Session, row: RevocationRow) -> None:
        session.add(row)
        self._emit(session, "oih.iam.token.revoked", revocation_message(row),
                   subject=row.subject or row.token_id)

    def list_revocations(self) -> list[events.TokensRevoked]:
        """The revocations whose tokens may still be unexpired."""
        with Session(self.engine) as session:
            rows = session.exec(select(RevocationRow).where(RevocationRow.expires > time.time()))
            return [revocation_message(row) for row in rows]

    def _remember(self, row: RevocationRow) -> None:
        if row.token_id:
            self.revocations.revoke_token(row.token_id, row.expires)
        if row.subject:
            self.revocations.revoke_subject(row.subject, row.issued_before, row.expires)

    def _revoke_subject(self, session: Session, subject: str) -> None:
        self.revoke(subject=subject, expires=int(time.time()) + self.issuer.lifetime + 60,
                    session=session)

    # ----------------------------------------------------------------- helpers

    def _visible_tenant(self, session: Session, caller: Principal, tenant: str,
                        field: str) -> str:
        """The tenant id a new object goes to: the caller's own unless an admin names one."""
        if not tenant:
            return caller.tenant.removeprefix("tenants/")
        tenant_id = resource_id(tenant, "tenants", field)
        if not caller.sees_tenant(tenant) or session.get(TenantRow, tenant_id) is None:
            raise NotFound("tenant", tenant)
        return tenant_id

    def _check_grants(self, session: Session, caller: Principal, tenant_id: str,
                      roles: Sequence[str], direct: Sequence[str], prefix: str) -> None:
        """The caller may grant only what it holds, and only roles of the target's tenant."""
        unknown = catalogue.unknown(list(direct))
        if unknown:
            raise InvalidArgument.field(f"{prefix}.permissions",
                                        f"unknown permissions: {', '.join(unknown)}")
        for index, role_name in enumerate(roles):
            role_id = resource_id(role_name, "roles", f"{prefix}.roles[{index}]")
            role = session.get(RoleRow, role_id)
            if role is None or (role.tenant_id and role.tenant_id != tenant_id) or (
                role.tenant_id and not caller.sees_tenant(tenant_name(role.tenant_id))
            ):
                raise NotFound("role", role_name)
        wanted = self._effective(session, roles, direct)
        missing = sorted(p for p in wanted if not caller.has(p))
        if missing:
            raise PermissionDenied(
                f"cannot grant permissions the caller does not hold: {', '.join(missing)}",
                reason="GRANT_EXCEEDS_CALLER",
            )

    def _check_takeover(self, session: Session, caller: Principal,
                        row: UserRow | ServiceAccountRow, name: str) -> None:
        """Whoever sets a principal's credentials can act as it: only a caller holding every
        permission of that principal may (else a tenant admin could take over a more powerful
        account of its tenant)."""
        missing = sorted(p for p in self._effective(session, row.roles, row.permissions)
                         if not caller.has(p))
        if missing:
            raise PermissionDenied(
                f"cannot set the credentials of {name}: it holds permissions the caller does "
                f"not: {', '.join(missing)}", reason="GRANT_EXCEEDS_CALLER")

    def _get_scoped(self, session: Session, model: type[Row], name: str, collection: str,
                    kind: str, caller: Principal, field: str = "name") -> Row:
        row = session.get(model, resource_id(name, collection, field))
        tenant_id = getattr(row, "tenant_id", None) if row is not None else None
        if row is None or not caller.sees_tenant(tenant_name(str(tenant_id))):
            raise NotFound(kind, name)
        return row

    @staticmethod
    def _mask(paths: Sequence[str], set_fields: Iterable[str], allowed: set[str],
              field: str = "update_mask") -> list[str]:
        chosen = list(paths) or [f for f in set_fields if f in allowed]
        bad = [p for p in chosen if p not in allowed]
        if bad:
            raise InvalidArgument.field(
                field, f"cannot update {', '.join(bad)}; allowed: {', '.join(sorted(allowed))}"
            )
        return chosen

    # ----------------------------------------------------------------- tenants

    def create_tenant(self, display_name: str) -> TenantRow:
        display_name = display_name.strip()
        if not display_name:
            raise InvalidArgument.field("tenant.display_name", "required field is missing")
        taken = AlreadyExists(f"a tenant named {display_name!r} exists")
        with _unique(taken), transaction(self.engine) as session:
            if session.exec(select(TenantRow).where(TenantRow.display_name == display_name)).first():
                raise taken
            row = TenantRow(id=uuid.uuid4().hex, display_name=display_name)
            session.add(row)
            self._emit(session, "oih.iam.tenant.created",
                       events.TenantChanged(tenant=tenant_name(row.id)), tenant_id=row.id,
                       subject=tenant_name(row.id))
        return row

    def get_tenant(self, caller: Principal, name: str) -> TenantRow:
        with Session(self.engine) as session:
            row = session.get(TenantRow, resource_id(name, "tenants", "name"))
            if row is None or not caller.sees_tenant(name):
                raise NotFound("tenant", name)
            return row

    def list_tenants(self, caller: Principal, page_size: int,
                     page_token: str) -> tuple[Sequence[TenantRow], str]:
        query = select(TenantRow).order_by(col(TenantRow.create_time), col(TenantRow.id))
        if not caller.is_platform_admin:
            query = query.where(TenantRow.id == caller.tenant.removeprefix("tenants/"))
        with Session(self.engine) as session:
            return paging.page(session, query, page_size, page_token, "tenants")

    def update_tenant(self, name: str, paths: Sequence[str], display_name: str,
                      state: int) -> TenantRow:
        chosen = self._mask(paths, [f for f, v in (("display_name", display_name),
                                                   ("state", state)) if v],
                            {"display_name", "state"})
        with transaction(self.engine) as session:
            row = session.get(TenantRow, resource_id(name, "tenants", "tenant.name"))
            if row is None:
                raise NotFound("tenant", name)
            if "display_name" in chosen:
                if not display_name.strip():
                    raise InvalidArgument.field("tenant.display_name", "must not be empty")
                row.display_name = display_name.strip()
            if "state" in chosen:
                row.state = state or ACTIVE
                if row.state == DISABLED:
                    # Like disabling a user: its members' tokens are refused at once.
                    self._revoke_members(session, row.id)
            row.update_time = utcnow()
            session.add(row)
            self._emit(session, "oih.iam.tenant.updated",
                       events.TenantChanged(tenant=name), tenant_id=row.id, subject=name)
        return row

    def _revoke_members(self, session: Session, tenant_id: str) -> None:
        """Revoke the tokens of every user and service account of a tenant."""
        for user in session.exec(select(UserRow).where(UserRow.tenant_id == tenant_id)):
            self._revoke_subject(session, f"users/{user.id}")
        accounts = select(ServiceAccountRow).where(ServiceAccountRow.tenant_id == tenant_id)
        for account in session.exec(accounts):
            self._revoke_subject(session, f"service-accounts/{account.id}")

    def delete_tenant(self, name: str) -> None:
        tenant_id = resource_id(name, "tenants", "name")
        if tenant_id == PLATFORM_TENANT:
            raise FailedPrecondition("the platform tenant cannot be deleted",
                                     reason="PLATFORM_TENANT", subject=name)
        with transaction(self.engine) as session:
            row = session.get(TenantRow, tenant_id)
            if row is None:
                raise NotFound("tenant", name)
            self._revoke_members(session, tenant_id)
            for user in session.exec(select(UserRow).where(UserRow.tenant_id == tenant_id)):
                session.delete(user)
            accounts = select(ServiceAccountRow).where(ServiceAccountRow.tenant_id == tenant_id)
            for account in session.exec(accounts):
                session.delete(account)
            for role in session.exec(select(RoleRow).where(RoleRow.tenant_id == tenant_id)):
                session.delete(role)
            session.delete(row)
            # Other services remove the tenant's flows, components, schedules and snapshots.
            self._emit(session, "oih.iam.tenant.deleted", events.TenantChanged(tenant=name),
                       tenant_id=tenant_id, subject=name)

    # ----------------------------------------------------------------- users

    def _update_principal(self, session: Session, caller: Principal,
                          row: UserRow | ServiceAccountRow, name: str, chosen: Sequence[str],
                          field: str, *, display_name: str, roles: list[str],
                          permissions: list[str], state: int) -> None:
        """The masked fields users and service accounts share: grants are checked; taking a
        permission away or disabling revokes the principal's tokens at once (they carry the old
        permissions until they expire otherwise)."""
        if "roles" in chosen or "permissions" in chosen:
            new_roles = roles if "roles" in chosen else row.roles
            new_direct = permissions if "permissions" in chosen else row.permissions
            self._check_grants(session, caller, row.tenant_id, new_roles, new_direct, field)
            before = self._effective(session, row.roles, row.permissions)
            row.roles, row.permissions = list(new_roles), list(new_direct)
            if before - self._effective(session, row.roles, row.permissions):
                self._revoke_subject(session, name)
        if "display_name" in chosen:
            row.display_name = display_name
        if "state" in chosen:
            row.state = state or ACTIVE
            if row.state == DISABLED:
                self._revoke_subject(session, name)

    def _revoke_holders(self, session: Session, role: str, tenant_id: str) -> None:
        """A tenant role lost permissions (or is gone): its holders' tokens carry too much now.
        Only the role's own tenant can hold it."""
        for user in session.exec(select(UserRow).where(UserRow.tenant_id == tenant_id)):
            if role in user.roles:
                self._revoke_subject(session, f"users/{user.id}")
        accounts = select(ServiceAccountRow).where(ServiceAccountRow.tenant_id == tenant_id)
        for account in session.exec(accounts):
            if role in account.roles:
                self._revoke_subject(session, f"service-accounts/{account.id}")

    def _remove_from_holders(self, session: Session, role: str, tenant_id: str) -> None:
        """A deleted role leaves its holders (else every later change of their grants would
        name a role that does not exist), and their tokens, which carry its permissions, are
        revoked."""
        for user in session.exec(select(UserRow).where(UserRow.tenant_id == tenant_id)):
            if role in user.roles:
                user.roles = [r for r in user.roles if r != role]
                user.update_time = utcnow()
                session.add(user)
                self._revoke_subject(session, f"users/{user.id}")
                self._emit_user(session, "oih.iam.user.updated", user)
        accounts = select(ServiceAccountRow).where(ServiceAccountRow.tenant_id == tenant_id)
        for account in session.exec(accounts):
            if role in account.roles:
                account.roles = [r for r in account.roles if r != role]
                account.update_time = utcnow()
                session.add(account)
                self._revoke_subject(session, f"service-accounts/{account.id}")
                self._emit_account(session, "oih.iam.service_account.updated", account)

    def _check_password(self, password: str, field: str) -> None:
        if len(password) < MIN_PASSWORD_LENGTH:
            raise InvalidArgument.field(field, f"must be at least {MIN_PASSWORD_LENGTH} characters")

    def create_user(self, caller: Principal, *, username: str, display_name: str, tenant: str,
                    roles: list[str], permissions: list[str], state: int,
                    password: str) -> UserRow:
        username = username.strip().lower()
        if "@" not in username or len(username) > 254 or " " in username:
            raise InvalidArgument.field("user.username", "must be an email address")
        self._check_password(password, "password")
        password_hash = self.passwords.hash(password)  # slow: outside the write transaction
        taken = AlreadyExists(f"the username {username!r} is taken", reason="USERNAME_TAKEN")
        with _unique(taken), transaction(self.engine) as session:
            tenant_id = self._visible_tenant(session, caller, tenant, "user.tenant")
            self._check_grants(session, caller, tenant_id, roles, permissions, "user")
            if session.exec(select(UserRow).where(UserRow.username == username)).first():
                raise taken
            row = UserRow(
                id=uuid.uuid4().hex, username=username, display_name=display_name,
                tenant_id=tenant_id, roles=list(roles), permissions=list(permissions),
                state=state or ACTIVE, password_hash=password_hash,
            )
            session.add(row)
            self._emit_user(session, "oih.iam.user.created", row)
        return row

    def _emit_user(self, session: Session, event_type: str, row: UserRow) -> None:
        name = f"users/{row.id}"
        self._emit(session, event_type,
                   events.UserChanged(user=name, tenant=tenant_name(row.tenant_id)),
                   tenant_id=row.tenant_id, subject=name)

    def get_user(self, caller: Principal, name: str) -> UserRow:
        with Session(self.engine) as session:
            return self._get_scoped(session, UserRow, name, "users", "user", caller)

    def list_users(self, caller: Principal, page_size: int, page_token: str,
                   tenant: str) -> tuple[Sequence[UserRow], str]:
        query = select(UserRow).order_by(col(UserRow.create_time), col(UserRow.id))
        if not caller.is_platform_admin:
            query = query.where(UserRow.tenant_id == caller.tenant.removeprefix("tenants/"))
        elif tenant:
            query = query.where(UserRow.tenant_id == resource_id(tenant, "tenants", "tenant"))
        with Session(self.engine) as session:
            return paging.page(session, query, page_size, page_token, f"users:{tenant}")

    def update_user(self, caller: Principal, name: str, paths: Sequence[str], *,
                    display_name: str, roles: list[str], permissions: list[str], state: int,
                    password: str) -> UserRow:
        set_fields = [f for f, v in (("display_name", display_name), ("roles", roles),
                                     ("permissions", permissions), ("state", state)) if v]
        chosen = self._mask(paths, set_fields, {"display_name", "roles", "permissions", "state"})
        password_hash = ""
        if password:
            self._check_password(password, "password")
            password_hash = self.passwords.hash(password)  # slow: outside the transaction
        with transaction(self.engine) as session:
            row = self._get_scoped(session, UserRow, name, "users", "user", caller, "user.name")
            self._update_principal(session, caller, row, name, chosen, "user",
                                   display_name=display_name, roles=roles,
                                   permissions=permissions, state=state)
            if password_hash:
                self._check_takeover(session, caller, row, name)
                row.password_hash = password_hash
                row.failed_logins, row.locked_until = 0, None
                # A new password (after a leak, say) ends the sessions of the old one.
                self._revoke_subject(session, name)
            row.update_time = utcnow()
            session.add(row)
            disabled = "state" in chosen and row.state == DISABLED
            self._emit_user(session, "oih.iam.user.disabled" if disabled
                            else "oih.iam.user.updated", row)
        return row

    def delete_user(self, caller: Principal, name: str) -> None:
        if name == caller.subject:
            raise FailedPrecondition("a user cannot delete itself", reason="SELF_DELETE",
                                     subject=name)
        with transaction(self.engine) as session:
            row = self._get_scoped(session, UserRow, name, "users", "user", caller)
            self._revoke_subject(session, name)
            session.delete(row)
            self._emit_user(session, "oih.iam.user.deleted", row)

    # ----------------------------------------------------------------- roles

    def create_role(self, caller: Principal, display_name: str, description: str,
                    permissions: list[str]) -> RoleRow:
        tenant_id = caller.tenant.removeprefix("tenants/")
        restricted = sorted(set(permissions) & catalogue.RESTRICTED)
        if restricted:
            raise InvalidArgument.field("role.permissions",
                                        f"tenant roles cannot hold {', '.join(restricted)}")
        with transaction(self.engine) as session:
            self._check_grants(session, caller, tenant_id, [], permissions, "role")
            duplicate = select(RoleRow).where(RoleRow.tenant_id == tenant_id,
                                              RoleRow.display_name == display_name)
            if session.exec(duplicate).first():
                raise AlreadyExists(f"a role named {display_name!r} exists")
            row = RoleRow(id=uuid.uuid4().hex, display_name=display_name,
                          description=description, tenant_id=tenant_id,
                          permissions=list(permissions))
            session.add(row)
        return row

    def _visible_role(self, session: Session, caller: Principal, name: str,
                      field: str = "name") -> RoleRow:
        row = session.get(RoleRow, resource_id(name, "roles", field))
        if row is None or (row.tenant_id and not caller.sees_tenant(tenant_name(row.tenant_id))):
            raise NotFound("role", name)
        return row

    def get_role(self, caller: Principal, name: str) -> RoleRow:
        with Session(self.engine) as session:
            return self._visible_role(session, caller, name)

    def list_roles(self, caller: Principal, page_size: int,
                   page_token: str) -> tuple[Sequence[RoleRow], str]:
        query = select(RoleRow).order_by(col(RoleRow.built_in).desc(), col(RoleRow.id))
        if not caller.is_platform_admin:
            own = caller.tenant.removeprefix("tenants/")
            query = query.where(or_(RoleRow.tenant_id == "", RoleRow.tenant_id == own))
        with Session(self.engine) as session:
            return paging.page(session, query, page_size, page_token, "roles")

    def _mutable_role(self, session: Session, caller: Principal, name: str,
                      field: str) -> RoleRow:
        row = self._visible_role(session, caller, name, field)
        if row.built_in:
            raise FailedPrecondition("built-in roles cannot be changed", reason="BUILT_IN_ROLE",
                                     subject=name)
        return row

    def update_role(self, caller: Principal, name: str, paths: Sequence[str], *,
                    display_name: str, description: str, permissions: list[str]) -> RoleRow:
        set_fields = [f for f, v in (("display_name", display_name),
                                     ("description", description),
                                     ("permissions", permissions)) if v]
        chosen = self._mask(paths, set_fields, {"display_name", "description", "permissions"})
        with transaction(self.engine) as session:
            row = self._mutable_role(session, caller, name, "role.name")
            before = set(row.permissions)
            if "permissions" in chosen:
                restricted = sorted(set(permissions) & catalogue.RESTRICTED)
                if restricted:
                    raise InvalidArgument.field(
                        "role.permissions", f"tenant roles cannot hold {', '.join(restricted)}")
                self._check_grants(session, caller, row.tenant_id, [], permissions, "role")
                row.permissions = list(permissions)
                if before - set(row.permissions):
                    self._revoke_holders(session, name, row.tenant_id)
            if "display_name" in chosen:
                row.display_name = display_name
            if "description" in chosen:
                row.description = description
            session.add(row)
        return row

    def delete_role(self, caller: Principal, name: str) -> None:
        with transaction(self.engine) as session:
            row = self._mutable_role(session, caller, name, "name")
            session.delete(row)
            self._remove_from_holders(session, name, row.tenant_id)

    # ----------------------------------------------------------------- service accounts

    def create_service_account(self, caller: Principal, *, display_name: str, tenant: str,
                               roles: list[str], permissions: list[str],
                               state: int) -> tuple[ServiceAccountRow, str]:
        if not display_name.strip():
            raise InvalidArgument.field("service_account.display_name",
                                        "required field is missing")
        secret = new_client_secret()
        with transaction(self.engine) as session:
            tenant_id = self._visible_tenant(session, caller, tenant, "service_account.tenant")
            self._check_grants(session, caller, tenant_id, roles, permissions, "service_account")
            account_id = uuid.uuid4().hex
            row = ServiceAccountRow(
                id=account_id, client_id=account_id, display_name=display_name.strip(),
                tenant_id=tenant_id, roles=list(roles), permissions=list(permissions),
                state=state or ACTIVE, secret_hash=hash_client_secret(secret),
            )
            session.add(row)
            self._emit_account(session, "oih.iam.service_account.created", row)
        return row, secret

    def _emit_account(self, session: Session, event_type: str, row: ServiceAccountRow) -> None:
        name = f"service-accounts/{row.id}"
        self._emit(session, event_type, events.ServiceAccountChanged(
            service_account=name, tenant=tenant_name(row.tenant_id)),
            tenant_id=row.tenant_id, subject=name)

    def get_service_account(self, caller: Principal, name: str) -> ServiceAccountRow:
        with Session(self.engine) as session:
            return self._get_scoped(session, ServiceAccountRow, name, "service-accounts",
                                    "service_account", caller)

    def list_service_accounts(self, caller: Principal, page_size: int,
                              page_token: str) -> tuple[Sequence[ServiceAccountRow], str]:
        query = select(ServiceAccountRow).order_by(col(ServiceAccountRow.create_time),
                                                   col(ServiceAccountRow.id))
        if not caller.is_platform_admin:
            own = caller.tenant.removeprefix("tenants/")
            query = query.where(ServiceAccountRow.tenant_id == own)
        with Session(self.engine) as session:
            return paging.page(session, query, page_size, page_token, "service-accounts")

    def update_service_account(self, caller: Principal, name: str, paths: Sequence[str], *,
                               display_name: str, roles: list[str], permissions: list[str],
                               state: int) -> ServiceAccountRow:
        set_fields = [f for f, v in (("display_name", display_name), ("roles", roles),
                                     ("permissions", permissions), ("state", state)) if v]
        chosen = self._mask(paths, set_fields, {"display_name", "roles", "permissions", "state"})
        with transaction(self.engine) as session:
            row = self._get_scoped(session, ServiceAccountRow, name, "service-accounts",
                                   "service_account", caller, "service_account.name")
            self._update_principal(session, caller, row, name, chosen, "service_account",
                                   display_name=display_name, roles=roles,
                                   permissions=permissions, state=state)
            row.update_time = utcnow()
            session.add(row)
            self._emit_account(session, "oih.iam.service_account.updated", row)
        return row

    def delete_service_account(self, caller: Principal, name: str) -> None:
        with transaction(self.engine) as session:
            row = self._get_scoped(session, ServiceAccountRow, name, "service-accounts",
                                   "service_account", caller)
            self._revoke_subject(session, name)
            session.delete(row)
            self._emit_account(session, "oih.iam.service_account.deleted", row)

    def reset_secret(self, caller: Principal, name: str) -> tuple[ServiceAccountRow, str]:
        secret = new_client_secret()
        with transaction(self.engine) as session:
            row = self._get_scoped(session, ServiceAccountRow, name, "service-accounts",
                                   "service_account", caller)
            self._check_takeover(session, caller, row, name)
            row.secret_hash = hash_client_secret(secret)
            row.update_time = utcnow()
            session.add(row)
            self._revoke_subject(session, name)
        return row, secret
