"""Every program the code runs is one the set-up installs, from one list: ``scripts/programs.txt``.

Was a bug (fixed): ``test_percore.py`` ran ``arping``, which ``scripts/setup.sh`` never installed;
CI passed only because its machine had it from earlier work, and a fresh machine failed there with
``exec of "arping" failed``.  This module reads the code instead of trusting memory: it parses
(``ast``, nothing is run) ``tests/``, ``benchmarks/``, ``examples/`` and the package for the argv
lists handed to ``subprocess``, to ``NetworkNamespace.run``/``popen``/``command``, to
``NamespaceProgram`` and its subclasses, to helpers that pass their ``*args`` on as an argv, and
for the names given to ``shutil.which``; it follows a list held in a local name, a ``*spread``
list at the head of an argv, and the commands of an ``sh -c`` script.  Each program found must
be in the list, and every listed program must be on ``PATH`` after the set-up, so a missing
install fails here, by name, before the test that needs it.

What the scan cannot see (an argv built by a function from parts, a program name computed at
run time) is covered by reading: the list's comments say where each program is used.
"""

from __future__ import annotations

import ast
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = ROOT / "scripts" / "programs.txt"
#: where the scan looks; a program found only under benchmarks/ may be set up by `make bench` alone
SCANNED = ("tests", "benchmarks", "examples", "trio_yastack")
#: methods whose first argument (or ``args=``) is an argv: subprocess's, ``NetworkNamespace``'s, trio's
ARGV_METHODS = frozenset(
    {"run", "popen", "Popen", "call", "check_call", "check_output", "command", "run_process", "open_process"}
)
#: the repo's class whose second argument (or ``args=``) is an argv; its subclasses are found by the scan
PROGRAM_CLASSES = frozenset({"NamespaceProgram"})
#: the shell's keywords: a command may follow them (``do curl``, ``! grep``)
SHELL_KEYWORDS = frozenset(
    ["!", "{", "}", "do", "done", "elif", "else", "esac", "fi", "if", "in", "then", "until", "while"]
)
#: the shell's builtins: their arguments are not commands (``exit 1``), nor are they programs to install
SHELL_BUILTINS = frozenset(
    {"[", "[[", "]]", ":", "cd", "echo", "exit", "export", "false", "printf", "read", "return", "set"}
    | {"shift", "test", "true", "wait"}
)
#: what ends a simple command (shlex hands over runs of them as one token: ``);``)
SEPARATOR_CHARS = frozenset(";&|()")


@dataclass(frozen=True)
class Listed:
    """One row of ``scripts/programs.txt``."""

    program: str
    package: str
    bench_only: bool
    #: its comment says where it is used, out of the scan's sight
    by_reading: bool

    @property
    def from_pip(self) -> bool:
        """A console script pip puts in ``.venv/bin`` from pyproject.toml's dependencies."""
        return self.package.startswith("pip:")


def read_list(path: Path = PROGRAMS) -> dict[str, Listed]:
    """``program package [bench]`` per line; ``#`` starts a comment."""
    rows: dict[str, Listed] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        text, _, comment = raw.partition("#")
        words = text.split()
        if not words:
            continue
        assert len(words) in (2, 3) and words[2:] in ([], ["bench"]), f"{path}:{number}: {raw!r}"
        assert words[0] not in rows, f"{path}:{number}: {words[0]} listed twice"
        by_reading = comment.strip().startswith("by reading:")
        rows[words[0]] = Listed(words[0], words[1], words[2:] == ["bench"], by_reading)
    return rows


@dataclass(frozen=True)
class Call:
    """A program the code runs, and where."""

    program: str
    where: str

    @property
    def bench_only(self) -> bool:
        return self.where.startswith("benchmarks/")


def _scopes(tree: ast.Module) -> Iterator[tuple[ast.AST, list[ast.AST]]]:
    """Every node with the function bodies (innermost first, then the module) it can see names in."""

    def walk(node: ast.AST, chain: list[ast.AST]) -> Iterator[tuple[ast.AST, list[ast.AST]]]:
        for child in ast.iter_child_nodes(node):
            inner = [child, *chain] if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else chain
            yield child, inner
            yield from walk(child, inner)

    yield from walk(tree, [tree])


