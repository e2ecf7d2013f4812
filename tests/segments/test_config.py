"""Settings resolution: flags over environment over the per-user defaults, never the working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from segments.config import resolve_settings


def test_without_a_url_or_data_dir_the_store_is_per_user_not_per_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}
    for cwd in (tmp_path / "a", tmp_path / "b"):
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        conf = resolve_settings(environ=env)
        assert conf.data_dir == tmp_path / "xdg" / "segshadow"
        assert conf.database_url == f"sqlite:///{tmp_path / 'xdg' / 'segshadow' / 'segshadow.db'}"
    assert not (tmp_path / "a" / ".segshadow").exists() and not (tmp_path / "b" / ".segshadow").exists()


def test_home_is_the_fallback_and_a_relative_xdg_data_home_is_ignored(tmp_path: Path) -> None:
    for env in ({"HOME": str(tmp_path)}, {"HOME": str(tmp_path), "XDG_DATA_HOME": "relative/dir"}):
        assert resolve_settings(environ=env).data_dir == tmp_path / ".local" / "share" / "segshadow"


def test_flags_and_environment_still_win(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "SEGSHADOW_DATA_DIR": str(tmp_path / "env")}
    assert resolve_settings(environ=env).data_dir == tmp_path / "env"
    assert resolve_settings(data_dir=tmp_path / "flag", environ=env).data_dir == tmp_path / "flag"
    with_url = resolve_settings(database_url="postgresql://x/y", environ={"HOME": str(tmp_path)})
    assert with_url.database_url == "postgresql://x/y" and not (tmp_path / ".local").exists()
