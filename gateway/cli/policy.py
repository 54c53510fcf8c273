"""``palisade policy …`` and ``palisade limits …``: local-operator changes, audited as actor ``cli``.

Changes are announced on Redis (when configured) so replicas reload at once; they also poll the store.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from gateway.audit.events import AuditEvent, Tag
from gateway.cli.common import cli_audit, run, settings_or_exit, with_db

ACTOR = "cli"


async def _publish(name: str) -> None:
    settings = settings_or_exit()
    if not settings.redis_url:
        return
    import redis.asyncio as aioredis

    from gateway.changes import CHANNEL

    client = aioredis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.publish(CHANNEL, name)
    except Exception:
        click.echo("warning: Redis unreachable; replicas pick the change up by polling", err=True)
    finally:
        await client.aclose()


def _record(db: Any) -> Any:
    async def record(event: AuditEvent) -> None:
        await cli_audit(db, event)

    return record


def _fail(exc: Exception) -> click.ClickException:
    from gateway.errors import ApiError

    return click.ClickException(exc.message if isinstance(exc, ApiError) else str(exc))


def _read(path: str) -> str:
    return sys.stdin.read() if path == "-" else Path(path).read_text()


@click.group()
def policy() -> None:
    """ABAC policy: show, diff, test, apply, history, rollback."""


@policy.command("show")
@click.option("--version", "version", type=int, default=None, help="A stored version (default: current).")
def policy_show(version: int | None) -> None:
    """Print the policy text (current or a stored version)."""
    from gateway.authz.store import PolicyStore

    async def go(db: Any) -> Any:
        store = PolicyStore(db)
        return await store.get(version) if version else await store.current()

    row = run(with_db(go))
    if row is None:
        raise click.ClickException(
            "no policy stored yet (the gateway seeds policies/policy.csv at first start)"
        )
    click.echo(
        f"# version {row.version} by {row.actor} at {row.created_at.isoformat()}: {row.reason}", err=True
    )
    click.echo(row.text, nl=False)


@policy.command("diff")
@click.argument("file")
def policy_diff(file: str) -> None:
    """Show how FILE differs from the current policy (and whether FILE is valid)."""
    from gateway.authz.document import PolicyError, parse, unified_diff
    from gateway.authz.store import PolicyStore

    text = _read(file)
    row = run(with_db(lambda db: PolicyStore(db).current()))
    click.echo(unified_diff(row.text if row else "", text, f"v{row.version if row else 0}", file), nl=False)
    try:
        click.echo(f"# candidate is valid: {len(parse(text))} rules", err=True)
    except PolicyError as exc:
        raise click.ClickException(f"candidate is invalid: {exc}") from None


@policy.command("test")
@click.option("--file", "file", default=None, help="Candidate policy (default: the current one).")
@click.option("--action", required=True, help="e.g. inference:model:invoke")
@click.option("--kind", type=click.Choice(["user", "app"]), default="user", show_default=True)
@click.option("--role", "roles", multiple=True, help="Subject role (repeat).")
@click.option("--department", default=None)
@click.option("--clearance", default=None, help="public, internal, confidential or restricted.")
@click.option("--auth-method", default=None, help="api_key, jwt, session or cli.")
@click.option("--mfa-age", type=float, default=None, help="Seconds since the subject's last MFA check.")
@click.option("--model", default=None, help="Resource: model alias.")
@click.option("--classification", default=None, help="Resource: data classification.")
@click.option("--owner", default=None, help="Resource: owner principal id.")
@click.option("--network", default="internal", show_default=True, help="Environment: internal or external.")
@click.option("--at", default=None, help="Environment: ISO-8601 time (default now).")
def policy_test(
    file: str | None,
    action: str,
    kind: str,
    roles: tuple[str, ...],
    department: str | None,
    clearance: str | None,
    auth_method: str | None,
    mfa_age: float | None,
    model: str | None,
    classification: str | None,
    owner: str | None,
    network: str,
    at: str | None,
) -> None:
    """Evaluate one request against a policy and explain which rules matched. Exit 0 allow, 2 deny."""
    from gateway.authz.admin import test_policy
    from gateway.authz.store import PolicyStore

    if file:
        text = _read(file)
    else:
        row = run(with_db(lambda db: PolicyStore(db).current()))
        if row is None:
            from gateway.authz.enforcer import DEFAULT_POLICY_PATH

            click.echo(f"# nothing stored yet; testing {DEFAULT_POLICY_PATH}", err=True)
        text = row.text if row else DEFAULT_POLICY_PATH.read_text()
    principal = {
        "kind": kind,
        "roles": list(roles),
        "department": department,
        "clearance": clearance,
        "auth_method": auth_method,
        "mfa_age_s": mfa_age,
    }
    resource = {
        k: v for k, v in {"model": model, "classification": classification, "owner": owner}.items() if v
    }
    try:
        result = test_policy(text, principal, action, resource, {"network": network, "at": at})
    except Exception as exc:
        raise _fail(exc) from None
    click.echo(json.dumps(result, indent=2, default=list))
    verdict = "ALLOW" if result["allowed"] else "DENY"
    click.echo(f"{verdict} ({result['rule']})", err=True)
    sys.exit(0 if result["allowed"] else 2)


@policy.command("apply")
@click.argument("file")
@click.option("--reason", required=True, help="Why (stored with the version and audited).")
def policy_apply(file: str, reason: str) -> None:
    """Store FILE as the next policy version (validated first)."""
    from gateway.authz.admin import apply_policy
    from gateway.authz.store import PolicyStore

    text = _read(file)

    async def go(db: Any) -> Any:
        return await apply_policy(
            PolicyStore(db), _record(db), _publish, text=text, actor=ACTOR, reason=reason
        )

    try:
        row = run(with_db(go))
    except Exception as exc:
        raise _fail(exc) from None
    click.echo(row.diff, nl=False, err=True)
    click.echo(f"policy version {row.version} applied")


@policy.command("history")
@click.option("--limit", type=int, default=20, show_default=True)
def policy_history(limit: int) -> None:
    """List versions: who, when, why."""
    from gateway.authz.admin import version_dict
    from gateway.authz.store import PolicyStore

    rows = run(with_db(lambda db: PolicyStore(db).history(limit)))
    for r in rows:
        click.echo(json.dumps(version_dict(r, text=False, diff=False)))


@policy.command("rollback")
@click.argument("version", type=int)
@click.option("--reason", required=True)
def policy_rollback(version: int, reason: str) -> None:
    """Restore VERSION's text as a new version."""
    from gateway.authz.admin import rollback_policy
    from gateway.authz.store import PolicyStore

    async def go(db: Any) -> Any:
        return await rollback_policy(
            PolicyStore(db), _record(db), _publish, version=version, actor=ACTOR, reason=reason
        )

    try:
        row = run(with_db(go))
    except Exception as exc:
        raise _fail(exc) from None
    click.echo(f"policy version {row.version} restores v{version}")


