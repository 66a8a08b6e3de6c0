"""benchmarks/core_band_energy.py: breadcrumbs' band energy on dense deltas and on cores."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from taskvec.weights.core_space import CoreSpace
from taskvec.weights.lowrank import LowRankDelta
from taskvec.weights.merge.breadcrumbs import breadcrumb_mask
from taskvec.weights.vector import TaskVector

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def cbe(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    sys.modules.pop("core_band_energy", None)
    return importlib.import_module("core_band_energy")


def test_removed_hand_computed(cbe) -> None:
    # 10 entries 1..10; gamma 0.1 drops the largest (10), density 0.7 keeps 9..3, drops 2 and 1
    x = torch.arange(1.0, 11.0)
    tot, hi, lo = cbe.removed(x, density=0.7, gamma=0.1)
    assert tot == sum(i * i for i in range(1, 11))
    assert hi == 100.0
    assert lo == 1.0 + 4.0


def test_measure_matches_masks_and_energy_is_basis_free(cbe) -> None:
    g = torch.Generator().manual_seed(0)
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight"]
    shapes = [(12, 10), (16, 12)]
    vecs = {
        t: TaskVector({n: LowRankDelta(torch.randn(r, s[1], generator=g), torch.randn(s[0], r, generator=g), 0.5)
                       for n, s in zip(names, shapes)})
        for t, r in (("a", 2), ("b", 3))
    }
    density, gamma = 0.6, 0.05
    r = cbe.measure(vecs, density, gamma)
    assert r["tensors"] == 2 and r["core_entries"] == {"q_proj": [25], "up_proj": [25]}
    for t in vecs:
        for space in ("dense", "core"):
            tot = top = bottom = 0.0
            for n in names:
                d = vecs[t][n]
                x = d.to_dense(torch.float64) if space == "dense" else \
                    CoreSpace.of([vecs[u][n] for u in vecs]).cores[list(vecs).index(t)]
                kept = breadcrumb_mask(x, density, gamma)
                e = x.double().square()
                tot += float(e.sum())
                k = float(e[kept].sum())
                hi = float(e[~kept & (x.abs() >= x.abs()[kept].max())].sum())
                top += hi
                bottom += float(e.sum()) - k - hi
            f = r["per_task"][t][space]
            assert f["top"] == pytest.approx(top / tot, rel=1e-9)
            assert f["bottom"] == pytest.approx(bottom / tot, rel=1e-9, abs=1e-12)
            assert f["kept_cosine"] == pytest.approx(((tot - top - bottom) / tot) ** 0.5, rel=1e-9)
        # the core carries exactly the dense delta's energy (U, V orthonormal)
        d_tot = sum(float(vecs[t][n].to_dense(torch.float64).square().sum()) for n in names)
        c_tot = sum(float(CoreSpace.of([vecs[u][n] for u in vecs]).cores[list(vecs).index(t)].square().sum())
                    for n in names)
        assert c_tot == pytest.approx(d_tot, rel=1e-9)


def test_core_band_block_is_the_committed_measurement(cbe) -> None:
    doc = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- core-band-energy:start -->\n(.*?)\n<!-- core-band-energy:end -->", doc, re.S)
    assert m, "no core-band-energy block in docs/results.md"
    res = json.loads((REPO / "benchmarks" / "results" / "collection-v2-own" / "core_band_energy.json").read_text())
    assert m.group(1).strip() == cbe.markdown(res).strip()
