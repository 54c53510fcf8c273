"""Inference: backends behind one small interface (embedded transformers, TGI, OpenAI-compatible over the shared
``upstream`` module), the router that picks among an alias's endpoints, and ``service.InferenceService`` -- the one
entry point that routes, Celery jobs and console pages call with a ``RequestContext``."""
