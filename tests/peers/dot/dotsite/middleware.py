"""Counts what the gateway asked of the provider, for the tests' assertions (GET /__test/stats)."""

import collections
import threading
import urllib.parse

COUNTS: collections.Counter = collections.Counter()
LOCK = threading.Lock()


def _client_auth(request, form) -> str:
    if request.headers.get("Authorization", "").startswith("Basic "):
        return "client_secret_basic"
    if "client_secret" in form:
        return "client_secret_post"
    return "none"


def count_requests(get_response):
    def middleware(request):
        keys = []
        path = request.path
        if path == "/o/token/" and request.method == "POST":
            # the raw body first (Django caches it), so the view can still read request.POST
            form = urllib.parse.parse_qs(request.body.decode("utf-8", "replace"))
            grant = form.get("grant_type", ["?"])[0]
            keys += [f"token:{grant}", f"token_auth:{_client_auth(request, form)}"]
        elif path == "/o/authorize/":
            keys.append("authorize")
        elif path == "/o/userinfo/":
            keys.append("userinfo")
        elif path == "/o/logout/":
            keys.append("logout")
        elif path == "/accounts/login/" and request.method == "POST":
            keys.append("login")
        response = get_response(request)
        outcome = "ok" if response.status_code < 400 else "refused"
        with LOCK:
            for key in keys:
                COUNTS[key] += 1
                COUNTS[f"{key}:{outcome}"] += 1
        return response

    return middleware
