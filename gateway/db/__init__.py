"""SQLAlchemy models per domain. Importing this package registers every table on ``Base.metadata``."""

from gateway.db import keys, registry  # noqa: F401  (register tables)
from gateway.db.base import Base

__all__ = ["Base"]
