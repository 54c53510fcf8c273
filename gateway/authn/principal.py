"""The authenticated caller, as every later step (ABAC, limits, audit) sees it: defined with the request
context in ``gateway.context`` (the foundation every layer may import), named here for the identity code."""

from gateway.context import AuthMethod, Principal

__all__ = ["AuthMethod", "Principal"]
