"""The ``signing`` section: the gateway's own keys, for its tokens and identity assertions.

One of the section rules that ``gateway.config.load`` runs. Keys are read
(from PEM text or a file path) and checked here, once: a bad, encrypted or
unsupported key is a config error; ``gateway.signing`` gets PEM it can use.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from yaml.nodes import Node

from ..schema import SigningConfig, yaml_keys
from ..source import BAD, Source, q

KEYS = yaml_keys(SigningConfig)
CURVES = ("secp256r1", "secp384r1", "secp521r1")
MIN_RSA_BITS = 2048


def signing(src: Source, pair: Optional[Tuple[Node, Node]]) -> SigningConfig:
    if pair is None:
        return SigningConfig()
    mapped = src.get_mapping(pair[1], "signing must be a mapping, e.g. key: ${GATEWAY_SIGNING_KEY}")
    if mapped is BAD:
        return SigningConfig()
    items, problems = mapped
    src.keys(pair[1], KEYS, "signing", items, problems)
    values: dict[str, Any] = {}
    if "key" in items:
        node = items["key"][1]
        text = src.get_str(node, "signing: key", empty_ok=True)
        if text not in (BAD, None):
            pem = read_key(src, node, text, "signing: key", private=True)
            if pem is not BAD:
                values["key"] = pem
    if "previous_keys" in items:
        entries = src.get_str_list(items["previous_keys"][1], "signing: previous_keys", "[${OLD_SIGNING_KEY}]",
                                   nonempty=False)
        if entries is not BAD:
            kept = []
            for index, (text, item) in enumerate(entries):
                pem = read_key(src, item, text, f"signing: previous_keys[{index}]", private=False)
                if pem is not BAD:
                    kept.append(pem)
            values["previous_keys"] = tuple(kept)
    if "token_lifetime" in items:
        lifetime = src.get_duration(items["token_lifetime"][1], "signing: token_lifetime", positive=True)
        if lifetime is not BAD:
            values["token_lifetime"] = lifetime
    return SigningConfig(**values)


def read_key(src: Source, node: Node, text: str, label: str, *, private: bool) -> Any:
    """PEM text of a usable key, from the value itself or the file it names; BAD after an error."""
    if text.lstrip().startswith("-----BEGIN"):
        pem = text.encode()
    else:
        label = f"{label} file {q(text)}"
        pem = src.read_file(node, text, label)
        if pem is BAD:
            return BAD
    if b"ENCRYPTED" in pem:
        src.error(node, f"{label} is an encrypted PEM; give it unencrypted (keep the file readable only by "
                        "the gateway), e.g. openssl pkey -in key.pem -out plain.pem")
        return BAD
    try:
        if b"PRIVATE KEY-----" in pem:
            key: Any = serialization.load_pem_private_key(pem, password=None)
        elif private:
            src.error(node, f"{label} must be a private key (-----BEGIN PRIVATE KEY-----); generate one with "
                            "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256")
            return BAD
        else:
            key = serialization.load_pem_public_key(pem)
    except Exception:  # any parse failure of untrusted input is a config error
        src.error(node, f"{label} is not a PEM key")
        return BAD
    public = key.public_key() if hasattr(key, "public_key") else key
    if isinstance(public, ec.EllipticCurvePublicKey):
        if public.curve.name not in CURVES:
            src.error(node, f"{label} is an EC key on {public.curve.name}; use P-256, P-384 or P-521")
            return BAD
    elif isinstance(public, rsa.RSAPublicKey):
        if public.key_size < MIN_RSA_BITS:
            src.error(node, f"{label} is a {public.key_size}-bit RSA key; use at least {MIN_RSA_BITS} bits")
            return BAD
    elif not isinstance(public, ed25519.Ed25519PublicKey):
        src.error(node, f"{label} must be an EC (P-256), RSA or Ed25519 key")
        return BAD
    return pem.decode("ascii", "replace")
