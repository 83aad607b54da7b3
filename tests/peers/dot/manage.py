#!/usr/bin/env python3
"""The django-oauth-toolkit test site's manage.py (see dotsite/settings.py for its environment)."""
import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dotsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