def _bindings(name: str, scopes: list[ast.AST]) -> list[ast.expr]:
    """What ``name`` may hold: the values assigned to it, and the elements of a literal list or
    tuple a ``for`` (or comprehension) takes it from, in the nearest scope that binds it."""
    for scope in scopes:
        found: list[ast.expr] = []
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets
            ):
                found.append(node.value)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if node.target.id == name and node.value is not None:
                    found.append(node.value)
            elif (
                isinstance(node, (ast.For, ast.comprehension))
                and isinstance(node.target, ast.Name)
                and node.target.id == name
                and isinstance(node.iter, (ast.List, ast.Tuple))
            ):
                found.extend(node.iter.elts)
        if found:
            return found
    return []


def _strings(node: ast.expr, scopes: list[ast.AST], depth: int = 0) -> list[str]:
    """The string constants ``node`` may be (through names); none when it is computed."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if depth > 5:
        return []
    if isinstance(node, ast.Name):
        return [s for value in _bindings(node.id, scopes) for s in _strings(value, scopes, depth + 1)]
    if isinstance(node, ast.BoolOp):  # `TSHARK or "tshark"`
        return [s for value in node.values for s in _strings(value, scopes, depth + 1)]
    if isinstance(node, ast.IfExp):
        return [s for value in (node.body, node.orelse) for s in _strings(value, scopes, depth + 1)]
    return []


def _argvs(node: ast.expr, scopes: list[ast.AST], depth: int = 0) -> list[list[ast.expr]]:
    """The literal argv lists ``node`` may be (through names and a leading ``*spread``)."""
    if depth > 5:
        return []
    if isinstance(node, ast.Name):
        return [argv for value in _bindings(node.id, scopes) for argv in _argvs(value, scopes, depth + 1)]
    if isinstance(node, ast.Call) and _callee(node) == "list" and node.args:  # `list(args)`
        return _argvs(node.args[0], scopes, depth + 1)
    if isinstance(node, ast.IfExp):  # `["env", "X=1"] if wanted else []`
        return [argv for value in (node.body, node.orelse) for argv in _argvs(value, scopes, depth + 1)]
    if not isinstance(node, (ast.List, ast.Tuple)) or not node.elts:
        return []
    head, *rest = node.elts
    if isinstance(head, ast.Starred):
        return [[*argv, *rest] for argv in _argvs(head.value, scopes, depth + 1)]
    return [list(node.elts)]


def shell_programs(script: str) -> list[str]:
    """The programs an ``sh -c`` script runs: the first word of each simple command (also inside
    ``$(...)``), skipping the shell's own words and ``VAR=value`` prefixes; ``exec``'s and
    ``command -v``'s argument count too."""
    lexer = shlex.shlex(script.replace("$(", " $( "), posix=True, punctuation_chars="".join(SEPARATOR_CHARS))
    lexer.whitespace_split = True
    lexer.wordchars += "$"
    programs: list[str] = []
    at_start, skip_to_separator = True, False
    for word in lexer:
        if word == "$" or set(word) <= SEPARATOR_CHARS:
            at_start, skip_to_separator = True, False
        elif skip_to_separator or not at_start:
            continue
        elif word in ("for", "case"):  # `for NAME in WORDS;`: no command until the separator
            skip_to_separator = True
        elif word in SHELL_KEYWORDS or ("=" in word and not word.startswith("-")):
            continue  # the next word may still be a command (`do curl`, `X=1 prog`)
        elif word in ("exec", "command", "-v", "nohup"):
            continue
        elif word in SHELL_BUILTINS:
            at_start = False
        else:
            if not word.startswith(("$", '"$', "-")):
                programs.append(word)
            at_start = False
    return programs


def _programs_of_argv(argv: list[ast.expr], scopes: list[ast.AST]) -> list[str]:
    """The program an argv runs (its head), and those of an ``sh -c SCRIPT`` inside it."""
    programs = [os.path.basename(s) for s in _strings(argv[0], scopes)]
    for index, element in enumerate(argv[:-2]):
        if _strings(element, scopes) in (["sh"], ["bash"]) and _strings(argv[index + 1], scopes) == ["-c"]:
            for script in _strings(argv[index + 2], scopes):
                programs.extend(shell_programs(script))
    return programs


def _argv_argument(call: ast.Call, position: int) -> ast.expr | None:
    if len(call.args) > position:
        return call.args[position]
    return next((kw.value for kw in call.keywords if kw.arg == "args"), None)


