"""The install lock: `requirements.lock` pins every distribution that `pip install -e ".[test]"`
resolves, transitive ones included, so a fresh machine installs exactly what CI tested.

    python envs/lock.py update    # re-resolve in a fresh venv (network), rewrite the lock and envs/*.yaml
    python envs/lock.py check     # pyproject.toml, envs/*.yaml and the installed packages agree with the lock

`update` is the only way the lock changes: after editing pyproject.toml's dependencies, run it and
commit both files. Users who want the newest releases install without the lock
(`pip install -e ".[test]"`); `check` then lists what differs.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
ENVS = ROOT / "envs"
PROJECT = "vlmbias"
# pip's own tooling: venv and pip manage these, `pip freeze` leaves them out
TOOLING = {"pip", "setuptools", "wheel"}
HEADER = """\
# Every distribution `pip install -e ".[test]"` resolves, pinned: the versions CI tests.
# Install with: pip install -c requirements.lock -e ".[test]"
# Regenerate with: python envs/lock.py update   (never edit by hand)
"""
ENV_PIN = re.compile(r"^(\s*-\s+)([A-Za-z0-9_.\-\[\]]+)\s*(==|>=|<=|~=|>|<)\s*([^\s#]+)(.*)$")


def read_lock(path: Path = LOCK) -> dict[str, str]:
    pins = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version.strip():
            raise SystemExit(f"{path}:{n}: not a 'name==version' pin: {line!r}")
        pins[canonicalize_name(name)] = version.strip()
    return pins


def project_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    meta = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(meta.get("dependencies", []))
    for extra in meta.get("optional-dependencies", {}).values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def check_requirements(reqs: list[Requirement], pins: dict[str, str]) -> list[str]:
    """Every requirement of pyproject.toml is in the lock, at a version its specifier allows."""
    problems = []
    for req in reqs:
        if req.marker is not None and not req.marker.evaluate():
            continue
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"pyproject.toml requires {req} but the lock has no {req.name}")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"pyproject.toml requires {req} but the lock pins {req.name}=={version}")
    return problems


def check_envs(pins: dict[str, str], envs: Path = ENVS) -> list[str]:
    """Every pinned pip line of envs/*.yaml pins the lock's version."""
    problems = []
    for env in sorted(envs.glob("*.yaml")):
        for n, line in enumerate(env.read_text().splitlines(), 1):
            m = ENV_PIN.match(line)
            if not m:
                continue
            name, op, version = canonicalize_name(m.group(2).split("[")[0]), m.group(3), m.group(4)
            if name == "python":
                continue
            if name not in pins:
                problems.append(f"{env.name}:{n}: {name} is not in the lock")
            elif op != "==" or version != pins[name]:
                problems.append(f"{env.name}:{n}: {name}{op}{version} but the lock pins {name}=={pins[name]}")
    return problems


def installed() -> dict[str, str]:
    out = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"] or "")
        if name and name != PROJECT and name not in TOOLING:
            out[name] = dist.version
    return out


def check_installed(pins: dict[str, str], have: dict[str, str]) -> list[str]:
    """The environment holds exactly the lock's distributions at the lock's versions."""
    problems = [f"{n}=={pins[n]} is locked but not installed" for n in sorted(set(pins) - set(have))]
    problems += [f"{n}=={have[n]} is installed but not in the lock" for n in sorted(set(have) - set(pins))]
    problems += [f"{n} is installed at {have[n]}, the lock pins {pins[n]}"
                 for n in sorted(set(pins) & set(have)) if pins[n] != have[n]]
    return problems


def update_envs(pins: dict[str, str], envs: Path = ENVS) -> None:
    for env in sorted(envs.glob("*.yaml")):
        lines = []
        for line in env.read_text().splitlines():
            m = ENV_PIN.match(line)
            name = canonicalize_name(m.group(2).split("[")[0]) if m else None
            if m and name in pins:
                line = f"{m.group(1)}{m.group(2)}=={pins[name]}{m.group(5)}"
            lines.append(line)
        env.write_text("\n".join(lines) + "\n")


def update() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        py = str(venv / "bin" / "python")
        subprocess.run([py, "-m", "pip", "install", "-q", "-e", f"{ROOT}[test]"], check=True)
        frozen = subprocess.run([py, "-m", "pip", "freeze", "--exclude-editable"], check=True,
                                capture_output=True, text=True).stdout
    pins = sorted(line for line in frozen.splitlines() if "==" in line
                  and canonicalize_name(line.split("==")[0]) not in TOOLING | {PROJECT})
    LOCK.write_text(HEADER + "\n".join(pins) + "\n")
    update_envs(read_lock())
    print(f"wrote {LOCK.name} ({len(pins)} pins) and updated envs/*.yaml")


def check() -> int:
    pins = read_lock()
    problems = check_requirements(project_requirements(), pins) + check_envs(pins) + check_installed(pins, installed())
    for p in problems:
        print(f"lock: {p}", file=sys.stderr)
    if problems:
        print("lock: fix pyproject.toml or envs/*.yaml, or run `python envs/lock.py update` and commit "
              "requirements.lock", file=sys.stderr)
        return 1
    print(f"lock: {len(pins)} pins agree with pyproject.toml, envs/*.yaml and this environment")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["update", "check"])
    args = ap.parse_args(argv)
    if args.command == "update":
        update()
        return 0
    return check()


if __name__ == "__main__":
    sys.exit(main())
