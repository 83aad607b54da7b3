"""Every helper module is imported under one name: ``tests.support.*``, never ``support.*``."""

from __future__ import annotations

import sys


def test_no_helper_module_is_imported_under_a_second_name() -> None:
    doubles = sorted(name for name in sys.modules
                     if name in ("support", "fake_idp", "conftest")
                     or name.startswith("support.") or name.startswith("fake_idp."))
    assert doubles == []
    assert "tests.support" in sys.modules
