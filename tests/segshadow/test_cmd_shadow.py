"""`shadow run` honours a SQLite SEGSHADOW_DATABASE_URL, seals its directory, and exits by `--fail-on`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from segshadow.cli import main


def test_shadow_run_uses_the_sqlite_database_the_environment_names_and_seals_its_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "chosen.db"
    monkeypatch.setenv("SEGSHADOW_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.delenv("SEGSHADOW_REDIS_URL", raising=False)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["shadow", "run", "--workload", "clickstream", "--users", "40", "--minutes", "12", "--out", str(out),
              "--data-dir", str(tmp_path / "data"), "--fail-on", "never"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    assert db.exists() and not (out / "segshadow.db").exists()
    with sa.create_engine(f"sqlite:///{db}").connect() as conn:
        tables = sa.inspect(conn).get_table_names()
    assert tables, "the run wrote nothing to the database it was given"
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"parity", "mismatches", "events", "legacy", "stream", "shadow"} <= set(manifest["artifacts"])
    assert not (out / "INCOMPLETE").exists()
