"""A minimal Django site that is an OpenID Connect provider with django-oauth-toolkit (DOT).

Configured the way DOT's OpenID Connect documentation describes it: OIDC_ENABLED, an RSA key for
RS256 ID tokens (OIDC_RSA_PRIVATE_KEY), PKCE required, refresh tokens, a validator of our own that
adds claims (dotsite/validators.py), RP-initiated logout, and django.contrib.auth's LoginView as the
sign-in page. Only for the gateway's tests: everything comes from the environment the test fixture
(tests/support/dot_provider.py) sets, and it listens on loopback only.

    DOT_PEER_ISSUER              the issuer, e.g. http://localhost:PORT/o (no trailing slash)
    DOT_PEER_DB                  path of the sqlite database (in the test's temp dir)
    DOT_PEER_RSA_KEY_FILE        PEM file of the RSA private key that signs ID tokens
    DOT_PEER_SECRET_KEY          Django's SECRET_KEY (sessions, CSRF)
    ACCESS_TOKEN_EXPIRE_SECONDS  access-token lifetime (default 3600)
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = os.environ["DOT_PEER_SECRET_KEY"]
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "oauth2_provider",
    "dotsite",
]

MIDDLEWARE = [
    "dotsite.middleware.count_requests",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

ROOT_URLCONF = "dotsite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["DOT_PEER_DB"],
        # the server's threads and `manage.py peer_revoke_user` write to the same file
        "OPTIONS": {"timeout": 20},
    }
}

# Fast hashing (dotsite/hashers.py): throw-away test users, and DOT hashes client secrets with it too.
PASSWORD_HASHERS = ["dotsite.hashers.FastPBKDF2PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

LOGIN_URL = "/accounts/login/"
# The provider is reached as http://localhost:PORT and the gateway as http://127.0.0.1:PORT:
# cookies are per host, so this session cookie never reaches the gateway.
SESSION_COOKIE_NAME = "dot_sessionid"
CSRF_COOKIE_NAME = "dot_csrftoken"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django": {"handlers": ["console"], "level": "WARNING"}},
}

OAUTH2_PROVIDER = {
    "OIDC_ENABLED": True,
    "OIDC_ISS_ENDPOINT": os.environ["DOT_PEER_ISSUER"],
    "OIDC_RSA_PRIVATE_KEY": Path(os.environ["DOT_PEER_RSA_KEY_FILE"]).read_text(),
    "OIDC_RP_INITIATED_LOGOUT_ENABLED": True,
    # log out without a confirmation page when the id_token_hint is the signed-in user's
    "OIDC_RP_INITIATED_LOGOUT_ALWAYS_PROMPT": False,
    "OAUTH2_VALIDATOR_CLASS": "dotsite.validators.ClaimsValidator",
    "SCOPES": {
        "openid": "OpenID Connect",
        "profile": "Your name and user name",
        "email": "Your email address",
        "groups": "Your groups",
    },
    "DEFAULT_SCOPES": ["openid"],
    "PKCE_REQUIRED": True,
    "ACCESS_TOKEN_EXPIRE_SECONDS": int(os.environ.get("ACCESS_TOKEN_EXPIRE_SECONDS", "3600")),
    "ID_TOKEN_EXPIRE_SECONDS": 3600,
    "ROTATE_REFRESH_TOKEN": True,
    # the RFC 9700 behaviours DOT 3.x offers (they become the default in DOT 4)
    "COMPLIANT_BCP_RFC9700_IMPLICIT_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PASSWORD_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
    "COMPLIANT_BCP_RFC9700_ACCESS_TOKEN_TRANSPORT": True,
    "COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS": True,
    "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": True,
}
