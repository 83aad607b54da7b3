"""Tokens for scripts: ``ScriptTokens`` (issue, token_for, the CLI loopback flow) and their session binding.

In-process: a real ``CookieSessionStore`` keeps the CLI codes, one injected
clock drives the store and the tokens, and the ``Authenticator`` is the one
requests go through. No browser, no provider, no sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.answers import Json, Page, Redirect, Refusal
from gateway.assertions import AssertionSigner
from gateway.authn import Authenticator
from gateway.config import SessionConfig, SigningConfig, loads
from gateway.models import Identity
from gateway.pages import render
from gateway.script_tokens import AUDIENCE, CLI_CODE_TTL, ScriptTokens, own_identity
from gateway.sessions import CookieSessionStore
from gateway.signing import KeyRing, SigningKey, thumbprint
from gateway.tokens import TokenVerifier

pytestmark = pytest.mark.timeout(60)

ISSUER = "https://apps.example.com"
NOW = 1_700_000_000.0
LIFETIME = 3600.0
SECRET = "q7Rk2-vXw9pL4mZt8nB3cYs6hJ1dGf5a-0123456789"


class Clock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def private_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def ring(private_key, clock):
    public = private_key.public_key()
    return KeyRing(SigningKey(thumbprint(public), "ES256", public, private_key), issuer=ISSUER, clock=clock)


@pytest.fixture
def store(clock):
    return CookieSessionStore(SessionConfig(secret=SECRET, cookie_name="_gw"), clock)


@pytest.fixture
def tokens(ring, store, clock):
    return ScriptTokens(ring, store, lifetime=LIFETIME, clock=clock)


def session_identity(*, ends_in: float = 8 * 3600, sid: str = "sid-1", **over) -> Identity:
    values = dict(sub="alice", email="alice@example.com", groups=("dev", "ops"), preferred_username="alice.a",
                  issuer="https://idp.example.com", source="session", expires_at=NOW + ends_in, session_id=sid)
    values.update(over)
    return Identity(**values)


def pkce() -> tuple:
    verifier = base64.urlsafe_b64encode(hashlib.sha256(b"a fixed verifier seed").digest() * 2).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


VERIFIER, CHALLENGE = pkce()


# ---------------------------------------------------------------------------
# issue() and GET /oauth2/token


def test_issue_claims(tokens, ring):
    token, expires_in = tokens.issue(session_identity())
    assert expires_in == LIFETIME
    header = jwt.get_unverified_header(token)
    assert header["kid"] == ring.current.kid and header["alg"] == "ES256"
    claims = ring.verify(token, audience=AUDIENCE)
    assert AUDIENCE == "gateway"
    assert claims == {"iss": ISSUER, "aud": "gateway", "sub": "alice", "iat": int(NOW), "exp": int(NOW + LIFETIME),
                      "sid": "sid-1", "email": "alice@example.com", "groups": ["dev", "ops"],
                      "preferred_username": "alice.a"}


def test_issue_never_past_the_session_end(tokens, ring):
    token, expires_in = tokens.issue(session_identity(ends_in=600.7))
    claims = ring.verify(token, audience=AUDIENCE)
    assert claims["exp"] == int(NOW + 600.7) == int(NOW) + 600
    assert expires_in == 600


def test_issue_follows_the_clock(tokens, ring, clock):
    clock.now = NOW + 1000
    token, expires_in = tokens.issue(session_identity())
    claims = ring.verify(token, audience=AUDIENCE)
    assert claims["iat"] == int(NOW) + 1000 and claims["exp"] == int(NOW) + 1000 + int(LIFETIME)


def test_issue_of_a_bare_identity(tokens, ring):
    token, _ = tokens.issue(Identity(sub="bob", session_id="s2", source="session"))
    assert set(ring.verify(token, audience=AUDIENCE)) == {"iss", "aud", "sub", "iat", "exp", "sid"}


def test_token_for_a_script_is_json(tokens, ring):
    answer = tokens.token_for(session_identity(), browser=False, public_url=ISSUER)
    assert isinstance(answer, Json) and answer.status == 200
    body = answer.body
    assert body["token_type"] == "Bearer" and body["expires_in"] == LIFETIME
    assert ring.verify(body["access_token"], audience=AUDIENCE)["sid"] == "sid-1"
    rendered = render(answer, browser=False, request_id="rid")
    headers = dict(rendered.headers)
    assert headers["Cache-Control"] == "no-store" and headers["Content-Type"] == "application/json"
    assert json.loads(rendered.body)["access_token"] == body["access_token"]


def test_token_for_a_browser_is_a_page(tokens, ring):
    answer = tokens.token_for(session_identity(), browser=True, public_url=ISSUER)
    assert isinstance(answer, Page) and answer.template == "token.html"
    token = answer.args["token"]
    assert ring.verify(token, audience=AUDIENCE)["sub"] == "alice"
    assert answer.args["who"] == "alice.a"
    rendered = render(answer, browser=True, request_id="rid")
    page = rendered.body.decode()
    assert token in page
    assert 'id="copy"' in page
    assert f'curl -H "Authorization: Bearer $TOKEN" {ISSUER}/' in page.replace("&quot;", '"')
    assert dict(rendered.headers)["Cache-Control"] == "no-store"


# ---------------------------------------------------------------------------
# /oauth2/cli: cli_start


@pytest.mark.parametrize("port", ["0", "65536", "99999", "123456", "080", "0080", "8080a", "-1", "", "8080/x",
                                  "1e3", "٣", "８０８０", "80 ", " 80", "+80", "8080\n", "80.0", "0x50",
                                  "8080@evil.example", "8080#"])
def test_cli_start_refuses_a_bad_port(tokens, store, port):
    answer = run(tokens.cli_start({"port": port, "code_challenge": CHALLENGE}, session_identity()))
    assert isinstance(answer, Refusal) and answer.status == 400
    assert answer.reason == "cli: bad port"
    assert "1 to 65535" in answer.description
    assert store._handoffs == {}  # no code was handed out


def test_cli_start_refuses_a_missing_port(tokens):
    answer = run(tokens.cli_start({"code_challenge": CHALLENGE}, session_identity()))
    assert isinstance(answer, Refusal) and answer.status == 400 and answer.reason == "cli: bad port"


@pytest.mark.parametrize("port", ["1", "80", "8080", "49152", "65535"])
def test_cli_start_redirects_to_the_loopback_port(tokens, port):
    answer = run(tokens.cli_start({"port": port, "code_challenge": CHALLENGE}, session_identity()))
    assert isinstance(answer, Redirect) and answer.status == 302
    prefix = f"http://127.0.0.1:{port}/callback?code="
    assert answer.location.startswith(prefix)
    code = answer.location[len(prefix):]
    assert code and all(c.isalnum() or c in "-_" for c in code)  # url-safe: nothing to escape, nothing else
    parts = urlsplit(answer.location)
    assert (parts.scheme, parts.hostname, parts.port, parts.path) == ("http", "127.0.0.1", int(port), "/callback")
    assert parse_qs(parts.query) == {"code": [code]}


def test_cli_start_ignores_everything_else_in_the_query(tokens):
    args = {"port": "8080", "code_challenge": CHALLENGE, "redirect_uri": "https://evil.example/",
            "host": "evil.example", "code_challenge_method": "S256"}
    answer = run(tokens.cli_start(args, session_identity()))
    assert isinstance(answer, Redirect)
    assert answer.location.startswith("http://127.0.0.1:8080/callback?code=")
    assert "evil" not in answer.location


@pytest.mark.parametrize("args", [
    {"code_challenge": CHALLENGE[:-1]},  # too short
    {"code_challenge": CHALLENGE + "A"},  # too long
    {"code_challenge": CHALLENGE[:-1] + "="},  # padding
    {"code_challenge": CHALLENGE[:-1] + "+"},  # standard base64, not base64url
    {"code_challenge": CHALLENGE[:-1] + "/"},
    {"code_challenge": CHALLENGE[:-1] + "."},
    {"code_challenge": ""},
    {},
    {"code_challenge": CHALLENGE, "code_challenge_method": "plain"},
    {"code_challenge": CHALLENGE, "code_challenge_method": "s256"},
    {"code_challenge": CHALLENGE, "code_challenge_method": ""},
    {"code_challenge": VERIFIER, "code_challenge_method": "plain"},  # a plain challenge is the verifier itself
], ids=["short", "long", "padding", "plus", "slash", "dot", "empty", "missing", "plain", "lowercase-s256",
        "empty-method", "plain-verifier"])
def test_cli_start_refuses_a_bad_code_challenge(tokens, store, args):
    answer = run(tokens.cli_start({"port": "8080", **args}, session_identity()))
    assert isinstance(answer, Refusal) and answer.status == 400
    assert answer.reason == "cli: bad code_challenge"
    assert "S256" in answer.description
    assert store._handoffs == {}


def code_of(answer) -> str:
    assert isinstance(answer, Redirect), answer
    return parse_qs(urlsplit(answer.location).query)["code"][0]


def start(tokens, identity=None, challenge=CHALLENGE) -> str:
    return code_of(run(tokens.cli_start({"port": "8080", "code_challenge": challenge},
                                        identity or session_identity())))


def exchange(tokens, **form):
    return run(tokens.cli_exchange(form))


def assert_error(answer, error: str):
    assert isinstance(answer, Json), answer
    assert answer.status == 400
    assert answer.body["error"] == error
    assert "access_token" not in answer.body
    assert dict(answer.headers).get("Pragma") == "no-cache"


# ---------------------------------------------------------------------------
# POST /oauth2/token: cli_exchange


def test_cli_exchange_with_the_right_verifier(tokens, ring):
    code = start(tokens)
    answer = exchange(tokens, code=code, code_verifier=VERIFIER)
    assert isinstance(answer, Json) and answer.status == 200
    assert answer.body["token_type"] == "Bearer" and answer.body["expires_in"] == LIFETIME
    claims = ring.verify(answer.body["access_token"], audience=AUDIENCE)
    assert claims["sub"] == "alice" and claims["sid"] == "sid-1" and claims["groups"] == ["dev", "ops"]
    assert claims["email"] == "alice@example.com" and claims["preferred_username"] == "alice.a"
    assert answer.body["sub"] == "alice"  # for the CLI's "signed in as"
    assert dict(answer.headers).get("Pragma") == "no-cache"
    assert dict(render(answer, browser=False, request_id="r").headers)["Cache-Control"] == "no-store"


def test_the_token_is_bound_to_the_session_that_signed_in(tokens, ring):
    code = start(tokens, session_identity(sid="sid-9", ends_in=900, sub="bob", email=None, groups=()))
    answer = exchange(tokens, code=code, code_verifier=VERIFIER)
    claims = ring.verify(answer.body["access_token"], audience=AUDIENCE)
    assert claims["sid"] == "sid-9" and claims["sub"] == "bob" and claims["exp"] == int(NOW) + 900
    assert "email" not in claims and "groups" not in claims


def test_a_wrong_verifier_spends_the_code(tokens):
    code = start(tokens)
    wrong = "w" * 43
    assert_error(exchange(tokens, code=code, code_verifier=wrong), "invalid_grant")
    assert_error(exchange(tokens, code=code, code_verifier=VERIFIER), "invalid_grant")


def test_a_code_works_once(tokens):
    code = start(tokens)
    assert exchange(tokens, code=code, code_verifier=VERIFIER).status == 200
    again = exchange(tokens, code=code, code_verifier=VERIFIER)
    assert_error(again, "invalid_grant")
    assert "unknown, used or expired" in again.body["error_description"]


def test_codes_are_independent(tokens):
    first, second = start(tokens), start(tokens)
    assert first != second
    assert exchange(tokens, code=second, code_verifier=VERIFIER).status == 200
    assert exchange(tokens, code=first, code_verifier=VERIFIER).status == 200


def test_another_clis_verifier_does_not_redeem_the_code(tokens):
    other_verifier = "o" * 64
    other_challenge = base64.urlsafe_b64encode(hashlib.sha256(other_verifier.encode()).digest()).rstrip(b"=")
    code = start(tokens, challenge=other_challenge.decode())
    assert_error(exchange(tokens, code=code, code_verifier=VERIFIER), "invalid_grant")


def test_an_expired_code_is_refused(tokens, clock):
    code = start(tokens)
    clock.now = NOW + CLI_CODE_TTL  # the store's clock: 60 s after the code was handed out
    answer = exchange(tokens, code=code, code_verifier=VERIFIER)
    assert_error(answer, "invalid_grant")


def test_a_code_just_before_its_expiry_works(tokens, clock):
    code = start(tokens)
    clock.now = NOW + CLI_CODE_TTL - 0.5
    assert exchange(tokens, code=code, code_verifier=VERIFIER).status == 200


def test_a_code_whose_session_ended_is_refused(tokens, clock):
    code = start(tokens, session_identity(ends_in=30))
    clock.now = NOW + 31
    answer = exchange(tokens, code=code, code_verifier=VERIFIER)
    assert_error(answer, "invalid_grant")
    assert "session has ended" in answer.body["error_description"]


@pytest.mark.parametrize("form", [{}, {"code": "abc"}, {"code_verifier": VERIFIER}, {"code": "", "code_verifier": ""},
                                  {"code": "", "code_verifier": VERIFIER}])
def test_missing_fields(tokens, form):
    answer = exchange(tokens, **form)
    assert_error(answer, "invalid_request")
    assert answer.body["error_description"] == "code and code_verifier are required"


def test_an_oversize_code_is_refused(tokens, store):
    answer = exchange(tokens, code="c" * 101, code_verifier=VERIFIER)
    assert_error(answer, "invalid_grant")
    assert answer.body["error_description"] == "malformed code or code_verifier"
    assert exchange(tokens, code="c" * 10_000, code_verifier=VERIFIER).status == 400


@pytest.mark.parametrize("verifier", ["v" * 42, "v" * 129, "v" * 42 + "+", "v" * 42 + "=", "v" * 42 + " ",
                                      "é" * 43])
def test_a_malformed_verifier_is_refused(tokens, verifier):
    code = start(tokens)
    assert_error(exchange(tokens, code=code, code_verifier=verifier), "invalid_grant")


def test_an_unknown_code_is_refused(tokens):
    assert_error(exchange(tokens, code="never-issued", code_verifier=VERIFIER), "invalid_grant")


# ---------------------------------------------------------------------------
# the Authenticator: own tokens live only as long as their session


class Sessions:
    """session_alive as the login code answers it: ended ids, else the store."""

    def __init__(self, store):
        self.store = store
        self.ended: set = set()
        self.asked: list = []

    async def alive(self, identity) -> bool:
        sid = identity.session_id
        self.asked.append(sid)
        return sid not in self.ended and await self.store.alive(sid)


@pytest.fixture
def sessions(store):
    return Sessions(store)


@pytest.fixture
def authn(ring, sessions, clock):
    verifier = TokenVerifier((), None, clock=clock,
                             own=(ISSUER, lambda raw: own_identity(ring.verify(raw, audience=AUDIENCE))))
    return Authenticator(verifier, session_loader=None, session_alive=sessions.alive)


def authenticate(authn, token: str):
    return run(authn.authenticate(f"Bearer {token}", lambda: {}, None))


def test_an_own_token_of_a_live_session_is_an_identity(authn, tokens, sessions):
    token, _ = tokens.issue(session_identity())
    result = authenticate(authn, token)
    assert result.error is None and result.token_sent
    who = result.identity
    assert (who.sub, who.email, who.groups, who.preferred_username) == ("alice", "alice@example.com",
                                                                         ("dev", "ops"), "alice.a")
    assert who.source == "gateway" and who.session_id == "sid-1" and who.issuer == ISSUER
    assert who.expires_at == int(NOW + LIFETIME)
    assert sessions.asked == ["sid-1"]


def test_an_own_token_of_an_ended_session_is_refused(authn, tokens, sessions):
    token, _ = tokens.issue(session_identity())
    assert authenticate(authn, token).identity is not None  # verified once: now in the verifier's cache
    sessions.ended.add("sid-1")
    result = authenticate(authn, token)
    assert result.identity is None and result.token_sent
    assert result.error.reason == "session_ended"
    assert "session" in result.error.description
    # another session of the same person is not affected
    other, _ = tokens.issue(session_identity(sid="sid-2"))
    assert authenticate(authn, other).identity.session_id == "sid-2"


def test_session_alive_false_is_session_ended(ring, tokens):
    async def never(_sid: str) -> bool:
        return False

    verifier = TokenVerifier((), None, own=(ISSUER, lambda raw: own_identity(ring.verify(raw, audience=AUDIENCE))))
    token, _ = tokens.issue(session_identity())
    result = run(Authenticator(verifier, session_alive=never).authenticate(f"Bearer {token}", lambda: {}, None))
    assert result.error.reason == "session_ended"


def test_without_a_session_check_own_tokens_are_refused(ring, tokens):
    verifier = TokenVerifier((), None, own=(ISSUER, lambda raw: own_identity(ring.verify(raw, audience=AUDIENCE))))
    token, _ = tokens.issue(session_identity())
    result = run(Authenticator(verifier).authenticate(f"Bearer {token}", lambda: {}, None))
    assert result.error.reason == "session_ended"


def test_an_own_token_without_sid_is_refused(authn, ring, sessions):
    token = ring.sign({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": int(NOW), "exp": int(NOW) + 600})
    result = authenticate(authn, token)
    assert result.identity is None and result.error.reason == "session_ended"
    for sid in ("", 7, None, ["sid-1"]):
        bad = ring.sign({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": int(NOW), "exp": int(NOW) + 600,
                         "sid": sid})
        assert authenticate(authn, bad).error.reason == "session_ended", sid
    assert sessions.asked == []


def test_an_identity_assertion_is_no_bearer_token(authn, ring, clock):
    """An upstream replaying the assertion it received: its audience is a route, and it has no sid."""
    signer = AssertionSigner(ring, clock=clock)
    for audience in ("app", "gateway"):  # even for a route named "gateway"
        assertion = signer.assertion(session_identity(), audience)
        result = authenticate(authn, assertion)
        assert result.identity is None and result.error is not None, audience


def test_an_expired_own_token_is_refused(authn, tokens, clock):
    token, _ = tokens.issue(session_identity(ends_in=120))
    clock.now = NOW + 120 + 31
    assert authenticate(authn, token).error.reason == "expired"


def test_an_own_token_signed_by_another_gateway_is_refused(authn, store, clock):
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    stranger = KeyRing(SigningKey(thumbprint(stranger_key.public_key()), "ES256", stranger_key.public_key(),
                                  stranger_key), issuer=ISSUER, clock=clock)
    token, _ = ScriptTokens(stranger, store, lifetime=LIFETIME, clock=clock).issue(session_identity())
    assert authenticate(authn, token).error.reason == "unknown_key"


# ---------------------------------------------------------------------------
# the whole wiring: Runtime, LoginManager.session_alive, the cookie store


def pem_of(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def test_runtime_wiring_refuses_a_token_once_its_session_ended(private_key):
    from gateway.runtime import Runtime

    text = ("server: {listen: 127.0.0.1:8080, public_url: 'https://apps.example.com/'}\n"
            f"session: {{secret: {SECRET}}}\n"
            "providers:\n  corp: {issuer: https://idp.example.com, client_id: c, client_secret: x}\n"
            "signing:\n  key: ${KEY}\n  token_lifetime: 10m\n"
            "routes:\n  - {name: api, path: /, upstream: http://127.0.0.1:9000, auth: token}\n")
    config = loads(text, source="/nonexistent/routes.yaml", env={"KEY": pem_of(private_key)})
    assert config.signing == SigningConfig(key=config.signing.key, token_lifetime=600)
    runtime = Runtime(config, http_client=None)  # nothing is fetched before start()
    assert runtime.keys.issuer == ISSUER  # public_url without its trailing slash
    assert isinstance(runtime.login.store, CookieSessionStore)
    import time

    identity = session_identity(expires_at=time.time() + 3600)
    token, expires_in = runtime.script_tokens.issue(identity)
    assert 599 <= expires_in <= 600
    route = runtime.config.routes[0]
    ok = run(runtime.authn.authenticate(f"Bearer {token}", lambda: {}, route))
    assert ok.identity is not None and ok.identity.session_id == "sid-1"
    from gateway.revocations import Revocation
    runtime.login.revocations.add(Revocation("id", "sid-1", until=time.time() + 3600))  # as a sign-out does
    ended = run(runtime.authn.authenticate(f"Bearer {token}", lambda: {}, route))
    assert ended.identity is None and ended.error.reason == "session_ended"


# ---------------------------------------------------------------------------
# the store's handoff slots, where CLI codes live


def test_handoff_is_taken_once(store):
    run(store.put_handoff("cli:a", b"payload", 60))
    assert run(store.take_handoff("cli:a")) == b"payload"
    assert run(store.take_handoff("cli:a")) is None
    assert run(store.take_handoff("cli:never")) is None


def test_handoff_expires_with_the_store_clock(store, clock):
    run(store.put_handoff("cli:a", b"one", 60))
    run(store.put_handoff("cli:b", b"two", 60))
    clock.now = NOW + 59.9
    assert run(store.take_handoff("cli:a")) == b"one"
    clock.now = NOW + 60
    assert run(store.take_handoff("cli:b")) is None


def test_expired_handoffs_are_pruned_and_the_slots_bounded(store, clock):
    store.MARKER_CAP = 3  # the instance's bound, made small
    for n in range(5):
        run(store.put_handoff(f"cli:{n}", b"x", 60))
    assert len(store._handoffs) == 3
    assert run(store.take_handoff("cli:0")) is None and run(store.take_handoff("cli:1")) is None
    assert run(store.take_handoff("cli:4")) == b"x"
    clock.now = NOW + 61
    run(store.put_handoff("cli:new", b"y", 60))
    assert list(store._handoffs) == ["cli:new"]  # the expired ones were dropped


def test_the_cookie_store_cannot_tell_an_ended_session(store):
    # the cookie store keeps nothing server-side: the login code's own ended-set answers instead
    assert run(store.alive("any-session-id")) is True
