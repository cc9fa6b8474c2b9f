"""Seeding (issue 18 item 4): every bit of a derived seed reaches the generator, and the seeds of
one study's purposes and cells are all distinct."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dsclab import seeds
from dsclab.noise_sources import BrownianNoise
from dsclab.seeds import derive_seed, draw_rows, generator, rng


def test_torch_keeps_only_32_bits_and_generator_keeps_all():
    # the defect being fixed: PyTorch's CPU generator is seeded by the low 32 bits only
    a = torch.randn(8, generator=torch.Generator().manual_seed(5))
    b = torch.randn(8, generator=torch.Generator().manual_seed(5 + 2 ** 32))
    assert torch.equal(a, b)
    # every bit counts: seeds differing only in bit 32, 64 or 127 give other streams
    base = torch.randn(8, generator=generator(5))
    for bit in (32, 64, 127):
        assert not torch.equal(base, torch.randn(8, generator=generator(5 + 2 ** bit)))
    assert torch.equal(base, torch.randn(8, generator=generator(5)))  # and the same seed the same one


def test_generator_state_is_a_well_mixed_twister():
    # the stream of a filled state has the moments of N(0, 1) and U[0, 1) (1e6 draws: standard
    # errors 1e-3 for the mean, 7e-4 for the variance; 5 sigma bands)
    g = generator(derive_seed("moments"))
    z = torch.randn(10 ** 6, generator=g, dtype=torch.float64)
    u = torch.rand(10 ** 6, generator=g, dtype=torch.float64)
    assert abs(float(z.mean())) < 5e-3 and abs(float(z.var()) - 1) < 5e-3
    assert abs(float(u.mean()) - 0.5) < 5 * (1 / 12) ** 0.5 * 1e-3
    # its layout: the state words sit where tests of PyTorch's layout put them (seed 5's first words)
    st = torch.Generator().manual_seed(5).get_state().numpy()
    words = st[24:24 + 8 * 624].view(np.uint64)
    assert words[0] == 5 and words[1] == (1812433253 * (5 ^ (5 >> 30)) + 1) & 0xFFFFFFFF


def test_draw_rows_prefix_does_not_depend_on_the_total():
    sample = lambda m, g: torch.randn(m, 2, generator=g)  # noqa: E731
    short, long = draw_rows(sample, 1500, "x", 1), draw_rows(sample, 4200, "x", 1)
    assert short.shape == (1500, 2) and long.shape == (4200, 2)
    assert torch.equal(short, long[:1500])


def test_brownian_tree_node_seeds_distinct_on_a_fine_grid():
    with seeds.recording() as record:
        tree = BrownianNoise((2,), 123, t0=1e-3, t1=5.0)
        ts = torch.linspace(5.0, 1e-3, 1001, dtype=torch.float64)
        for a, b in zip(ts[:-1], ts[1:]):
            tree(float(a), float(b))
    parts = {p for p, _ in record}
    assert len(record) > 1000
    assert len({s for _, s in record}) == len(parts)  # distinct nodes, distinct seeds
    # low 32 bits alone would collide among this many nodes with probability ~ N^2 / 2^33
    assert len({s & 0xFFFFFFFF for _, s in record}) >= len(parts) - 2


class DictCache:
    def __init__(self):
        self.arrays = {}

    def exists(self, name):
        return name in self.arrays

    def save_array(self, name, a):
        self.arrays[name] = np.asarray(a)

    def load_array(self, name):
        return self.arrays[name]


@pytest.mark.usefixtures("one_thread")
def test_seeds_of_a_study_are_distinct_across_purposes_and_cells():
    from dsclab.studies.sample_complexity import KIND
    from dsclab.train import TrainResult

    spec = KIND.parse({"name": "seeds", "d": [2], "n": [30, 60], "seed": [0, 1], "nfe": [4],
                       "sampler": ["euler_maruyama", "exponential_integrator"],
                       "train": {"steps": 5, "width": 8, "depth": 1},
                       "evaluation": {"t": [0.1, 1.0], "n_score": 20, "n_samples": 20, "logsnr": [0.0],
                                      "n_nll": 10, "n_alpha": 4}})
    cache = DictCache()
    with seeds.recording() as record:
        for group in KIND.plan(spec, KIND.cells(spec)):
            prepared = {key: KIND.prepare(spec, key, cache) for key in group.data}
            trained = KIND.train(spec, list(group.cells), cache, prepared, "cpu")
            for c in group.cells:
                KIND.evaluate(spec, c, cache, prepared, trained[c.key], "cpu")
    by_parts = dict(record)
    assert len(set(by_parts.values())) == len(by_parts)  # no two purposes or cells share a seed
    purposes = {p.split(",")[0] for p in by_parts}
    for purpose in ('["data"', '["score"', '["target"', '["target-2"', '["projections"', '["sample"', '["train"'):
        assert purpose in purposes
    # each cell's own draws (keyed by the cell) are distinct from every other cell's
    keys = [c.key for c in KIND.cells(spec)]
    own = {k: {s for p, s in by_parts.items() if k in p} for k in keys}
    for i, a in enumerate(keys):
        assert own[a], a
        for b in keys[i + 1:]:
            assert not own[a] & own[b]
    assert isinstance(rng("x"), torch.Generator)
