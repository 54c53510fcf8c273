"""Palisade trainer: governed data pipeline, fine-tuning and pretraining as Celery jobs."""
