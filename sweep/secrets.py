"""Keep database passwords out of logs, files and checkpoints."""

from __future__ import annotations

from sqlalchemy.engine import make_url


def mask_url(url: str) -> str:
    """Return `url` with any password replaced by ``***`` (safe to print or store)."""
    try:
        parsed = make_url(url)
    except Exception:  # not a SQLAlchemy URL: mask anything between ':' and '@'
        if "@" in url and "://" in url:
            scheme, rest = url.split("://", 1)
            creds, host = rest.rsplit("@", 1)
            user = creds.split(":", 1)[0]
            return f"{scheme}://{user}:***@{host}"
        return url
    if parsed.password is None:
        return url
    return parsed.render_as_string(hide_password=True)
