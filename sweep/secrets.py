"""Keep database passwords out of logs, files and checkpoints."""

from __future__ import annotations

import re

from sqlalchemy.engine import make_url

MASK = "***"
# libpq / psycopg also take the password as a query parameter (`?password=...`).
_SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pwd"})
_QUERY_SECRET_RE = re.compile(r"(?i)([?&](?:password|passwd|pwd)=)[^&#]*")


def mask_url(url: str) -> str:
    """Return `url` with any password (userinfo or `?password=` query) replaced by ``***``.

    Safe to print or store. A string SQLAlchemy cannot parse is masked textually.
    """
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL: mask textually
        masked = _QUERY_SECRET_RE.sub(lambda m: m.group(1) + MASK, url)
        if "@" in masked and "://" in masked:
            scheme, rest = masked.split("://", 1)
            creds, host = rest.rsplit("@", 1)
            if ":" in creds:
                user = creds.split(":", 1)[0]
                return f"{scheme}://{user}:{MASK}@{host}"
        return masked
    if parsed.password is None and not any(k.lower() in _SECRET_QUERY_KEYS for k in parsed.query):
        return url
    return _QUERY_SECRET_RE.sub(lambda m: m.group(1) + MASK, parsed.render_as_string(hide_password=True))
