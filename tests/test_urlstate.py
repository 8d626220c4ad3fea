import pytest

from core.spec import MergeSpec
from core.urlstate import spec_from_query, spec_to_query


@pytest.mark.parametrize(
    "spec",
    [
        MergeSpec.make("task_arithmetic"),
        MergeSpec.make("ties", {"k": 0.1, "coefficients": [0.2, 0.4]}, tasks=("a", "b")),
        MergeSpec.make("task_arithmetic", lines=("auto", 0.5)),
        MergeSpec.make("task_arithmetic", curve=(0.1, 0.2, 0.3), outside=0.05),
    ],
)
def test_a_merge_round_trips_through_its_link(spec):
    q = spec_to_query(spec)
    assert all(isinstance(v, str) for v in q.values())
    assert spec_from_query(q) == spec and spec_from_query(q).key() == spec.key()


def test_a_malformed_link_names_the_field():
    with pytest.raises(ValueError, match="lines"):
        spec_from_query({"method": "task_arithmetic", "lines": "zebra"})
