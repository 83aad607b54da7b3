"""manage.py peer_setup SPEC.json: migrate the database, then create the users, their groups and
the gateway's Application from SPEC; prints {"users": {username: pk}} as JSON."""

import json

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import BaseCommand
from oauth2_provider.models import get_application_model


class Command(BaseCommand):
    help = "Create the test users and the OpenID Connect client described in a JSON file."

    def add_arguments(self, parser):
        parser.add_argument("spec")

    def handle(self, *args, spec, **options):
        with open(spec) as f:
            data = json.load(f)
        call_command("migrate", verbosity=0, interactive=False)
        users = {}
        for u in data["users"]:
            user = get_user_model().objects.create_user(
                username=u["username"], password=u["password"], email=u.get("email", ""),
                first_name=u.get("first_name", ""), last_name=u.get("last_name", ""),
            )
            for name in u.get("groups", []):
                user.groups.add(Group.objects.get_or_create(name=name)[0])
            users[user.get_username()] = user.pk
        Application = get_application_model()
        for c in data["clients"]:
            Application.objects.create(
                name=c["client_id"],
                client_id=c["client_id"],
                # given in clear; stored hashed (hash_client_secret: RS256 ID tokens never need it back)
                client_secret=c["client_secret"],
                hash_client_secret=True,
                client_type=Application.CLIENT_CONFIDENTIAL,
                authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
                redirect_uris=" ".join(c["redirect_uris"]),
                post_logout_redirect_uris=" ".join(c["post_logout_redirect_uris"]),
                algorithm=Application.RS256_ALGORITHM,
                skip_authorization=True,  # a first-party client: no consent page
            )
        self.stdout.write(json.dumps({"users": users}))
