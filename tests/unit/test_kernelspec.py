"""Tests of `pyrepl3_kernel.kernelspec`: installing and removing the kernelspec."""

from __future__ import annotations

import json
import struct
import sys
from importlib import resources
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from pyrepl3_kernel import kernelspec
from pyrepl3_kernel.kernelspec import main

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_SPEC = REPO_ROOT / "kernelspec" / "pyrepl3"
LOGOS = {"logo-32x32.png": 32, "logo-64x64.png": 64}


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    return tmp_path / "prefix"


def kernels_dir(prefix: Path) -> Path:
    return prefix / "share" / "jupyter" / "kernels"


def read_kernel_json(spec_dir: Path) -> dict[str, object]:
    data = json.loads((spec_dir / "kernel.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_install_writes_spec_with_absolute_interpreter(
    prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["install", "--prefix", str(prefix)]) == 0

    spec_dir = kernels_dir(prefix) / "pyrepl3"
    assert read_kernel_json(spec_dir) == {
        "argv": [sys.executable, "-m", "pyrepl3_kernel", "-f", "{connection_file}"],
        "display_name": "PyREPL3",
        "language": "python",
        "interrupt_mode": "message",
        "metadata": {"debugger": False},
    }
    assert Path(sys.executable).is_absolute()
    out = capsys.readouterr().out
    assert f"Installed kernelspec 'pyrepl3' in {spec_dir}" in out
    assert sys.executable in out


def test_install_copies_shipped_logos(prefix: Path) -> None:
    assert main(["install", "--prefix", str(prefix)]) == 0

    spec_dir = kernels_dir(prefix) / "pyrepl3"
    assert sorted(p.name for p in spec_dir.iterdir()) == [
        "kernel.json",
        *sorted(LOGOS),
    ]
    for name in LOGOS:
        assert (spec_dir / name).read_bytes() == (SHIPPED_SPEC / name).read_bytes()


def test_install_uses_name_and_display_name(prefix: Path) -> None:
    argv = ["install", "--prefix", str(prefix), "--name", "pr3-test"]
    assert main([*argv, "--display-name", "PyREPL3 (test)"]) == 0

    spec = read_kernel_json(kernels_dir(prefix) / "pr3-test")
    assert spec["display_name"] == "PyREPL3 (test)"
    assert not (kernels_dir(prefix) / "pyrepl3").exists()


def test_install_replaces_existing_spec(prefix: Path) -> None:
    assert main(["install", "--prefix", str(prefix), "--display-name", "old"]) == 0
    stale = kernels_dir(prefix) / "pyrepl3" / "stale.txt"
    stale.write_text("left from an earlier install")

    assert main(["install", "--prefix", str(prefix), "--display-name", "new"]) == 0

    assert read_kernel_json(stale.parent)["display_name"] == "new"
    assert not stale.exists()


def test_install_user_writes_to_jupyter_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))

    assert main(["install", "--user"]) == 0

    assert (tmp_path / "data" / "kernels" / "pyrepl3" / "kernel.json").is_file()


def test_install_defaults_to_user_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))

    assert main(["install"]) == 0

    assert (tmp_path / "data" / "kernels" / "pyrepl3" / "kernel.json").is_file()


def test_install_sys_prefix_writes_to_environment(
    prefix: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "prefix", str(prefix))

    assert main(["install", "--sys-prefix"]) == 0

    assert (kernels_dir(prefix) / "pyrepl3" / "kernel.json").is_file()


def test_kernel_spec_manager_finds_installed_spec(prefix: Path) -> None:
    assert main(["install", "--prefix", str(prefix)]) == 0

    manager = KernelSpecManager(kernel_dirs=[str(kernels_dir(prefix))])
    spec = manager.get_kernel_spec("pyrepl3")

    assert spec.argv[0] == sys.executable
    assert spec.display_name == "PyREPL3"
    assert spec.interrupt_mode == "message"
    assert spec.language == "python"
    assert Path(spec.resource_dir) == kernels_dir(prefix) / "pyrepl3"


def test_uninstall_removes_spec(
    prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["install", "--prefix", str(prefix), "--name", "pr3-gone"]) == 0
    assert main(["install", "--prefix", str(prefix)]) == 0
    capsys.readouterr()

    assert main(["uninstall", "--prefix", str(prefix), "--name", "pr3-gone"]) == 0

    assert not (kernels_dir(prefix) / "pr3-gone").exists()
    assert (kernels_dir(prefix) / "pyrepl3").is_dir()
    removed = kernels_dir(prefix) / "pr3-gone"
    assert f"Removed kernelspec 'pr3-gone' from {removed}" in capsys.readouterr().out
    manager = KernelSpecManager(kernel_dirs=[str(kernels_dir(prefix))])
    manager.ensure_native_kernel = False
    assert set(manager.find_kernel_specs()) == {"pyrepl3"}


def test_uninstall_missing_spec_fails_with_message(
    prefix: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["uninstall", "--prefix", str(prefix)]) == 1

    err = capsys.readouterr().err
    assert "error: no kernelspec named 'pyrepl3'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["no spaces", "../escape", "a/b"])
def test_install_rejects_invalid_name(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "deep" / "prefix"

    assert main(["install", "--prefix", str(prefix), "--name", name]) == 1

    err = capsys.readouterr().err
    assert f"Invalid kernel name {name!r}" in err
    assert [p.name for p in tmp_path.rglob("*")] == []


def test_install_into_unwritable_location_fails_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A prefix below a regular file fails for root too, unlike a chmod.
    blocker = tmp_path / "file"
    blocker.write_text("")

    assert main(["install", "--prefix", str(blocker / "prefix")]) == 1

    captured = capsys.readouterr()
    assert "install: error: cannot write" in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_install_permission_error_suggests_other_locations(
    prefix: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def deny(*args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", "/usr/share/jupyter/kernels")

    monkeypatch.setattr(KernelSpecManager, "install_kernel_spec", deny)

    assert main(["install", "--prefix", str(prefix)]) == 1

    err = capsys.readouterr().err
    assert "cannot write /usr/share/jupyter/kernels: Permission denied" in err
    assert "--user" in err


def test_location_options_are_exclusive(prefix: Path) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(["install", "--user", "--prefix", str(prefix)])

    assert exc_info.value.code == 2


def test_build_kernel_json_rejects_relative_interpreter() -> None:
    with pytest.raises(ValueError, match="absolute path, got 'python'"):
        kernelspec.build_kernel_json("PyREPL3", "python")


def test_shipped_kernel_json_keeps_plain_python_and_message_interrupts() -> None:
    spec = read_kernel_json(SHIPPED_SPEC)

    assert spec["argv"] == ["python", "-m", "pyrepl3_kernel", "-f", "{connection_file}"]
    assert spec["interrupt_mode"] == "message"
    assert spec["display_name"] == "PyREPL3"
    assert spec["metadata"] == {"debugger": False}


def test_package_resources_match_shipped_kernelspec() -> None:
    """The package's copies (symlinks in a checkout) must equal the kernelspec dir."""
    shipped = resources.files("pyrepl3_kernel.resources")

    for name in ["kernel.json", *LOGOS]:
        assert shipped.joinpath(name).read_bytes() == (SHIPPED_SPEC / name).read_bytes()


@pytest.mark.parametrize(("name", "size"), sorted(LOGOS.items()))
def test_shipped_logos_are_pngs_of_their_size(name: str, size: int) -> None:
    data = (SHIPPED_SPEC / name).read_bytes()

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (size, size)
