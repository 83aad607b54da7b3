"""Provider presets' OpenID Connect quirks, end to end against a fake provider on loopback.

Every provider configuration here comes from ``gateway.config.loads`` (so presets are applied exactly
as users get them). Google's and Microsoft's real hosts are then swapped for the fake provider's URL
with ``dataclasses.replace``, keeping each string's shape: ``https://accounts.google.com`` becomes
``http://127.0.0.1:PORT`` and its scheme-less alias ``accounts.google.com`` becomes
``127.0.0.1:PORT``; ``https://login.microsoftonline.com/{tid}/v2.0`` becomes
``http://127.0.0.1:PORT/{tid}/v2.0``.

``FakeOP`` is a tornado application on 127.0.0.1: discovery under any path (naming the issuer a test
chooses), a JWKS, and a token endpoint that answers with an ID token the test signed with the claims
it chooses, noting how the client authenticated. Nothing mocks the HTTP client.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import textwrap
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote_plus, urlsplit

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from gateway.answers import Refusal
from gateway.config import ProviderConfig, loads
from gateway.discovery import DiscoveryCache
from gateway.jwks import JWKSRegistry
from gateway.login import UNAVAILABLE, LoginManager
from gateway.providers import Misconfigured, OIDCClient, ProviderError, ProviderUnavailable, new_pkce, random_token
from gateway.providers.errors import MISCONFIGURED_TEXT
from tests.support.fake_idp import SigningKey
from tests.support.tokens import claims

pytestmark = pytest.mark.timeout(20)

SECRET = "0123456789abcdef0123456789abcdef"
CLIENT_ID = "gw-client"
CLIENT_SECRET = "a+b/c=d:e%f&g?h-0123456789"  # form-encoded in Basic credentials (RFC 6749 2.3.1)
REDIRECT = "http://127.0.0.1:8080/oauth2/callback"
NONCE = "n-0S6_WzA2Mj"
TENANT_A = "72f988bf-86f1-41af-91ab-2d7cd011db47"
TENANT_B = "3c0f4c8e-5d2b-4a77-9d3e-1f2a6b7c8d9e"
GOOGLE = "https://accounts.google.com"
MICROSOFT = "https://login.microsoftonline.com"
KEY = SigningKey("RS256", "op-key")


# --------------------------------------------------------------------------- the fake provider


class FakeOP:
    """Discovery at ``{any path}/.well-known/openid-configuration``, ``/jwks`` and ``/token``.

    ``discovery_issuer`` (None: the URL the document was fetched under, without the well-known
    suffix) is what discovery names as issuer; ``metadata`` adds or replaces members (None removes
    one). ``id_token`` is what the token endpoint answers; ``token_auth`` lists, per token request,
    (method, client id, client secret) as the provider decoded them.
    """

    def __init__(self) -> None:
        self.sock, port = bind_unused_port()
        self.base = f"http://127.0.0.1:{port}"
        self.netloc = f"127.0.0.1:{port}"
        self.discovery_issuer: Optional[str] = None
        self.metadata: Dict[str, Any] = {}
        self.id_token: Optional[str] = None
        self.token_auth: List[Tuple[str, str, str]] = []
        app = Application([
            (r"(.*)/\.well-known/openid-configuration", DiscoveryHandler, {"op": self}),
            (r"/jwks", JWKSHandler, {"op": self}),
            (r"/token", TokenHandler, {"op": self}),
        ])
        self.server = HTTPServer(app)
        self.server.add_sockets([self.sock])

    def discovery(self, prefix: str) -> Dict[str, Any]:
        doc: Dict[str, Any] = {
            "issuer": self.base + prefix if self.discovery_issuer is None else self.discovery_issuer,
            "authorization_endpoint": self.base + "/authorize",
            "token_endpoint": self.base + "/token",
            "jwks_uri": self.base + "/jwks",
            "response_types_supported": ["code"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
        }
        doc.update(self.metadata)
        return {k: v for k, v in doc.items() if v is not None}

    def sign(self, iss: Any, **extra: Any) -> str:
        """An ID token for this client, issued now; a claim set to None is left out."""
        body = claims(iss, "user-1", aud=CLIENT_ID, lifetime=300, nonce=NONCE, **extra)
        return KEY.sign(body)

    async def close(self) -> None:
        self.server.stop()
        await self.server.close_all_connections()


class _Handler(RequestHandler):
    def initialize(self, op: FakeOP) -> None:
        self.op = op

    def check_xsrf_cookie(self) -> None:
        pass


class DiscoveryHandler(_Handler):
    def get(self, prefix: str) -> None:
        self.write(self.op.discovery(prefix))


class JWKSHandler(_Handler):
    def get(self) -> None:
        self.write({"keys": [KEY.jwk]})


class TokenHandler(_Handler):
    def post(self) -> None:
        form = {k: v[0] for k, v in parse_qs(self.request.body.decode("ascii")).items()}
        header = self.request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode("ascii").partition(":")
            self.op.token_auth.append(("client_secret_basic", unquote_plus(user), unquote_plus(password)))
        else:
            self.op.token_auth.append(("client_secret_post", form.get("client_id", ""),
                                       form.get("client_secret", "")))
        self.write({"access_token": "at-" + random_token(8), "token_type": "Bearer", "expires_in": 300,
                    "id_token": self.op.id_token})


# --------------------------------------------------------------------------- helpers


class Env:
    """What one test talks through: the fake provider, an HTTP client, and the clients made for it."""

    def __init__(self, op: FakeOP):
        self.op = op
        self.http = AsyncHTTPClient(force_instance=True)
        self.registries: List[JWKSRegistry] = []

    def registry(self) -> JWKSRegistry:
        self.registries.append(JWKSRegistry(self.http))
        return self.registries[-1]

    def client(self, config: ProviderConfig) -> OIDCClient:
        return OIDCClient(config, self.http, redirect_uri=REDIRECT, discovery=DiscoveryCache(self.http),
                          jwks=self.registry())

    async def close(self) -> None:
        for registry in self.registries:
            await registry.close()
        self.http.close()


def run(scenario: Callable[[FakeOP, Env], Awaitable[Any]]) -> Any:
    """Run ``scenario(op, env)`` on a fresh event loop with a fake provider, then stop everything."""

    async def main() -> Any:
        op = FakeOP()
        env = Env(op)
        try:
            return await asyncio.wait_for(scenario(op, env), 10)
        finally:
            await env.close()
            await op.close()

    return asyncio.run(main())


def load(entry: str) -> ProviderConfig:
    """Provider ``p`` of a config file whose entry is ``entry`` (YAML), as ``gateway.config.loads`` gives it."""
    text = textwrap.dedent("""\
        session:
          secret: {secret}
        providers:
          p:
        {entry}
            client_id: {client_id}
            client_secret: "{client_secret}"
        routes:
          - {{name: app, path: /, upstream: "http://127.0.0.1:9", auth: login, providers: [p]}}
        """).format(secret=SECRET, entry=textwrap.indent(textwrap.dedent(entry), "    "), client_id=CLIENT_ID,
                    client_secret=CLIENT_SECRET)
    return loads(text).providers["p"]


def on_loopback(config: ProviderConfig, real: str, op: FakeOP) -> ProviderConfig:
    """``config`` with the real provider's URL (``https://host``) and bare host replaced by the fake's."""
    host = urlsplit(real).netloc

    def swap(value: str) -> str:
        return value.replace(real, op.base).replace(host, op.netloc) if value else value

    return dataclasses.replace(config, issuer=swap(config.issuer), tenant_issuer=swap(config.tenant_issuer),
                               issuer_aliases=tuple(swap(a) for a in config.issuer_aliases))


async def sign_in(client: OIDCClient, op: FakeOP, id_token: str, iss: Optional[str] = None) -> Any:
    """The callback's work: the code redeemed at the fake, its ID token checked; returns the user's claims."""
    op.id_token = id_token
    _, user = await client.sign_in(code="code-1", verifier="v" * 43, nonce=NONCE, iss=iss)
    return user


async def refused(client: OIDCClient, op: FakeOP, id_token: str, iss: Optional[str] = None) -> Optional[str]:
    """The reason ``sign_in`` refuses with (never "unavailable"), or None when it was accepted."""
    try:
        await sign_in(client, op, id_token, iss)
    except ProviderError as exc:
        assert not isinstance(exc, ProviderUnavailable), exc.reason
        return exc.reason
    return None


async def authorization_query(client: OIDCClient) -> Dict[str, str]:
    _, challenge = new_pkce()
    url = await client.authorization_url(state="st", nonce=NONCE, code_challenge=challenge)
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


# --------------------------------------------------------------------------- google


def google(op: FakeOP, extra: str = "") -> ProviderConfig:
    config = load("preset: google\n" + extra)
    assert (config.issuer, config.issuer_aliases) == (GOOGLE, ("accounts.google.com",))
    config = on_loopback(config, GOOGLE, op)
    assert (config.issuer, config.issuer_aliases) == (op.base, (op.netloc,))
    return config


GOOGLE_ISSUERS = [
    pytest.param(lambda op: op.base, None, id="https-spelling"),
    pytest.param(lambda op: op.netloc, None, id="bare-host-spelling"),
    pytest.param(lambda op: op.base + "/", "id_token_issuer", id="trailing-slash"),
    pytest.param(lambda op: op.netloc + "/", "id_token_issuer", id="bare-host-trailing-slash"),
    pytest.param(lambda op: "https://" + op.netloc, "id_token_issuer", id="other-scheme"),
    pytest.param(lambda op: op.base + "/o/oauth2", "id_token_issuer", id="longer-path"),
    pytest.param(lambda op: "127.0.0.1", "id_token_issuer", id="host-without-port"),
    pytest.param(lambda op: GOOGLE, "id_token_issuer", id="the-real-google-is-not-this-provider"),
    pytest.param(lambda op: "", "id_token_issuer", id="empty"),
    pytest.param(lambda op: None, "id_token_issuer", id="no-iss"),
]


@pytest.mark.parametrize("iss, reason", GOOGLE_ISSUERS)
def test_google_accepts_its_two_issuer_spellings_and_nothing_else(iss, reason):
    async def scenario(op: FakeOP, env: Env) -> None:
        client = env.client(google(op))
        assert await refused(client, op, op.sign(iss(op))) == reason

    run(scenario)


GOOGLE_HD = [
    pytest.param("example.com", None, id="equal"),
    pytest.param("other.com", "id_token_hosted_domain", id="another-domain"),
    pytest.param("sub.example.com", "id_token_hosted_domain", id="a-subdomain"),
    pytest.param("EXAMPLE.COM", "id_token_hosted_domain", id="other-case"),
    pytest.param(None, "id_token_hosted_domain", id="missing"),
    pytest.param("", "id_token_hosted_domain", id="empty"),
]


@pytest.mark.parametrize("hd, reason", GOOGLE_HD)
def test_google_hosted_domain_is_enforced_on_the_id_token(hd, reason):
    async def scenario(op: FakeOP, env: Env) -> None:
        client = env.client(google(op, "hosted_domain: example.com\n"))
        assert await refused(client, op, op.sign(op.base, hd=hd, email="ann@example.com",
                                                 email_verified=True)) == reason

    run(scenario)


def test_google_without_hosted_domain_accepts_any_hd():
    async def scenario(op: FakeOP, env: Env) -> None:
        client = env.client(google(op))
        user = await sign_in(client, op, op.sign(op.netloc, hd="anything.example", email="a@anything.example",
                                                 email_verified=True))
        assert (user.sub, user.email) == ("user-1", "a@anything.example")

    run(scenario)


def test_google_hosted_domain_is_sent_as_hd_in_the_authorization_request():
    async def scenario(op: FakeOP, env: Env) -> None:
        query = await authorization_query(env.client(google(op, "hosted_domain: example.com\n")))
        assert query["hd"] == "example.com"
        assert query["client_id"] == CLIENT_ID and query["code_challenge_method"] == "S256"
        assert "hd" not in await authorization_query(env.client(google(op)))

    run(scenario)


# --------------------------------------------------------------------------- microsoft


def microsoft(op: FakeOP, tenant: str, extra: str = "") -> ProviderConfig:
    config = load(f"preset: microsoft\ntenant: {tenant}\n" + extra)
    assert config.issuer == f"{MICROSOFT}/{tenant}/v2.0"
    multi = tenant in ("common", "organizations", "consumers")
    assert config.tenant_issuer == (f"{MICROSOFT}/{{tid}}/v2.0" if multi else "")
    config = on_loopback(config, MICROSOFT, op)
    assert config.issuer == f"{op.base}/{tenant}/v2.0"
    return config


def template(op: FakeOP) -> str:
    """What Microsoft's common/organizations/consumers discovery documents name as issuer."""
    return op.base + "/{tenantid}/v2.0"


