"""The REST API half of the GitHub emulator (tests/support/fake_github.py), under ``/api/v3``.

``Authorization: Bearer <token>`` or ``token <token>``. Resources: ``/user`` (public
profile; the private fields too with the ``user`` scope), ``/user/emails`` (``user`` or
``user:email``, else 404 as GitHub answers), ``/user/orgs`` (user, read:org, write:org or
admin:org, else 403), ``/user/teams`` (the same or repo, else 403). Lists paginate with
``per_page`` (default 30, max 100: the ``default_per_page``/``max_per_page`` options) and
``page``, with an RFC 8288 ``Link`` header in GitHub's order: prev, next, last, first; the
other query parameters are kept and ``page`` comes last. Errors are GitHub's JSON:
``{"message", "documentation_url", "status"}``: 401 ``Requires authentication`` (no
Authorization) or ``Bad credentials`` (unknown, revoked or expired token), 403 without a
User-Agent, 400 for an ``X-GitHub-Api-Version`` not in ``api_versions``, 404 ``Not Found``.
Answers carry X-OAuth-Scopes, X-Accepted-OAuth-Scopes, X-GitHub-Media-Type,
X-GitHub-Api-Version-Selected, X-RateLimit-* and X-GitHub-Enterprise-Version.
"""

from __future__ import annotations

import base64
import json
import math
import secrets
import urllib.parse
from typing import Any

from tests.support.fake_oauth_base import BaseHandler

DOCS = "https://docs.github.com"
CREATED_AT = "2020-01-01T00:00:00Z"


def node_id(kind: str, ident: int) -> str:
    """A legacy-format global node ID, e.g. ``MDQ6VXNlcjE=`` for User 1."""
    return base64.b64encode(f"0{len(kind)}:{kind}{ident}".encode()).decode()


ACCEPTED_SCOPES = {
    "user": "",
    "user/emails": "user, user:email",
    "user/orgs": "admin:org, read:org, repo, user, write:org",
    "user/teams": "admin:org, read:org, repo, user, write:org",
}
DOC_URLS = {
    "user": f"{DOCS}/rest/users/users#get-the-authenticated-user",
    "user/emails": f"{DOCS}/rest/users/emails#list-email-addresses-for-the-authenticated-user",
    "user/orgs": f"{DOCS}/rest/orgs/orgs#list-organizations-for-the-authenticated-user",
    "user/teams": f"{DOCS}/rest/teams/teams#list-teams-for-the-authenticated-user",
}


