"""The layer's record of the schema revisions (tollgate/db/schema_heads.py) matches migrations/versions.

The layer ships no Alembic, so /health compares the database with this generated file. After adding a revision,
regenerate it: `.venv/bin/python -m tests.unit.test_schema_heads`.
"""

from __future__ import annotations

from pathlib import Path

from alembic.script import ScriptDirectory

from tollgate.db import schema_heads
from tollgate_local.migrations import alembic_config

GENERATED = Path(schema_heads.__file__)
HEADER = '''"""The Alembic revisions this code expects the schema to be at (the layer ships no Alembic to ask).

Generated from migrations/versions by `python -m tests.unit.test_schema_heads`; tests/unit/test_schema_heads.py
fails when a revision is added without regenerating it.
"""
'''


def render() -> str:
    script = ScriptDirectory.from_config(alembic_config())
    heads = sorted(script.get_heads())
    revisions = sorted(revision.revision for revision in script.walk_revisions())

    def block(name: str, values: list[str]) -> str:
        return f"{name}: tuple[str, ...] = (\n" + "".join(f'    "{value}",\n' for value in values) + ")\n"

    return (
        HEADER
        + "\n# Every head: the schema is current when alembic_version holds exactly these.\n"
        + block("SCHEMA_HEADS", heads)
        + "# Every revision this code knows: one outside it means the schema is newer than the code.\n"
        + block("SCHEMA_REVISIONS", revisions)
    )


def test_the_generated_heads_match_the_migrations() -> None:
    # Given the revisions in migrations/versions
    expected = render()
    # Then the layer's generated file says the same
    assert GENERATED.read_text(encoding="utf-8") == expected, (
        "tollgate/db/schema_heads.py is stale: run `.venv/bin/python -m tests.unit.test_schema_heads`"
    )


if __name__ == "__main__":
    GENERATED.write_text(render(), encoding="utf-8")
    print(f"wrote {GENERATED}")
