"""Shape of the store package: no dead code, a DAG of imports, no cross-object private reads."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STORE = sorted((ROOT / "store").glob("*.py"))


def _references() -> tuple[set[str], set[str]]:
    """(names read or imported, attributes read) anywhere in store/, pipeline/ or tests/."""
    names: set[str] = set()
    attrs: set[str] = set()
    for d in ("store", "pipeline", "tests"):
        for path in (ROOT / d).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Name):
                    names.add(node.id)
                elif isinstance(node, ast.alias):
                    names.add(node.name.rsplit(".", 1)[-1])
                elif isinstance(node, ast.Attribute):
                    attrs.add(node.attr)
    return names, attrs


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def test_every_store_definition_is_used_somewhere():
    # A function or class nothing names, or a method/property nothing reads as an attribute,
    # has no caller in store/, pipeline/ or tests/: dead code. Dunders are Python's to call.
    names, attrs = _references()
    dead = []
    for path in STORE:
        tree = ast.parse(path.read_text())
        methods = {id(m) for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
                   for m in c.body if isinstance(m, ast.FunctionDef)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or _is_dunder(node.name):
                continue
            seen = node.name in attrs if id(node) in methods else node.name in names | attrs
            if not seen:
                dead.append(f"{path.name}: {node.name}")
    assert dead == [], dead


def _store_imports(tree: ast.Module) -> list[tuple[ast.stmt, str]]:
    """(import statement, store module it names) for every import of a store module."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"relative import at line {node.lineno}: use store.<module>")
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out += [(node, n.split(".")[1] if "." in n else "__init__")
                for n in names if n.split(".")[0] == "store"]
    return out


def test_store_modules_import_each_other_at_top_level_only():
    # A function-level or `if TYPE_CHECKING:` import between store modules is how a cycle
    # hides; every such import sits in the module body, where a cycle would fail at import.
    hidden = []
    for path in STORE:
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        hidden += [f"{path.name}:{node.lineno} imports store.{mod}"
                   for node, mod in _store_imports(tree) if id(node) not in top]
    assert hidden == [], hidden


def test_store_imports_form_a_dag():
    graph = {p.stem: {m for _, m in _store_imports(ast.parse(p.read_text()))} - {p.stem}
             for p in STORE}
    done: set[str] = set()

    def visit(mod: str, path: tuple[str, ...]) -> None:
        if mod in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(mod):] + (mod,)))
        if mod not in done:
            for dep in sorted(graph.get(mod, ())):
                visit(dep, path + (mod,))
            done.add(mod)

    for mod in sorted(graph):
        visit(mod, ())


def test_no_store_module_reads_another_objects_private_attributes():
    # `obj._name` on anything but self/cls couples a module to another's internals (the old
    # fs._f / ns._index reads); what one module needs from another is public and documented.
    leaks = []
    for path in STORE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not _is_dunder(node.attr) \
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                leaks.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    assert leaks == [], leaks
