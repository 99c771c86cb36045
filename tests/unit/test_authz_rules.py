"""The one authorisation rule, held by reading the code: no handler decides roles, every /admin route hands the
service the caller's `Actor`, and every privileged service function takes a required `Actor` and checks it with
`require_role`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "layers" / "shared" / "tollgate" / "services"
HANDLERS = sorted((ROOT / "functions").glob("*/app.py"))
ROLE_NAMES = frozenset({"USER", "SUPPORT", "ADMIN", "OPERATOR"})
ROLE_CHECKS = frozenset({"require_role", "has_role"})

# module -> its privileged functions (None: every public function of the module)
PRIVILEGED: dict[str, tuple[str, ...] | None] = {
    "credits_admin": None,
    "webhook_endpoints": None,
    "manual_plans": ("assign_plan", "end_plan"),
    "rag_ingest": ("ingest", "reembed", "list_chunks", "delete_chunk", "ingest_request"),
    "webhooks": ("replay_event",),
}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def _called_names(fn: ast.FunctionDef) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else "")
    return names


def _checks_role(name: str, functions: dict[str, ast.FunctionDef], seen: frozenset[str] = frozenset()) -> bool:
    """`name` calls require_role/has_role, itself or through a function of the same module that does."""
    called = _called_names(functions[name])
    if called & ROLE_CHECKS:
        return True
    return any(_checks_role(c, functions, seen | {name}) for c in called if c in functions and c not in seen)


def _is_role_literal(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value in ROLE_NAMES


@pytest.mark.parametrize("handler", HANDLERS, ids=lambda p: p.parent.name)
def test_no_handler_decides_roles(handler: Path) -> None:
    # Given a function's entry module
    tree = _tree(handler)
    # When its comparisons, role literals and imports are read
    offending = [
        f"line {getattr(node, 'lineno', '?')}: {ast.unparse(node)}"
        for node in ast.walk(tree)
        if (isinstance(node, ast.Compare) and "role" in ast.unparse(node))
        or _is_role_literal(node)
        or (isinstance(node, ast.Attribute) and node.attr == "is_admin")
        or (isinstance(node, ast.ImportFrom) and any(a.name in ROLE_CHECKS | {"UserRole"} for a in node.names))
    ]
    # Then it compares no role and names none: the services decide
    assert offending == []


@pytest.mark.parametrize("handler", HANDLERS, ids=lambda p: p.parent.name)
def test_every_admin_route_hands_the_service_the_callers_actor(handler: Path) -> None:
    # Given the routes of a function's entry module
    routes = [
        fn
        for fn in _functions(_tree(handler)).values()
        for deco in fn.decorator_list
        if isinstance(deco, ast.Call) and deco.args and isinstance(deco.args[0], ast.Constant)
        if str(deco.args[0].value).startswith("/admin")
    ]
    # When their bodies are read, Then each builds the caller's Actor for the service it calls
    assert [fn.name for fn in routes if "current_actor" not in _called_names(fn)] == []


def _privileged() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for module, names in PRIVILEGED.items():
        functions = _functions(_tree(SERVICES / f"{module}.py"))
        public = [n for n in functions if not n.startswith("_")]
        found += [(module, n) for n in (names if names is not None else public)]
    return found


@pytest.mark.parametrize(("module", "name"), _privileged(), ids=lambda v: str(v))
def test_a_privileged_service_takes_a_required_actor_and_checks_its_role(module: str, name: str) -> None:
    # Given a privileged service function
    functions = _functions(_tree(SERVICES / f"{module}.py"))
    fn = functions[name]
    args = fn.args
    positional = args.posonlyargs + args.args
    defaults = dict(
        zip([a.arg for a in positional][len(positional) - len(args.defaults) :], args.defaults, strict=True)
    )
    defaults |= {a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None}
    actor = next((a for a in positional + args.kwonlyargs if a.arg == "actor"), None)
    # When its signature and body are read
    # Then it takes `actor: Actor` with no default (never Optional), and decides with require_role
    assert actor is not None, f"{module}.{name} takes no actor"
    assert actor.annotation is not None and ast.unparse(actor.annotation) == "Actor", ast.dump(actor)
    assert "actor" not in defaults
    assert _checks_role(name, functions), f"{module}.{name} never calls require_role"


def test_no_service_takes_an_optional_actor() -> None:
    # Given every service module
    offending = []
    for path in sorted(SERVICES.rglob("*.py")):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.FunctionDef):
                args = node.args
                for arg in args.posonlyargs + args.args + args.kwonlyargs:
                    annotation = ast.unparse(arg.annotation) if arg.annotation is not None else ""
                    # When a parameter is an actor (by name or type), Then it is a required Actor: no `| None`, no
                    # Optional, no bare id-and-role pair
                    is_actor = arg.arg.startswith("actor") or "Actor" in annotation
                    if is_actor and annotation != "Actor":
                        offending.append(f"{path.name}:{node.name}({arg.arg}: {annotation})")
    assert offending == []
