"""``gateway explain``: why a request would be forwarded or refused, told step by step.

It runs the pipeline's own steps (``pipeline.accept``, ``route``,
``check_body``, authentication by ``Runtime.authn``, ``policy.authorize``,
``plan``) on a request described on the command line, without listening on
any port, and reports what each step decided: the normalised path, the
routes considered, the auth mode, the identity, every allow rule with each
condition, the verdict, and the headers the upstream would receive.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import urlsplit

from tornado import httputil
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from . import pipeline
from .answers import Answer, Redirect, Refusal
from .config import AUTH_PUBLIC, Config, TokenIssuerConfig
from .models import AuthError, Identity
from .policy import accepted_values, authorize, conditions
from .routing import BadPath, Match, normalize_path
from .runtime import Runtime
from .tokens import identity_from_claims


class ExplainError(Exception):
    """The request described cannot be explained (a bad URL, header or claims): said to the user."""


def _head(method: str, url: str, headers: Sequence[str]) -> pipeline.RequestHead:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ExplainError(f"the URL must be http:// or https:// with a host (got {url!r})")
    fields = httputil.HTTPHeaders()
    for line in headers:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ExplainError(f"a header must be 'Name: value' (got {line!r})")
        fields.add(name.strip(), value.strip())
    host = fields.get("Host") or parts.netloc
    if "Host" not in fields:
        fields["Host"] = host
    path = parts.path or "/"
    uri = path + ("?" + parts.query if parts.query else "")
    return pipeline.RequestHead(method.upper(), host, path, parts.query, fields, peer="127.0.0.1",
                                protocol=parts.scheme, uri=uri)


def _identity_from(claims_json: str, config: Config) -> Identity:
    try:
        payload = json.loads(claims_json)
    except ValueError as exc:
        raise ExplainError(f"--claims is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ExplainError("--claims must be a JSON object, e.g. '{\"sub\": \"alice\", \"groups\": [\"ops\"]}'")
    issuer = next((t for t in config.tokens if t.issuer == payload.get("iss")), None)
    cfg = issuer or TokenIssuerConfig(issuer=str(payload.get("iss", "")), algorithms=("RS256",))
    try:
        return identity_from_claims(payload, cfg)
    except AuthError as exc:
        raise ExplainError(f"--claims: {exc.description}") from None


def _identity_view(identity: Optional[Identity]) -> Optional[Dict[str, Any]]:
    if identity is None:
        return None
    return {"sub": identity.sub, "email": identity.email, "groups": list(identity.groups),
            "preferred_username": identity.preferred_username, "issuer": identity.issuer, "source": identity.source}


def _verdict(answer: Answer) -> Dict[str, Any]:
    if isinstance(answer, Refusal):
        return {"forwarded": False, "status": answer.status, "reason": answer.reason}
    if isinstance(answer, Redirect):
        return {"forwarded": False, "status": answer.status, "reason": f"redirect to {answer.location}"}
    return {"forwarded": False, "status": getattr(answer, "status", 200), "reason": "answered by the gateway"}


async def explain(config: Config, method: str, url: str, headers: Sequence[str] = (), *,
                  claims: Optional[str] = None, token: Optional[str] = None) -> Dict[str, Any]:
    """The whole story as one JSON-able object (``render`` prints it for people)."""
    head = _head(method, url, headers)
    if token:
        head.headers["Authorization"] = "Bearer " + token
    http = SimpleAsyncHTTPClient(force_instance=True)
    runtime = Runtime(config, http)
    try:
        return await _explain(config, runtime, head, claims, bool(token))
    finally:
        await runtime.close()
        http.close()


async def _explain(config: Config, runtime: Runtime, head: pipeline.RequestHead, claims: Optional[str],
                   with_token: bool) -> Dict[str, Any]:
    acc = pipeline.accept(head, runtime)
    out: Dict[str, Any] = {"method": head.method, "host": head.host, "path": head.path}
    try:
        normal = normalize_path(head.path)
        out["normalised_path"] = normal
        out["considered"] = [{"route": r.name, "could_take_it": ok, "why": why}
                             for r, ok, why in runtime.routes.considered(head.host, normal, head.method)]
    except BadPath:
        out["considered"] = []
    found = pipeline.route(acc, runtime, landing=False)
    if isinstance(found, pipeline.OwnEndpoint):
        out["verdict"] = {"forwarded": False, "status": None, "reason": f"the gateway's own endpoint /oauth2/{found.name}"}
        return out
    if not isinstance(found, Match):
        out["route"] = None
        out["verdict"] = _verdict(found)
        return out
    route = found.route
    out["route"] = {"name": route.name, "host": route.host, "path": route.path, "auth": route.auth,
                    "upstream_path": found.upstream_path,
                    "why": "host routes come before routes without a host; then the longest path prefix"}
    refusal = pipeline.check_body(head, route, runtime)
    if refusal is not None:
        out["verdict"] = _verdict(refusal)
        return out
    identity: Optional[Identity] = None
    if route.auth != AUTH_PUBLIC:
        if claims is not None:
            identity = _identity_from(claims, config)
            out["identity_from"] = "--claims"
        elif with_token:
            result = await runtime.authn.authenticate(head.headers.get("Authorization"), lambda: {}, route)
            if result.error is not None:
                out["identity_from"] = "--token"
                out["identity"] = None
                out["token_error"] = result.error.description
                out["verdict"] = {"forwarded": False, "status": 401, "reason": f"invalid token: {result.error.reason}"}
                return out
            identity = result.identity
            out["identity_from"] = "--token (verified with the configured keys)"
        if identity is None:
            out["identity"] = None
            browser = route.auth == "login" and runtime.login is not None
            out["verdict"] = {"forwarded": False, "status": 401,
                              "reason": "no credentials" + (" (a browser would be sent to sign in)" if browser else "")}
            return out
    out["identity"] = _identity_view(identity)
    rules: List[Dict[str, Any]] = []
    if identity is not None:
        for index, rule in enumerate(route.allow):
            checks = [{"condition": name, "compared": value, "accepted": accepted_values(rule, name.split(" ")[0]
                       if not name.startswith("claim ") else name), "result": "pass" if ok else "fail"}
                      for name, value, ok in conditions(rule, identity, head.method)]
            rules.append({"rule": index + 1, "passed": all(c["result"] == "pass" for c in checks),
                          "conditions": checks})
        decision = authorize(route.allow, identity, head.method)
        out["rules"] = rules
        if not decision.allowed:
            out["verdict"] = {"forwarded": False, "status": 403, "reason": decision.reason}
            return out
        out["allowed_by"] = decision.reason
    plan = pipeline.plan(acc, found, identity, runtime)
    out["verdict"] = {"forwarded": True, "status": None, "reason": "forwarded to the upstream"}
    out["upstream"] = {"method": plan.method, "path": plan.path_and_query, "upstreams": list(route.upstreams),
                       "headers": [[n, _shown(n, v)] for n, v in plan.headers]}
    return out


def _shown(name: str, value: str) -> str:
    """Header values as the upstream gets them, but never a credential in the output."""
    lower = name.lower()
    if lower in ("authorization", "cookie", "proxy-authorization") or lower.endswith("-assertion"):
        return value.split(" ", 1)[0] + " [redacted]" if " " in value else "[redacted]"
    return value


def render(story: Dict[str, Any]) -> str:
    """The story for people: one line per step, one per condition."""
    lines = [f"request   {story['method']} {story['host']}{story['path']}"]
    if "normalised_path" in story:
        lines.append(f"path      {story['normalised_path']} (normalised)")
    for seen in story.get("considered", []):
        mark = "could take it" if seen["could_take_it"] else "no"
        lines.append(f"  route {seen['route']}: {mark}: {seen['why']}")
    route = story.get("route")
    if route:
        lines.append(f"route     {route['name']} ({route['why']}); upstream path {route['upstream_path']}")
        lines.append(f"auth      {route['auth']}")
    elif "route" in story:
        lines.append("route     none")
    if "identity" in story:
        ident = story["identity"]
        if ident is None:
            lines.append("identity  none" + (f" ({story['token_error']})" if story.get("token_error") else ""))
        else:
            lines.append(f"identity  sub={ident['sub']} email={ident['email']} groups={','.join(ident['groups'])} "
                         f"preferred_username={ident['preferred_username']} ({story.get('identity_from', '')})")
    for rule in story.get("rules", []):
        lines.append(f"rule {rule['rule']}    {'pass' if rule['passed'] else 'fail'}")
        for check in rule["conditions"]:
            lines.append(f"  {check['condition']}: {json.dumps(check['compared'])} in {json.dumps(check['accepted'])}: "
                         f"{check['result']}")
    verdict = story["verdict"]
    status = "" if verdict["status"] is None else f" {verdict['status']}"
    lines.append(f"verdict  {' forwarded' if verdict['forwarded'] else ' refused' + status}: {verdict['reason']}")
    upstream = story.get("upstream")
    if upstream:
        lines.append(f"upstream  {upstream['method']} {upstream['path']} to {', '.join(upstream['upstreams'])}")
        for name, value in upstream["headers"]:
            lines.append(f"  {name}: {value}")
    return "\n".join(lines)
