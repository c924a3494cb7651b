"""The import rule of docs/architecture.md, checked on the source: core <- pipeline <- apps, no private names
imported across modules (``from x import _y``, or ``x._y`` on an imported module)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
APPS = ("gare.cli", "gare.demo", "gare.plots", "gare.experiments", "gare.train", "gare.search", "gare.evaluate.run",
        "gare.data.commands", "gare.__main__")
PIPELINE = ("gare.pipeline",)
# Files that still break the rule while their owner reworks them (must be empty once issue 10 is done).
ALLOWED: dict[str, str] = {}


def _in(mod: str, roots) -> bool:
    return any(mod == r or mod.startswith(r + ".") for r in roots)


def _layer(mod: str) -> int:
    return 2 if _in(mod, APPS) else 1 if _in(mod, PIPELINE) else 0


def _modules(src: Path = SRC) -> dict[str, Path]:
    out = {}
    for p in sorted((src / "gare").rglob("*.py")):
        parts = list(p.relative_to(src).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(mod: str, path: Path, modules: dict):
    """(line, imported module, imported name or None) for every import of a gare module; and private
    attributes read off names bound to gare modules."""
    tree = ast.parse(path.read_text())
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    bound = {}  # local name -> gare module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("gare"):
                    yield node.lineno, a.name, None
                    bound[a.asname or a.name.split(".")[0]] = a.name if a.asname else "gare"
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if not base.startswith("gare"):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in modules:
                    yield node.lineno, sub, None
                    bound[a.asname or a.name] = sub
                else:
                    yield node.lineno, base, a.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound:
            yield node.lineno, bound[node.value.id], node.attr


def _private(name) -> bool:
    return bool(name) and name.startswith("_") and not name.startswith("__")


def test_layers_and_private_names():
    modules = _modules()
    problems = []
    for mod, path in modules.items():
        for line, target, name in _imports(mod, path, modules):
            where = f"{path.relative_to(SRC)}:{line}"
            if _layer(target) > _layer(mod):
                problems.append(f"{where}: {mod} (layer {_layer(mod)}) imports {target} (layer {_layer(target)})")
            if _private(name) and target != mod:
                problems.append(f"{where}: {mod} uses the private name {target}.{name}")
    rel = {str(modules[m].relative_to(SRC)) for m in modules}
    assert not [f for f in ALLOWED if f not in rel], "the allow-list names files that no longer exist"
    problems = [p for p in problems if p.split(":")[0] not in ALLOWED]
    assert not problems, "\n".join(problems)


def test_the_checker_sees_each_kind_of_violation(tmp_path):
    pkg = tmp_path / "gare"
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "pipeline.py").write_text("from .train import trainer\n")
    (pkg / "model" / "__init__.py").write_text("")
    (pkg / "model" / "a.py").write_text("from ..pipeline import x\nfrom .b import _hidden\nfrom . import b\nb._y()\n")
    (pkg / "model" / "b.py").write_text("def _hidden(): pass\n")
    (pkg / "train").mkdir()
    (pkg / "train" / "__init__.py").write_text("")
    (pkg / "train" / "trainer.py").write_text("import gare.model.b\n")
    modules = _modules(tmp_path)
    found = sorted((m, t, n) for m, p in modules.items() for _, t, n in _imports(m, p, modules)
                   if _layer(t) > _layer(m) or (_private(n) and t != m))
    assert found == [("gare.model.a", "gare.model.b", "_hidden"), ("gare.model.a", "gare.model.b", "_y"),
                     ("gare.model.a", "gare.pipeline", "x"), ("gare.pipeline", "gare.train.trainer", None)]
