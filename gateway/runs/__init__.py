"""Training runs as governed requests: request, four-eyes approval bound to the request, queue, progress.

The gateway side owns the tables and the API; the trainer's Celery task (``palisade.train.run``, enqueued by
name) claims a run with a database lease and launches the training process. The gateway never imports trainer.
"""
