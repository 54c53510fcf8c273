"""HTTP routes (thin): OpenAI- and TGI-compatible inference, health, identity, admin. Handlers receive
``services: ServicesDep`` and ``ctx: ContextDep`` (``gateway.api.deps``); ``guard.py`` authenticates every request,
builds its ``RequestContext`` and asks ``services.authz`` for the route's declared action."""