@click.group()
def limits() -> None:
    """Rate limits and quotas: show, set, unset, option, suspend, unsuspend."""


async def _limits_change(db: Any, tag: str, target: str, details: dict[str, Any]) -> None:
    await cli_audit(db, AuditEvent(tag, actor=ACTOR, target=target, details=details))
    await _publish("limits")


@limits.command("show")
def limits_show() -> None:
    """Defaults, admin-set rules, options and suspensions."""
    from sqlalchemy import select

    from gateway.db.policy import UsageBaseline
    from gateway.limits.config import FIELDS, LimitsAdmin, LimitsConfig

    async def go(db: Any) -> dict[str, Any]:
        admin = LimitsAdmin(db)
        async with db.session() as s:
            q = select(UsageBaseline).where(UsageBaseline.suspended_at.is_not(None))
            suspended = {r.principal_id: r.suspended_reason for r in (await s.execute(q)).scalars()}
        return {
            "defaults": LimitsConfig(settings_or_exit()).defaults(),
            "rules": [
                {
                    "scope": r.scope,
                    "subject": r.subject,
                    **{f: getattr(r, f) for f in (*FIELDS, "priority")},
                    "updated_by": r.updated_by,
                }
                for r in await admin.list_rules()
            ],
            "options": await admin.options(),
            "suspended": suspended,
        }

    click.echo(json.dumps(run(with_db(go)), indent=2))


