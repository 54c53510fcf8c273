"""The batch domain's services, built once by the composition root from the gateway's shared ones."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from gateway.batches.feedback import PURPOSE as FEEDBACK_PURPOSE
from gateway.batches.feedback import FeedbackService
from gateway.batches.service import Access, BatchService, FileService
from gateway.batches.storage import PURPOSE as FILES_PURPOSE
from gateway.batches.storage import FileStore


class CeleryJobs:
    """Enqueue a task by name (the gateway never imports the trainer); the broker from the same settings."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._app: Any = None

    def _celery(self) -> Any:
        if self._app is None:
            from celery import Celery

            self._app = Celery("palisade", broker=self.settings.celery_broker_url,
                               backend=self.settings.celery_result_backend)
            self._app.conf.update(task_serializer="json", accept_content=["json"], task_default_queue="cpu",
                                  broker_connection_retry_on_startup=True)
        return self._app

    async def enqueue(self, name: str, *args: Any) -> None:
        await asyncio.to_thread(self._celery().send_task, name, args=list(args), queue="cpu")


@dataclass
class BatchDomain:
    files: FileService
    batches: BatchService
    feedback: FeedbackService
    store: FileStore

    @classmethod
    async def open(cls, services: Any) -> BatchDomain:
        await services.keyring.ensure(FILES_PURPOSE)
        await services.keyring.ensure(FEEDBACK_PURPOSE)
        settings = services.settings
        access = Access(services.authorizer, services.audit)
        store = FileStore(settings.data_dir / "files", services.keyring)
        files = FileService(db=services.db, store=store, access=access, audit=services.audit, settings=settings)
        jobs = getattr(services, "jobs", None) or CeleryJobs(settings)
        batches = BatchService(db=services.db, files=files, access=access, audit=services.audit, settings=settings,
                               enqueue=jobs.enqueue)
        feedback = FeedbackService(db=services.db, keyring=services.keyring, access=access, audit=services.audit)
        return cls(files=files, batches=batches, feedback=feedback, store=store)


def file_service(services: Any) -> FileService:
    settings = services.settings
    access = Access(services.authorizer, services.audit)
    store = FileStore(settings.data_dir / "files", services.keyring)
    return FileService(db=services.db, store=store, access=access, audit=services.audit, settings=settings)