def tenant_issuer(op: FakeOP, tid: str) -> str:
    return f"{op.base}/{tid}/v2.0"


@pytest.mark.parametrize("tenant", ["common", "organizations", "consumers"])
def test_microsoft_multi_tenant_discovery_names_the_tenantid_template(tenant):
    async def scenario(op: FakeOP, env: Env) -> None:
        op.discovery_issuer = template(op)
        client = env.client(microsoft(op, tenant))
        assert await client.problem() is None
        user = await sign_in(client, op, op.sign(tenant_issuer(op, TENANT_A), tid=TENANT_A))
        assert user.sub == "user-1"

    run(scenario)


MULTI_TENANT_TOKENS = [
    pytest.param(lambda op: tenant_issuer(op, TENANT_A), TENANT_A, None, id="own-tenant-a"),
    pytest.param(lambda op: tenant_issuer(op, TENANT_B), TENANT_B, None, id="own-tenant-b"),
    pytest.param(lambda op: tenant_issuer(op, TENANT_B), TENANT_A, "id_token_issuer", id="another-tenants-issuer"),
    pytest.param(lambda op: tenant_issuer(op, TENANT_A), None, "id_token_issuer", id="no-tid"),
    pytest.param(lambda op: tenant_issuer(op, TENANT_A), "", "id_token_issuer", id="empty-tid"),
    pytest.param(lambda op: tenant_issuer(op, TENANT_A), [TENANT_A], "id_token_issuer", id="tid-not-a-string"),
    pytest.param(lambda op: template(op), TENANT_A, "id_token_issuer", id="the-template-itself"),
    pytest.param(lambda op: tenant_issuer(op, TENANT_A) + "/", TENANT_A, "id_token_issuer", id="trailing-slash"),
    pytest.param(lambda op: f"{op.base}/{TENANT_A}/", TENANT_A, "id_token_issuer", id="v1-shape"),
    pytest.param(lambda op: f"{MICROSOFT}/{TENANT_A}/v2.0", TENANT_A, "id_token_issuer", id="another-host"),
]


