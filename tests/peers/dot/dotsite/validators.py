"""The OAuth2Validator of the test site: the claims the gateway forwards, in ID tokens and userinfo."""

from oauth2_provider.oauth2_validators import OAuth2Validator


class ClaimsValidator(OAuth2Validator):
    # groups is no standard claim: released with the "groups" scope
    oidc_claim_scope = {**OAuth2Validator.oidc_claim_scope, "groups": "groups"}

    def get_additional_claims(self):
        # The request-agnostic form (callables of the request): DOT then lists these claims in
        # the discovery document's claims_supported too.
        return {
            "email": lambda request: request.user.email,
            "email_verified": lambda request: bool(request.user.email),
            "preferred_username": lambda request: request.user.get_username(),
            "name": lambda request: request.user.get_full_name() or request.user.get_username(),
            "groups": lambda request: sorted(request.user.groups.values_list("name", flat=True)),
        }
