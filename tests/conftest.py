"""Shared pytest setup.

``tests`` is a package and the repository root is on ``sys.path`` (``pythonpath = .``
in setup.cfg), so helpers are imported one way only: ``from tests.support.x import ...``.
"""

from __future__ import annotations