@pytest.mark.parametrize("iss, tid, reason", MULTI_TENANT_TOKENS)
def test_microsoft_multi_tenant_id_token_issuer_is_the_template_with_its_own_tid(iss, tid, reason):
    async def scenario(op: FakeOP, env: Env) -> None:
        op.discovery_issuer = template(op)
        client = env.client(microsoft(op, "common"))
        assert await refused(client, op, op.sign(iss(op), tid=tid)) == reason

    run(scenario)


@pytest.mark.parametrize("tid, reason", [
    pytest.param(TENANT_A, None, id="listed"),
    pytest.param(TENANT_B, "id_token_issuer", id="not-listed"),
    pytest.param(None, "id_token_issuer", id="not-listed-and-no-tid"),
])
def test_microsoft_allowed_tenants_limits_the_tenants(tid, reason):
    async def scenario(op: FakeOP, env: Env) -> None:
        op.discovery_issuer = template(op)
        config = microsoft(op, "organizations", f"allowed_tenants: [{TENANT_A}]\n")
        assert config.allowed_tenants == (TENANT_A,)
        client = env.client(config)
        token = op.sign(tenant_issuer(op, tid or TENANT_B), tid=tid)
        assert await refused(client, op, token) == reason

    run(scenario)


def test_microsoft_allowed_tenants_also_applies_to_the_configured_issuer_spelling():
    async def scenario(op: FakeOP, env: Env) -> None:
        op.discovery_issuer = template(op)
        client = env.client(microsoft(op, "organizations", f"allowed_tenants: [{TENANT_A}]\n"))
        token = op.sign(f"{op.base}/organizations/v2.0", tid=TENANT_B)
        assert await refused(client, op, token) == "id_token_issuer"

    run(scenario)


