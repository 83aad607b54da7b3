"""Shared pytest setup.

Both the repository root and ``tests/`` are put on ``sys.path`` so that test
files can import either way: ``from support.upstream import Upstream`` /
``from fake_idp import SigningKey`` or ``from tests.support.upstream import ...``
and ``import gateway``.
"""

from __future__ import annotations

import os
import sys

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS_DIR)
for _path in (TESTS_DIR, ROOT):
    if _path not in sys.path:
        sys.path.insert(0, _path)
