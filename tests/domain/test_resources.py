"""Resource requirements (metadata.deployment.requirements) against an environment's capacity."""

from __future__ import annotations

from typing import Any

import pytest

from dspy_registry.server.domain import resources
from dspy_registry.server.domain.environments import load_toml, policy_from_json, policy_to_json
from dspy_registry.server.errors import InvalidArgument, Violations

GIB = 1024**3


def _required(requirements: Any) -> list[resources.Requirement]:
    return resources.parse_requirements({"deployment": {"requirements": requirements}})


def test_the_grammar_in_both_forms() -> None:
    listed = _required(["memory >= 1GB", "cpu>=0.5", "gpu >= 1", "max_concurrency >= 50", "ruby >= 3.0"])
    assert [(r.name, r.op, r.quantity) for r in listed] == [
        ("memory", ">=", (1e9,)),
        ("cpu", ">=", (0.5,)),
        ("gpu", ">=", (1.0,)),
        ("max_concurrency", ">=", (50.0,)),
        ("ruby", ">=", (3.0, 0.0)),
    ]
    mapped = _required({"memory": "2 GiB", "cpu": 2, "python": "< 3.13"})
    assert [(r.name, r.op, r.quantity) for r in mapped] == [
        ("memory", ">=", (2.0 * GIB,)),
        ("cpu", ">=", (2.0,)),
        ("python", "<", (3.0, 13.0)),
    ]
    assert [r.quantity for r in _required(["memory >= 512", "memory >= 1kib", "memory >= 3 TB"])] == [
        (512.0,),
        (1024.0,),
        (3e12,),
    ]
    assert resources.parse_requirements({}) == [] and resources.parse_requirements({"deployment": {}}) == []


@pytest.mark.parametrize(
    ("requirements", "field"),
    [
        (["memory >= lots"], "metadata.deployment.requirements[0]"),
        (["cpu >= 2", "memory"], "metadata.deployment.requirements[1]"),
        (["gpu >= 1.5"], "metadata.deployment.requirements[0]"),
        (["cpu >= -1"], "metadata.deployment.requirements[0]"),
        (["Memory >= 1GB"], "metadata.deployment.requirements[0]"),
        (["memory => 1GB"], "metadata.deployment.requirements[0]"),
        (["ruby >= three"], "metadata.deployment.requirements[0]"),
        ([42], "metadata.deployment.requirements[0]"),
        ({"memory": True}, "metadata.deployment.requirements['memory']"),
        ({"Bad Name": "1"}, "metadata.deployment.requirements['Bad Name']"),
        ("memory >= 1GB", "metadata.deployment.requirements"),
    ],
)
def test_bad_grammar_names_the_requirement(requirements: Any, field: str) -> None:
    v = Violations()
    resources.validate_requirements({"deployment": {"requirements": requirements}}, "metadata", v)
    assert field in {x.field for x in v.items}, v.items


def test_a_deployment_section_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidArgument) as refused:
        resources.parse_requirements({"deployment": "big"})
    assert refused.value.violations[0].field == "metadata.deployment"


def test_requirements_against_capacity() -> None:
    metadata = {"deployment": {"requirements": ["memory >= 1GB", "gpu >= 1", "ruby >= 3.0", "cpu >= 2"]}}
    small = {"memory": "512MiB", "gpu": "0", "ruby": "3.2"}
    assert [v.description for v in resources.violations(metadata, small, "s", "production")] == [
        "requires memory >= 1GB; production offers memory = 512MiB",
        "requires gpu >= 1; production offers gpu = 0",
    ]  # cpu: not declared there, not limited; ruby 3.2 >= 3.0
    assert resources.violations(metadata, {"memory": "16GiB", "gpu": "2", "ruby": "3.0.1"}, "s", "p") == []
    assert resources.violations(metadata, {}, "s", "p") == []  # no capacity: anything goes
    old = {"deployment": {"requirements": ["a lot of memory"]}}  # registered before requirements were read
    (unreadable,) = resources.violations(old, {"memory": "1GB"}, "s", "p")
    assert unreadable.type == "CAPACITY" and "unreadable" in unreadable.description
    assert resources.violations(old, {}, "s", "p") == []


def test_capacity_in_the_toml_file_and_its_stored_form() -> None:
    (env,) = load_toml(
        '[environments.production.capacity]\nmemory = "16GiB"\ncpu = 8\ngpu = 0\npython = "3.11"\n'
    )
    assert env.policy.capacity == {"memory": "16GiB", "cpu": "8", "gpu": "0", "python": "3.11"}
    assert policy_from_json(policy_to_json(env.policy)) == env.policy
    with pytest.raises(InvalidArgument) as refused:
        load_toml('[environments.production.capacity]\nmemory = "big"\ngpu = 0.5\n')
    assert {v.field for v in refused.value.violations} == {
        "environments.production.policy.capacity['memory']",
        "environments.production.policy.capacity['gpu']",
    }
