"""TLS files in routes.yaml: ``server.tls`` and ``routes[].tls``, checked once when the config loads.

Each file must exist and hold what its key says (a certificate, a private key
that fits it, a CA bundle); paths become absolute (relative to routes.yaml),
because they are read again on every reload.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from yaml.nodes import Node

from ..schema import ServerTLS, UpstreamTLS, yaml_keys
from ..source import BAD, Source, is_hostname, q


def _read(src: Source, node: Node, label: str) -> Any:
    text = src.get_str(node, label)
    if text is BAD:
        return BAD
    path = os.path.abspath(os.path.join(src.base_dir, os.path.expanduser(text.strip())))
    if "\0" in path:
        src.error(node, f"{label} {q(text)} is not a file name (it holds a NUL character)")
        return BAD
    if not os.path.isfile(path):
        src.error(node, f"{label} {q(text)} is not a readable file" + ("" if os.path.exists(path) else
                                                                        " (it does not exist)"))
        return BAD
    try:
        with open(path, "rb") as fh:
            return path, fh.read(1 << 20)
    except OSError as exc:
        src.error(node, f"{label} {q(text)} cannot be read: {exc.strerror or exc}")
        return BAD


def _certificates(src: Source, node: Node, label: str, data: bytes) -> Any:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except Exception:
        certs = []
    if not certs:
        src.error(node, f"{label} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
        return BAD
    return certs


def _pair(src: Source, items: dict, where: str) -> Any:
    """(cert path, key path) after checking that the key is a private key fitting the certificate."""
    cert = _read(src, items["cert"][1], f"{where}: cert")
    key = _read(src, items["key"][1], f"{where}: key")
    if cert is BAD or key is BAD:
        return BAD
    certs = _certificates(src, items["cert"][1], f"{where}: cert", cert[1])
    if certs is BAD:
        return BAD
    if b"ENCRYPTED" in key[1]:
        src.error(items["key"][1], f"{where}: key is an encrypted PEM; give it unencrypted (readable only by "
                                   "the gateway)")
        return BAD
    try:
        private = serialization.load_pem_private_key(key[1], password=None)
    except Exception:
        src.error(items["key"][1], f"{where}: key holds no PEM private key")
        return BAD
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(serialization.Encoding.PEM, public) != \
            certs[0].public_key().public_bytes(serialization.Encoding.PEM, public):
        src.error(items["key"][1], f"{where}: key does not belong to the certificate in cert")
        return BAD
    return cert[0], key[0]


def server_tls(src: Source, node: Node) -> Any:
    where = "server: tls"
    mapped = src.get_mapping(node, f"{where} must be a mapping with cert and key (PEM files)")
    if mapped is BAD:
        return BAD
    items, problems = mapped
    src.keys(node, yaml_keys(ServerTLS), where, items, problems)
    missing = [k for k in ("cert", "key") if k not in items]
    for key in missing:
        src.error(node, f"{where}: {key} is required")
    if missing:
        return BAD
    pair = _pair(src, items, where)
    return BAD if pair is BAD else ServerTLS(cert=pair[0], key=pair[1])


def upstream_tls(src: Source, node: Node, where: str, upstreams: Any) -> Any:
    where = f"{where}: tls"
    mapped = src.get_mapping(node, f"{where} must be a mapping with ca, cert, key or server_name")
    if mapped is BAD:
        return BAD
    items, problems = mapped
    src.keys(node, yaml_keys(UpstreamTLS), where, items, problems)
    values: dict[str, Any] = {}
    ok = True
    if isinstance(upstreams, tuple) and any(not u.lower().startswith("https://") for u in upstreams):
        src.error(node, f"{where} is for https:// upstreams only (this route has an http:// one)")
        ok = False
    if "ca" in items:
        ca = _read(src, items["ca"][1], f"{where}: ca")
        if ca is BAD or _certificates(src, items["ca"][1], f"{where}: ca", ca[1]) is BAD:
            ok = False
        else:
            values["ca"] = ca[0]
    if ("cert" in items) != ("key" in items):
        src.error(node, f"{where}: cert and key go together (a client certificate for mutual TLS)")
        ok = False
    elif "cert" in items:
        pair = _pair(src, items, where)
        if pair is BAD:
            ok = False
        else:
            values["cert"], values["key"] = pair
    if "server_name" in items:
        name = src.get_str(items["server_name"][1], f"{where}: server_name")
        if name is not BAD and not is_hostname(name.lower().rstrip(".")):
            src.error(items["server_name"][1], f"{where}: server_name {q(name)} is not a host name")
            name = BAD
        if name is BAD:
            ok = False
        else:
            values["server_name"] = name.lower().rstrip(".")
    return UpstreamTLS(**values) if ok else BAD


def hsts(src: Source, node: Node) -> Optional[float]:
    seconds = src.get_duration(node, "server: hsts", positive=False)
    return None if seconds is BAD else seconds
