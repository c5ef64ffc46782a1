"""Where `oih` keeps the gateway URL and the caller's token: one YAML file, mode 0600.

    $OIH_CONFIG, else $XDG_CONFIG_HOME/oih/config.yaml, else ~/.config/oih/config.yaml

`oih login` writes it. A service-account login also keeps the client id and secret, so the
CLI renews the token by itself (`POST /v1/tokens:exchange`) when it is about to expire; a user
login keeps only the token (never the password) and asks for `oih login` again when it expired.
`$OIH_GATEWAY` and `$OIH_TOKEN` override the file (for scripts and CI).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
#: Renew this long before the token expires, so a command never starts with a dying token.
RENEW_BEFORE_SECONDS = 60


@dataclass
class Config:
    gateway: str = DEFAULT_GATEWAY
    token: str = ""
    #: Unix time at which `token` expires (0: unknown).
    expires_at: float = 0.0
    #: Who logged in: a username, or a service account's client id.
    principal: str = ""
    #: Only for service-account logins: what renews the token.
    client_id: str = ""
    client_secret: str = ""

    def expired(self, now: float | None = None) -> bool:
        if not self.expires_at:
            return False
        return (now if now is not None else time.time()) >= self.expires_at - RENEW_BEFORE_SECONDS


def config_path() -> Path:
    if os.environ.get("OIH_CONFIG"):
        return Path(os.environ["OIH_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "oih" / "config.yaml"


def load(path: Path | None = None) -> Config:
    """The saved config (defaults when there is none), with the environment's overrides."""
    target = path or config_path()
    data: dict[str, Any] = {}
    if target.exists():
        loaded = yaml.safe_load(target.read_text()) or {}
        if isinstance(loaded, dict):
            known = {f.name for f in fields(Config)}
            data = {k: v for k, v in loaded.items() if k in known}
    config = Config(**data)
    if os.environ.get("OIH_GATEWAY"):
        config.gateway = os.environ["OIH_GATEWAY"]
    if os.environ.get("OIH_TOKEN"):
        config.token, config.expires_at = os.environ["OIH_TOKEN"], 0.0
    return config


def save(config: Config, path: Path | None = None) -> Path:
    """Write the config readable by its owner only (created 0600, never world-readable)."""
    target = path or config_path()
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = target.with_name(target.name + ".tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        yaml.safe_dump(asdict(config), handle, sort_keys=False)
    os.replace(temporary, target)
    return target
