"""GitHub (and GitHub Enterprise Server) login: the user from GitHub's REST API.

``sub`` is the numeric user id as a string (a login can be renamed and then
taken by someone else), ``preferred_username`` the login, ``email`` the
primary verified address from ``/user/emails``, and ``groups`` every
organisation login and every ``org/team-slug`` from ``/user/orgs`` and
``/user/teams``, every page of them (RFC 8288 ``Link: rel="next"``, followed
only within the API's own origin).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from .client import TokenSet
from .errors import REFUSED_TEXT, ProviderError
from .identity import UserClaims, mapped, user_claims
from .oauth2 import OAuth2Client

log = logging.getLogger("gateway.providers")

API_ACCEPT = "application/vnd.github+json"
PER_PAGE = 100
MAX_PAGES = 20  # 2,000 organisations or teams: far more than anyone has
_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


def next_page(link: Optional[str]) -> Optional[str]:
    """The ``rel="next"`` URL of a Link header, if any."""
    if not link:
        return None
    for part in link.split(","):
        found = _NEXT.search(part)
        if found:
            return found.group(1)
    return None


class GitHubClient(OAuth2Client):
    kind = "github"

    async def sign_in(self, *, code: str, verifier: str, nonce: str,
                      iss: Optional[str]) -> Tuple[TokenSet, UserClaims]:
        tokens = await self.exchange_code(code, verifier)
        assert tokens.access_token is not None
        document = await self.profile(tokens.access_token)
        return tokens, user_claims(self.config, document, keep=self.keep)

    async def profile(self, access_token: str) -> Dict[str, Any]:
        user = await self._one(self.config.userinfo_endpoint, access_token, "user")
        document = mapped(user, self.config.claims)
        document["email"], document["email_verified"] = await self._email(access_token)
        groups: List[str] = []
        for org in await self._all("/user/orgs", access_token, "orgs"):
            if isinstance(org, dict) and isinstance(org.get("login"), str):
                groups.append(org["login"])
        for team in await self._all("/user/teams", access_token, "teams"):
            org = team.get("organization") if isinstance(team, dict) else None
            if isinstance(org, dict) and isinstance(org.get("login"), str) and isinstance(team.get("slug"), str):
                groups.append(f"{org['login']}/{team['slug']}")
        document[self.config.groups_claim] = list(dict.fromkeys(groups))
        return document

    async def _email(self, access_token: str) -> Tuple[Optional[str], Optional[bool]]:
        """The primary address if it is verified; else none (a public profile email is never verified)."""
        for entry in await self._all("/user/emails", access_token, "emails"):
            if isinstance(entry, dict) and entry.get("primary") is True:
                email = entry.get("email")
                if isinstance(email, str) and entry.get("verified") is True:
                    return email, True
                return (email if isinstance(email, str) else None), False
        return None, None

    async def _one(self, url: str, access_token: str, what: str) -> Dict[str, Any]:
        document, _ = await self.get_json(url, access_token, what, accept=API_ACCEPT)
        if not isinstance(document, dict):
            log.warning("provider %s: GitHub %s answer is not a JSON object", self.name, what)
            raise ProviderError(REFUSED_TEXT, f"{what}_malformed")
        return document

    async def _all(self, path: str, access_token: str, what: str) -> List[Any]:
        api = self.config.api_url.rstrip("/")
        origin = urlsplit(api)[:2]
        url: Optional[str] = f"{api}{path}?per_page={PER_PAGE}"
        items: List[Any] = []
        for _ in range(MAX_PAGES):
            if url is None:
                break
            document, response = await self.get_json(url, access_token, what, accept=API_ACCEPT)
            if not isinstance(document, list):
                log.warning("provider %s: GitHub %s answer is not a list", self.name, what)
                raise ProviderError(REFUSED_TEXT, f"{what}_malformed")
            items.extend(document)
            url = next_page(response.headers.get("Link"))
            if url is not None and urlsplit(url)[:2] != origin:
                log.warning("provider %s: GitHub %s pagination points off the API origin; not followed",
                            self.name, what)
                url = None
        else:
            log.warning("provider %s: more than %d pages of %s; the rest is ignored", self.name, MAX_PAGES, what)
        return items
