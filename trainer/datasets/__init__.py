"""The governed dataset pipeline: ingest -> normalise -> PII -> quality filters -> dedup -> split -> augment ->
bias report -> tokenise/pack -> encrypted, content-addressed storage, with a data card.

Every stage is a generator over records (``trainer.datasets.records``) so memory stays bounded; the orchestration
lives in ``trainer.datasets.pipeline``, the Celery task in ``trainer.datasets.tasks`` and the read side for
training runs in ``trainer.datasets.access``.
"""