def _callee(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    if isinstance(call.func, ast.Name):
        return call.func.id
    return None


def _varargs_helpers(trees: dict[str, ast.Module]) -> dict[str, int]:
    """Functions that pass their ``*args`` on as an argv (``def ns_sh(ns, *args): ns.run(list(args))``):
    name -> the position of the first vararg in a call."""
    helpers: dict[str, int] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.args.vararg is None:
                continue
            vararg = node.args.vararg.arg
            for call in ast.walk(node):
                if not (isinstance(call, ast.Call) and _callee(call) in ARGV_METHODS):
                    continue
                first = _argv_argument(call, 0)
                if isinstance(first, ast.Call) and _callee(first) == "list" and first.args:
                    first = first.args[0]
                if isinstance(first, ast.Name) and first.id == vararg:
                    params = [a.arg for a in (*node.args.posonlyargs, *node.args.args)]
                    helpers[node.name] = len(params) - (params[:1] in (["self"], ["cls"]))
    return helpers


def _program_classes(trees: dict[str, ast.Module]) -> set[str]:
    """``NamespaceProgram`` and every class that derives from one of them."""
    classes = set(PROGRAM_CLASSES)
    changed = True
    while changed:
        changed = False
        for tree in trees.values():
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name not in classes:
                    bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                    if bases & classes:
                        classes.add(node.name)
                        changed = True
    return classes


def parse_sources(roots: tuple[str, ...] = SCANNED, base: Path = ROOT) -> dict[str, ast.Module]:
    """Every Python file under ``roots`` (relative path -> syntax tree)."""
    return {
        str(path.relative_to(base)): ast.parse(path.read_text(), str(path))
        for root in roots
        for path in sorted((base / root).rglob("*.py"))
    }


def scan(trees: dict[str, ast.Module]) -> list[Call]:
    """Every program the code in ``trees`` runs or looks for."""
    helpers = _varargs_helpers(trees)
    classes = _program_classes(trees)
    calls: list[Call] = []
    for relative, tree in trees.items():
        for node, scopes in _scopes(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _callee(node)
            where = f"{relative}:{node.lineno}"
            found: list[str] = []
            if name == "which" and node.args:
                found = [os.path.basename(s) for s in _strings(node.args[0], scopes)]
            elif name in ARGV_METHODS or name in classes:
                argument = _argv_argument(node, 1 if name in classes else 0)
                if argument is not None:
                    for argv in _argvs(argument, scopes):
                        found.extend(_programs_of_argv(argv, scopes))
            elif name in helpers and len(node.args) > helpers[name]:
                found = [os.path.basename(s) for s in _strings(node.args[helpers[name]], scopes)]
            for passed, argument in zip(node.args, node.args[1:], strict=False):
                # `in_thread(netns.run, [argv])`, `partial(ns.popen, [argv])`: a runner and its argv
                if isinstance(passed, ast.Attribute) and passed.attr in ARGV_METHODS:
                    for argv in _argvs(argument, scopes):
                        found.extend(_programs_of_argv(argv, scopes))
            calls.extend(Call(program, where) for program in found if program)
    return calls


def on_path(listed: Listed) -> str | None:
    """Where the set-up put ``listed``: ``PATH`` plus the sbin directories (a non-root user's
    ``PATH`` may lack them, and the tests that need those programs run as root), or ``.venv/bin``."""
    if listed.from_pip:
        return shutil.which(listed.program, path=str(Path(sys.executable).parent))
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    return shutil.which(listed.program, path=path)


LISTED = read_list()
CALLS = scan(parse_sources())


def test_the_scan_finds_the_calls_that_broke_a_fresh_machine() -> None:
    """The scanner sees through the repo's helpers: ``arping`` through ``namespace.run``, tshark
    through ``Program(namespace, [...])``, ``ip`` through ``ns_sh(netns, "ip", ...)``, ``mount``
    inside an ``sh -c`` script, ``setpriv`` from a ``*drop`` spread, ``iperf3`` from
    ``command -v`` in a benchmark."""
    found = {(call.program, call.where.split(":")[0]) for call in CALLS}
    for expected in [
        ("arping", "tests/test_percore.py"),
        ("tshark", "tests/test_percore.py"),
        ("ip", "tests/test_tap_port.py"),
        ("mount", "tests/test_tap_port.py"),
        ("setpriv", "tests/test_tap_port.py"),
        ("curl", "tests/test_percore.py"),
        ("iperf3", "benchmarks/bench_tap.py"),
        ("sysctl", "trio_yastack/nic/netns.py"),
    ]:
        assert expected in found, expected


def test_the_scan_reads_the_forms_a_test_writes() -> None:
    """A fake call written by hand in each form is found, with its line (the proof that a new call
    to a program the set-up lacks fails :func:`test_every_program_called_is_listed`)."""
    source = """
import subprocess, shutil
from tap_helpers import NamespaceProgram

class Peer(NamespaceProgram): ...

def helper(ns, *args):
    return ns.run(list(args))

def test(ns):
    subprocess.run(["nonexistent-a", "-x"])
    ns.popen(["/usr/bin/nonexistent-b"])
    argv = ["nonexistent-c", "--flag"]
    ns.run([*argv, "more"])
    Peer(ns, ["nonexistent-d"])
    helper(ns, "nonexistent-e", "arg")
    for tool in ("nonexistent-f",):
        shutil.which(tool)
    loop = "for i in $(nonexistent-g 3); do nonexistent-h || exit 1; done; X=1 exec nonexistent-i"
    ns.run(["sh", "-c", loop])
    ns.run([sys.executable, "-m", "x"])  # not a program to install
"""
    calls = scan({"tests/test_fake.py": ast.parse(source)})
    assert [(call.program, call.where) for call in calls] == [
        ("nonexistent-a", "tests/test_fake.py:11"),
        ("nonexistent-b", "tests/test_fake.py:12"),
        ("nonexistent-c", "tests/test_fake.py:14"),
        ("nonexistent-d", "tests/test_fake.py:15"),
        ("nonexistent-e", "tests/test_fake.py:16"),
        ("nonexistent-f", "tests/test_fake.py:18"),
        ("sh", "tests/test_fake.py:20"),
        ("nonexistent-g", "tests/test_fake.py:20"),
        ("nonexistent-h", "tests/test_fake.py:20"),
        ("nonexistent-i", "tests/test_fake.py:20"),
    ]


def test_every_program_called_is_listed() -> None:
    """Each program a test, a benchmark, an example or the package runs is in
    ``scripts/programs.txt``; one a test or the package runs is not marked ``bench`` (the tests'
    set-up would not install it)."""
    missing = sorted({f"{call.program} ({call.where})" for call in CALLS if call.program not in LISTED})
    assert not missing, f"called but not in {PROGRAMS.relative_to(ROOT)}: {', '.join(missing)}"
    bench_only = sorted(
        {f"{c.program} ({c.where})" for c in CALLS if not c.bench_only and LISTED[c.program].bench_only}
    )
    assert not bench_only, f"a test needs these, but the list marks them bench-only: {', '.join(bench_only)}"


@pytest.mark.parametrize("listed", LISTED.values(), ids=LISTED.keys())
def test_listed_program_is_installed(listed: Listed) -> None:
    """After ``bash scripts/setup.sh`` every listed program is there (``make bench`` installs
    the ``bench`` ones: without them only the benchmarks cannot run)."""
    if on_path(listed) is None and listed.bench_only:
        pytest.skip(f"{listed.program} is for the benchmarks only: `make bench` installs {listed.package}")
    where = "pip install -e . (pyproject.toml)" if listed.from_pip else f"apt-get install {listed.package}"
    assert on_path(listed), f"{listed.program} is missing: scripts/setup.sh should have run {where}"


def test_arping_is_the_one_from_iputils() -> None:
    """``test_percore.py`` runs ``arping -c 1 -w 5 -I IF``: iputils' flags.  Debian's other
    arping (package ``arping``, 2.x) takes ``-i`` for the interface and fails there, and the
    set-up, finding an ``arping`` present, would not replace it: so check which one it is."""
    arping = on_path(LISTED["arping"])
    assert arping, "arping is missing: scripts/setup.sh should have run apt-get install iputils-arping"
    version = subprocess.run([arping, "-V"], capture_output=True, text=True, timeout=30)
    assert "iputils" in version.stdout + version.stderr, (
        f"{arping} is not iputils' arping ({version.stdout}{version.stderr}): apt-get install iputils-arping"
    )


def test_the_list_names_no_program_the_code_never_runs() -> None:
    """Every row is used: found by the scan, or its comment says ``by reading:`` where (a shell
    script of the set-up, a path computed at run time), so the list does not rot."""
    called = {call.program for call in CALLS}
    unused = [program for program, row in LISTED.items() if program not in called and not row.by_reading]
    assert not unused, f"listed, but the code never runs them (and no `by reading:` says where): {unused}"