@pytest.mark.parametrize("iss, tid, reason", [
    pytest.param(TENANT_A, TENANT_A, None, id="its-own-issuer"),
    pytest.param(TENANT_A, None, None, id="its-own-issuer-without-tid"),
    pytest.param(TENANT_B, TENANT_B, "id_token_issuer", id="another-tenant-even-with-its-tid"),
])
def test_microsoft_single_tenant_compares_the_issuer_exactly(iss, tid, reason):
    async def scenario(op: FakeOP, env: Env) -> None:
        client = env.client(microsoft(op, TENANT_A))
        assert client.config.tenant_issuer == ""
        assert await client.problem() is None  # discovery names the tenant's own issuer
        assert await refused(client, op, op.sign(tenant_issuer(op, iss), tid=tid)) == reason

    run(scenario)


def test_microsoft_single_tenant_refuses_discovery_naming_the_template():
    async def scenario(op: FakeOP, env: Env) -> None:
        op.discovery_issuer = template(op)
        client = env.client(microsoft(op, TENANT_A))
        problem = await client.problem()
        assert problem is not None and problem.startswith(
            f"issuer mismatch: discovery says {template(op)!r}, config says {tenant_issuer(op, TENANT_A)!r}"), problem
        with pytest.raises(Misconfigured) as info:
            await authorization_query(client)
        assert info.value.reason == "discovery_invalid"

    run(scenario)


