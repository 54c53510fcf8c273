"""What a handler may ask for by name: ``services: ServicesDep`` and ``ctx: ContextDep``.

Both are injected by the composition root (``gateway.app``); ``skip_validation`` keeps Litestar from converting
them field by field on every request (they are our objects, not client input).
"""

from __future__ import annotations

from typing import Annotated

from litestar.params import Dependency

from gateway.context import RequestContext
from gateway.services import Services

ServicesDep = Annotated[Services, Dependency(skip_validation=True)]
ContextDep = Annotated[RequestContext, Dependency(skip_validation=True)]
