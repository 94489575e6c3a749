"""The import graph of src/: the floors the tree shows, and the kernels below the models.

    utils  <-  kernels  <-  models.components  <-  models  <-  embedding, s3prl_upstream, commands
    utils  <-  data  <-  embedding, s3prl_upstream, commands      (data and models never meet)

A module may import from its own floor or below, never above; the model modules reach the kernels
only through their API (src.kernels), and the kernel backend is read from the environment in one
file (src/kernels/backend.py)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# what each room may import (besides itself and src.utils, which every room may use)
ALLOWED = {
    "src.utils": set(),
    "src.kernels": set(),
    "src.models.components": {"src.kernels"},
    "src.models": {"src.kernels", "src.models.components"},
    "src.data": set(),
    "src.embedding": {"src.data", "src.models", "src.models.components"},
    "src.s3prl_upstream": {"src.data", "src.embedding", "src.models", "src.models.components"},
    "commands": {"src.data", "src.embedding", "src.models", "src.models.components", "src.kernels"},
}
# utils' one arrow up: entry.py checks a run's checkpoint before Hydra builds anything
LATE_IMPORTS = {("src/utils/entry.py", "src.models.pretrained")}


def room(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 2 and parts[1] in ("train", "eval", "export"):
        return "commands"
    if parts[1:3] == ["models", "components"]:
        return "src.models.components"
    return ".".join(parts[:2])


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("src."):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("src.")]
    return found


def constants(path: Path) -> set:
    """The literal values in a module's code."""
    return {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)}


def modules():
    for path in sorted(SRC.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if name != "src":
            yield path, name


def test_no_room_imports_a_room_above_it():
    wrong = []
    for path, name in modules():
        here = room(name)
        for target in imports(path):
            there = room(target)
            if there in (here, "src.utils") or there in ALLOWED[here]:
                continue
            if (str(path.relative_to(ROOT)), target) not in LATE_IMPORTS:
                wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not wrong, wrong


def test_the_models_reach_the_kernels_only_through_their_api():
    inside = [
        f"{path.relative_to(ROOT)} imports {target}"
        for path, name in modules()
        if room(name) != "src.kernels"
        for target in imports(path)
        if target.startswith("src.kernels.") and target != "src.kernels"
    ]
    assert not inside, inside


def test_the_kernel_backend_is_chosen_in_one_file():
    readers = [str(p.relative_to(ROOT)) for p, _ in modules() if "SSAMBA_KERNELS" in constants(p)]
    assert readers == ["src/kernels/backend.py"], readers
    definers = [str(p.relative_to(ROOT)) for p, _ in modules() if "def resolve_backend" in p.read_text()]
    assert definers == ["src/kernels/backend.py"]
    callers = {str(p.relative_to(ROOT)) for p, _ in modules() if "resolve_backend(" in p.read_text()}
    assert callers <= {"src/kernels/backend.py", "src/kernels/ops.py"}, callers