CALLBACK_ISS = [
    pytest.param(lambda op: tenant_issuer(op, TENANT_A), None, id="tenant-a"),
    pytest.param(lambda op: tenant_issuer(op, TENANT_B), None, id="another-tenant-than-the-tokens"),
    pytest.param(lambda op: f"{op.base}/common/v2.0", None, id="the-configured-issuer"),
    pytest.param(lambda op: f"{op.base}//v2.0", "issuer_mismatch", id="empty-tenant"),
    pytest.param(lambda op: f"{op.base}/{TENANT_A}/v1.0", "issuer_mismatch", id="other-suffix"),
    pytest.param(lambda op: f"{op.base}/{TENANT_A}/v2.0/", "issuer_mismatch", id="trailing-slash"),
    pytest.param(lambda op: f"http://127.0.0.2:{op.netloc.split(':')[1]}/{TENANT_A}/v2.0", "issuer_mismatch",
                 id="other-host"),
    pytest.param(lambda op: f"{MICROSOFT}/{TENANT_A}/v2.0", "issuer_mismatch", id="the-real-microsoft"),
    pytest.param(lambda op: "", "issuer_mismatch", id="empty"),
    pytest.param(lambda op: f"{op.base}/{TENANT_A}/extra/v2.0", "issuer_mismatch", id="tenant-with-a-slash"),
]


