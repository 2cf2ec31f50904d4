"""Tests of the package's public names and its exception tree."""

from __future__ import annotations

import inspect

import pytest

import pyrepl3_kernel
from pyrepl3_kernel import errors


def _exception_classes() -> list[type[BaseException]]:
    return [
        value
        for _, value in inspect.getmembers(errors, inspect.isclass)
        if issubclass(value, BaseException) and value.__module__ == errors.__name__
    ]


def test_all_names_exist_once_and_sorted() -> None:
    names = pyrepl3_kernel.__all__

    assert len(set(names)) == len(names)
    assert names == sorted(names)
    for name in names:
        assert hasattr(pyrepl3_kernel, name), name


def test_version_is_a_nonempty_string() -> None:
    assert isinstance(pyrepl3_kernel.__version__, str)
    assert pyrepl3_kernel.__version__


def test_every_error_is_public_and_subclasses_the_root() -> None:
    classes = _exception_classes()

    assert {cls.__name__ for cls in classes} == set(errors.__all__)
    assert set(errors.__all__) <= set(pyrepl3_kernel.__all__)
    for cls in classes:
        assert issubclass(cls, pyrepl3_kernel.PyRepl3Error), cls
        assert getattr(pyrepl3_kernel, cls.__name__) is cls


def test_error_tree_matches_its_docstring() -> None:
    assert pyrepl3_kernel.PyRepl3Error.__bases__ == (Exception,)
    assert issubclass(errors.BadSignatureError, errors.ProtocolError)
    doc = errors.__doc__ or ""
    for cls in _exception_classes():
        assert cls.__name__ in doc, f"{cls.__name__} missing from the drawn tree"


@pytest.mark.parametrize("cls", _exception_classes(), ids=lambda cls: cls.__name__)
def test_every_error_has_a_docstring(cls: type[BaseException]) -> None:
    assert cls.__doc__ and cls.__doc__.strip()


def test_worker_died_error_carries_exit_details() -> None:
    error = errors.WorkerDiedError(-11, "was killed by SIGSEGV", "Fatal Python error")

    assert str(error) == "was killed by SIGSEGV"
    assert (error.returncode, error.description, error.crash_text) == (
        -11,
        "was killed by SIGSEGV",
        "Fatal Python error",
    )
    with pytest.raises(pyrepl3_kernel.PyRepl3Error, match="SIGSEGV"):
        raise error
