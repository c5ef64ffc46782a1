"""Sessions and tokens: login (with lockout), client-credential exchange, and revocation.

A revocation row and its `oih.iam.token.revoked` event commit together; every service (this
one included, through `remember`) follows the event."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from oih.events.v1 import iam_pb2 as events
from oih.iam.v1 import iam_pb2
from oih_iam.credentials import client_secret_matches
from oih_iam.logic.access import effective
from oih_iam.logic.context import Context, tenant_name
from oih_iam.models import RevocationRow, ServiceAccountRow, TenantRow, UnknownLoginRow, UserRow
from oih_iam.tokens import Issued
from oih_runtime.clock import aware, utcnow
from oih_runtime.db import transaction
from oih_runtime.errors import ResourceExhausted, Unauthenticated

log = logging.getLogger(__name__)


def revocation_message(row: RevocationRow) -> events.TokensRevoked:
    return events.TokensRevoked(token_id=row.token_id, subject=row.subject,
                                issued_before=row.issued_before, expires=row.expires)


def revoke(ctx: Context, *, token_id: str = "", subject: str = "", expires: int,
           session: Session | None = None) -> None:
    """Refuse a token id, or every token a subject holds now, in every service (in `session`'s
    transaction when given, else in one of its own)."""
    row = RevocationRow(token_id=token_id, subject=subject, expires=expires,
                        issued_before=int(time.time()) + 1 if subject else 0)
    if session is None:
        with transaction(ctx.engine) as own:
            _store(ctx, own, row)
    else:
        _store(ctx, session, row)
    remember(ctx, row)


def revoke_subject(ctx: Context, session: Session, subject: str) -> None:
    """End every session `subject` holds now (its grants shrank, it was disabled or deleted)."""
    revoke(ctx, subject=subject, expires=int(time.time()) + ctx.issuer.lifetime + 60,
           session=session)


def _store(ctx: Context, session: Session, row: RevocationRow) -> None:
    session.add(row)
    ctx.emit(session, "oih.iam.token.revoked", revocation_message(row),
             subject=row.subject or row.token_id)


def remember(ctx: Context, row: RevocationRow) -> None:
    if row.token_id:
        ctx.revocations.revoke_token(row.token_id, row.expires)
    if row.subject:
        ctx.revocations.revoke_subject(row.subject, row.issued_before, row.expires)


class Sessions:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def login(self, username: str, password: str) -> Issued:
        username = username.strip().lower()
        with Session(self.ctx.engine) as session:
            user = session.exec(select(UserRow).where(UserRow.username == username)).first()
            _refuse_if_locked(user or session.get(UnknownLoginRow, username), utcnow())
        # The memory-hard check runs outside the write transaction (on SQLite that holds the
        # database's write lock); the outcome is then recorded against the row as it is now.
        verified = self.ctx.passwords.verify(user.password_hash if user else None, password)
        now = utcnow()
        try:
            return self._record_login(user, username, verified, now)
        except IntegrityError:
            # (PostgreSQL) a concurrent failure created the same unknown username's counter
            # first: that username has no user, so this is a failure too.
            raise Unauthenticated("wrong username or password", reason="BAD_CREDENTIALS") from None

    def _record_login(self, user: UserRow | None, username: str, verified: bool,
                      now: datetime) -> Issued:
        with transaction(self.ctx.engine, lock=True) as session:
            current = None
            if user is not None:
                current = session.exec(
                    select(UserRow).where(UserRow.id == user.id).with_for_update()
                ).first()
            # A username without a user is counted and locked like one, so the answers (401s,
            # then 429) do not tell an attacker which usernames exist.
            counter = current or self._unknown_login(session, username, now)
            # Concurrent failures may have locked the account while we were checking.
            _refuse_if_locked(counter, now)
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
                self.ctx.emit(session, "oih.iam.login.failed",
                              events.LoginFailed(username=username),
                              tenant_id=current.tenant_id if current else "")
                failure = Unauthenticated("wrong username or password", reason="BAD_CREDENTIALS")
        if failure is not None:
            log.info("login failed", extra={"username": username})
            raise failure
        assert current is not None
        with Session(self.ctx.engine) as session:
            _require_active(session, current.state, current.tenant_id)
            return self._issue(session, f"users/{current.id}", current.tenant_id, "user",
                               current.roles, current.permissions)

    def _unknown_login(self, session: Session, username: str, now: datetime) -> UnknownLoginRow:
        """The failure counter of a username no user has (created at its first failure)."""
        row = session.exec(select(UnknownLoginRow).where(UnknownLoginRow.username == username)
                           .with_for_update()).first()
        if row is None:
            # Forget usernames whose last lock ran out long ago: the table stays small however
            # many names are tried.
            horizon = now - timedelta(seconds=2 * self.ctx.settings.lock_max_seconds)
            session.execute(delete(UnknownLoginRow)
                            .where(col(UnknownLoginRow.update_time) < horizon))
            row = UnknownLoginRow(username=username)
        row.update_time = now
        return row

    def _count_failure(self, user: UserRow | UnknownLoginRow, now: datetime) -> None:
        settings = self.ctx.settings
        user.failed_logins += 1
        beyond = user.failed_logins - settings.lock_after_failures
        if beyond >= 0:
            seconds = min(settings.lock_base_seconds * 2**beyond, settings.lock_max_seconds)
            user.locked_until = now + timedelta(seconds=seconds)

    def exchange(self, client_id: str, client_secret: str) -> Issued:
        with Session(self.ctx.engine) as session:
            account = session.exec(
                select(ServiceAccountRow).where(ServiceAccountRow.client_id == client_id)
            ).first()
            if account is None or not client_secret_matches(account.secret_hash, client_secret):
                raise Unauthenticated("wrong client id or secret", reason="BAD_CREDENTIALS")
            _require_active(session, account.state, account.tenant_id)
            return self._issue(session, f"service-accounts/{account.id}", account.tenant_id,
                               "service", account.roles, account.permissions)

    def _issue(self, session: Session, subject: str, tenant_id: str, typ: str,
               roles: list[str], direct: list[str]) -> Issued:
        return self.ctx.issuer.issue(
            subject=subject, tenant=tenant_name(tenant_id), typ=typ, roles=list(roles),
            permissions=sorted(effective(session, roles, direct)),
            not_before=int(self.ctx.revocations.subject_cutoff(subject)),
        )

    def effective_permissions(self, roles: list[str], direct: list[str]) -> list[str]:
        with Session(self.ctx.engine) as session:
            return sorted(effective(session, roles, direct))

    def revoke(self, *, token_id: str = "", subject: str = "", expires: int) -> None:
        revoke(self.ctx, token_id=token_id, subject=subject, expires=expires)

    def list_revocations(self) -> list[events.TokensRevoked]:
        """The revocations whose tokens may still be unexpired."""
        with Session(self.ctx.engine) as session:
            rows = session.exec(select(RevocationRow).where(RevocationRow.expires > time.time()))
            return [revocation_message(row) for row in rows]


def _refuse_if_locked(user: UserRow | UnknownLoginRow | None, now: datetime) -> None:
    locked_until = aware(user.locked_until) if user and user.locked_until else None
    if locked_until is not None and locked_until > now:
        raise ResourceExhausted(
            "too many failed logins; the account is locked for a while",
            retry_after=(locked_until - now).total_seconds(), reason="ACCOUNT_LOCKED",
        )


def _require_active(session: Session, state: int, tenant_id: str) -> None:
    tenant = session.get(TenantRow, tenant_id)
    if (state != iam_pb2.STATE_ACTIVE or tenant is None
            or tenant.state != iam_pb2.STATE_ACTIVE):
        raise Unauthenticated("the account or its tenant is disabled", reason="DISABLED")
