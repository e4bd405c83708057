"""Migrations only expand, unless marked as a contract step: the rolling-upgrade rule (docs/cluster.md).

In a rolling upgrade the first node of a new release runs the migrations while nodes of the
previous release still run on the same database. So a migration must leave that release's code
working: it may add tables, nullable columns (or NOT NULL ones with a server default) and indexes,
but not drop, rename or narrow anything the previous release uses. What a release stops using is
removed by a migration of the *next* release, which says so with a module-level
``contract = "<what it removes and since which release nothing uses it>"``; the procedure (one
release step at a time) guarantees that by then no node of a release that used it is left.

This was missed once: 0012 dropped ``cluster_partition_progress``, which nodes of the release
before write in every detect transaction, and in the trial of an upgrade every report of their
partitions was answered ``InternalError`` from the moment the first new node started.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from iotdefender.store.database import HEAD_REVISION, MIGRATIONS_DIR

VERSIONS = sorted((MIGRATIONS_DIR / "versions").glob("*.py"))

#: Operations (on ``op`` or a ``batch_alter_table`` object) that remove or rename what code may use.
DESTRUCTIVE = {"drop_table", "drop_column", "drop_constraint", "drop_index", "drop_table_comment",
               "rename_table", "drop_column_comment"}
#: Words of raw SQL (``op.execute``) that remove, rename or change.
DESTRUCTIVE_SQL = ("DROP ", "RENAME ", "ALTER ", "TRUNCATE ", "DELETE ")


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_false(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def _not_null_without_default(column: ast.expr) -> bool:
    """``sa.Column(..., nullable=False)`` without ``server_default``: rows the previous release
    inserts (it does not know the column) fail."""
    return (isinstance(column, ast.Call) and _is_false(_keyword(column, "nullable"))
            and _keyword(column, "server_default") is None)


def destructive_operations(source: str) -> list[str]:
    """What ``upgrade()`` in a migration's ``source`` does that code of the previous release may
    not survive, one line each (empty: it only expands)."""
    tree = ast.parse(source)
    upgrade = next((node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "upgrade"), None)
    if upgrade is None:
        return []
    found = []
    for node in ast.walk(upgrade):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name = node.func.attr
        if name in DESTRUCTIVE:
            found.append(f"line {node.lineno}: {name}")
        elif name == "alter_column":
            changes = [k.arg for k in node.keywords if k.arg in ("new_column_name", "type_")]
            if _is_false(_keyword(node, "nullable")):
                changes.append("nullable=False")
            if changes:
                found.append(f"line {node.lineno}: alter_column {', '.join(changes)}")
        elif name == "add_column" and any(_not_null_without_default(arg) for arg in node.args):
            found.append(f"line {node.lineno}: add_column NOT NULL without server_default")
        elif name == "execute":
            text = " ".join(str(arg.value) for arg in ast.walk(node)
                            if isinstance(arg, ast.Constant) and isinstance(arg.value, str)).upper()
            words = [word.strip() for word in DESTRUCTIVE_SQL if word in text]
            if words:
                found.append(f"line {node.lineno}: execute {'/'.join(words)}")
    return found


def contract_reason(source: str) -> str | None:
    """The module-level ``contract = "..."`` of a migration, if it declares itself a contract step."""
    for node in ast.parse(source).body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "contract" for t in node.targets)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            return node.value.value.strip() or None
    return None


@pytest.mark.parametrize("path", VERSIONS, ids=[p.stem for p in VERSIONS])
def test_a_migration_only_expands_unless_it_is_a_contract_step(path: Path):
    source = path.read_text()
    operations = destructive_operations(source)
    assert not operations or contract_reason(source), (
        f"{path.name} removes or changes what the previous release may use while its nodes still run "
        f"(a rolling upgrade): {operations}. Keep it this release and remove it in the next one, in a "
        "migration that says `contract = \"what it removes; unused since release ...\"` (docs/cluster.md)")


def test_the_rule_sees_what_breaks_the_previous_release():
    """The check itself: the first 0012 (a drop), a rename, a NOT NULL column without default, raw
    SQL; and what is allowed."""
    first_0012 = "def upgrade() -> None:\n    op.drop_table('cluster_partition_progress')\n"
    assert destructive_operations(first_0012) == ["line 2: drop_table"]
    batch = ("def upgrade():\n    with op.batch_alter_table('t') as b:\n"
             "        b.alter_column('a', new_column_name='b')\n        b.drop_column('c')\n")
    assert destructive_operations(batch) == ["line 3: alter_column new_column_name", "line 4: drop_column"]
    assert destructive_operations("def upgrade():\n    op.add_column('t', sa.Column('x', sa.Integer(), "
                                  "nullable=False))\n") == ["line 2: add_column NOT NULL without server_default"]
    assert destructive_operations("def upgrade():\n    op.execute('ALTER TABLE t RENAME TO u')\n") == [
        "line 2: execute RENAME/ALTER"]
    allowed = ("def upgrade():\n    op.add_column('t', sa.Column('x', sa.Integer(), nullable=False, "
               "server_default='0'))\n    op.add_column('t', sa.Column('y', sa.Text(), nullable=True))\n"
               "    op.create_index('i', 't', ['x'])\n\ndef downgrade():\n    op.drop_table('t')\n")
    assert destructive_operations(allowed) == []
    assert contract_reason("contract = 'drops p; unused since 0012'\n") == "drops p; unused since 0012"
    assert contract_reason("revision = '0013'\n") is None


def test_the_head_a_start_checks_for_is_alembics():
    """``upgrade_to_head`` skips Alembic for a database at ``HEAD_REVISION``: a new migration must
    move it, or a start would run on the schema before it."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(config).get_heads() == [HEAD_REVISION]