@pytest.mark.parametrize("iss, reason", CALLBACK_ISS)
def test_microsoft_multi_tenant_rfc9207_iss_parameter(iss, reason):
    """The callback's ``iss`` carries no tid: any tenant's issuer shape names this provider."""

    async def scenario(op: FakeOP, env: Env) -> None:
        op.discovery_issuer = template(op)
        client = env.client(microsoft(op, "common"))
        token = op.sign(tenant_issuer(op, TENANT_A), tid=TENANT_A)
        assert await refused(client, op, token, iss=iss(op)) == reason
        if reason is not None:
            assert op.token_auth == []  # refused before the code was redeemed

    run(scenario)


def test_microsoft_single_tenant_rfc9207_iss_parameter_is_exact():
    async def scenario(op: FakeOP, env: Env) -> None:
        client = env.client(microsoft(op, TENANT_A))
        token = op.sign(tenant_issuer(op, TENANT_A), tid=TENANT_A)
        assert await refused(client, op, token, iss=tenant_issuer(op, TENANT_B)) == "issuer_mismatch"
        assert await refused(client, op, token, iss=tenant_issuer(op, TENANT_A)) is None

    run(scenario)


# --------------------------------------------------------------------------- issuer mismatch


@pytest.mark.parametrize("configured, discovered", [
    pytest.param("{base}/", "{base}", id="config-has-a-trailing-slash"),
    pytest.param("{base}", "{base}/", id="discovery-has-a-trailing-slash"),
])
def test_issuer_mismatch_is_misconfigured_not_unavailable(configured, discovered, caplog):
    async def scenario(op: FakeOP, env: Env) -> None:
        issuer, named = configured.format(base=op.base), discovered.format(base=op.base)
        op.discovery_issuer = named
        config = load(f"issuer: {issuer}\n")
        assert config.issuer == issuer
        client = env.client(config)
        problem = await client.problem()
        assert problem is not None and problem.startswith(
            f"issuer mismatch: discovery says {named!r}, config says {issuer!r}"), problem
        with pytest.raises(ProviderError) as info:
            await authorization_query(client)
        assert type(info.value) is Misconfigured and info.value.reason == "discovery_invalid"

    with caplog.at_level(logging.WARNING, logger="gateway.providers"):
        run(scenario)
    assert any("issuer mismatch: discovery says" in r.getMessage() for r in caplog.records)


async def begin_login(env: Env, provider_entry: str) -> Refusal:
    """``LoginManager.begin`` for a route whose one provider is ``provider_entry`` (YAML)."""
    config = loads(textwrap.dedent("""\
        server:
          public_url: http://127.0.0.1:8080
        session:
          secret: {secret}
        providers:
          corp:
        {entry}
            client_id: {client_id}
            client_secret: "{client_secret}"
        routes:
          - {{name: app, path: /app, upstream: "http://127.0.0.1:9", auth: login, providers: [corp]}}
        """).format(secret=SECRET, entry=textwrap.indent(textwrap.dedent(provider_entry), "    "),
                    client_id=CLIENT_ID, client_secret=CLIENT_SECRET))
    login = LoginManager(config, env.http, env.registry(), DiscoveryCache(env.http))
    try:
        answer = await login.begin(config.routes[0], {}, "/app")
    finally:
        await login.close()
    assert isinstance(answer, Refusal), answer
    return answer


def test_login_begin_with_an_issuer_mismatch_is_a_502_misconfigured_page():
    async def scenario(op: FakeOP, env: Env) -> None:
        op.discovery_issuer = op.base
        answer = await begin_login(env, f"issuer: {op.base}/\n")
        assert (answer.status, answer.reason) == (502, "provider corp: discovery_invalid")
        assert answer.description == MISCONFIGURED_TEXT != UNAVAILABLE
        assert answer.retry_url == ""

    run(scenario)


