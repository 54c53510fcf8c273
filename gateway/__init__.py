"""Palisade gateway: zero-trust inference gateway for a private LLM.

Layers (kept by ``lint-imports``; contracts in pyproject.toml), top to bottom:

    cli/, app.py + api/, */tasks.py   entry points: parse input, build a RequestContext, call a service
    services.py, runtime.py           the composition root: every component built once, typed, complete
    inference, models, limits         the one inference entry point; what serves each alias; quotas
    authz, authn, audit               require(ctx, action, resource); identities; record(event)
    crypto, db, jobs, changes         keyring; tables and sessions; Celery by name; replica convergence
    context, errors, settings         RequestContext and Principal; the one error shape; typed settings

Services never see an HTTP connection; ``gateway`` never imports ``trainer``.
"""
