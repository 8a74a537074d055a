"""What a `sandboxd` process imports before it does anything: only what every command needs.

Every operator command is a new process, and the integration and security suites start
hundreds of them; each pays for whatever `import sandboxd.cli` pulls in before typer has even
read its arguments. So a third-party package that only one path needs is imported on that
path, in the function that takes it (its annotations under `if TYPE_CHECKING:`), never at
module level:

- the server's stack (fastapi, starlette, uvicorn, mcp): `sandboxd serve` imports
  sandboxd.server in its command;
- the migration tool (alembic): `store.db.migrate`, only when the schema is behind, which it
  tells from the migration scripts' text (`store.db.head_revisions`);
- HTTP clients (httpx): webhook deliveries and rclone's remote control, a server's work.

These tests pin the effect, in fresh interpreters (this one has imported everything already);
test_import_graph.py finds the line that breaks the rule.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from test_import_graph import LAZY

from sandboxd.store.db import alembic_config, head_revisions, read_heads


def _imported_after(code: str) -> list[str]:
    """The LAZY packages a fresh interpreter has imported after running `code`."""
    probe = code + textwrap.dedent(f"""
        import json, sys
        print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & {set(LAZY)!r})))
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_importing_the_cli_loads_no_server_stack_migration_tool_or_http_client() -> None:
    assert _imported_after("import sandboxd.cli\n") == []


def test_an_admin_command_on_a_current_database_loads_none_of_them(tmp_path: Path) -> None:
    command = textwrap.dedent(f"""
        from sandboxd.cli import app
        try:
            app(["orgs", "list", "--data-dir", {str(tmp_path)!r}])
        except SystemExit as exc:
            assert not exc.code, exc.code
    """)
    assert _imported_after(command) == ["alembic"]  # a new database: migrated
    assert _imported_after(command) == []  # at head: nothing to migrate


def test_head_revisions_are_alembics() -> None:
    from alembic.script import ScriptDirectory

    assert head_revisions() == frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


def test_heads_are_read_from_every_way_a_script_names_its_revisions(tmp_path: Path) -> None:
    scripts = {
        "a.py": 'revision = "a"\ndown_revision = None\n',
        "b.py": '"""Revises: a"""\nrevision = "b"\ndown_revision = "a"\n',
        "c.py": 'from typing import Union\nrevision: str = "c"\ndown_revision: Union[str, None] = "a"\n',
        "d.py": 'revision = "d"\ndown_revision = ("b", "c")\nbranch_labels = None\n',  # a merge
        "e.py": 'revision = "e"\ndown_revision = "a"\n\ndef upgrade() -> None:\n    revision = "x"\n',
    }
    for name, text in scripts.items():
        (tmp_path / name).write_text(text)
    assert read_heads(tmp_path) == {"d", "e"}
