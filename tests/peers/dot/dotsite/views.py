from django.contrib.auth import get_user_model
from django.http import JsonResponse
from oauth2_provider.models import get_refresh_token_model

from dotsite.middleware import COUNTS, LOCK


def stats(request):
    """Request counters, and each user's live (not revoked) refresh tokens."""
    with LOCK:
        counts = dict(COUNTS)
    live = {}
    for user in get_user_model().objects.all():
        live[user.get_username()] = get_refresh_token_model().objects.filter(user=user, revoked__isnull=True).count()
    return JsonResponse({"counts": counts, "live_refresh_tokens": live})
