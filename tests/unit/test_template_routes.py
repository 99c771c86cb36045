"""API Gateway's route rules, checked on template.yaml before a deploy finds them: an HTTP API refuses two routes
whose variable path parts sit at the same level under the same parent with different names ("conflicting
variable on the same hierarchical level"), and two functions answering the same route key."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tollgate_local.template import Template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = Template(ROOT / "template.yaml")


def _variable_names_by_parent(paths: list[str]) -> dict[tuple[str, ...], set[str]]:
    """For each parent path (its literal segments, variables written as {}), the variable names used below it."""
    names: dict[tuple[str, ...], set[str]] = {}
    for path in paths:
        parent: list[str] = []
        for segment in path.strip("/").split("/"):
            if segment.startswith("{") and segment.endswith("}"):
                names.setdefault(tuple(parent), set()).add(segment)
                parent.append("{}")
            else:
                parent.append(segment)
    return names


def test_variable_path_parts_at_one_level_share_one_name() -> None:
    # Given every HTTP route of the template
    paths = sorted({route.route_key.split(" ", 1)[1] for route in TEMPLATE.routes})
    # When the variable names under each parent are collected
    conflicts = {
        "/".join(parent): sorted(names) for parent, names in _variable_names_by_parent(paths).items() if len(names) > 1
    }
    # Then no parent has two differently named variables (API Gateway would refuse the deploy)
    assert conflicts == {}


def test_the_checker_sees_a_conflict() -> None:
    # Given /products/{slug} beside /products/{product_id}/reviews, which API Gateway refuses
    names = _variable_names_by_parent(["/products/{slug}", "/products/{product_id}/reviews"])
    # Then the checker reports both names under /products
    assert names[("products",)] == {"{slug}", "{product_id}"}


def test_each_route_key_has_one_function() -> None:
    # Given every HTTP route of the template
    counts = Counter(route.route_key for route in TEMPLATE.routes)
    # Then no method and path is declared twice
    assert [key for key, n in counts.items() if n > 1] == []
