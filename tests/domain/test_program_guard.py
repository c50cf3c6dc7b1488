"""The program semver guard's rule, pure: the implemented signature's change against the bump."""

from __future__ import annotations

import pytest

from dspy_registry.server.domain import guard, signatures, versions
from dspy_registry.server.domain.compare import signature_switch
from dspy_registry.server.errors import FailedPrecondition
from tests.factories import SENTIMENT, spec

BEFORE = spec()
CHANGES = {
    "breaking": signatures.compare(BEFORE, spec(outputs=("positive", "negative"))),
    "additive": signatures.compare(BEFORE, spec(outputs=(*SENTIMENT, "mixed"))),
    "text only": signatures.compare(BEFORE, spec(instructions="Terser.")),
    "unchanged": signatures.compare(BEFORE, BEFORE),
    "another signature": signature_switch("signatures/a/versions/1.0.0", "signatures/b/versions/1.0.0"),
}
ACCEPTED = {  # change -> the versions after 1.0.0 the guard lets through
    "breaking": {"2.0.0", "2.0.0-rc.1"},
    "another signature": {"2.0.0", "2.0.0-rc.1"},
    "additive": {"2.0.0", "2.0.0-rc.1", "1.1.0", "1.1.0-rc.1"},
    "text only": {"2.0.0", "2.0.0-rc.1", "1.1.0", "1.1.0-rc.1", "1.0.1", "1.0.1-rc.1"},
    "unchanged": {"2.0.0", "2.0.0-rc.1", "1.1.0", "1.1.0-rc.1", "1.0.1", "1.0.1-rc.1"},
}


@pytest.mark.parametrize("change", sorted(CHANGES))
@pytest.mark.parametrize("proposed", ["2.0.0", "2.0.0-rc.1", "1.1.0", "1.1.0-rc.1", "1.0.1", "1.0.1-rc.1"])
def test_the_program_guard_table(change: str, proposed: str) -> None:
    previous, wanted = versions.parse("1.0.0"), versions.parse(proposed)
    compatibility = guard.of_signature(CHANGES[change])
    if proposed in ACCEPTED[change]:
        assert guard.check("programs/p", previous, wanted, compatibility, guard.GuardMode.ENFORCE) == []
        return
    with pytest.raises(FailedPrecondition) as refused:
        guard.check("programs/p", previous, wanted, compatibility, guard.GuardMode.ENFORCE)
    assert all(v.subject.startswith("programs/p:signature") for v in refused.value.violations)
    warned = guard.check("programs/p", previous, wanted, compatibility, guard.GuardMode.WARN)
    assert len(warned) == 1 and warned[0].startswith(f"{proposed} is too small a bump from 1.0.0")
    assert guard.check("programs/p", previous, wanted, compatibility, guard.GuardMode.OFF) == []
