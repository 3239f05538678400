"""The census: padding forms and blind spots against hand-computed geometry, a planted PAN
found through a Dask cluster, failures as rows, and the per-model cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import dask
import pandas as pd
import pytest
import torch
from timm.layers import Conv2dSame
from torch import nn

from pan_utils.cli import main
from pan_utils.engine.models import ModelError
from pan_utils.engine.padding import discover
from pan_utils.study.census import (ARCHITECTURE, CURATED_ARCHITECTURES, PRETRAINED, CensusJob,
                                    build_architecture, census_claims, census_names,
                                    census_table, census_task, model_family, padding_profile,
                                    padding_summary, run_census)
from pan_utils.study.cluster import census_client, jobqueue_cluster
from pan_utils.study.settings import settings

S = settings("smoke", image_size=64, census_images=16)


def _profile(*layers: nn.Module, size: int = 8) -> dict:
    return padding_profile(discover(nn.Sequential(*layers).eval(), size))


# --------------------------------------------------------------------------- geometry


def test_stride2_conv_on_even_input_is_blind_to_bottom_and_right():
    # 3x3, stride 2, pad 1 on 8 px: windows start at -1, 1, 3, 5; the last ends on row 7,
    # so the bottom/right pad is never read. On 9 px the last window (start 7) reads it.
    even = _profile(nn.Conv2d(3, 4, 3, stride=2, padding=1), size=8)
    assert (even["blind_convs"], even["blind_sides"], even["padding_kind"]) == (1, "BR", "zeros")
    odd = _profile(nn.Conv2d(3, 4, 3, stride=2, padding=1), size=9)
    assert (odd["blind_convs"], odd["blind_sides"]) == (0, "")
    assert even["strided_padded_convs"] == 1 and even["candidate_channels"] == 4


def test_tf_same_puts_the_odd_pad_where_it_is_read():
    p = _profile(Conv2dSame(3, 4, 3, stride=2), nn.Conv2d(4, 4, 3, padding=1), size=8)
    assert p["padding_kind"] == "tf_same"  # its stride-1 partner pads symmetrically
    assert (p["convs_tf_same"], p["convs_zeros"]) == (1, 1)
    assert (p["blind_convs"], p["asymmetric_convs"]) == (0, 1)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_are_their_own_kind(mode):
    p = _profile(nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode))
    assert p["padding_kind"] == mode and p[f"convs_{mode}"] == 1


def test_unpadded_and_patch_embedding_models():
    assert _profile(nn.Conv2d(3, 4, 3))["padding_kind"] == "none"
    patch = _profile(nn.Conv2d(3, 4, 4, stride=4))  # a ViT's patch embedding
    assert patch["padding_kind"] == "none" and not patch["cnn"]
    assert _profile(nn.Conv2d(3, 4, 3))["cnn"]


def test_architectures_build_on_the_meta_device_with_their_default_size():
    model, size = build_architecture("tv:efficientnet_b7")
    assert next(model.parameters()).is_meta and size == (600, 600)
    tf = padding_profile(discover(*build_architecture("tf_efficientnet_b0"), batch=1))
    tv = padding_profile(discover(*build_architecture("tv:efficientnet_b0"), batch=1))
    assert tf["padding_kind"] == "tf_same" and tf["blind_convs"] == 0
    assert tv["padding_kind"] == "zeros" and tv["blind_sides"] == "BR"
    assert tf["candidate_channels"] == tv["candidate_channels"]  # same architecture


def test_discovery_feeds_the_input_channels_the_model_declares():
    # space-to-depth in front of the first conv: 3 channels in, 48 at the conv
    model, size = build_architecture("tresnet_m")
    p = padding_profile(discover(model, size, batch=1))
    assert p["padded_convs"] > 0 and p["candidate_channels"] > 0


def test_names_keywords_patterns_and_families():
    assert census_names(["tf_efficientnet_b[0-1]"]) == ["tf_efficientnet_b0",
                                                        "tf_efficientnet_b1"]
    assert census_names("tv:resnet1*") == ["tv:resnet101", "tv:resnet152", "tv:resnet18"]
    assert census_names(["offline", "mobilenet_v2"])[0] == "mobilenet_v2"
    assert len(census_names("offline")) == len(set(census_names("offline")))
    with pytest.raises(ModelError, match="no model name matches"):
        census_names(["zzz*"])
    with pytest.raises(ModelError, match="unknown model"):
        census_names(["resnet_18"])
    families = {model_family(n) for n in CURATED_ARCHITECTURES}
    assert len(families) >= 40 and model_family("timm:resnet18") == ("timm", "resnet")


# --------------------------------------------------------------------------- one model


class Offset(nn.Module):
    """Shifts normalised probes to positive values, so that a conv summing a window drops
    by a consistent amount where the window reads zero padding."""

    def forward(self, x):
        return x + 4.0


def planted(mode: str = "zeros") -> nn.Sequential:
    """Channel 0 reads only the row above each position: all pad on the top row (a planted
    T detector, silenced there); the other channels copy the centre pixel."""
    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, :, 0, :] = 1.0
        for c in range(1, 4):
            conv.weight[c, c - 1, 1, 1] = 1.0
    return nn.Sequential(Offset(), conv).eval()


def broken() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Linear(5, 5)).eval()


def test_a_model_that_fails_is_a_row_with_its_stage_and_error():
    row = census_task(CensusJob("broken", "pretrained", broken(), (16, 16)), S)
    assert (row["status"], row["stage"]) == ("error", "discover")
    assert row["error"].startswith("RuntimeError: ") and "\n" not in row["error"]
    row = census_task(CensusJob("no_such_model", "none"), S)
    assert (row["status"], row["stage"]) == ("error", "load")
    assert "unknown model" in row["error"]


# --------------------------------------------------------------------------- Dask


@pytest.fixture(scope="module")
def client():
    with census_client(workers=2) as c:
        yield c


def test_local_cluster_census_of_three_tiny_models_one_failing(client):
    jobs = [CensusJob("planted_zeros", "pretrained", planted("zeros"), (32, 32)),
            CensusJob("planted_circular", "pretrained", planted("circular"), (32, 32)),
            CensusJob("broken", "pretrained", broken(), (32, 32))]
    table = run_census(jobs, S, client=client, progress=False)
    assert list(table["model"]) == ["planted_zeros", "planted_circular", "broken"]
    z, c, b = (table.iloc[i] for i in range(3))
    assert (z["status"], z["padding_kind"], z["weights"]) == ("ok", "zeros", PRETRAINED)
    assert z["pans"] >= 1 and z["pans_T"] >= 1 and z["pans_B"] == 0 and z["n_images"] == 16
    assert (c["status"], c["padding_kind"], c["pans"]) == ("ok", "circular", 0)
    assert (b["status"], b["stage"]) == ("error", "discover") and "RuntimeError" in b["error"]
    assert table.attrs["timings"]["run"] == 3 and table.attrs["timings"]["workers"] == 2


def test_cache_makes_a_rerun_skip_finished_models(client, tmp_path):
    jobs = [CensusJob(n, "none") for n in ("mtcnn_pnet", "tv:squeezenet1_0", "no_such_model")]
    first = run_census(jobs, S, client=client, cache_dir=tmp_path, progress=False)
    assert list(first["status"]) == ["ok", "ok", "error"]
    assert first.loc[1, "weights"] == ARCHITECTURE and first.loc[1, "built_on"] == "meta"
    assert len(list(tmp_path.glob("*.json"))) == 3
    again = run_census(jobs, S, client=None, cache_dir=tmp_path, progress=False)
    assert again.attrs["timings"] == {"models": 3, "cached": 3, "run": 0}  # no cluster
    pd.testing.assert_frame_equal(first, again)
    retried = run_census(jobs, S, client=client, cache_dir=tmp_path, retry_failed=True,
                         progress=False)
    assert retried.attrs["timings"]["run"] == 1  # only the failed one
    # another rule is another cache entry
    other = run_census(jobs[:1], S.replace(tau=4.0), client=client, cache_dir=tmp_path,
                       progress=False)
    assert other.attrs["timings"]["run"] == 1


def test_a_model_that_kills_its_worker_is_an_error_row(client):
    class Exit(nn.Module):
        def forward(self, x):
            import os

            os._exit(1)

    jobs = [CensusJob("killer", "none", nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Exit()),
                      (16, 16))]
    row = run_census(jobs, S, client=client, progress=False).iloc[0]
    assert (row["status"], row["stage"]) == ("error", "worker")
    assert "died" in row["error"]


# --------------------------------------------------------------------------- summaries


def test_padding_summary_counts_cnns_that_ran():
    rows = [dict(model=f"m{i}", source="timm", family=f"f{i % 3}", weights=ARCHITECTURE,
                 status="ok", cnn=True, padding_kind=k, blind_convs=b, padded_convs=3,
                 strided_padded_convs=2)
            for i, (k, b) in enumerate([("zeros", 2), ("zeros", 0), ("zeros", 1),
                                        ("tf_same", 0), ("none", 0)])]
    rows += [dict(model="vit", source="timm", family="vit", status="ok", cnn=False,
                  padding_kind="none", blind_convs=0),
             dict(model="bad", source="timm", family="x", status="error")]
    table = census_table(rows)
    s = padding_summary(table).set_index("padding_kind")
    assert s.loc["zeros", "architectures"] == 3 and s.loc["zeros", "with_blind_spots"] == 2
    assert s.loc["all", "architectures"] == 5 and s.loc["all", "fraction"] == 1.0
    assert s.loc["zeros", "fraction"] == pytest.approx(0.6)
    assert s.loc["all", "blind_fraction"] == pytest.approx(0.4)
    claims = census_claims(table)
    assert (claims["models"], claims["errors"], claims["architectures"]) == (7, 1, 5)
    assert claims["families"] == 3


def test_jobqueue_cluster_writes_a_job_script_with_gpu_resources():
    cluster = jobqueue_cluster("slurm", cores=2, memory="8GB", processes=1, queue="gpu",
                               worker_extra_args=["--resources", "GPU=1"])
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p gpu" in script and "--resources GPU=1" in script
    assert "--nthreads 2" in script or "--nworkers 1" in script


# --------------------------------------------------------------------------- CLI


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["census", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, message", [
    ((), "nothing to census"),
    (("resnet_18",), "unknown model 'resnet_18'"),
    (("zzz*",), "no model name matches 'zzz*'"),
])
def test_cli_bad_input_is_one_line(capsys, tmp_path, argv, message):
    code, out, err = _cli(capsys, *argv, "--out", str(tmp_path / "c"))
    assert code == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "c").exists()


def test_cli_unreachable_scheduler_is_one_line(capsys, tmp_path):
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        code, out, err = _cli(capsys, "mtcnn_pnet", "--weights", "none", "--scheduler",
                              "tcp://127.0.0.1:9", "--out", str(tmp_path / "c"))
    assert code == 2 and err.count("\n") == 1
    assert "cannot run the census on tcp://127.0.0.1:9" in err
    assert not (tmp_path / "c" / "census.csv").exists()


def test_cli_writes_one_row_per_model_and_resumes(capsys, tmp_path):
    out_dir = tmp_path / "census out"
    argv = ("mtcnn_*", "--weights", "none", "--architectures", "tv:squeezenet1_0,tresnet_m",
            "--workers", "1", "--quiet", "--out", str(out_dir))
    code, out, err = _cli(capsys, *argv)
    assert code == 0, err
    table = pd.read_csv(out_dir / "census.csv")
    assert list(table["model"]) == ["mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet",
                                    "tv:squeezenet1_0", "tresnet_m"]
    assert list(table["status"]) == ["ok"] * 5
    assert "5 model(s): 5 ok, 0 failed" in out and "models/min" in out
    code, out, err = _cli(capsys, *argv)
    assert code == 0 and "5 from the cache, 0 to run" in out
    assert pd.read_csv(out_dir / "census.csv").equals(table)


def test_cli_ctrl_c_stops_in_one_line_and_keeps_finished_models(tmp_path):
    out_dir = tmp_path / "c"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pan_utils", "census", "--architectures", "curated", "--quiet",
         "--workers", "2", "--out", str(out_dir)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    cache = out_dir / ".census-cache"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(cache.glob("*.json"))) < 3:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["interrupted; finished models are cached: run it "
                                        "again to resume"]
    assert len(list(cache.glob("*.json"))) >= 3 and not (out_dir / "census.csv").exists()