@limits.command("set")
@click.argument("scope", type=click.Choice(["principal", "department", "model"]))
@click.argument("subject")
@click.option(
    "--rpm", "requests_per_min", type=int, default=None, help="Requests per minute (0 = unlimited)."
)
@click.option("--tpm", "tokens_per_min", type=int, default=None, help="Tokens per minute.")
@click.option("--concurrency", type=int, default=None, help="Concurrent requests.")
@click.option("--daily-tokens", type=int, default=None, help="Tokens per UTC day.")
@click.option(
    "--priority", type=click.IntRange(0, 2), default=None, help="Load shedding: 0 low, 1 normal, 2 high."
)
def limits_set(scope: str, subject: str, **values: int | None) -> None:
    """Set limits for SCOPE SUBJECT (a principal id or '*' for every principal's default, a department, a model)."""
    from gateway.limits.config import LimitsAdmin

    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        raise click.ClickException(
            "give at least one of --rpm, --tpm, --concurrency, --daily-tokens, --priority"
        )

    async def go(db: Any) -> None:
        await LimitsAdmin(db).set_rule(scope, subject, given, ACTOR)
        await _limits_change(db, Tag.LIMITS_CHANGE, f"limits:{scope}:{subject}", {"set": given})

    try:
        run(with_db(go))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"limits for {scope} {subject}: {json.dumps(given)}")


@limits.command("unset")
@click.argument("scope", type=click.Choice(["principal", "department", "model"]))
@click.argument("subject")
def limits_unset(scope: str, subject: str) -> None:
    """Remove the admin-set limits of SCOPE SUBJECT (back to defaults)."""
    from gateway.limits.config import LimitsAdmin

    async def go(db: Any) -> bool:
        done = await LimitsAdmin(db).delete_rule(scope, subject)
        if done:
            await _limits_change(db, Tag.LIMITS_CHANGE, f"limits:{scope}:{subject}", {"deleted": True})
        return done

    if not run(with_db(go)):
        raise click.ClickException(f"no limits set for {scope} {subject}")
    click.echo(f"limits for {scope} {subject} removed")


@limits.command("option")
@click.argument("key")
@click.argument("value")
def limits_option(key: str, value: str) -> None:
    """Set a runtime option: limits.fail_open true|false, anomaly.suspend true|false, anomaly.factor N, ..."""
    from gateway.limits.config import LimitsAdmin

    parsed: Any = json.loads(value) if value in ("true", "false", "null") or value[:1].isdigit() else value

    async def go(db: Any) -> None:
        await LimitsAdmin(db).set_option(key, parsed, ACTOR)
        await _limits_change(db, Tag.LIMITS_CHANGE, f"option:{key}", {"value": parsed})

    try:
        run(with_db(go))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{key} = {json.dumps(parsed)}")


@limits.command("suspend")
@click.argument("principal_id")
@click.option("--reason", required=True)
def limits_suspend(principal_id: str, reason: str) -> None:
    """Suspend a principal (its requests get 403) until someone lifts it."""
    from gateway.limits.config import LimitsAdmin

    async def go(db: Any) -> bool:
        done = await LimitsAdmin(db).set_suspended(principal_id, reason)
        if done:
            await _limits_change(db, Tag.PRINCIPAL_SUSPEND, principal_id, {"reason": reason})
        return done

    click.echo(f"{principal_id} suspended" if run(with_db(go)) else "already suspended")


@limits.command("unsuspend")
@click.argument("principal_id")
def limits_unsuspend(principal_id: str) -> None:
    """Lift a suspension (after a usage anomaly or a manual suspend)."""
    from gateway.limits.config import LimitsAdmin

    async def go(db: Any) -> bool:
        done = await LimitsAdmin(db).set_suspended(principal_id, None)
        if done:
            await _limits_change(db, Tag.PRINCIPAL_UNSUSPEND, principal_id, {})
        return done

    if not run(with_db(go)):
        raise click.ClickException(f"{principal_id} is not suspended")
    click.echo(f"{principal_id} unsuspended")
