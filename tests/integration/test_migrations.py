"""The migrations build exactly the schema of ``gateway.db.models``, and undo it completely.

Each test starts from a database created from ``template0`` (nothing of Muster in it), so the
migrations run from scratch rather than on the migrated template the other tests clone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.engine import make_engine
from gateway.db.migrate import downgrade, upgrade
from gateway.db.models import Base
from tests import pg

MUSTER_TABLES = frozenset(Base.metadata.tables)
MUSTER_FUNCTIONS = frozenset({"muster_refuse_update"})
MUSTER_TRIGGERS = frozenset({("job_events", "job_events_append_only")})


# A tenant "t", in the columns every revision these tests stop at has.
TENANT_T = text(
    "INSERT INTO tenants (name, namespace, quota_cpu_millis, quota_memory_bytes, "
    "quota_gpu_shares, max_running_jobs, max_queued_jobs, webhook_secret) "
    "VALUES ('t', 't', 1000, 1000, 0, 1, 1, 's')"
)


@pytest.fixture
async def empty_engine(pg_server: pg.TestServer) -> AsyncIterator[AsyncEngine]:
    name = await pg_server.create_database(template="template0")
    engine = make_engine(pg_server.url_for(name), pool_size=1)
    try:
        yield engine
    finally:
        await engine.dispose()
        await pg_server.drop_database(name)


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, Base.metadata))


async def schema_diff(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return await conn.run_sync(_diff)


async def names(engine: AsyncEngine, sql: str) -> set[Any]:
    async with engine.connect() as conn:
        return {tuple(row) if len(row) > 1 else row[0] for row in await conn.execute(text(sql))}


async def tables(engine: AsyncEngine) -> set[Any]:
    return await names(
        engine, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
    )


async def functions(engine: AsyncEngine) -> set[Any]:
    return await names(
        engine,
        "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = current_schema()",
    )


async def triggers(engine: AsyncEngine) -> set[Any]:
    return await names(
        engine,
        "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE NOT t.tgisinternal",
    )


async def test_the_database_starts_without_any_muster_object(empty_engine: AsyncEngine) -> None:
    assert await tables(empty_engine) == set()
    assert await functions(empty_engine) == set()


async def test_upgrade_builds_exactly_the_models_schema(empty_engine: AsyncEngine) -> None:
    await upgrade(empty_engine)

    assert await schema_diff(empty_engine) == []
    assert await tables(empty_engine) == MUSTER_TABLES | {"alembic_version"}


async def test_downgrade_to_base_removes_everything_and_upgrade_rebuilds_it(
    empty_engine: AsyncEngine,
) -> None:
    await upgrade(empty_engine)

    await downgrade(empty_engine, "base")

    assert await tables(empty_engine) <= {"alembic_version"}
    assert await functions(empty_engine) == set()
    assert await triggers(empty_engine) == set()
    await upgrade(empty_engine, "head")
    assert await schema_diff(empty_engine) == []
    assert await tables(empty_engine) == MUSTER_TABLES | {"alembic_version"}
    assert await triggers(empty_engine) == MUSTER_TRIGGERS


async def test_upgrade_twice_is_a_no_op(empty_engine: AsyncEngine) -> None:
    await upgrade(empty_engine)

    await upgrade(empty_engine)

    assert await schema_diff(empty_engine) == []


async def test_upgrade_installs_the_triggers_and_their_functions(
    empty_engine: AsyncEngine,
) -> None:
    await upgrade(empty_engine)

    assert await triggers(empty_engine) == MUSTER_TRIGGERS
    assert await functions(empty_engine) == MUSTER_FUNCTIONS


async def test_queue_slots_are_unique_and_the_event_log_is_append_only(
    empty_engine: AsyncEngine,
) -> None:
    await upgrade(empty_engine)
    async with empty_engine.begin() as conn:
        await conn.execute(TENANT_T)
        await conn.execute(
            text(
                "INSERT INTO jobs (id, tenant, name, framework, state, priority, spec, "
                "queue_slot) VALUES (gen_random_uuid(), 't', 'a', 'generic', 'queued', 0, '{}', 0)"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO job_events (job_id, tenant, type, to_state) "
                "SELECT id, tenant, 'submitted', 'queued' FROM jobs"
            )
        )

    with pytest.raises(DBAPIError, match="uq_jobs_queue_slot"):
        async with empty_engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO jobs (id, tenant, name, framework, state, priority, spec, "
                    "queue_slot) VALUES (gen_random_uuid(), 't', 'b', 'generic', 'queued', 0, "
                    "'{}', 0)"
                )
            )
    with pytest.raises(DBAPIError, match="append-only"):
        async with empty_engine.begin() as conn:
            await conn.execute(text("UPDATE job_events SET reason = 'x'"))
    async with empty_engine.begin() as conn:
        await conn.execute(
            text("UPDATE jobs SET state = 'cancelled', finished_at = now() WHERE name = 'a'")
        )
        # A job that left the queue gives its slot back.
        await conn.execute(
            text(
                "INSERT INTO jobs (id, tenant, name, framework, state, priority, spec, "
                "queue_slot) VALUES (gen_random_uuid(), 't', 'b', 'generic', 'queued', 0, '{}', 0)"
            )
        )


async def test_events_written_before_0007_keep_their_id_order_ahead_of_later_events(
    empty_engine: AsyncEngine,
) -> None:
    await upgrade(empty_engine, "0005")
    async with empty_engine.begin() as conn:
        await conn.execute(TENANT_T)
        await conn.execute(
            text(
                "INSERT INTO jobs (id, tenant, name, framework, state, priority, spec) "
                "VALUES (gen_random_uuid(), 't', 'a', 'generic', 'queued', 0, '{}')"
            )
        )
        for message in ("old-1", "old-2"):
            await conn.execute(
                text(
                    "INSERT INTO job_events (job_id, tenant, type, message) "
                    "SELECT id, tenant, 'submitted', :m FROM jobs"
                ),
                {"m": message},
            )

    await upgrade(empty_engine)

    async with empty_engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO job_events (job_id, tenant, type, message) "
                "SELECT id, tenant, 'submitted', 'new' FROM jobs"
            )
        )
    async with empty_engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT message, txid::text AS txid FROM job_events ORDER BY job_events.txid, id")
        )
        found = [(row.message, int(row.txid)) for row in rows]
    assert [message for message, _ in found] == ["old-1", "old-2", "new"]
    assert [txid for _, txid in found][:2] == [0, 0]
    assert found[2][1] > 0


async def test_tenants_from_before_0008_get_priority_ceiling_0_and_it_stays_in_range(
    empty_engine: AsyncEngine,
) -> None:
    await upgrade(empty_engine, "0007")
    async with empty_engine.begin() as conn:
        await conn.execute(TENANT_T)

    await upgrade(empty_engine)

    async with empty_engine.connect() as conn:
        assert await conn.scalar(text("SELECT max_priority FROM tenants WHERE name = 't'")) == 0
    for outside in (1001, -1001):
        with pytest.raises(DBAPIError, match="ck_tenants_max_priority_in_range"):
            async with empty_engine.begin() as conn:
                await conn.execute(
                    text("UPDATE tenants SET max_priority = :p WHERE name = 't'"), {"p": outside}
                )


async def columns(engine: AsyncEngine, table: str) -> set[Any]:
    return await names(
        engine,
        "SELECT column_name FROM information_schema.columns "
        f"WHERE table_schema = current_schema() AND table_name = '{table}'",
    )


async def test_0009_puts_tenants_in_no_cohort_keeps_the_cohort_rules_and_downgrades_cleanly(
    empty_engine: AsyncEngine,
) -> None:
    await upgrade(empty_engine, "0008")
    async with empty_engine.begin() as conn:
        await conn.execute(TENANT_T)
        await conn.execute(
            text("INSERT INTO audit_log (actor, action, tenant) VALUES ('a', 'create', 't')")
        )
    tenant_columns = await columns(empty_engine, "tenants")

    await upgrade(empty_engine)

    async with empty_engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT cohort, borrowing_limit_cpu_millis, lending_limit_gpu_shares "
                    "FROM tenants WHERE name = 't'"
                )
            )
        ).one()
    assert tuple(row) == (None, None, None)
    for statement, constraint in [
        ("UPDATE tenants SET borrowing_limit_cpu_millis = 1", "cohort_limits_need_a_cohort"),
        ("UPDATE tenants SET cohort = 'missing'", "fk_tenants_cohort_cohorts"),
        ("INSERT INTO cohorts (name) VALUES ('Not_A_Label')", "ck_cohorts_name_dns_label"),
        ("INSERT INTO audit_log (actor, action) VALUES ('a', 'x')", "ck_audit_log_one_subject"),
    ]:
        with pytest.raises(DBAPIError, match=constraint):
            async with empty_engine.begin() as conn:
                await conn.execute(text(statement))
    async with empty_engine.begin() as conn:
        await conn.execute(text("INSERT INTO cohorts (name) VALUES ('pool')"))
        await conn.execute(text("UPDATE tenants SET cohort = 'pool', lending_limit_gpu_shares = 0"))
        await conn.execute(
            text("INSERT INTO audit_log (actor, action, cohort) VALUES ('a', 'create', 'pool')")
        )
    for statement, constraint in [
        ("UPDATE tenants SET lending_limit_cpu_millis = -1", "cohort_limits_non_negative"),
        ("DELETE FROM cohorts WHERE name = 'pool'", "fk_tenants_cohort_cohorts"),
    ]:
        with pytest.raises(DBAPIError, match=constraint):
            async with empty_engine.begin() as conn:
                await conn.execute(text(statement))

    await downgrade(empty_engine, "0008")

    assert "cohorts" not in await tables(empty_engine)
    assert await columns(empty_engine, "tenants") == tenant_columns
    assert "cohort" not in await columns(empty_engine, "audit_log")
    async with empty_engine.connect() as conn:
        audited = (await conn.execute(text("SELECT tenant FROM audit_log"))).scalars().all()
    assert audited == ["t"]  # the tenant's entry stays; the cohort's went with cohorts
    await upgrade(empty_engine)
    assert await schema_diff(empty_engine) == []


async def test_0012_leaves_jobs_classless_and_preemptible_keeps_the_class_rules_and_downgrades(
    empty_engine: AsyncEngine,
) -> None:
    await upgrade(empty_engine, "0011")
    async with empty_engine.begin() as conn:
        await conn.execute(TENANT_T)
        await conn.execute(
            text(
                "INSERT INTO jobs (id, tenant, name, framework, state, priority, spec) "
                "VALUES (gen_random_uuid(), 't', 'a', 'generic', 'queued', 0, '{}')"
            )
        )
        await conn.execute(
            text("INSERT INTO audit_log (actor, action, tenant) VALUES ('a', 'create', 't')")
        )
    job_columns = await columns(empty_engine, "jobs")
    audit_columns = await columns(empty_engine, "audit_log")

    await upgrade(empty_engine)

    async with empty_engine.connect() as conn:
        row = (await conn.execute(text("SELECT priority_class, preemptible FROM jobs"))).one()
    assert tuple(row) == (None, True)
    for statement, constraint in [
        ("INSERT INTO priority_classes (name, value) VALUES ('high', 1001)", "value_in_range"),
        ("INSERT INTO priority_classes (name, value) VALUES ('High', 1)", "name_dns_label"),
        (
            "INSERT INTO tenant_priority_classes (tenant, priority_class) VALUES ('t', 'none')",
            "fk_tenant_priority_classes_priority_class_priority_classes",
        ),
        (
            "INSERT INTO audit_log (actor, action, tenant, priority_class) "
            "VALUES ('a', 'x', 't', 'high')",
            "ck_audit_log_one_subject",
        ),
    ]:
        with pytest.raises(DBAPIError, match=constraint):
            async with empty_engine.begin() as conn:
                await conn.execute(text(statement))
    async with empty_engine.begin() as conn:
        await conn.execute(text("INSERT INTO priority_classes (name, value) VALUES ('high', 900)"))
        await conn.execute(
            text(
                "INSERT INTO tenant_priority_classes (tenant, priority_class) VALUES ('t', 'high')"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO audit_log (actor, action, priority_class) "
                "VALUES ('a', 'create', 'high')"
            )
        )
        assert await conn.scalar(text("SELECT preemptible FROM priority_classes")) is True
    with pytest.raises(DBAPIError, match="fk_tenant_priority_classes_priority_class"):
        async with empty_engine.begin() as conn:
            await conn.execute(text("DELETE FROM priority_classes WHERE name = 'high'"))
    async with empty_engine.begin() as conn:  # a tenant's grants go with it
        await conn.execute(text("DELETE FROM jobs"))
        await conn.execute(text("DELETE FROM tenants WHERE name = 't'"))
        assert await conn.scalar(text("SELECT count(*) FROM tenant_priority_classes")) == 0
        await conn.execute(TENANT_T)

    await downgrade(empty_engine, "0011")

    assert not {"priority_classes", "tenant_priority_classes"} & await tables(empty_engine)
    assert await columns(empty_engine, "jobs") == job_columns
    assert await columns(empty_engine, "audit_log") == audit_columns
    async with empty_engine.connect() as conn:
        audited = (await conn.execute(text("SELECT tenant FROM audit_log"))).scalars().all()
    assert audited == ["t"]  # the tenant's entry stays; the class's went with the classes
    await upgrade(empty_engine)
    assert await schema_diff(empty_engine) == []
