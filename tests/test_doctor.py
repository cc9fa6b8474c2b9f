"""``dsclab doctor`` (issue 31): one screen of the machine's facts, exit 0 without a GPU, and no
credential of a URL printed."""
from __future__ import annotations

import torch

from dsclab import cli


def test_doctor_prints_the_facts_and_exits_0(capsys, monkeypatch):
    monkeypatch.delenv("DSCLAB_DEVICE", raising=False)
    monkeypatch.setenv("PREFECT_API_URL", "http://alice:s3cret-pw@127.0.0.1:4200/api")
    monkeypatch.setenv("DSCLAB_RESULTS_ROOT", "s3://bucket/results")
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"torch         {torch.__version__}" in out
    gpu = torch.cuda.is_available()
    assert ("CUDA          available" if gpu else "CUDA          not available") in out
    if gpu:
        assert torch.cuda.get_device_name(0) in out and "MiB free of" in out
    assert f"train, evaluate: {'cuda' if gpu else 'cpu'} (DSCLAB_DEVICE unset, auto:" in out
    assert "cpu pool sets DSCLAB_DEVICE=cpu -> cpu" in out
    assert "Prefect API   http://127.0.0.1:4200/api" in out and "s3cret-pw" not in out and "alice" not in out
    assert "results root  DSCLAB_RESULTS_ROOT=s3://bucket/results" in out
    for part in ("chromium", "PostgreSQL", "s3fs"):
        assert f"  {part}" in out
    monkeypatch.setenv("DSCLAB_DEVICE", "cpu")
    assert cli.main(["doctor"]) == 0
    assert "train, evaluate: cpu (DSCLAB_DEVICE=cpu)" in capsys.readouterr().out
