"""In CI (CI=true) a skipped test fails unless its reason names missing hardware (GPU/CUDA); elsewhere it skips."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent


def test_ci_turns_skips_into_failures_except_missing_gpu(pytester, monkeypatch):
    pytester.makeconftest(  # the project's hook, loaded from tests/conftest.py under another module name
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('gare_tests_conftest', {str(TESTS / 'conftest.py')!r})\n"
        "mod = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(mod)\n"
        "pytest_runtest_makereport = mod.pytest_runtest_makereport\n")
    pytester.makepyfile(test_x="""
import pytest

def test_needs_demo():
    pytest.skip("no trained model: run make demo")

def test_needs_gpu():
    pytest.skip("needs a CUDA GPU")

def test_passes():
    pass
""")
    monkeypatch.setenv("CI", "true")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1, failed=1, skipped=1)
    monkeypatch.delenv("CI")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1, skipped=2)
