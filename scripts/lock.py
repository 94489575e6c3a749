"""The lock (requirements/dev.txt): every package of the dev environment at an exact version.

`make lock` writes it with pip-tools' pip-compile from setup.cfg (install_requires and the dev
extra) and requirements/torch-pair.in, then seals it here: the last line is a SHA-256 of its pins
and of setup.cfg's requirements. `check` (tests/test_lock.py) finds a pin edited by hand, a
requirement of setup.cfg that no pin satisfies or that changed since the lock was written.

    python -m scripts.lock seal requirements/dev.txt
    python -m scripts.lock check requirements/dev.txt setup.cfg
"""

from __future__ import annotations

import configparser
import hashlib
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

SEAL = "# seal: "
SEAL_WHY = "  (make lock writes it; a pin edited by hand or a setup.cfg requirement changed since breaks it)"


def requirements(setup_cfg: str | Path, extra: str = "dev") -> list[Requirement]:
    """install_requires and the extra's requirements, as setup.cfg lists them."""
    cfg = configparser.ConfigParser()
    cfg.read(setup_cfg)
    lines = cfg["options"]["install_requires"].splitlines()
    lines += cfg["options.extras_require"][extra].splitlines()
    return [Requirement(line) for line in (line.split("#")[0].strip() for line in lines) if line]


def pins(lock: str | Path) -> dict[str, str]:
    """{canonical name: version} of every `name==version` line."""
    out = {}
    for line in Path(lock).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            out[canonicalize_name(name.strip())] = version.strip()
    return out


def digest(lock: str | Path, setup_cfg: str | Path) -> str:
    lines = sorted(f"{name}=={version}" for name, version in pins(lock).items())
    lines += sorted(str(r) for r in requirements(setup_cfg))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def seal(lock: str | Path, setup_cfg: str | Path = "setup.cfg") -> None:
    lock = Path(lock)
    body = [line for line in lock.read_text().splitlines() if not line.startswith(SEAL)]
    tmp = lock.with_name(lock.name + ".tmp")
    tmp.write_text("\n".join(body + [SEAL + digest(lock, setup_cfg) + SEAL_WHY]) + "\n")
    tmp.replace(lock)


def check(lock: str | Path, setup_cfg: str | Path) -> list[str]:
    """What makes the lock disagree with setup.cfg or with itself; empty when it is sound."""
    pinned = pins(lock)
    problems = []
    for req in requirements(setup_cfg):
        version = pinned.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req.name} (setup.cfg: {req}) has no pin in {lock}")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}=={version} in {lock} does not satisfy setup.cfg's {req}")
    sealed = [line for line in Path(lock).read_text().splitlines() if line.startswith(SEAL)]
    if not sealed:
        problems.append(f"{lock} has no seal line")
    elif sealed[-1][len(SEAL) :].split()[0] != digest(lock, setup_cfg):
        problems.append(f"{lock} was edited by hand or setup.cfg's requirements changed since it was written")
    return [p + "; run `make lock`" for p in problems]


if __name__ == "__main__":
    command, lock, *rest = sys.argv[1:]
    if command == "seal":
        seal(lock, *rest)
    elif command == "check":
        found = check(lock, *rest)
        print("\n".join(found) or f"{lock} agrees with {rest[0]}")
        sys.exit(1 if found else 0)
    else:
        sys.exit(f"unknown command {command!r}: seal or check")
