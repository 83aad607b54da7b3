"""manage.py peer_revoke_user USERNAME: what an administrator does to cut a person off.

The user is deactivated (is_active = False: no more sign-ins, and an existing Django session no
longer counts) and every refresh token of theirs is revoked exactly as the admin's "Revoke
selected refresh tokens" action does (RefreshToken.revoke(), which revokes the bound access token
too). DOT then answers a refresh with 400 invalid_grant.
"""

import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from oauth2_provider.models import get_refresh_token_model


class Command(BaseCommand):
    help = "Deactivate a user and revoke all of their refresh tokens."

    def add_arguments(self, parser):
        parser.add_argument("username")

    def handle(self, *args, username, **options):
        user = get_user_model().objects.get_by_natural_key(username)
        user.is_active = False
        user.save(update_fields=["is_active"])
        revoked = 0
        for token in get_refresh_token_model().objects.filter(user=user, revoked__isnull=True):
            token.revoke()
            revoked += 1
        self.stdout.write(json.dumps({"revoked": revoked}))
