"""Reading identity out of claim sets, the same way for bearer tokens and ID tokens.

Used by ``tokens`` (bearer JWTs) and ``oidc`` (ID tokens and userinfo), so a
claim name, a group list or ``email_verified`` means one thing everywhere.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple

_GROUP_SEPARATORS = re.compile(r"[,\s]+")


def claim(payload: Dict[str, Any], name: str) -> Any:
    """A claim by name; a dotted name (``realm_access.roles``) walks nested objects."""
    if name in payload:
        return payload[name]
    if "." not in name:
        return None
    node: Any = payload
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def groups(value: Any) -> Tuple[str, ...]:
    """Group names from a list, or a comma/space separated string; anything else is no groups."""
    if isinstance(value, str):
        return tuple(g for g in _GROUP_SEPARATORS.split(value) if g)
    if isinstance(value, list):
        return tuple(g for g in value if isinstance(g, str) and g)
    return ()


def string(value: Any) -> Optional[str]:
    """A non-empty string claim, else None."""
    return value if isinstance(value, str) and value else None


def email_verified(value: Any) -> Optional[bool]:
    """``email_verified`` as a bool; some providers send the strings "true"/"false"."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None
