"""Results you can trust, round two: suspect probe sets, aliases in the census, corrupt cache
entries, weights that cannot be had and chapters without a PAN each end in one clear line
or a counted warning, never in a believable wrong number."""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from pan_utils.cli import main
from pan_utils.engine import models as M
from pan_utils.engine import zoo
from pan_utils.engine.models import ModelError, load_model, load_weights_file
from pan_utils.engine.probes import (ImageFiles, ImageFolderProbe, ProbeError, ProbeWarning,
                                     check_probe_set, thumbnail)
from pan_utils.study import census as C
from pan_utils.study.results import read_table, write_table
from pan_utils.study.settings import settings

S = settings("smoke", image_size=64, census_images=16)


def _noise(rng, h=80, w=80) -> Image.Image:
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def _folder(root: Path, kind: str, n: int = 16) -> Path:
    """A probe folder: 'copies' of one image, 'distinct' images, 'nan' float TIFFs, 'flat'
    images of one colour each, or 'mixed' (half copies, half distinct)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    one = _noise(rng)
    for i in range(n):
        if kind == "copies" or (kind == "mixed" and i % 2):
            one.save(root / f"{i:02d}.png")
        elif kind in ("distinct", "mixed"):
            _noise(rng).save(root / f"{i:02d}.png")
        elif kind == "nan":
            Image.fromarray(np.full((80, 80), np.nan, np.float32), mode="F").save(
                root / f"{i:02d}.tif")
        elif kind == "flat":
            Image.fromarray(np.full((80, 80, 3), 10 * i, np.uint8)).save(root / f"{i:02d}.png")
    return root


def _read_all(probe: ImageFolderProbe) -> tuple[int, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        n = sum(x.shape[0] for x, _ in probe.batches(8))
    return n, [str(w.message) for w in caught if issubclass(w.category, ProbeWarning)]


# ------------------------------------------------------------------- probe sets

@pytest.mark.parametrize("kind, outcome", [
    ("distinct", None),
    ("copies", "15 images of 16 in .* are near-duplicates of another .* only 1 distinct"),
    ("mixed", "7 images of 16 .* near-duplicates .* only 9 distinct"),
    ("nan", ProbeError("all 16 images in .* are constant")),
    ("flat", ProbeError("all 16 images in .* are constant")),
])
def test_probe_set_cases(tmp_path, kind, outcome):
    probe = ImageFolderProbe(_folder(tmp_path / kind, kind), 64)
    if isinstance(outcome, ProbeError):
        with pytest.raises(ProbeError, match=str(outcome)):
            _read_all(probe)
        return
    n, warned = _read_all(probe)
    assert n == 16
    if outcome is None:
        assert warned == []
    else:
        assert len(warned) == 1 and re.search(outcome, warned[0]), warned


def test_some_constant_images_are_counted():
    xs = [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    xs += [torch.full((3, 32, 32), 0.5), torch.zeros(3, 32, 32)]
    with pytest.warns(ProbeWarning, match="2 of 8 images in x are constant"):
        issues = check_probe_set(torch.stack([thumbnail(x) for x in xs]), "x")
    assert (issues["constant"], issues["duplicates"], issues["distinct"]) == (2, 0, 8)


def test_scan_cli_counts_near_duplicates_and_refuses_constant_images(tmp_path, capsys):
    copies = _folder(tmp_path / "copies", "copies")
    code = main(["scan", "mobilenet_v2", "--images", str(copies), "--image-size", "64",
                 "--quiet", "--out", str(tmp_path / "o1")])
    err = capsys.readouterr().err
    assert code == 0
    assert "warning: 15 images of 16" in err and "only 1 distinct" in err
    code = main(["scan", "mobilenet_v2", "--images", str(_folder(tmp_path / "nan", "nan", 10)),
                 "--image-size", "64", "--quiet", "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "all 10 images" in err
    assert "Traceback" not in err and not (tmp_path / "o2" / "pans.csv").exists()


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_is_applied(tmp_path, suffix):
    # 40 wide, 20 high, left half dark; orientation 6: shown rotated 90 degrees clockwise
    a = np.full((20, 40, 3), 220, np.uint8)
    a[:, :20] = 20
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / f"phone{suffix}", exif=exif)
    with Image.open(tmp_path / f"phone{suffix}") as raw:
        assert raw.size == (40, 20) and raw.getexif().get(0x0112) == 6
    upright = np.asarray(ImageFiles(tmp_path).load(0))
    assert upright.shape[:2] == (40, 20)  # now 40 high, 20 wide
    assert upright[:20].mean() < 60 and upright[20:].mean() > 180  # dark half on top


# ------------------------------------------------------------------- census names

def _sources(names):
    return [zoo.resolve_source(n)[0] for n in names]


@pytest.mark.parametrize("spec, expected", [
    ("resnet18,timm:resnet18,timm/resnet18,tv:resnet18", ["resnet18", "timm:resnet18"]),
    ("tv:resnet18,torchvision:resnet18,resnet18", ["tv:resnet18"]),
    ("timm/dla34,dla34,timm:dla34", ["timm/dla34"]),
])
def test_aliases_are_one_net(spec, expected):
    notes: list[str] = []
    assert C.census_names(spec.split(","), notes=notes) == expected
    assert len({zoo.model_key(n) for n in expected}) == len(expected)
    dropped = len(spec.split(",")) - len(expected)
    assert notes and notes[0].startswith(f"{dropped} name(s) dropped")


def test_the_four_resnet18_spellings_are_two_nets():
    names = C.census_names("resnet18,timm:resnet18,timm/resnet18,tv:resnet18".split(","),
                           architecture=True)
    assert _sources(names) == ["torchvision", "timm"]


def test_tags_of_one_architecture_count_once():
    assert C.census_names(["resnet18.a1_in1k", "resnet18.tv_in1k"], architecture=True) == [
        "resnet18.a1_in1k"]
    assert len(C.census_names(["resnet18.a1_in1k", "resnet18.tv_in1k"])) == 2  # two weights
    assert zoo.model_key("timm:resnet18") == zoo.model_key("resnet18.a1_in1k")  # default tag


def test_a_plain_pattern_searches_timm_only():
    names = C.census_names("resnet*")
    assert set(_sources(names)) == {"timm"}
    assert "timm:resnet18" in names and "resnet18" not in names and "tv:resnet18" not in names
    tv = C.census_names("tv:resnet*")
    assert set(_sources(tv)) == {"torchvision"} and "tv:resnet18" in tv


def test_all_is_the_union_of_both_zoos_with_the_overlap_stated():
    notes: list[str] = []
    names = C.census_names("all", notes=notes)
    keys = [zoo.model_key(n, architecture=True) for n in names]
    assert len(keys) == len(set(keys))
    assert len(names) == len(zoo.timm_names()) + len(zoo.torchvision_names())
    shared = zoo.zoo_overlap()
    assert "resnet18" in shared and "convnext_tiny" in shared
    for n in shared:  # each shared name once from each zoo, none as a bare name
        assert f"timm:{n}" in names and f"tv:{n}" in names and n not in names
    assert notes[0].startswith("all: ") and f"the {len(shared)} names both define" in notes[0]


def test_architecture_rows_count_each_architecture_once():
    rows = [dict(model=m, source=s, family="resnet", status="ok", cnn=True, weights=w,
                 padding_kind="zeros", blind_convs=1)
            for m, s, w in (("resnet18.a1_in1k", "timm", C.PRETRAINED),
                            ("resnet18.tv_in1k", "timm", C.PRETRAINED),
                            ("timm:resnet18", "timm", C.ARCHITECTURE),
                            ("tv:resnet18", "torchvision", C.ARCHITECTURE))]
    arch = C.architecture_rows(C.census_table(rows))
    assert list(arch["model"]) == ["resnet18.a1_in1k", "tv:resnet18"]


def test_cli_census_of_four_spellings_is_two_architectures(tmp_path, capsys):
    code = main(["census", "--architectures", "resnet18,timm:resnet18,timm/resnet18,tv:resnet18",
                 "--workers", "1", "--quiet", "--out", str(tmp_path / "c")])
    out, err = capsys.readouterr()
    assert code == 0, err
    table = pd.read_csv(tmp_path / "c" / "census.csv")
    assert list(table["model"]) == ["resnet18", "timm:resnet18"]
    assert list(table["source"]) == ["torchvision", "timm"]
    assert "2 CNN architectures of 2 families" in out
    assert "note: 2 name(s) dropped" in err


# ------------------------------------------------------------------- census cache

GOOD = {"model": "tv:squeezenet1_0", "status": "ok", "stage": "", "error": "",
        "source": "torchvision", "family": "squeezenet", "weights": C.ARCHITECTURE,
        "convs": 26, "cnn": True, "padded_convs": 8, "padding_kind": "zeros",
        "blind_convs": 0, "blind_sides": "", "candidate_channels": 1024}


@pytest.mark.parametrize("content, problem", [
    ([], "not a row but list"),
    ({}, "no model, status, stage, error field"),
    ("hello", "not a row but str"),
    ({**GOOD, "model": "mtcnn_pnet"}, "the row of 'mtcnn_pnet'"),
    ({**GOOD, "status": "maybe"}, "unknown status"),
    ({k: v for k, v in GOOD.items() if k != "padding_kind"}, "no padding_kind field"),
    ({**GOOD, "weights": C.PRETRAINED}, "weights 'pretrained' where the job asks for 'none'"),
    (GOOD, ""),
    ({"model": "tv:squeezenet1_0", "status": "error", "stage": "load", "error": "x"}, ""),
])
def test_cached_row_problems(content, problem):
    found = C.cached_row_problem(content, C.CensusJob("tv:squeezenet1_0", "none"))
    assert (found.startswith(problem) if problem else found == "")


def test_a_pretrained_row_needs_its_pan_count():
    job = C.CensusJob("mobilenet_v2", "pretrained")
    row = {**GOOD, "model": "mobilenet_v2", "weights": C.PRETRAINED}
    assert C.cached_row_problem(row, job) == "no PAN count"
    assert C.cached_row_problem({**row, "pans": 3}, job) == ""


@pytest.fixture(scope="module")
def client():
    from pan_utils.study.cluster import census_client

    with census_client(workers=1) as c:
        yield c


def test_bad_cache_entries_are_run_again_with_a_warning(client, tmp_path, capsys):
    jobs = [C.CensusJob(n, "none") for n in ("mtcnn_pnet", "tv:squeezenet1_0", "mtcnn_rnet")]
    first = C.run_census(jobs, S, client=client, cache_dir=tmp_path, progress=False)
    files = {j.name: next(tmp_path.glob(f"{j.name.replace(':', '_')}-*.json")) for j in jobs}
    files["mtcnn_pnet"].write_text("[]")
    files["tv:squeezenet1_0"].write_text(files["mtcnn_rnet"].read_text())  # another's row
    files["mtcnn_rnet"].write_text('"hello"')
    capsys.readouterr()
    again = C.run_census(jobs, S, client=client, cache_dir=tmp_path, progress=False)
    err = capsys.readouterr().err
    assert "warning: 3 census cache entries are not a row of their model and will run " \
           "again" in err and "the row of 'mtcnn_rnet'" in err
    assert again.attrs["timings"]["run"] == 3 and again.attrs["timings"]["invalid_cache"] == 3
    pd.testing.assert_frame_equal(first, again)  # the census is what a clean run gives
    third = C.run_census(jobs, S, client=None, cache_dir=tmp_path, progress=False)
    assert third.attrs["timings"] == {"models": 3, "cached": 3, "run": 0}  # repaired


# ------------------------------------------------------------------- weights

def test_a_code_running_pickle_is_refused_in_one_short_line(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3))
    torch.save(net, tmp_path / "whole.pt")  # the whole module: unpickling runs code
    with pytest.raises(ModelError) as err:
        load_weights_file(nn.Sequential(nn.Conv2d(3, 4, 3)), tmp_path / "whole.pt")
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 300
    assert "torch.save(model.state_dict(), 'whole.pt')" in msg
    assert "weights_only=False" not in msg
    torch.save(net.state_dict(), tmp_path / "state.pt")  # what the message asks for loads
    load_weights_file(nn.Sequential(nn.Conv2d(3, 4, 3)), tmp_path / "state.pt")


@pytest.mark.parametrize("name", ["dla34", "resnet18.a1_in1k", "tv:resnet18"])
def test_weights_that_cannot_be_had_fail_at_once(monkeypatch, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    M.host_reachable.cache_clear()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: "/nonexistent-hub")
    start = time.perf_counter()
    with pytest.raises(ModelError, match="cannot be reached") as err:
        load_model(name)
    assert time.perf_counter() - start < 5
    assert name in str(err.value) and "--weights FILE" in str(err.value)
    assert "--random-init" in str(err.value)
    M.host_reachable.cache_clear()


def test_scan_cli_names_the_way_out_without_network(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    M.host_reachable.cache_clear()
    start = time.perf_counter()
    assert main(["scan", "dla34", "--quiet", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - start < 10 and err.count("\n") == 1
    assert err.startswith("error: no pre-trained weights for dla34") and "--random-init" in err
    M.host_reachable.cache_clear()


def test_an_unreachable_host_is_detected_quickly():
    M.host_reachable.cache_clear()
    start = time.perf_counter()
    assert M.host_reachable("host.invalid", timeout=0.5) is False
    assert time.perf_counter() - start < 2
    M.host_reachable.cache_clear()


# ------------------------------------------------------------------- empty tables

def test_an_empty_table_round_trips_with_its_columns(tmp_path):
    empty = pd.DataFrame({"model": pd.Series(dtype=str), "pans": pd.Series(dtype=int)})
    write_table(empty, tmp_path, "e")
    back = read_table(tmp_path, "e")
    assert list(back.columns) == ["model", "pans"] and len(back) == 0
    write_table(pd.DataFrame(), tmp_path, "nothing")  # no columns at all
    assert read_table(tmp_path, "nothing").empty


# ------------------------------------------------------------------- chapters without a PAN

def _stream_text(nb_path: Path) -> str:
    import nbformat

    nb = nbformat.read(str(nb_path), as_version=4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")


@pytest.mark.parametrize("params, said", [
    ({"models": ["mtcnn_pnet"]}, "the claims are not tested"),
    ({"tau": 50}, "(disagrees: no PAN found at tau=50)"),
])
def test_chapter_1_runs_to_the_end_without_a_pan(tmp_path, params, said):
    """And, at tau = 50, chapters 2 and 3 after it (each says it found no PAN)."""
    from pan_utils.study.reproduce import REPO_ROOT, run_notebook

    out = tmp_path / "res"
    run = lambda nb: run_notebook(REPO_ROOT / "notebooks" / nb, out, "smoke",  # noqa: E731
                                  extra_params=params, progress=False,
                                  failed_dir=tmp_path / "failed")
    run("01_identification.ipynb")
    text = _stream_text(out / "notebooks" / "01_identification.ipynb")
    assert said in text
    counts = read_table(out, "pan_counts")
    assert (counts.loc[counts["weights"] == "pretrained", "pans"] == 0).all()
    assert read_table(out, "pans").empty
    assert (out / "figures" / "pan_example_maps.png").is_file()
    if "tau" not in params:
        return
    run("02_taxonomy.ipynb")
    assert "mobilenet_v2: no pre-trained PANs in chapter 1, nothing to classify" in _stream_text(
        out / "notebooks" / "02_taxonomy.ipynb")
    assert read_table(out, "kernel_mass").empty
    run("03_ablation.ipynb")
    assert "mobilenet_v2: 0 PANs." in _stream_text(out / "notebooks" / "03_ablation.ipynb")


def test_tables_of_an_unpadded_model_have_the_columns_of_a_scanned_one():
    from pan_utils.engine.scan import find_pans
    from pan_utils.study import identification as I

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)).eval()
    pans, scores = find_pans(net, torch.randn(8, 3, 16, 16), tau=1000, progress=False,
                             return_scores=True)
    assert pans.empty and tuple(pans.columns) == I.PAN_COLUMNS
    assert tuple(I.per_layer(scores, pans).columns) == I.LAYER_COLUMNS
    assert tuple(I.channel_scores(scores, pans).columns) == I.CHANNEL_COLUMNS
    tables = I.unpadded_tables("mtcnn_pnet", settings("smoke"), 48)
    lead = ["model", "weights", "init_seed"]
    assert list(tables["pans"].columns) == lead + list(I.PAN_COLUMNS)
    assert list(tables["pan_layers"].columns) == lead + list(I.LAYER_COLUMNS)
    assert list(tables["channel_scores"].columns) == lead + ["condition", *I.CHANNEL_COLUMNS]
    counts = tables["pan_counts"]
    assert set(I.UNCERTAINTY_COLUMNS) <= set(counts.columns)
    assert counts["pans_ci_low"].isna().all()


def _pretrained_counts(pans: dict[str, int]) -> pd.DataFrame:
    rows = []
    for m, n in pans.items():
        cand = 0 if n is None else 100
        for w in ("pretrained", "random-init", "random-init (uncalibrated)"):
            rows.append({"model": m, "weights": w, "candidate_layers": 2 if cand else 0,
                         "candidate_channels": cand, "pans": n or 0, "pans_sd": 0.0,
                         "seeds": 1, "pan_fraction": (n or 0) / cand if cand else float("nan"),
                         "circular_null_pans": 0, "pans_ci_low": 0.0, "pans_ci_high": 0.0,
                         "jaccard": float("nan")})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("pans, line", [
    ({"a": 0}, "1. Existence: 0 of 1 pre-trained models have PANs at tau=50, q=0.95 with the "
               "circular null (disagrees: no PAN found at tau=50)."),
    ({"a": 0, "b": 4}, "(partly agrees)."),
    ({"a": 3, "b": 4}, "(agrees)."),
    ({"u": None}, "1. Existence: no pre-trained model here has a padded convolution, so no PAN "
                  "can be found and the claims are not tested."),
])
def test_existence_verdict_when_no_pan_is_found(pans, line):
    from pan_utils.study import identification as I

    empty = pd.DataFrame({"model": [], "weights": [], "type": []})
    lines = I.identification_findings(_pretrained_counts(pans), empty, tau=50, consistency=0.95)
    existence = [ln for ln in lines if ln.startswith("1. Existence")]
    assert len(existence) == 1 and existence[0].endswith(line)


def test_chapter_2_tables_of_no_pan_keep_the_columns_of_the_results():
    from pan_utils.study import taxonomy as T
    from pan_utils.study.reproduce import REPO_ROOT

    for name, cols in T.PER_MODEL_COLUMNS.items():
        committed = REPO_ROOT / "results" / "tables" / f"{name}.csv"
        assert tuple(pd.read_csv(committed, nrows=0).columns) == cols, name
