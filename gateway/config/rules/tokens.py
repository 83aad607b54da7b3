"""The ``tokens`` section: the issuers whose bearer tokens are accepted.

One of the section rules that ``gateway.config.load`` runs. This is the one
place where an issuer's settings are checked (key source, algorithms, key
type); ``gateway.tokens.TokenVerifier`` trusts the ``TokenIssuerConfig`` it
gets and only uses the algorithms its key can verify.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from yaml.nodes import Node

from ..schema import (
    ASYMMETRIC_ALGORITHMS,
    HMAC_ALGORITHMS,
    SUPPORTED_ALGORITHMS,
    TokenIssuerConfig,
    yaml_keys,
)
from ..source import BAD, Scalar, Source, check_url, hint, line_of, q

KEYS = yaml_keys(TokenIssuerConfig)


def tokens(src: Source, pair: Optional[Tuple[Node, Node]]) -> Tuple[TokenIssuerConfig, ...]:
    if pair is None:
        return ()
    entries = src.get_list(
        pair[1], "tokens", "- issuer: https://idp.example.com", nonempty=False
    )
    if entries is BAD:
        return ()
    result = []
    seen: dict[str, Node] = {}
    for index, node in enumerate(entries):
        token = token_entry(src, index, node, seen)
        if token is not BAD:
            result.append(token)
    return tuple(result)


def token_entry(src: Source, index: int, node: Node, seen: dict[str, Node]) -> Any:
    where = f"tokens[{index}]"
    mapped = src.get_mapping(node, f"{where} must be a mapping with issuer, audience and algorithms")
    if mapped is BAD:
        return BAD
    items, problems = mapped
    issuer: Any = BAD
    if "issuer" in items:
        issuer = src.get_str(items["issuer"][1], f"{where}: issuer")
        if issuer is not BAD:
            where = f"{where} (issuer {q(issuer)})"
            first = seen.get(issuer)
            if first is not None:
                src.error(
                    items["issuer"][1],
                    f"{where}: this issuer is already configured at line {line_of(first)}; "
                    "list every audience and algorithm in one entry",
                )
                issuer = BAD
            else:
                seen[issuer] = items["issuer"][1]
    else:
        src.error(node, f"{where}: issuer is required")
    src.keys(node, KEYS, where, items, problems)
    values: dict[str, Any] = {"issuer": issuer}

    if "audience" in items:
        aud_node = items["audience"][1]
        scalar = src.scalar(aud_node)
        if isinstance(scalar, Scalar) and scalar.text == "any":
            values["audience"] = None
        else:
            audiences = src.get_str_list(aud_node, f"{where}: audience", "[api]", scalar_ok=True)
            if audiences is not BAD:
                if any(text == "any" for text, _ in audiences):
                    src.error(aud_node, f'{where}: audience "any" cannot be part of a list')
                    audiences = BAD
                else:
                    audiences = tuple(dict.fromkeys(text for text, _ in audiences))
            values["audience"] = audiences
    else:
        src.error(
            node,
            f"{where}: audience is required "
            "(a string or a list; write audience: any to accept every audience)",
        )
        values["audience"] = BAD

    algorithms: Any = BAD
    if "algorithms" in items:
        algorithms = algorithm_list(src, items["algorithms"][1], where)
    else:
        src.error(node, f"{where}: algorithms is required, e.g. algorithms: [RS256]")
    values["algorithms"] = algorithms

    key_sources = sorted(
        (k for k in ("secret", "public_key", "jwks_uri") if k in items), key=lambda k: line_of(items[k][0])
    )
    if "secret" in items:
        secret_node = items["secret"][1]
        secret = src.get_str(secret_node, f"{where}: secret")
        if secret is not BAD and not src.secret_ok(secret_node, secret, f"{where}: secret"):
            secret = BAD
        values["secret"] = secret
    if "public_key" in items and len(key_sources) == 1:  # else only the conflict is reported
        values["public_key"] = public_key(src, items["public_key"][1], where, algorithms)
    if "jwks_uri" in items:
        values["jwks_uri"] = src.get_url(items["jwks_uri"][1], f"{where}: jwks_uri", query_ok=True)
    if "leeway" in items:
        values["leeway"] = src.get_duration(items["leeway"][1], f"{where}: leeway", positive=False)
    for key in ("groups_claim", "email_claim", "username_claim", "require_typ"):
        if key in items:
            values[key] = src.get_str(items[key][1], f"{where}: {key}")
    if "cache_size" in items:
        size = src.get_number(items["cache_size"][1])
        if isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= 10_000_000:
            values["cache_size"] = size
        elif size is not BAD:
            src.error(items["cache_size"][1], f"{where}: cache_size must be a whole number from 0 to 10000000")
            values["cache_size"] = BAD
    if "allow_unverified_email" in items:
        values["allow_unverified_email"] = src.get_bool(items["allow_unverified_email"][1],
                                                        f"{where}: allow_unverified_email")

    if len(key_sources) > 1:
        src.error(
            items[key_sources[-1]][0],
            f"{where}: give only one of secret, public_key and jwks_uri "
            f"(found {' and '.join(key_sources)})",
        )
        return BAD
    if algorithms is not BAD:
        hmac = [a for a in algorithms if a in HMAC_ALGORITHMS]
        public = [a for a in algorithms if a in ASYMMETRIC_ALGORITHMS]
        alg_node = items["algorithms"][1]
        if hmac and public:
            src.error(
                alg_node,
                f"{where}: algorithms mix HMAC ({hmac[0]}) and public-key ({public[0]}) algorithms; "
                "use separate entries (mixing them allows key-confusion attacks)",
            )
            return BAD
        if hmac and "secret" not in items:
            src.error(alg_node, f"{where}: {hmac[0]} needs a secret (the shared HMAC key)")
            return BAD
        if public and "secret" in items:
            src.error(
                items["secret"][0],
                f"{where}: secret is only for HMAC algorithms (HS256, HS384, HS512); "
                f"{public[0]} needs public_key, jwks_uri or the issuer's discovery document",
            )
            return BAD
        if public and not key_sources and issuer is not BAD and check_url(issuer) is not None:
            src.error(
                items["issuer"][1],
                f"{where}: the issuer is not an http(s) URL, so its keys cannot be discovered; "
                "give jwks_uri or public_key",
            )
            return BAD
    if any(v is BAD for v in values.values()):
        return BAD
    return TokenIssuerConfig(**values)


def algorithm_list(src: Source, node: Node, where: str) -> Any:
    entries = src.get_str_list(node, f"{where}: algorithms", "[RS256]")
    if entries is BAD:
        return BAD
    canonical = {a.lower(): a for a in SUPPORTED_ALGORITHMS}
    result = []
    ok = True
    for index, (text, item) in enumerate(entries):
        if text.strip().lower() == "none":
            src.error(item, f"{where}: algorithm none is never accepted")
            ok = False
            continue
        name = canonical.get(text.strip().lower())
        if name is None:
            close = hint(text.upper(), SUPPORTED_ALGORITHMS)
            if not close:
                close = " (supported: " + ", ".join(sorted(SUPPORTED_ALGORITHMS)) + ")"
            src.error(item, f"{where}: algorithms[{index}]: unknown algorithm {q(text)}{close}")
            ok = False
            continue
        result.append(name)
    return tuple(dict.fromkeys(result)) if ok else BAD


def public_key(src: Source, node: Node, where: str, algorithms: Any) -> Any:
    text = src.get_str(node, f"{where}: public_key")
    if text is BAD:
        return BAD
    label = f"{where}: public_key"
    if text.lstrip().startswith("-----BEGIN"):
        pem = text
    else:
        label = f"{label} file {q(text)}"
        raw = src.read_file(node, text, label)
        if raw is BAD:
            return BAD
        pem = raw.decode("utf-8", "replace")
    if "PRIVATE KEY-----" in pem:
        src.error(
            node, f"{label} holds a private key; give only the public key (-----BEGIN PUBLIC KEY-----)"
        )
        return BAD
    try:
        if "-----BEGIN CERTIFICATE-----" in pem:
            key = x509.load_pem_x509_certificate(pem.encode()).public_key()
        else:
            key = serialization.load_pem_public_key(pem.encode())
    except Exception:  # any parse failure of untrusted input is a config error
        src.error(node, f"{label} is not a PEM public key (-----BEGIN PUBLIC KEY-----)")
        return BAD
    if algorithms is not BAD:
        for alg in algorithms:
            if alg in HMAC_ALGORITHMS:
                continue
            if isinstance(key, rsa.RSAPublicKey):
                fits, kind = alg[:2] in ("RS", "PS"), "an RSA key"
            elif isinstance(key, ec.EllipticCurvePublicKey):
                curve = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}.get(alg)
                fits, kind = curve == key.curve.name, f"an EC key on {key.curve.name}"
            elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
                fits, kind = alg == "EdDSA", "an EdDSA key"
            else:
                fits, kind = False, "a key of an unsupported type"
            if not fits:
                src.error(node, f"{label} is {kind}, which cannot verify {alg}")
                return BAD
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        src.error(node, f"{label} is a {key.key_size}-bit RSA key; at least 2048 bits are required")
        return BAD
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")
