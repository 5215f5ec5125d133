"""The install lock (requirements.lock, envs/lock.py): pyproject.toml, envs/*.yaml and the installed
environment agree with it, and a disagreement is named."""
import importlib.util
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("lock", ROOT / "envs" / "lock.py")
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)


def test_pyproject_and_envs_agree_with_the_lock():
    pins = lock.read_lock()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.2"
    assert lock.check_requirements(lock.project_requirements(), pins) == []
    assert lock.check_envs(pins) == []


def test_installed_environment_is_the_locked_one():
    """What CI installed is exactly the lock: `pip freeze` minus the project equals its pins."""
    problems = lock.check_installed(lock.read_lock(), lock.installed())
    assert problems == [], "the environment differs from requirements.lock:\n" + "\n".join(problems)


def test_disagreements_are_named(tmp_path):
    pins = {"torch": "2.14.1", "numpy": "2.4.6"}
    reqs = [Requirement("torch==2.13.0"), Requirement("numpy>=1.26"), Requirement("faiss-cpu==1.15.1"),
            Requirement("pywin32>=1; sys_platform == 'win32'")]
    assert lock.check_requirements(reqs, pins) == [
        "pyproject.toml requires torch==2.13.0 but the lock pins torch==2.14.1",
        "pyproject.toml requires faiss-cpu==1.15.1 but the lock has no faiss-cpu"]
    (tmp_path / "a.yaml").write_text("dependencies:\n  - python=3.11\n  - pip:\n      - -c ../requirements.lock\n"
                                     "      - torch==2.14.1\n      - numpy>=1.26   # a range\n      - tqdm==4\n")
    assert lock.check_envs(pins, tmp_path) == ["a.yaml:6: numpy>=1.26 but the lock pins numpy==2.4.6",
                                               "a.yaml:7: tqdm is not in the lock"]
    assert lock.check_installed(pins, {"torch": "2.14.1", "numpy": "2.4.5", "six": "1.16.0"}) == [
        "six==1.16.0 is installed but not in the lock", "numpy is installed at 2.4.5, the lock pins 2.4.6"]
    assert lock.check_installed(pins, {"torch": "2.14.1"}) == ["numpy==2.4.6 is locked but not installed"]


def test_lock_lines_must_be_pins(tmp_path):
    bad = tmp_path / "requirements.lock"
    bad.write_text("# header\ntorch==2.14.1\nnumpy>=1.26\n")
    with pytest.raises(SystemExit, match="requirements.lock:3: not a 'name==version' pin"):
        lock.read_lock(bad)
