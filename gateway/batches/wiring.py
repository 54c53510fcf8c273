"""The batch domain's services, built once per process from the composition root's ``Services``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from gateway.batches.feedback import PURPOSE as FEEDBACK_PURPOSE
from gateway.batches.feedback import FeedbackService
from gateway.batches.service import Access, BatchService, FileService
from gateway.batches.storage import PURPOSE as FILES_PURPOSE
from gateway.batches.storage import FileStore
from gateway.services import Services


@dataclass(frozen=True, slots=True)
class BatchDomain:
    services: Services
    files: FileService
    batches: BatchService
    feedback: FeedbackService
    store: FileStore

    @classmethod
    async def open(cls, services: Services) -> BatchDomain:
        await services.keyring.ensure(FILES_PURPOSE)
        await services.keyring.ensure(FEEDBACK_PURPOSE)
        settings = services.settings
        access = Access(services.authz, services.audit)
        store = FileStore(settings.data_dir / "files", services.keyring)
        files = FileService(db=services.db, store=store, access=access, audit=services.audit, settings=settings)

        async def enqueue(task: str, *args: Any) -> None:  # after the commit; the broker call is blocking I/O
            await asyncio.to_thread(services.jobs.enqueue, task, *args)

        batches = BatchService(db=services.db, files=files, access=access, audit=services.audit, settings=settings,
                               enqueue=enqueue)
        feedback = FeedbackService(db=services.db, keyring=services.keyring, access=access, audit=services.audit)
        return cls(services=services, files=files, batches=batches, feedback=feedback, store=store)
