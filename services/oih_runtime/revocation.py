"""Revoked tokens and subjects, kept in memory by every service.

IAM announces revocations as `oih.iam.token.revoked` events (and answers them on start-up);
each service adds them here so a revoked token is refused at once, not only when it expires.
Entries are forgotten once every token they could match has expired.
"""

from __future__ import annotations

import threading
import time

from oih_runtime.principal import Principal


class RevocationList:
    def __init__(self) -> None:
        self._tokens: dict[str, float] = {}  # token id -> forget after (unix seconds)
        self._subjects: dict[str, tuple[float, float]] = {}  # subject -> (issued before, forget)
        self._lock = threading.Lock()

    def revoke_token(self, token_id: str, expires: float) -> None:
        with self._lock:
            self._tokens[token_id] = expires

    def revoke_subject(self, subject: str, issued_before: float, expires: float) -> None:
        """Refuse every token of `subject` issued before `issued_before`."""
        with self._lock:
            previous = self._subjects.get(subject, (0.0, 0.0))
            self._subjects[subject] = (
                max(previous[0], issued_before),
                max(previous[1], expires),
            )

    def subject_cutoff(self, subject: str) -> float:
        """Tokens of `subject` issued before this moment are refused (0 when none are)."""
        entry = self._subjects.get(subject)
        return entry[0] if entry else 0.0

    def is_revoked(self, principal: Principal) -> bool:
        if principal.token_id in self._tokens:
            return True
        entry = self._subjects.get(principal.subject)
        return entry is not None and principal.issued_at < entry[0]

    def forget_expired(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            self._tokens = {k: v for k, v in self._tokens.items() if v > now}
            self._subjects = {k: v for k, v in self._subjects.items() if v[1] > now}
