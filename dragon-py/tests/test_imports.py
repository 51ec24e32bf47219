"""The package's import structure: every module imports on its own in a
fresh interpreter, modules do not import each other in cycles, and none
uses another's private names."""
import ast
import importlib.util
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import dragon
from conftest import clean_env

PACKAGE = os.path.dirname(os.path.abspath(dragon.__file__))
# The start-method hook's module: wherever the installation put it (next
# to the package in an editable install's tree, in site-packages from a
# wheel).
HOOK = importlib.util.find_spec("_dragon_hook").origin

# Imports made on first use that close a cycle, each for a reason:
ALLOWED_LAZY = {
    # The hook's stand-in context imports dragon the first time it is used
    # (what it stands in for); dragon.context imports the hook at import.
    ("_dragon_hook", "dragon"),
}

# Private names (one leading underscore) of a module of the package that
# another module uses, as (user, "module.name"), each for a reason. Not
# private names: dunder names (``__reduce__``: protocols), modules whose own
# name starts with an underscore (``dragon._native``: the package's to
# import), attributes of objects (``Process._bootstrap``, ``Pool._inqueue``:
# the standard library's, read by name).
ALLOWED_PRIVATE = {
    # dragon.native.Queue's reset hook calls the one it overrides (a joinable queue counts its items)...
    ("dragon.native.queue", "dragon.queues.JoinableQueue._reset"),
    # ... or, when the queue is not joinable, the base class's (which does not count them).
    ("dragon.native.queue", "dragon.queues.Queue._reset"),
}


def modules():
    """Module name -> source file, for the package and the hook module."""
    found = {"_dragon_hook": HOOK}
    for d, _, files in os.walk(PACKAGE):
        for f in files:
            # The extension is known by its stub (it imports nothing of the package).
            if f.endswith(".py") or (f.endswith(".pyi") and f[:-1] not in files):
                rel = os.path.relpath(os.path.join(d, f), os.path.dirname(PACKAGE)).rpartition(".")[0]
                name = rel.replace(os.sep, ".").removesuffix(".__init__")
                if not name.endswith(".__main__"):  # a script (python -m), not a module
                    found[name] = os.path.join(d, f)
    return found


def absolute(package, node):
    """The module an ``ast.ImportFrom`` in ``package`` imports from."""
    base = node.module or ""
    if node.level:
        p = package
        for _ in range(node.level - 1):
            p = p.rpartition(".")[0]
        base = p + ("." + base if base else "")
    return base


