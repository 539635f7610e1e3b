"""The top-level API: every exported name resolves, and importing the package stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import transferlm


@pytest.mark.parametrize("name", [n for n in transferlm.__all__ if n != "__version__"])
def test_every_exported_name_resolves_to_its_definition(name: str) -> None:
    obj = getattr(transferlm, name)
    assert callable(obj)
    # The object itself, not a module or a re-wrapped copy: defined where the export table says.
    assert obj.__module__.startswith("transferlm.")
    assert obj.__name__ == name


def test_the_api_examples_names_are_exported() -> None:
    # README's Python API section imports these from the top level.
    for name in ("run", "compare", "RunConfig", "CompareConfig", "DataConfig", "TrainConfig", "load_task",
                 "pretrain", "PretrainConfig", "multitask", "MultitaskConfig", "load_task_adapter", "TaskModel",
                 "load_backbone", "build_report"):
        assert name in transferlm.__all__
        assert name in dir(transferlm)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'runn'"):
        transferlm.runn  # noqa: B018


def test_importing_the_package_does_not_load_torch() -> None:
    code = "import sys, transferlm; transferlm.__all__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
