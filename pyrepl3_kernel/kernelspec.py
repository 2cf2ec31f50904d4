"""Install and remove the ``pyrepl3`` kernelspec for Jupyter installations elsewhere.

``pip install`` already places a kernelspec in the target environment
(``<env>/share/jupyter/kernels/pyrepl3``, from setup.cfg's ``data_files``). Its
``argv`` starts with a bare ``python``, which jupyter_client replaces with its own
interpreter, so that copy only works for a Jupyter running in the same
environment. The spec written here names the absolute path of the interpreter
that runs this command instead, so a Jupyter in another environment, or the
user's data directory, starts the kernel with the right Python.

The template (``kernel.json``) and the logos are read from the package's
``resources`` directory with ``importlib.resources``, which works the same in
regular, editable and zipped installs; those files are symlinks to
``kernelspec/pyrepl3/`` in the source tree, the single copy of the spec.

Usage (``python -m pyrepl3_kernel`` dispatches here)::

    install [--user | --sys-prefix | --prefix DIR] [--name N] [--display-name D]
    uninstall [--user | --sys-prefix | --prefix DIR] [--name N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TypedDict, cast

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from .errors import PyRepl3Error

__all__ = [
    "DEFAULT_DISPLAY_NAME",
    "DEFAULT_NAME",
    "KernelJson",
    "KernelspecError",
    "Location",
    "build_kernel_json",
    "install",
    "main",
    "uninstall",
]

logger = logging.getLogger(__name__)

# jupyter_client's manager logs its own "not on the search path" warning; this
# command prints a fuller note itself. The NullHandler keeps logging's
# last-resort handler from echoing the manager's records on stderr, while
# handlers an application configured still receive them.
_manager_logger = logger.getChild("manager")
_manager_logger.addHandler(logging.NullHandler())

DEFAULT_NAME = "pyrepl3"
DEFAULT_DISPLAY_NAME = "PyREPL3"
_PROG = "python -m pyrepl3_kernel"
_RESOURCES = "pyrepl3_kernel.resources"
_TEMPLATE = "kernel.json"


class KernelJson(TypedDict):
    """The fields of ``kernel.json`` this package writes (Jupyter's kernelspec)."""

    argv: list[str]
    display_name: str
    language: str
    interrupt_mode: str
    metadata: dict[str, object]


@dataclass(frozen=True)
class Location:
    """Where a kernelspec goes: the user's Jupyter data directory or a prefix.

    A prefix ``P`` means ``P/share/jupyter/kernels``, as in jupyter_client.
    """

    prefix: str | None  # None: the user's data directory; else an absolute path

    @property
    def kernels_dir(self) -> Path:
        """The directory holding one subdirectory per kernelspec."""
        if self.prefix is None:
            return Path(KernelSpecManager().user_kernel_dir)
        return Path(self.prefix, "share", "jupyter", "kernels")


class KernelspecError(PyRepl3Error):
    """A kernelspec could not be installed or removed; the message says why.

    The command line turns it into a message on stderr and exit status 1.
    """


def build_kernel_json(display_name: str, python: str) -> KernelJson:
    """Return the shipped ``kernel.json`` with ``python`` as the interpreter.

    Args:
        display_name: the name frontends show (launcher, kernel picker).
        python: the interpreter to run the kernel with; must be absolute so the
            spec works whatever ``PATH`` the frontend has.

    Raises:
        ValueError: ``python`` is not an absolute path.
    """
    if not os.path.isabs(python):
        raise ValueError(f"python must be an absolute path, got {python!r}")
    template = resources.files(_RESOURCES).joinpath(_TEMPLATE)
    spec = cast(KernelJson, json.loads(template.read_text(encoding="utf-8")))
    spec["argv"] = [python, *spec["argv"][1:]]
    spec["display_name"] = display_name
    return spec


def install(
    location: Location,
    *,
    name: str = DEFAULT_NAME,
    display_name: str = DEFAULT_DISPLAY_NAME,
    python: str | None = None,
) -> Path:
    """Write the kernelspec ``name`` into ``location``, replacing one already there.

    ``python`` defaults to the interpreter running this function. Returns the
    directory written.

    Raises:
        KernelspecError: the name is invalid or the directory cannot be written.
    """
    python = python if python is not None else _current_python()
    spec = build_kernel_json(display_name, python)
    manager = KernelSpecManager(log=_manager_logger)
    with tempfile.TemporaryDirectory(prefix="pyrepl3-kernelspec-") as tmp:
        # A fixed directory name: `name` is only validated by jupyter_client
        # below, and must not pick where this temporary copy is written.
        source = Path(tmp, "spec")
        _write_spec_dir(source, spec)
        try:
            destination = manager.install_kernel_spec(
                str(source),
                kernel_name=name,
                user=location.prefix is None,
                prefix=location.prefix,
            )
        except ValueError as exc:  # an invalid kernel name
            raise KernelspecError(str(exc)) from exc
        except OSError as exc:
            raise KernelspecError(_os_error_message("write", exc)) from exc
    logger.info("kernelspec installed name=%s path=%s", name, destination)
    return Path(destination)


def uninstall(location: Location | None, *, name: str = DEFAULT_NAME) -> Path:
    """Remove the kernelspec ``name`` and return the directory removed.

    With ``location`` None, removes the first one Jupyter would find on its
    search path (as ``jupyter kernelspec remove`` does); otherwise only the
    one in that location. A directory without ``kernel.json`` is never removed.

    Raises:
        KernelspecError: no such kernelspec, or it cannot be removed.
    """
    if location is None:
        manager = KernelSpecManager(log=_manager_logger)
        searched = ", ".join(manager.kernel_dirs)
    else:
        kernels_dir = str(location.kernels_dir)
        manager = KernelSpecManager(log=_manager_logger, kernel_dirs=[kernels_dir])
        searched = kernels_dir
    try:
        removed = manager.remove_kernel_spec(name.lower())
    except (KeyError, NoSuchKernel) as exc:
        msg = f"no kernelspec named {name!r} in {searched}"
        raise KernelspecError(msg) from exc
    except OSError as exc:
        raise KernelspecError(_os_error_message("remove", exc)) from exc
    logger.info("kernelspec removed name=%s path=%s", name, removed)
    return Path(removed)


def main(argv: list[str]) -> int:
    """Run ``install`` or ``uninstall`` as given in ``argv``; return the exit status.

    ``argv`` excludes the program name. Prints what was done to stdout, or an
    error without a traceback to stderr (status 1). Usage errors exit through
    argparse with status 2.
    """
    args = _parser().parse_args(argv)
    location = _location(args)
    try:
        if args.command == "install":
            path = install(
                location or Location(prefix=None),
                name=args.name,
                display_name=args.display_name,
            )
            print(f"Installed kernelspec {path.name!r} in {path}")
            print(f"  interpreter: {_current_python()}")
            _note_if_not_searched(path.parent)
        else:
            path = uninstall(location, name=args.name)
            print(f"Removed kernelspec {path.name!r} from {path}")
    except KernelspecError as exc:
        print(f"{_PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG, description="Manage the PyREPL3 Jupyter kernelspec."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    install_cmd = commands.add_parser(
        "install",
        help="install the kernelspec for this interpreter",
        description=(
            "Install a kernelspec that starts the kernel with this interpreter "
            f"({sys.executable}). Default location: the user's Jupyter data "
            "directory."
        ),
    )
    uninstall_cmd = commands.add_parser(
        "uninstall",
        help="remove an installed kernelspec",
        description=(
            "Remove a kernelspec. Without a location option, removes the first "
            "one on Jupyter's search path."
        ),
    )
    for cmd in (install_cmd, uninstall_cmd):
        where = cmd.add_mutually_exclusive_group()
        where.add_argument(
            "--user",
            action="store_true",
            help="the current user's Jupyter data directory",
        )
        where.add_argument(
            "--sys-prefix",
            action="store_true",
            help=f"this Python environment ({sys.prefix})",
        )
        where.add_argument(
            "--prefix",
            metavar="DIR",
            help="DIR/share/jupyter/kernels (add DIR/share/jupyter to JUPYTER_PATH)",
        )
        cmd.add_argument(
            "--name",
            default=DEFAULT_NAME,
            help=f"kernelspec name, used by --kernel options (default: {DEFAULT_NAME})",
        )
    install_cmd.add_argument(
        "--display-name",
        default=DEFAULT_DISPLAY_NAME,
        help=f"name shown by frontends (default: {DEFAULT_DISPLAY_NAME})",
    )
    return parser


def _location(args: argparse.Namespace) -> Location | None:
    """Return the location the options chose, or None when none was given."""
    if args.user:
        return Location(prefix=None)
    if args.sys_prefix:
        return Location(prefix=sys.prefix)
    if args.prefix is not None:
        return Location(prefix=os.path.abspath(os.path.expanduser(args.prefix)))
    return None


def _current_python() -> str:
    # abspath, not realpath: a virtualenv's python is a symlink to the base
    # interpreter, and resolving it would start the kernel outside the venv.
    if not sys.executable:
        raise KernelspecError("cannot tell which Python runs this (sys.executable)")
    return os.path.abspath(sys.executable)


def _write_spec_dir(directory: Path, spec: KernelJson) -> None:
    """Fill ``directory`` with ``kernel.json`` and the shipped logos."""
    directory.mkdir()
    (directory / _TEMPLATE).write_text(json.dumps(spec, indent=2) + "\n")
    shipped = resources.files(_RESOURCES)
    for item in shipped.iterdir():
        if item.name.startswith("logo-"):
            (directory / item.name).write_bytes(item.read_bytes())


def _os_error_message(verb: str, exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    reason = exc.strerror or str(exc)
    hint = ""
    if isinstance(exc, PermissionError):
        hint = "; choose a location you may write: --user or --prefix DIR"
    return f"cannot {verb}{where}: {reason}{hint}"


def _note_if_not_searched(kernels_dir: Path) -> None:
    searched = {Path(d) for d in KernelSpecManager(log=_manager_logger).kernel_dirs}
    if kernels_dir not in searched:
        print(
            f"  note: Jupyter does not search {kernels_dir} by default; add "
            f"{kernels_dir.parent} to JUPYTER_PATH to use it."
        )