class ApiHandler(BaseHandler):
    """``/api/v3/...``: the state is fake_github's GitHubState (tokens, users, options)."""

    @property
    def base(self) -> str:
        return f"{self.request.protocol}://{self.request.host}"

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("X-GitHub-Media-Type", "github.v3; format=json")
        self.set_header("X-GitHub-Request-Id", secrets.token_hex(8).upper())

    def error(self, status: int, message: str, doc: str = f"{DOCS}/rest") -> None:
        self.state.count(f"api_{status}")
        self.set_status(status)
        self.finish(json.dumps({"message": message, "documentation_url": doc, "status": str(status)}))

    def get(self, path: str) -> None:
        st = self.state
        path = path.strip("/")
        st.count(f"api:/{path}")
        self.set_header("X-GitHub-Enterprise-Version", st.options["enterprise_version"])
        if st.options["require_user_agent"] and not self.request.headers.get("User-Agent"):
            self.error(403, "Request forbidden by administrative rules. "
                            "Please make sure your request has a User-Agent header "
                            f"({DOCS}/rest/overview/resources-in-the-rest-api#user-agent-required). "
                            "Check https://developer.github.com for other possible causes.")
            return
        version = self.request.headers.get("X-GitHub-Api-Version")
        if version is not None and version not in st.options["api_versions"]:
            self.error(400, f"API version {version} is not supported.",
                       f"{DOCS}/rest/overview/api-versions")
            return
        self.set_header("X-GitHub-Api-Version-Selected", version or st.options["api_versions"][0])
        handler = {"user": self.user, "user/emails": self.emails, "user/orgs": self.orgs,
                   "user/teams": self.teams}.get(path)
        scheme, _, token = self.request.headers.get("Authorization", "").strip().partition(" ")
        if not scheme:
            if handler is None:
                self.error(404, "Not Found")
            else:
                self.error(401, "Requires authentication", DOC_URLS[path])
            return
        rec = st.tokens.get(token.strip()) if scheme.lower() in ("bearer", "token") else None
        if rec is not None and rec["expires_at"] is not None and rec["expires_at"] < st.now():
            rec = None
        user = st.users.get(rec["login"]) if rec else None
        if rec is None or user is None:
            self.error(401, "Bad credentials")
            return
        self.set_header("X-OAuth-Scopes", ", ".join(rec["scopes"]))
        self.set_header("X-OAuth-Client-Id", rec["client_id"])
        self.set_header("X-RateLimit-Limit", "5000")
        self.set_header("X-RateLimit-Remaining", str(max(0, 5000 - st.stats["api_authenticated"] - 1)))
        self.set_header("X-RateLimit-Used", str(st.stats["api_authenticated"] + 1))
        self.set_header("X-RateLimit-Resource", "core")
        self.set_header("X-RateLimit-Reset", str(int(st.now()) + 3600))
        st.count("api_authenticated")
        if handler is None:
            self.error(404, "Not Found")
            return
        self.set_header("X-Accepted-OAuth-Scopes", ACCEPTED_SCOPES[path])
        handler(user, set(rec["scopes"]))

    # the resources

    def urls(self, login: str) -> dict[str, str]:
        api = f"{self.base}/api/v3/users/{login}"
        return {"url": api, "html_url": f"{self.base}/{login}", "followers_url": f"{api}/followers",
                "following_url": f"{api}/following{{/other_user}}", "gists_url": f"{api}/gists{{/gist_id}}",
                "starred_url": f"{api}/starred{{/owner}}{{/repo}}", "subscriptions_url": f"{api}/subscriptions",
                "organizations_url": f"{api}/orgs", "repos_url": f"{api}/repos",
                "events_url": f"{api}/events{{/privacy}}", "received_events_url": f"{api}/received_events"}

    def user(self, u: dict[str, Any], scopes: set[str]) -> None:
        private = "user" in scopes
        body: dict[str, Any] = {
            "login": u["login"], "id": u["id"], "node_id": node_id("User", u["id"]),
            "avatar_url": f"{self.base}/avatars/u/{u['id']}?", "gravatar_id": "", **self.urls(u["login"]),
            "type": "User", "user_view_type": "private" if private else "public", "site_admin": False,
            "name": u["name"], "company": u["company"], "blog": "", "location": u["location"],
            "email": u["public_email"], "hireable": None, "bio": None, "twitter_username": None,
            "public_repos": 0, "public_gists": 0, "followers": 0, "following": 0,
            "created_at": CREATED_AT, "updated_at": CREATED_AT,
        }
        if private:
            body.update(private_gists=0, total_private_repos=0, owned_private_repos=0, disk_usage=0,
                        collaborators=0, two_factor_authentication=False,
                        plan={"name": "enterprise", "space": 976562499, "collaborators": 0, "private_repos": 9999})
        self.finish(json.dumps(body))

    def emails(self, u: dict[str, Any], scopes: set[str]) -> None:
        if not scopes & {"user", "user:email"}:
            self.error(404, "Not Found", DOC_URLS["user/emails"])
            return
        self.paginate(u["emails"])

    def org(self, o: dict[str, Any]) -> dict[str, Any]:
        api = f"{self.base}/api/v3/orgs/{o['login']}"
        return {"login": o["login"], "id": o["id"], "node_id": node_id("Organization", o["id"]), "url": api,
                "repos_url": f"{api}/repos", "events_url": f"{api}/events", "hooks_url": f"{api}/hooks",
                "issues_url": f"{api}/issues", "members_url": f"{api}/members{{/member}}",
                "public_members_url": f"{api}/public_members{{/member}}",
                "avatar_url": f"{self.base}/avatars/u/{o['id']}?", "description": o["description"]}

    def orgs(self, u: dict[str, Any], scopes: set[str]) -> None:
        if not scopes & {"user", "read:org", "write:org", "admin:org"}:
            self.error(403, "You need at least read:org scope or user scope to list your organizations.",
                       DOC_URLS["user/orgs"])
            return
        self.paginate([self.org(o) for o in u["orgs"]])

    def teams(self, u: dict[str, Any], scopes: set[str]) -> None:
        if not scopes & {"user", "repo", "read:org", "write:org", "admin:org"}:
            self.error(403, "You need at least read:org scope or user scope to list your teams.",
                       DOC_URLS["user/teams"])
            return
        orgs = {o["login"]: o for o in u["orgs"]}
        out = []
        for t in u["teams"]:
            o = orgs[t["org"]]
            url = f"{self.base}/api/v3/organizations/{o['id']}/team/{t['id']}"
            org = {**self.org(o), "name": o["login"], "company": None, "blog": None, "location": None,
                   "email": None, "is_verified": False, "has_organization_projects": True,
                   "has_repository_projects": True, "public_repos": 0, "public_gists": 0, "followers": 0,
                   "following": 0, "html_url": f"{self.base}/{o['login']}", "created_at": CREATED_AT,
                   "updated_at": CREATED_AT, "archived_at": None, "type": "Organization"}
            out.append({"id": t["id"], "node_id": node_id("Team", t["id"]), "url": url,
                        "html_url": f"{self.base}/orgs/{o['login']}/teams/{t['slug']}", "name": t["name"],
                        "slug": t["slug"], "description": None, "privacy": "closed",
                        "notification_setting": "notifications_enabled", "permission": "pull",
                        "members_url": f"{url}/members{{/member}}", "repositories_url": f"{url}/repos",
                        "parent": None, "members_count": 1, "repos_count": 0, "created_at": CREATED_AT,
                        "updated_at": CREATED_AT, "organization": org})
        self.paginate(out)

    def paginate(self, items: list[Any]) -> None:
        opts = self.state.options

        def number(name: str, default: int) -> int:
            try:
                value = int(self.get_query_argument(name, str(default)))
            except ValueError:
                return default
            return value if value > 0 else default

        per_page = min(number("per_page", opts["default_per_page"]), opts["max_per_page"])
        page_no = number("page", 1)
        last = max(1, math.ceil(len(items) / per_page))
        links = []
        kept = [(k, v) for k, v in urllib.parse.parse_qsl(self.request.query, keep_blank_values=True) if k != "page"]

        def link(n: int, rel: str) -> str:
            query = urllib.parse.urlencode(kept + [("page", str(n))])
            return f'<{self.base}{self.request.path}?{query}>; rel="{rel}"'

        if page_no > 1:
            links.append(link(min(page_no - 1, last), "prev"))
        if page_no < last:
            links += [link(page_no + 1, "next"), link(last, "last")]
        if page_no > 1:
            links.append(link(1, "first"))
        if links:
            self.set_header("Link", ", ".join(links))
        self.finish(json.dumps(items[(page_no - 1) * per_page: page_no * per_page]))
