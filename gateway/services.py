"""The composition root: every long-lived component of a Palisade process, built once, in dependency order, each
complete when built.

    settings -> db -> keyring -> redis -> audit -> credentials cache -> API keys -> identity -> authenticator
             -> policy store + decider + limits config + change feed -> usage watch -> router -> limiter
             -> authorization -> model catalog -> inference -> jobs

The gateway (``gateway.app``), a Celery worker (``gateway.runtime``) and the CLI open the same ``Services``; the
worker and the CLI skip what only a server needs (model loading, the health loop) by passing ``serve=False``
and loading only the aliases they call.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from gateway.audit.chain import AuditChain
from gateway.audit.retention import start_scheduled_prune
from gateway.authn.apikeys import ApiKeyService
from gateway.authn.authenticator import Authenticator
from gateway.authn.identity import Identity
from gateway.authn.passwords import dummy_hash
from gateway.authn.revocation import CredentialCache
from gateway.authz.attributes import Networks
from gateway.authz.enforcer import CasbinAuthorizer
from gateway.authz.service import Authorization
from gateway.authz.store import PolicyStore
from gateway.changes import ChangeFeed
from gateway.crypto import open_keyring
from gateway.crypto.keyring import Keyring
from gateway.datasets.service import DatasetService
from gateway.db.changes import read_versions
from gateway.db.session import Database
from gateway.inference.router import Router
from gateway.inference.service import InferenceService
from gateway.jobs import JobQueue
from gateway.limits.anomaly import UsageWatch
from gateway.limits.config import LimitsConfig
from gateway.limits.limiter import RateLimiter
from gateway.limits.resp import RespPipe
from gateway.limits.shedding import LoadShedder
from gateway.models.catalog import ModelCatalog
from gateway.models.spec import model_specs
from gateway.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

_log = structlog.get_logger("palisade.services")


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    db: Database
    keyring: Keyring
    redis: Redis | None
    #: the hash-chained, durable trail: ``await services.audit.record(AuditEvent.of(ctx, Tag.X, ...))``
    audit: AuditChain
    keys: ApiKeyService
    identity: Identity
    authenticator: Authenticator
    policy_store: PolicyStore
    limits_config: LimitsConfig
    change_feed: ChangeFeed
    usage_watch: UsageWatch
    limiter: RateLimiter
    #: ``await services.authz.require(ctx, Action.X, {...})``
    authz: Authorization
    router: Router
    models: ModelCatalog
    #: ``await services.inference.generate(ctx, alias, GenerationRequest(...))``: the one inference entry point
    inference: InferenceService
    #: ``services.jobs.enqueue("palisade.<domain>.<task>", id)``: Celery by task name (gateway never imports trainer)
    jobs: JobQueue
    #: governed datasets: registration, four-eyes approval, deletion, and the read side for training runs
    datasets: DatasetService

    async def close(self) -> None:
        await self.usage_watch.close()
        await self.change_feed.close()
        await self.models.close()
        await self.router.close()
        await self.audit.close()  # flush queued records, sign a final checkpoint
        await self.limiter.close()  # settles still queued
        await self.identity.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.db.close()


LIMITER_REDIS_CONNECTIONS = 16


async def build_services(settings: Settings, *, serve: bool = True) -> Services:
    """Build and start everything. ``serve=False`` (workers, CLI): no health loop, no background model loading
    (``services.models.start_loading()`` or ``load_alias`` when a job needs a model)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings)
    keyring = await open_keyring(settings, db)
    redis: Redis | None = None
    limiter_redis: Redis | None = None
    if settings.redis_url:
        import redis as redis_py
        import redis.asyncio as aioredis

        # lib_version given: redis-py otherwise reads its package metadata for every new pooled connection
        redis = aioredis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2,
                                  lib_version=redis_py.__version__)
        # the limiter's redis-py client (script loading, usage reads, and the scripts themselves for rediss:// and
        # unix:// URLs; redis:// scripts go over its pipelined line, gateway.limits.resp): no socket_timeout
        # (redis-py would wrap every send in asyncio.wait_for, a task per command); the limiter bounds each call
        # with one timer instead. A blocking pool of LIMITER_REDIS_CONNECTIONS: at a burst, calls wait (within that
        # bound) for a connection instead of failing closed on "too many connections" while Redis is fine, and the
        # process's sockets stay bounded (Redis runs one script at a time: more connections would not answer sooner)
        limiter_redis = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=LIMITER_REDIS_CONNECTIONS, timeout=2, socket_connect_timeout=2,
            lib_version=redis_py.__version__))
    audit = await AuditChain.open(settings, db, keyring)  # hash-chained, durable, fail-closed
    audit.adopt(start_scheduled_prune(audit))  # None unless retention and its interval are configured

    key_cache = CredentialCache(settings, settings.redis_url)
    keys = ApiKeyService(db, cache=key_cache)
    identity = Identity(settings, db, keyring=keyring, audit=audit, key_cache=key_cache, redis=redis)
    await identity.start()
    authenticator = Authenticator(
        keys, audit, token_verifiers=identity.token_verifiers(), session_resolvers=identity.session_resolvers()
    )

    # authorization and limits: the versioned policy store feeds the decider; admin rules over the settings'
    # defaults feed the limiter; both refresh from the change feed (Redis pub/sub + a periodic version check)
    policy_store = PolicyStore(db)
    # stale after many missed checks: a replica that cannot see policy changes must stop deciding
    decider = CasbinAuthorizer(
        networks=Networks(settings.trusted_networks), stale_after_s=max(10.0, settings.policy_check_interval_s * 15)
    )
    limits_config = LimitsConfig(settings, db)
    # the periodic check reads one row per domain and re-reads a domain's tables only when its counter moved
    change_feed = ChangeFeed(redis, interval_s=settings.policy_check_interval_s,
                             versions=lambda: read_versions(db))

    async def refresh_policy() -> None:
        started = time.monotonic()
        latest = await policy_store.latest_version()
        if latest == 0:
            await policy_store.seed_default()
            latest = await policy_store.latest_version()
        if latest != decider.version:
            row = await policy_store.current()
            if row is not None:  # parsed and indexed in a thread (seconds at 10,000 rows), installed here at once
                decider.install(await asyncio.to_thread(decider.prepare, row.text, row.version))
        decider.checked_at = started

    # an unchanged counter is a successful check too: the decider stays fresh without re-reading the policy
    change_feed.watch("policy", refresh_policy, checked=lambda started: setattr(decider, "checked_at", started))
    change_feed.watch("limits", limits_config.refresh)
    usage_watch = UsageWatch(settings, db, audit, limits_config, change_feed)
    router = Router(settings)
    limiter = RateLimiter(
        limits_config,
        redis=limiter_redis,
        timeout_s=2.0,
        owns_client=True,
        # the scripts (one per request) over the limiter's own pipelined connection; None for TLS or unix URLs
        fast=RespPipe.for_url(settings.redis_url) if settings.redis_url else None,
        shedder=LoadShedder(router, settings.shed_low_priority_at),
        lease_s=max(60.0, settings.request_timeout_s + 60),
        watch=usage_watch,
    )
    authz = Authorization(decider, audit, usage_watch)

    # the model registry's tables feed the router; promotions, canaries and rollbacks reach every replica through
    # the change feed (pub/sub + poll) and swap blue/green
    models = ModelCatalog(settings, db, router, audit, publish=change_feed.publish)
    await models.seed(model_specs(settings))
    change_feed.watch("models", models.refresh)
    inference = InferenceService(settings, router, models, authz, limiter, audit, keyring)
    jobs = JobQueue(settings)
    datasets = DatasetService(settings, db, keyring, audit, jobs)

    await change_feed.start()  # the first refresh loads the policy and the limits before anything is decided
    await usage_watch.start()
    if serve:
        dummy_hash()  # a login for an unknown account costs one argon2 verification from the first attempt on
        await router.start()
        models.start_loading()
    return Services(
        settings=settings,
        db=db,
        keyring=keyring,
        redis=redis,
        audit=audit,
        keys=keys,
        identity=identity,
        authenticator=authenticator,
        policy_store=policy_store,
        limits_config=limits_config,
        change_feed=change_feed,
        usage_watch=usage_watch,
        limiter=limiter,
        authz=authz,
        router=router,
        models=models,
        inference=inference,
        jobs=jobs,
        datasets=datasets,
    )