def imports(name, path, known, top_level_only):
    """Modules of ``known`` that module ``name`` imports (at import time
    only, or also inside functions)."""
    tree = ast.parse(open(path).read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    nodes = []

    def collect(body):
        for n in body:
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                nodes.append(n)
            elif isinstance(n, (ast.If, ast.Try, ast.With)):
                for part in (n.body, getattr(n, "orelse", []), getattr(n, "finalbody", [])):
                    collect(part)
                for h in getattr(n, "handlers", []):
                    collect(h.body)

    if top_level_only:
        collect(tree.body)
    else:
        nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    out = set()
    for n in nodes:
        if isinstance(n, ast.Import):
            targets = [a.name for a in n.names]
        else:
            base = absolute(package, n)
            # `from pkg import sub` imports the submodule; `from mod import x` the module.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in n.names]
        for t in targets:
            # `import a.b.c` imports a, a.b and a.b.c: the deepest known one counts.
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def cycles(graph):
    """The strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def graph(top_level_only):
    mods = modules()
    return {m: imports(m, p, mods, top_level_only) for m, p in mods.items()}


def test_no_cycles_at_import_time():
    assert cycles(graph(top_level_only=True)) == []


def test_no_cycles_through_imports_made_on_first_use():
    g = graph(top_level_only=False)
    for a, b in ALLOWED_LAZY:
        assert b in g[a], f"{a} no longer imports {b}: drop it from ALLOWED_LAZY"
        g[a].discard(b)
    assert cycles(g) == []


def test_the_graph_sees_imports():
    # The checks above would pass on an empty graph: make sure they do not.
    g = graph(top_level_only=False)
    assert {"dragon._native", "dragon.context"} <= g["dragon"]
    assert "dragon._startproto" in g["dragon.popen"] and "dragon._startproto" in g["dragon._template"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def private(name):
    """Whether ``name`` is private to its module: one leading underscore
    (a dunder name is a protocol's)."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(name, path, known):
    """``(line, "module.name")`` of each private name of another module of
    ``known`` that module ``name`` uses: imported (``from .mod import _x``),
    or an attribute of a module (``mod._x``) or of a name imported from one
    (``Class._x``)."""
    tree = ast.parse(open(path).read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    bound = {}  # name in this file -> the module, or "module.name", it stands for
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for a in n.names:
                top = a.name.partition(".")[0]
                bound[a.asname or top] = a.name if a.asname else top
        elif isinstance(n, ast.ImportFrom):
            base = absolute(package, n)
            for a in n.names:
                full = f"{base}.{a.name}"
                bound[a.asname or a.name] = full
                if base in known and base != name and full not in known and private(a.name):
                    out.append((n.lineno, full))

    def dotted(e):
        if isinstance(e, ast.Name):
            return bound.get(e.id)
        if isinstance(e, ast.Attribute):
            base = dotted(e.value)
            return base and f"{base}.{e.attr}"
        return None

    for n in ast.walk(tree):
        if not (isinstance(n, ast.Attribute) and private(n.attr)):
            continue
        base = dotted(n.value)
        owner = base
        # The module the name belongs to: the deepest known one.
        while owner and owner not in known:
            owner = owner.rpartition(".")[0]
        full = f"{base}.{n.attr}"
        if owner and owner != name and full not in known:
            out.append((n.lineno, full))
    return out


def test_no_module_uses_another_modules_private_names():
    mods = modules()
    found = [(m, used, line) for m, p in mods.items() for line, used in private_uses(m, p, mods)]
    for m, used in ALLOWED_PRIVATE:
        assert any((m, used) == (a, b) for a, b, _ in found), \
            f"{m} no longer uses {used}: drop it from ALLOWED_PRIVATE"
    assert sorted(f"{m}:{line} uses {used}" for m, used, line in found if (m, used) not in ALLOWED_PRIVATE) == []


def test_the_private_name_check_sees_uses(tmp_path):
    # The check above would pass if it saw nothing: make sure it does not.
    src = tmp_path / "fake.py"
    src.write_text("import dragon\n"
                   "import dragon.native.machine as machine\n"
                   "from . import _native, runtime\n"
                   "from .pool import Pool, _Tasks\n"
                   "from ._pool_part import Tasks\n"
                   "\n"
                   "def f(tasks):\n"
                   "    from dragon.native.value import _resolve as resolve\n"
                   "    runtime._template_prep(), machine._directory(), Tasks._split, dragon.popen._DupFd\n"
                   "    _native.pool_take, dragon._native, Pool.__init__, tasks._ch, f._x\n")
    found = {used for _, used in private_uses("dragon.fake", str(src), modules())}
    assert found == {"dragon.pool._Tasks", "dragon.native.value._resolve", "dragon.runtime._template_prep",
                     "dragon.native.machine._directory", "dragon._pool_part.Tasks._split", "dragon.popen._DupFd"}


def import_alone(name):
    r = subprocess.run([sys.executable, "-c", f"import {name}"], env=clean_env(), capture_output=True, text=True,
                       timeout=120)
    return name, r.returncode, r.stderr


def test_every_module_imports_alone_in_a_fresh_interpreter():
    names = sorted(modules())
    with ThreadPoolExecutor(4) as ex:
        failed = [(n, err) for n, rc, err in ex.map(import_alone, names) if rc != 0]
    assert failed == []
    assert len(names) > 40


def test_the_shm_transport_is_registered_linked_in_at_import():
    # The plugin ABI's registry holds the transports this process uses; the
    # shm transport of this node's channels is the linked-in table.
    code = "from dragon import _native; print(_native.transports())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=clean_env())
    assert out.returncode == 0, out.stderr
    assert "('shm', True, '')" in out.stdout, out.stdout
    assert "tcp" not in out.stdout, "the off-node transport is loaded only when used: %s" % out.stdout
