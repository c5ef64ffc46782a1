"""IAM's own settings (`OIH_IAM_*`), beside the shared ones."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class IamSettings:
    token_lifetime: timedelta
    admin_username: str
    #: Empty: a password is generated on first start and printed once.
    admin_password: str
    argon2_time_cost: int
    argon2_memory_kib: int
    #: Failed logins in a row before the account locks; each further failure doubles the lock.
    lock_after_failures: int
    lock_base_seconds: float
    lock_max_seconds: float
    #: How long a rotated-in signing key is published before it signs: longer than the
    #: gateway's JWKS refetch interval plus the other replicas' key reload (10 s + 30 s).
    key_announce_seconds: float = 60.0

    @classmethod
    def from_env(cls) -> IamSettings:
        env = os.environ
        return cls(
            token_lifetime=timedelta(seconds=int(env.get("OIH_IAM_TOKEN_LIFETIME_SECONDS", "900"))),
            admin_username=env.get("OIH_IAM_ADMIN_USERNAME", "admin@oih.local").lower(),
            admin_password=env.get("OIH_IAM_ADMIN_PASSWORD", ""),
            argon2_time_cost=int(env.get("OIH_IAM_ARGON2_TIME_COST", "2")),
            argon2_memory_kib=int(env.get("OIH_IAM_ARGON2_MEMORY_KIB", "65536")),
            lock_after_failures=int(env.get("OIH_IAM_LOCK_AFTER_FAILURES", "5")),
            lock_base_seconds=float(env.get("OIH_IAM_LOCK_BASE_SECONDS", "30")),
            lock_max_seconds=float(env.get("OIH_IAM_LOCK_MAX_SECONDS", "900")),
            key_announce_seconds=float(env.get("OIH_IAM_KEY_ANNOUNCE_SECONDS", "60")),
        )
