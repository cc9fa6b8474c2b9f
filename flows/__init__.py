"""Prefect flows, one file per study kind. ``STUDIES[kind]`` gives the spec model, a function
returning the flow (so Prefect is imported only when a flow runs), the store template builder
and the store's cell dims. ``STUDIES`` is built on first use, so importing a submodule such as
``flows.server`` imports neither PyTorch nor Prefect (``dsclab run`` starts the temporary
server before those imports)."""
from __future__ import annotations


def _sample_complexity_flow():
    from flows.sample_complexity import sample_complexity
    return sample_complexity


def _immse_flow():
    from flows.immse import immse
    return immse


def _score_learning_flow():
    from flows.score_learning import score_learning
    return score_learning


def _sparse_pca_flow():
    from flows.sparse_pca import sparse_pca
    return sparse_pca


def _sampler_convergence_flow():
    from flows.sampler_convergence import sampler_convergence
    return sampler_convergence


def _computational_gap_flow():
    from flows.computational_gap import computational_gap
    return computational_gap


def _studies():
    from dsclab import computational_gap as cgap
    from dsclab import immse_study as ist
    from dsclab import sample_complexity as sc
    from dsclab import sampler_convergence as scv
    from dsclab import score_learning as sl
    from dsclab import sparse_pca_study as sps
    from dsclab.spec import StudySpec
    return {
        "sample_complexity": (StudySpec, _sample_complexity_flow, sc.template, sc.CELL_DIMS),
        "immse": (ist.ImmseSpec, _immse_flow, ist.template, ist.CELL_DIMS),
        "score_learning": (sl.ScoreLearningSpec, _score_learning_flow, sl.template, sl.CELL_DIMS),
        "sampler_convergence": (scv.SamplerConvergenceSpec, _sampler_convergence_flow, scv.template, scv.CELL_DIMS),
        "computational_gap": (cgap.ComputationalGapSpec, _computational_gap_flow, cgap.template, cgap.CELL_DIMS),
        "sparse_pca": (sps.SparsePCASpec, _sparse_pca_flow, sps.template, sps.CELL_DIMS),
    }


def __getattr__(name: str):
    if name == "STUDIES":  # built once, on first use (PEP 562)
        globals()["STUDIES"] = studies = _studies()
        return studies
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
