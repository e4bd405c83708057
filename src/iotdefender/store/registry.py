"""SQL for the thing registry: things, thing groups and their membership."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iotdefender.store.pagination import scan_rows
from iotdefender.store.partition_selection import PartitionSelection
from iotdefender.store.rows import get_by_name, insert_many, name_among, names_in_chunks, update_versioned
from iotdefender.store.schema import thing_group_members, thing_groups, things


def get_thing(conn: Connection, name: str) -> dict[str, Any] | None:
    return get_by_name(conn, things, name)


def insert_thing(conn: Connection, **values: Any) -> None:
    conn.execute(things.insert().values(**values))


def update_thing(conn: Connection, name: str, expected_version: int, **values: Any) -> bool:
    return update_versioned(conn, things, name, expected_version, **values)


def delete_thing(conn: Connection, name: str) -> None:
    conn.execute(thing_group_members.delete().where(thing_group_members.c.thing_name == name))
    conn.execute(things.delete().where(things.c.name == name))


def scan_things(conn: Connection, after: str | None, thing_type_name: str | None,
                attribute_name: str | None = None, attribute_value: str | None = None,
                prefix: bool = False) -> Iterator[Any]:
    """Things in name order after ``after``; with ``attribute_name``, only those that have it
    (equal to ``attribute_value``, or starting with it if ``prefix``), and with ``attribute_value``
    alone, those with any attribute of that value: decided by the database. ListThings with an
    attribute filter read the whole registry into Python to find a few."""
    query = sa.select(things)
    if thing_type_name is not None:
        query = query.where(things.c.thing_type_name == thing_type_name)
    if attribute_name is not None:
        value = things.c.attributes[attribute_name].as_string()
        query = query.where(value.is_not(None) if attribute_value is None else _matching(value, attribute_value, prefix))
    elif attribute_value is not None:
        query = query.where(_any_attribute(conn, attribute_value, prefix))
    return scan_rows(conn, query, things.c.name, after)


def _matching(value: Any, attribute_value: str, prefix: bool) -> Any:
    return value.startswith(attribute_value, autoescape=True) if prefix else value == attribute_value


def _any_attribute(conn: Connection, attribute_value: str, prefix: bool) -> Any:
    """A thing has an attribute of this value (or starting with it): the attributes' values as a
    table (``json_each_text`` on PostgreSQL, ``json_each`` on SQLite; AWS's values are strings)."""
    each = (sa.func.json_each_text if conn.dialect.name == "postgresql" else sa.func.json_each)
    attribute = each(things.c.attributes).table_valued("value").alias("attribute")
    # Only the rows whose JSON text holds the value behind a quote are taken apart: AWS's values
    # have no character JSON escapes (``[a-zA-Z0-9_.,@/:#=\[\]-]*``) and orjson writes them as
    # they are. Parsing every row's attributes took 0.7 s at 500,000 things on PostgreSQL.
    quoted = sa.cast(things.c.attributes, sa.Text).contains(f'"{attribute_value}' + ("" if prefix else '"'),
                                                             autoescape=True)
    return sa.and_(quoted, sa.exists().select_from(attribute).where(_matching(attribute.c.value, attribute_value,
                                                                              prefix)))


def thing_names(conn: Connection, selection: PartitionSelection | None = None) -> set[str]:
    """Every registered thing's name, or (``selection``) those of some partitions: one statement of
    the names only, streamed (a server-side cursor on PostgreSQL), where ``scan_things`` reads
    whole rows (attributes included) in pages. Things whose partition is not recorded yet are
    read too and picked by name."""
    if selection is None:
        return set(conn.execution_options(yield_per=10_000).execute(sa.select(things.c.name)).scalars())
    rows = conn.execution_options(yield_per=10_000).execute(
        sa.select(things.c.name, things.c.partition).where(selection.where(things.c.partition)))
    return {name for name, partition in rows if partition is not None or selection(name)}


def record_partitions(conn: Connection, partition_of: Callable[[str], int], limit: int) -> int:
    """Record the partition of at most ``limit`` things that have none (registered since the last
    time, by any node); returns how many. The rows are locked as they are read, skipping those
    another node is recording (PostgreSQL; SQLite has one writer): two nodes take different rows
    instead of the second waiting for the first's and then changing nothing."""
    names = list(conn.execute(sa.select(things.c.name).where(things.c.partition.is_(None))
                              .order_by(things.c.name).limit(limit).with_for_update(skip_locked=True)).scalars())
    if not names:
        return 0
    return conn.execute(things.update().where(things.c.name == sa.bindparam("k_name"), things.c.partition.is_(None))
                        .values(partition=sa.bindparam("k_partition")),
                        [{"k_name": name, "k_partition": partition_of(name)} for name in names]).rowcount


def get_group(conn: Connection, name: str) -> dict[str, Any] | None:
    return get_by_name(conn, thing_groups, name)


def get_group_by_arn(conn: Connection, arn: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(thing_groups).where(thing_groups.c.arn == arn)).mappings().first()
    return dict(row) if row else None


def insert_group(conn: Connection, **values: Any) -> None:
    conn.execute(thing_groups.insert().values(**values))


def update_group(conn: Connection, name: str, expected_version: int, **values: Any) -> bool:
    return update_versioned(conn, thing_groups, name, expected_version, **values)


def delete_group(conn: Connection, name: str) -> None:
    conn.execute(thing_group_members.delete().where(thing_group_members.c.group_name == name))
    conn.execute(thing_groups.delete().where(thing_groups.c.name == name))


def child_group_names(conn: Connection, parent: str) -> list[str]:
    return list(
        conn.execute(sa.select(thing_groups.c.name).where(thing_groups.c.parent_name == parent)).scalars()
    )


def all_group_parents(conn: Connection) -> dict[str, str | None]:
    """The whole hierarchy as child -> parent; groups are few (AWS: hierarchies of depth <= 7)."""
    return dict(conn.execute(sa.select(thing_groups.c.name, thing_groups.c.parent_name)).all())


def scan_groups(conn: Connection, after: str | None) -> Iterator[Any]:
    return scan_rows(conn, sa.select(thing_groups), thing_groups.c.name, after)


def groups_of_thing(conn: Connection, thing_name: str) -> list[str]:
    return list(
        conn.execute(
            sa.select(thing_group_members.c.group_name)
            .where(thing_group_members.c.thing_name == thing_name)
            .order_by(thing_group_members.c.group_name)
        ).scalars()
    )


def registry_facts(conn: Connection, thing_names: list[str]) -> dict[str, tuple[bool, tuple[str, ...]]]:
    """(registered, groups in name order) of many things in two queries (per ``names_in_chunks``)."""
    facts: dict[str, tuple[bool, tuple[str, ...]]] = {}
    for chunk in names_in_chunks(thing_names):
        registered = set(conn.execute(sa.select(things.c.name).where(name_among(conn, things.c.name, chunk))).scalars())
        groups: dict[str, list[str]] = {}
        if registered:
            rows = conn.execute(sa.select(thing_group_members.c.thing_name, thing_group_members.c.group_name)
                                .where(name_among(conn, thing_group_members.c.thing_name, sorted(registered)))
                                .order_by(thing_group_members.c.group_name))
            for thing, group in rows:
                groups.setdefault(thing, []).append(group)
        for name in chunk:
            facts[name] = (name in registered, tuple(groups.get(name, ())))
    return facts


def add_member(conn: Connection, group_name: str, thing_name: str) -> None:
    conn.execute(thing_group_members.insert().values(group_name=group_name, thing_name=thing_name))


def add_members(conn: Connection, members: Sequence[tuple[str, str]]) -> None:
    """(group, thing) pairs, in one executemany."""
    insert_many(conn, thing_group_members, ("group_name", "thing_name"), members)


def remove_member(conn: Connection, group_name: str, thing_name: str) -> None:
    conn.execute(
        thing_group_members.delete().where(
            thing_group_members.c.group_name == group_name,
            thing_group_members.c.thing_name == thing_name,
        )
    )


def member_page(conn: Connection, group_name: str, limit: int, *, after: str | None = None,
                before: str | None = None) -> tuple[list[str], bool, bool]:
    """One page of a group's direct members in name order (those after ``after``, or the last
    ``limit`` before ``before``), and whether members come before and after it.

    Both directions go by key, not offset, so the console can page back as well as forth and a
    member added or removed meanwhile shifts no page by one; each is an index range of the
    (group, thing) primary key.
    """
    name = thing_group_members.c.thing_name
    members = sa.select(name).where(thing_group_members.c.group_name == group_name)
    if before is not None:
        names = [r[0] for r in conn.execute(members.where(name < before).order_by(name.desc()).limit(limit))][::-1]
    else:
        ahead = members if after is None else members.where(name > after)
        names = [r[0] for r in conn.execute(ahead.order_by(name).limit(limit))]

    def any_where(condition: sa.ColumnElement[bool]) -> bool:
        return bool(conn.execute(sa.select(sa.exists(members.where(condition)))).scalar())

    if names:
        return names, any_where(name < names[0]), any_where(name > names[-1])
    # Past either end (the members there were removed meanwhile): the way back is still offered.
    return [], after is not None and any_where(name <= after), before is not None and any_where(name >= before)


def count_members(conn: Connection, group_name: str) -> int:
    return conn.execute(sa.select(sa.func.count()).where(thing_group_members.c.group_name == group_name)).scalar_one()


def scan_members(conn: Connection, group_names: list[str], after: str | None) -> Iterator[str]:
    """Distinct thing names that are direct members of any of ``group_names``, in name order."""
    query = (
        sa.select(thing_group_members.c.thing_name)
        .where(thing_group_members.c.group_name.in_(group_names))
        .distinct()
    )
    for row in scan_rows(conn, query, thing_group_members.c.thing_name, after):
        yield row.thing_name
