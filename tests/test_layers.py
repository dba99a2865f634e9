"""The package's layers import only downward: every `import nanokern.X` / `from nanokern.X import`
in every module (lazy imports inside functions included) names a layer at or below its own."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nanokern"

# lowest first; a module belongs to the first entry its dotted name starts with
LAYERS = [
    ["nanokern.errors"],
    ["nanokern.io"],  # bytes on disk
    ["nanokern.arch"],  # the architecture tables
    ["nanokern.ops"],  # kernels
    ["nanokern.plan"],  # the logical model and plans
    ["nanokern.formats"],  # readers and writers
    ["nanokern.execute"],  # running a plan
    ["nanokern.convert", "nanokern.verify", "nanokern.verify_fp8", "nanokern.inspect"],  # the conversion API: convert, verify, inspect
    ["nanokern.live"],  # HF tensors from a running job's shards (collective over its ranks)
    ["nanokern.cli_report"],  # how every command reports (errors, --json): used by the command modules below too
    ["nanokern.parity"],
    ["nanokern.generate"],
    ["nanokern.watch"],  # the sidecar beside a training run (its --check runs parity)
    ["nanokern.bench"],
    ["nanokern.demo", "nanokern.parity_cli", "nanokern.convert_cli", "nanokern.cli", "nanokern.__main__"],  # the commands
]


def layer_of(name: str) -> int | None:
    for i, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    return None


def imports_of(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "nanokern":  # `from nanokern import x`: x is a module (or the version)
                found += [(node.lineno, f"nanokern.{a.name}") for a in node.names if a.name != "__version__"]
    return [(line, name) for line, name in found if name.startswith("nanokern.")]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_module_has_a_layer_and_imports_only_downward():
    upward, unplaced = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        if name == "nanokern":
            continue
        mine = layer_of(name)
        if mine is None:
            unplaced.append(name)
            continue
        for line, target in imports_of(path):
            theirs = layer_of(target)
            if theirs is None and target.split(".")[1] not in ("_C", "_C_cuda", "_cpu"):
                unplaced.append(target)
            elif theirs is not None and theirs > mine:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} {name} imports {target}")
    assert not unplaced, f"modules in no layer: {sorted(set(unplaced))}"
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from nanokern.execute import run\n")
    assert imports_of(probe) == [(2, "nanokern.execute")]
    assert layer_of("nanokern.execute.run") > layer_of("nanokern.formats.hf")