# --------------------------------------------------------------------------- PKCE


@pytest.mark.parametrize("methods", [["plain"], [], "S256"], ids=["plain-only", "none", "not-a-list"])
def test_a_provider_without_pkce_s256_is_misconfigured(methods, caplog):
    async def scenario(op: FakeOP, env: Env) -> None:
        op.metadata["code_challenge_methods_supported"] = methods
        client = env.client(load(f"issuer: {op.base}\n"))
        assert await client.problem() is None  # discovery itself is fine
        with pytest.raises(Misconfigured) as info:
            await authorization_query(client)
        assert info.value.reason == "pkce_unsupported"
        answer = await begin_login(env, f"issuer: {op.base}\n")
        assert (answer.status, answer.reason) == (502, "provider corp: pkce_unsupported")

    with caplog.at_level(logging.WARNING, logger="gateway.providers"):
        run(scenario)
    lines = [r.getMessage() for r in caplog.records if "code_challenge_methods_supported" in r.getMessage()]
    assert lines and all("enable PKCE S256 for this client at the provider" in line for line in lines), lines


@pytest.mark.parametrize("methods", [["plain", "S256"], None], ids=["listed", "not-advertised"])
def test_pkce_s256_listed_or_not_advertised_is_used(methods):
    async def scenario(op: FakeOP, env: Env) -> None:
        op.metadata["code_challenge_methods_supported"] = methods
        query = await authorization_query(env.client(load(f"issuer: {op.base}\n")))
        assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43

    run(scenario)


# --------------------------------------------------------------------------- client authentication

AUTH_METHODS = [
    pytest.param("client_secret_post", ["client_secret_basic"], "client_secret_post",
                 id="configured-post-overrides-discovery-basic"),
    pytest.param("client_secret_basic", ["client_secret_post"], "client_secret_basic",
                 id="configured-basic-overrides-discovery-post"),
    pytest.param("", ["client_secret_post"], "client_secret_post", id="discovery-lists-only-post"),
    pytest.param("", ["client_secret_post", "client_secret_basic"], "client_secret_basic", id="discovery-lists-both"),
    pytest.param("", None, "client_secret_basic", id="discovery-lists-nothing"),
    pytest.param("", ["private_key_jwt", "client_secret_post"], "client_secret_post", id="post-among-others"),
    pytest.param("", ["private_key_jwt", "tls_client_auth"], "unsupported_client_auth", id="neither"),
    pytest.param("", [], "unsupported_client_auth", id="empty-list"),
]


@pytest.mark.parametrize("configured, listed, expected", AUTH_METHODS)
def test_token_endpoint_auth_method(configured, listed, expected, caplog):
    async def scenario(op: FakeOP, env: Env) -> None:
        op.metadata["token_endpoint_auth_methods_supported"] = listed
        entry = f"issuer: {op.base}\n" + (f"token_endpoint_auth_method: {configured}\n" if configured else "")
        config = load(entry)
        assert config.token_endpoint_auth_method == configured
        client = env.client(config)
        token = op.sign(op.base)
        if expected == "unsupported_client_auth":
            with pytest.raises(Misconfigured) as info:
                await sign_in(client, op, token)
            assert info.value.reason == "unsupported_client_auth"
            assert op.token_auth == []  # never sent to the token endpoint
        else:
            assert (await sign_in(client, op, token)).sub == "user-1"
            assert op.token_auth == [(expected, CLIENT_ID, CLIENT_SECRET)]

    with caplog.at_level(logging.WARNING, logger="gateway.providers"):
        run(scenario)
    if expected == "unsupported_client_auth":
        assert any("set token_endpoint_auth_method" in r.getMessage() for r in caplog.records)
    assert not any(CLIENT_SECRET in r.getMessage() for r in caplog.records)
