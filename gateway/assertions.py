"""Identity assertions to upstreams: the caller's identity as a short-lived JWT the upstream can verify.

``routes[].identity_assertion`` adds it (header ``X-Gateway-Assertion``
unless the route names another) to every authenticated request on that
route; the plan step asks ``AssertionSigner.header_for``. Signing costs far
more than the rest of a request, so one JWT per identity and audience is
kept and signed again only when less than a minute of it is left.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable, Optional, Tuple

from .models import Identity
from .signing import KeyRing

ASSERTION_LIFETIME = 300  # seconds: "exp at most 5 minutes after iat"
RESIGN_BEFORE = 60  # a cached assertion with less than this left is signed again
CACHE_SIZE = 10_000


class AssertionSigner:
    def __init__(self, ring: KeyRing, *, clock: Callable[[], float] = time.time, cache_size: int = CACHE_SIZE):
        self.ring = ring
        self.clock = clock
        self.cache_size = cache_size
        self._cache: "OrderedDict[Tuple, Tuple[float, str]]" = OrderedDict()
        self.signed = 0  # for tests and benchmarks: how many were actually signed

    def assertion(self, identity: Identity, audience: str) -> str:
        key = (identity.sub, identity.email, identity.groups, identity.preferred_username, identity.issuer,
               identity.session_id, identity.expires_at, audience)
        now = self.clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] - RESIGN_BEFORE > now:
            self._cache.move_to_end(key)
            return hit[1]
        issued = int(now)
        expires = issued + ASSERTION_LIFETIME
        if identity.expires_at is not None:
            expires = max(issued + 1, min(expires, int(identity.expires_at)))
        claims = {"iss": self.ring.issuer, "aud": audience, "sub": identity.sub, "iat": issued, "exp": expires}
        claims.update(identity.profile())
        token = self.ring.sign(claims)
        self.signed += 1
        self._cache[key] = (float(expires), token)
        self._cache.move_to_end(key)  # a re-signed entry is the most recently used too
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return token

    def header_for(self, route_name: str, setting: Optional[object], identity: Optional[Identity]
                   ) -> Optional[Tuple[str, str]]:
        """(header, JWT) for a route with identity_assertion and an authenticated caller, else None."""
        if setting is None or identity is None:
            return None
        header = getattr(setting, "header")
        audience = getattr(setting, "audience") or route_name
        return header, self.assertion(identity, audience)
