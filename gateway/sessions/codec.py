"""The encrypted, authenticated cookie format (AES-GCM, a key per purpose by HKDF) and cookie chunking.

Used by the cookie store for whole sessions and by browser login for pending-login state."""

from __future__ import annotations

import base64
import binascii
import math
import re
import secrets
import time
from typing import List, Mapping, Optional, Sequence, Tuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .model import (
    _B64URL,
    _EXPIRY,
    CHUNK_SIZE,
    KEY_INFO,
    MAX_CHUNKS,
    MAX_TOKEN_CHARS,
    NONCE_SIZE,
    TOKEN_VERSION,
    Clock,
    log,
)


class CookieCodec:
    """AES-GCM with a 256-bit key derived from the secret by HKDF-SHA256.

    The HKDF info is ``b"gateway session v1 " + purpose``, so the values made
    for one purpose ("session", "login-state", "ticket", ...) cannot be
    decrypted as another. A token is the unpadded base64url of::

        version (1 byte) | nonce (12 random bytes) | AES-GCM(expiry as float64 | payload)

    with the cookie ``name`` as associated data, so a value cannot be moved to
    another cookie. ``encode`` uses the current secret; ``decode`` tries the
    current and then every previous secret. ``decode`` returns None for
    anything tampered, expired, truncated or otherwise unusable, and never
    raises.
    """

    def __init__(
        self,
        secret: str,
        previous: Sequence[str] = (),
        purpose: str = "session",
        clock: Clock = time.time,
    ):
        if not secret:
            raise ValueError("a session secret is required")
        self.purpose = purpose
        self._clock = clock
        info = KEY_INFO + b" " + purpose.encode()
        keys: List[AESGCM] = []
        seen = set()
        for s in (secret, *previous):
            if not s or s in seen:
                continue
            seen.add(s)
            material = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(s.encode())
            keys.append(AESGCM(material))
        self._keys = keys

    def encode(self, name: str, payload: bytes, max_age: float) -> str:
        """Encrypt ``payload`` for cookie ``name``, valid for ``max_age`` seconds."""
        expires = self._clock() + max_age
        nonce = secrets.token_bytes(NONCE_SIZE)
        sealed = self._keys[0].encrypt(nonce, _EXPIRY.pack(expires) + bytes(payload), name.encode())
        blob = bytes([TOKEN_VERSION]) + nonce + sealed
        return base64.urlsafe_b64encode(blob).rstrip(b"=").decode("ascii")

    def decode(self, name: str, token: str) -> Optional[bytes]:
        """The payload of a valid, unexpired ``token`` made for ``name``; otherwise None."""
        try:
            return self._decode(name, token)
        except Exception:  # a codec must never turn bad input into a 500
            log.debug("unexpected error decoding a %s value", self.purpose, exc_info=True)
            return None

    def _decode(self, name: str, token: str) -> Optional[bytes]:
        if not isinstance(token, str) or not isinstance(name, str):
            return None
        if not token or len(token) > MAX_TOKEN_CHARS or len(token) % 4 == 1:
            return None
        if not _B64URL.fullmatch(token):
            return None
        try:
            blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        # version + nonce + expiry + GCM tag (16 bytes)
        if len(blob) < 1 + NONCE_SIZE + _EXPIRY.size + 16 or blob[0] != TOKEN_VERSION:
            return None
        nonce, sealed = blob[1 : 1 + NONCE_SIZE], blob[1 + NONCE_SIZE :]
        aad = name.encode("utf-8", "surrogatepass")
        for key in self._keys:
            try:
                plain = key.decrypt(nonce, sealed, aad)
            except InvalidTag:
                continue
            (expires,) = _EXPIRY.unpack_from(plain)
            if not math.isfinite(expires) or self._clock() >= expires:
                return None
            return plain[_EXPIRY.size :]
        return None


# --------------------------------------------------------------------------
# Cookie chunking


def chunk_cookie(name: str, value: str) -> List[Tuple[str, str]]:
    """``[(name, value)]`` when it fits, else ``[(name_0, v0), (name_1, v1), ...]``.

    Raises ValueError when more than ``MAX_CHUNKS`` cookies would be needed.
    """
    if len(value) <= CHUNK_SIZE:
        return [(name, value)]
    parts = [value[i : i + CHUNK_SIZE] for i in range(0, len(value), CHUNK_SIZE)]
    if len(parts) > MAX_CHUNKS:
        raise ValueError(f"cookie {name} would need {len(parts)} chunks (at most {MAX_CHUNKS})")
    return [(f"{name}_{i}", part) for i, part in enumerate(parts)]


def read_chunked(name: str, cookies: Mapping[str, str]) -> Optional[str]:
    """The value of cookie ``name``, or of ``name_0``, ``name_1``... joined.

    Reassembly stops at the first missing index and never reads more than
    ``MAX_CHUNKS`` chunks. None when neither form is present.
    """
    if name in cookies:
        return cookies[name]
    parts = []
    for i in range(MAX_CHUNKS):
        part = cookies.get(f"{name}_{i}")
        if part is None:
            break
        parts.append(part)
    return "".join(parts) if parts else None


def cookie_names(name: str, cookies: Mapping[str, str]) -> List[str]:
    """Every cookie of this session in the request (``name`` and any ``name_N``), to clear them all."""
    pattern = re.compile(re.escape(name) + r"_(\d{1,4})")
    chunks = []
    for key in cookies:
        m = pattern.fullmatch(key)
        if m:
            chunks.append((int(m.group(1)), key))
    names = [name] if name in cookies else []
    return names + [key for _, key in sorted(chunks)]


# --------------------------------------------------------------------------
# The store interface
