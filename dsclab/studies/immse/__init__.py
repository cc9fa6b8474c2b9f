"""The I-MMSE study kind (Kong et al. 2023): log-likelihood from the MMSE curve."""
from __future__ import annotations

from dsclab import immse_study as ist
from dsclab.studies import small_preset
from dsclab.study import Group, StudyKind


class Immse(StudyKind):
    name = "immse"
    spec_model = ist.ImmseSpec
    cell_dims = ist.CELL_DIMS
    description = ("Log-likelihood from the MMSE curve for exact, mismatched, trained and ensembled "
                   "denoisers (Kong et al. 2023).")
    small = small_preset(__file__)

    def template(self, spec):
        return ist.template(spec)

    def plan(self, spec, cells):
        """One task per cell (train its network, evaluate every denoiser), largest d and n first."""
        return [Group(cells=(c,)) for c in sorted(cells, key=lambda c: (-c.d, -c.n, c.data, c.seed))]

    def evaluate(self, spec, cell, cache, prepared, trained, device):
        return ist.run_cell(spec, cell)

    def report(self, ds):
        return ist.report(ds)

    def plot(self, ds, out):
        return ist.plot(ds, out)


KIND = Immse()
