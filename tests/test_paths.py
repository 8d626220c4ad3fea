import pytest

from core.runtime.paths import ExportPathError, cache_dir, export_dir, resolve_export_path, runlog_path


def test_paths_follow_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_CACHE", str(tmp_path / "c"))
    monkeypatch.delenv("MERGESCOPE_RUNLOG", raising=False)
    monkeypatch.delenv("MERGESCOPE_EXPORT_DIR", raising=False)
    assert cache_dir() == tmp_path / "c"
    assert runlog_path() == tmp_path / "c" / "runs.sqlite"
    assert export_dir() == tmp_path / "c" / "exports"
    monkeypatch.setenv("MERGESCOPE_EXPORT_DIR", str(tmp_path / "e"))
    assert export_dir() == tmp_path / "e"


def test_a_name_goes_into_the_export_folder_which_alone_is_created(tmp_path):
    root = tmp_path / "exports"
    p = resolve_export_path("merged.safetensors", root=root, allow_any=False)
    assert p == root.resolve() / "merged.safetensors" and root.is_dir()


def test_nothing_outside_the_export_folder_and_no_new_directories(tmp_path):
    root = tmp_path / "exports"
    with pytest.raises(ExportPathError, match="outside the export folder"):
        resolve_export_path("/nonexistent/dir/merged.safetensors", root=root, allow_any=False)
    with pytest.raises(ExportPathError, match="outside the export folder"):
        resolve_export_path("../escape.safetensors", root=root, allow_any=False)
    with pytest.raises(ExportPathError, match="does not exist"):
        resolve_export_path("sub/merged.safetensors", root=root, allow_any=False)
    assert not (root / "sub").exists()
    # with the server's explicit opt-in, any existing folder, but still no new folders
    with pytest.raises(ExportPathError, match="does not exist"):
        resolve_export_path("/nonexistent/dir/merged.safetensors", root=root, allow_any=True)
    assert not (tmp_path / "nonexistent").exists()
    assert (
        resolve_export_path(tmp_path / "x.safetensors", root=root, allow_any=True)
        == (tmp_path / "x.safetensors").resolve()
    )


def test_overwrite_needs_confirmation_and_suffix_is_checked(tmp_path):
    root = tmp_path / "exports"
    root.mkdir()
    (root / "m.safetensors").write_bytes(b"x")
    with pytest.raises(ExportPathError, match="already exists"):
        resolve_export_path("m.safetensors", root=root, allow_any=False)
    assert resolve_export_path("m.safetensors", root=root, allow_any=False, overwrite=True).name == "m.safetensors"
    with pytest.raises(ExportPathError, match="must end in .safetensors"):
        resolve_export_path("m.pt", root=root, allow_any=False)
    with pytest.raises(ExportPathError, match="give a file name"):
        resolve_export_path("  ", root=root, allow_any=False)


def test_the_server_option_is_read_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_ALLOW_ANY_PATH", "1")
    assert resolve_export_path(tmp_path / "y.safetensors", root=tmp_path / "e").parent == tmp_path.resolve()
    monkeypatch.setenv("MERGESCOPE_ALLOW_ANY_PATH", "0")
    with pytest.raises(ExportPathError):
        resolve_export_path(tmp_path / "y.safetensors", root=tmp_path / "e")
