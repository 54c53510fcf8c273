"""SQLAlchemy models per domain. Importing this package registers every table on ``Base.metadata``."""

from gateway.db import (  # noqa: F401  (register tables)  # noqa: F401,E402  (register audit + keyring tables)
    audit,
    batches,  # noqa: F401  (files, batches, batch results, feedback)
    changes,  # one change counter per replicated domain (policy, limits, models)
    datasets,  # governed datasets: datasets, versions, approvals
    identity,  # noqa: F401,E402  (register identity tables)
    keyring,
    keys,
    policy,  # noqa: F401,E402  (register authorization + limits tables)
    registry,  # noqa: F401  (model registry: models, versions, aliases, alias history)
    runs,  # training runs and their events
)
from gateway.db.base import Base

__all__ = ["Base"]
