"""gateway: a reverse-proxy authentication gateway (JWT bearer tokens and OpenID Connect) on Tornado."""

__version__ = "0.1.0"
