"""Shared pytest setup.

``tests`` is a package and the repository root is on ``sys.path`` (``pythonpath = .``
in setup.cfg), so helpers are imported one way only: ``from tests.support.x import ...``.

The fixtures hand out the one token maker of tests/support/tokens.py:

* ``hs_secret``: the HS256 secret the in-process verifiers are configured with;
* ``make_token(claims, key=hs_secret, alg="HS256", headers=None)``: a signed JWT;
* ``bearer(token)``: ``{"Authorization": "Bearer <token>"}``;
* ``gateway_env(session_secret=..., **variables)``: environment variables for a gateway config.
"""

from __future__ import annotations

from typing import Callable, Dict

import pytest

from tests.support import tokens


@pytest.fixture
def hs_secret() -> str:
    return tokens.HMAC_SECRET


@pytest.fixture
def make_token() -> Callable[..., str]:
    return tokens.make_token


@pytest.fixture
def bearer() -> Callable[[str], Dict[str, str]]:
    return tokens.bearer


@pytest.fixture
def gateway_env() -> Callable[..., Dict[str, str]]:
    return tokens.gateway_env
