"""The DISNET generator family: connected meshes within the family's ranges, reproducible by seed."""

import pytest

from env import meshes
from env.meshes import EVAL_SEED_BASE, POWER_CLASSES_W, default_link_count, generate_mesh, mesh_spec


@pytest.mark.parametrize("n", [2, 6, 10, 15, 24, 32])
def test_mesh_is_connected_and_within_the_family(n):
    spec = mesh_spec(n, EVAL_SEED_BASE + n)
    assert len(spec.devices) == n
    assert len(spec.links) == default_link_count(n)
    assert all(spec.reachable(spec.source, d) for d in spec.device_ids)
    assert spec.source != spec.sink
    assert all(10 <= link.mbps <= 50 and link.mbps == int(link.mbps) for link in spec.links)
    assert all(1 <= d.gflops <= 10 and d.gflops == int(d.gflops) for d in spec.devices.values())
    assert all((d.power.compute_w, d.power.transmit_w) in POWER_CLASSES_W for d in spec.devices.values())


def test_same_seed_same_mesh_other_seed_other_mesh():
    assert generate_mesh(10, 7) == generate_mesh(10, 7)
    assert generate_mesh(10, 7) != generate_mesh(10, 8)


@pytest.mark.parametrize(("n", "m"), [(1, None), (5, 3), (5, 11)])
def test_impossible_meshes_are_refused(n, m):
    with pytest.raises(ValueError, match="device|links"):
        generate_mesh(n, 0, m)


def test_a_negative_seed_is_refused_in_words_that_name_it(capsys):
    with pytest.raises(SystemExit):
        meshes.main(["--devices", "5", "--seed", "-1"])
    assert "a mesh seed must be >= 0, not -1" in capsys.readouterr().err
