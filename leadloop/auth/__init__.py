"""Credentials the channels log in with: OAuth2 access tokens for XOAUTH2
(:mod:`leadloop.auth.oauth2`), refreshed before they expire."""

from leadloop.auth.oauth2 import (
    AlertHook,
    ClientCredentials,
    RefreshToken,
    TokenProvider,
    TokenUnavailable,
    secret_source,
)

__all__ = [
    "AlertHook",
    "ClientCredentials",
    "RefreshToken",
    "TokenProvider",
    "TokenUnavailable",
    "secret_source",
]
