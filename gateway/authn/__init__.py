"""Authentication: who is calling. API keys here; OAuth2 JWTs and human sessions plug into ``Authenticator``."""
