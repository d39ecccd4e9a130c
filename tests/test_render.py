"""Numbers in the docs are rendered from committed JSON, and drift is caught."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cifarlab import render

REPO = Path(__file__).resolve().parents[1]


def test_committed_docs_match_their_json() -> None:
    stale = render.render(REPO, check=True)
    assert stale == [], f"stale: {[str(p.relative_to(REPO)) for p in stale]}; run cifarlab render"


def _mini_repo(tmp_path: Path) -> Path:
    (tmp_path / "reports" / "bench").mkdir(parents=True)
    shutil.copy(REPO / "reports" / "bench" / "data_prepare.json", tmp_path / "reports" / "bench")
    shutil.copy(REPO / "reports" / "eda.json", tmp_path / "reports")
    (tmp_path / "README.md").write_text(
        "Cache check: <!-- bench:data-prepare:start -->old<!-- bench:data-prepare:end -->.\n\n"
        "<!-- bench:eda-stats:start -->\nold\n<!-- bench:eda-stats:end -->\n"
    )
    return tmp_path


def test_a_changed_json_number_makes_the_doc_stale(tmp_path: Path) -> None:
    root = _mini_repo(tmp_path)
    assert render.render(root) == [root / "README.md"]
    text = (root / "README.md").read_text()
    warm = json.loads((root / "reports/bench/data_prepare.json").read_text())
    assert f"the warm check {warm['prepare_warm_verify']['median_s']:g} s" in text
    assert text.splitlines()[0].endswith("<!-- bench:data-prepare:end -->.")  # inline stays inline
    assert "mean 125.31 / 122.95 / 113.87" in text  # the published CIFAR-10 means, 0-255 scale
    assert render.render(root, check=True) == []

    warm["prepare_warm_verify"]["median_s"] = 9.876
    (root / "reports/bench/data_prepare.json").write_text(json.dumps(warm))
    assert render.render(root, check=True) == [root / "README.md"]
    assert "9.876" not in (root / "README.md").read_text()  # check writes nothing
    render.render(root)
    assert "the warm check 9.876 s" in (root / "README.md").read_text()


def test_unknown_fragment_and_missing_json_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("<!-- bench:nope:start --><!-- bench:nope:end -->\n")
    with pytest.raises(render.RenderError, match=r"no fragment named 'nope'; known: .*serving"):
        render.render(tmp_path)
    (tmp_path / "README.md").write_text(
        "<!-- bench:data-prepare:start --><!-- bench:data-prepare:end -->\n"
    )
    with pytest.raises(render.RenderError, match=r"data_prepare\.json is missing"):
        render.render(tmp_path)


def test_spread_counts_rounds_against_the_target() -> None:
    ratios = [0.814, 0.740, 0.770, 0.789, 0.889]
    got = render.spread(ratios, 0.80, lambda v: f"{v:.0%}", above=True)
    assert got == "met in 2 of 5 rounds (median 79%, range 74%-89%)"
    assert render.spread([3.2, 4.3], 4.0, str, above=False).startswith("met in 1 of 2 rounds")
