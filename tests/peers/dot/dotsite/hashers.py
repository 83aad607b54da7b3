from django.contrib.auth.hashers import PBKDF2PasswordHasher


class FastPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """PBKDF2 with few iterations: throw-away test users and client secrets, and each hash costs
    milliseconds instead of half a second (Django's default is a million iterations)."""

    iterations = 1000
