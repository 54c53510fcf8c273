"""SQLAlchemy models per domain. Importing this package registers every table on ``Base.metadata``."""

from gateway.db import (  # noqa: F401  (register tables)  # noqa: F401,E402  (register audit + keyring tables)
    audit,
    identity,  # noqa: F401,E402  (register identity tables)
    keyring,
    keys,
    policy,  # noqa: F401,E402  (register authorization + limits tables)
)
from gateway.models import models as _model_registry  # noqa: F401,E402  (register model registry tables)
from gateway.db.base import Base

__all__ = ["Base"]
