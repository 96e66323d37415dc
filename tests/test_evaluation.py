"""diffsketch eval: per-image metrics, skipped files and metrics, BSDS500 scores, CLI wiring."""

from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from diffsketch.distill.extract import extract
from diffsketch.distill.extractor import SketchExtractor, save_extractor
from diffsketch.errors import InvalidInputError, WeightsNotFoundError
from diffsketch.eval.cli import add_eval_parser
from diffsketch.eval.metrics.ssim import l1_distance, ssim
from diffsketch.eval.run import evaluate
from diffsketch.styles.xdog import xdog


def synthetic_photo(h, w, seed):
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 0.85) + rng.normal(0, 0.02, (h, w, 3))
    y0, x0 = rng.integers(4, h // 3), rng.integers(4, w // 3)
    img[y0 : y0 + h // 2, x0 : x0 + w // 2] = rng.uniform(0.1, 0.5, 3)  # a dark block with edges
    yy, xx = np.mgrid[:h, :w]
    img[(yy - h * 0.7) ** 2 + (xx - w * 0.6) ** 2 < (h / 6) ** 2] = rng.uniform(0.2, 0.6, 3)
    return np.clip(img, 0, 1)


def write_rgb(path, array01):
    Image.fromarray(np.round(np.asarray(array01) * 255).astype(np.uint8)).save(path)


@pytest.fixture
def photos_dir(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    write_rgb(d / "a.png", synthetic_photo(64, 64, 0))
    write_rgb(d / "b.png", synthetic_photo(64, 64, 1))
    write_rgb(d / "c.jpg", synthetic_photo(64, 80, 2))  # another size
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (d / "readme.txt").write_text("not an image")
    return d


@pytest.fixture
def extractor_file(tmp_path):
    torch.manual_seed(0)
    return save_extractor(tmp_path / "extractor.safetensors", SketchExtractor())


@pytest.fixture
def no_default_weights(tmp_path, monkeypatch):
    """An empty torch hub cache, so LPIPS finds no AlexNet file whatever this machine has cached."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_photo(path):
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def test_evaluate_writes_results_and_lists_problems(photos_dir, extractor_file, tmp_path, no_default_weights):
    out = tmp_path / "out"
    seen = []
    report = evaluate(
        photos_dir,
        out,
        style="xdog",
        extractor_path=extractor_file,
        progress=lambda stage, done, total: seen.append((stage, done, total)),
    )
    for name in ("results.md", "results.csv", "grid.png"):
        assert (out / name).is_file()
    assert seen[-1] == ("images", 3, 4)  # 4 image files, one unreadable
    # the unreadable file is skipped and listed, the text file is listed as ignored
    assert [p.endswith("broken.png") for p, _ in report.skipped_files] == [True]
    md = (out / "results.md").read_text()
    assert "broken.png" in md and "readme.txt" in md
    assert report.has_problems
    # metrics without weights: skipped, each with the file it needs
    assert set(report.skipped_metrics) == {"lpips", "fid", "clip"}
    assert "alexnet-owt-7be5be79" in report.skipped_metrics["lpips"]
    assert "pt_inception-2015-12-05-6726825d" in report.skipped_metrics["fid"]
    assert "clip_vit_b_32.safetensors" in report.skipped_metrics["clip"]
    for needle in ("alexnet-owt-7be5be79", "pt_inception-2015-12-05-6726825d", "clip_vit_b_32"):
        assert needle in md
    # two photo sizes: said
    assert "2 sizes" in md
    rows = read_csv(out / "results.csv")
    assert [r["file"] for r in rows] == ["a.png", "b.png", "c.jpg"]
    assert set(rows[0]) == {"image", "file", "height", "width", "ssim", "l1"}
    assert (rows[2]["height"], rows[2]["width"]) == ("64", "80")
    # the CSV holds what the metrics give on the GT and the extractor's sketch, recomputed here
    from diffsketch.distill.extractor import load_extractor

    model = load_extractor(extractor_file)
    photo = load_photo(photos_dir / "b.png")
    gt = xdog(photo)
    pred = extract(model, photo.permute(0, 2, 3, 1))[0][..., 0][:, None]
    assert float(rows[1]["ssim"]) == pytest.approx(float(ssim(pred, gt)[0]), abs=1e-6)
    assert float(rows[1]["l1"]) == pytest.approx(float(l1_distance(pred, gt)[0]), abs=1e-6)
    mean_ssim = np.mean([float(r["ssim"]) for r in rows])
    assert report.summary["ssim"][0] == pytest.approx(mean_ssim, abs=1e-6)
    assert f"{mean_ssim:.4f}" in md
    grid = Image.open(out / "grid.png")
    assert grid.width > 3 * 200 and grid.height > 3 * 200  # 3 columns, 3 rows of 256 px cells


def test_identity_extractor_scores_perfectly(photos_dir, tmp_path, no_default_weights):
    report = evaluate(photos_dir, tmp_path / "out", style="xdog", extractor_path=lambda x: xdog(x))
    assert report.n_images == 3
    for row in report.rows:
        assert row["ssim"] == pytest.approx(1.0, abs=1e-9)
        assert row["l1"] == 0.0
    # and a wrong extractor is not scored as perfect
    blank = evaluate(
        photos_dir,
        tmp_path / "out2",
        metrics=("ssim", "l1"),
        extractor_path=lambda x: torch.ones_like(x[:, :1]),
    )
    assert all(r["l1"] > 0.01 for r in blank.rows)
    assert blank.summary["ssim"][0] < 0.999


def tiny_metric_weights(tmp_path):
    """Random-weight stand-ins for the three weight files, written like the real ones."""
    from diffsketch.train.losses import TINY_CLIP_ARCHITECTURE, ClipImageEncoder

    torch.manual_seed(0)
    # torchvision AlexNet's convolution layers (the classifier, which LPIPS ignores, is left out)
    convs = {0: (3, 64, 11), 3: (64, 192, 5), 6: (192, 384, 3), 8: (384, 256, 3), 10: (256, 256, 3)}
    alex = {}
    for i, (c_in, c_out, k) in convs.items():
        alex[f"features.{i}.weight"] = torch.randn(c_out, c_in, k, k) * (2.0 / (c_in * k * k)) ** 0.5
        alex[f"features.{i}.bias"] = torch.zeros(c_out)
    save_file(alex, str(tmp_path / "alexnet-owt-7be5be79.safetensors"))
    tower = ClipImageEncoder.random(TINY_CLIP_ARCHITECTURE).tower
    save_file(
        {k: v.contiguous() for k, v in tower.state_dict().items()},
        str(tmp_path / "clip_vit_b_32.safetensors"),
    )
    fid_net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    return tmp_path / "alexnet-owt-7be5be79.safetensors", tmp_path / "clip_vit_b_32.safetensors", fid_net


def test_weighted_metrics_with_given_weights(photos_dir, tmp_path):
    lpips_file, clip_file, fid_net = tiny_metric_weights(tmp_path)
    kwargs = dict(lpips_weights=lpips_file, clip_weights=clip_file.parent, fid_weights=fid_net)
    same = evaluate(photos_dir, tmp_path / "same", extractor_path=lambda x: xdog(x), **kwargs)
    assert same.skipped_metrics == {} and set(same.metrics) == {"lpips", "ssim", "l1", "fid", "clip"}
    for row in same.rows:
        assert row["lpips"] == pytest.approx(0.0, abs=1e-6)
        assert row["clip"] == pytest.approx(1.0, abs=1e-5)
    assert same.fid == pytest.approx(0.0, abs=1e-6) and same.fid_images == 3
    other = evaluate(
        photos_dir, tmp_path / "other", extractor_path=lambda x: 1 - 0.5 * xdog(x).flip(-1), **kwargs
    )
    assert all(r["lpips"] > 1e-4 for r in other.rows)
    assert other.fid > 1e-6
    rows = read_csv(tmp_path / "other" / "results.csv")
    assert {"lpips", "clip"} <= set(rows[0])
    md = (tmp_path / "other" / "results.md").read_text()
    assert "| FID |" in md and "| LPIPS |" in md and "| CLIP similarity |" in md


def test_missing_weights_are_errors_when_asked_for(photos_dir, tmp_path, extractor_file, no_default_weights):
    with pytest.raises(WeightsNotFoundError, match="alexnet-owt-7be5be79"):
        evaluate(photos_dir, tmp_path / "o", extractor_path=extractor_file, metrics=("ssim", "lpips"))
    with pytest.raises(WeightsNotFoundError, match="clip_vit_b_32"):
        evaluate(photos_dir, tmp_path / "o", extractor_path=extractor_file, metrics="clip")
    with pytest.raises(WeightsNotFoundError, match="pt_inception-2015-12-05-6726825d"):
        evaluate(photos_dir, tmp_path / "o", extractor_path=extractor_file, metrics=["fid"])
    # weights given but absent: asked for, so an error even with the default metric list
    with pytest.raises(WeightsNotFoundError, match="pt_inception-2015-12-05-6726825d"):
        evaluate(photos_dir, tmp_path / "o", extractor_path=extractor_file, fid_weights=tmp_path / "nope")
    assert not (tmp_path / "o").exists()  # failed before writing anything
    with pytest.raises(InvalidInputError, match="unknown metric"):
        evaluate(photos_dir, tmp_path / "o", extractor_path=extractor_file, metrics="psnr")
    with pytest.raises(InvalidInputError, match="no extractor"):
        evaluate(photos_dir, tmp_path / "o", metrics="ssim")
    with pytest.raises(InvalidInputError, match="photos folder not found"):
        evaluate(tmp_path / "absent", tmp_path / "o", extractor_path=extractor_file)


def test_prediction_size_mismatch_and_resizing_are_reported(photos_dir, tmp_path):
    half = lambda x: xdog(x)[..., ::2, ::2]  # noqa: E731
    report = evaluate(photos_dir, tmp_path / "o", metrics="ssim,l1", extractor_path=half, size=48)
    md = (tmp_path / "o" / "results.md").read_text()
    assert "3 prediction(s) did not match" in md
    assert "shorter side 48" in md and "c.jpg 64x80 -> 48x60" in md
    assert [(r["height"], r["width"]) for r in report.rows] == [(48, 48), (48, 48), (48, 60)]


# ------------------------------------------------------------------------------------------ BSDS500
def write_bsds_mat(path, boundaries):
    sio = pytest.importorskip("scipy.io")
    cell = np.empty((1, len(boundaries)), dtype=object)
    for k, b in enumerate(boundaries):
        cell[0, k] = {"Segmentation": np.ones(b.shape, np.uint16), "Boundaries": b.astype(np.uint8)}
    sio.savemat(str(path), {"groundTruth": cell})


def test_bsds_boundary_benchmark_known_answer(tmp_path):
    pytest.importorskip("scipy")
    shape = (120, 160)  # diagonal 200 -> matching tolerance 1.5 px
    photos, gts = tmp_path / "images", tmp_path / "groundTruth"
    photos.mkdir()
    gts.mkdir()
    for k, name in enumerate(("100007", "100039")):
        a = np.zeros(shape, bool)
        b = np.zeros(shape, bool)
        a[30 + k, 20:60] = True
        b[30 + k, 60:100] = True
        # photo: dark lines on white, line A darker than line B; the extractor reads the grey level
        grey = 1.0 - (0.705 * a + 0.305 * b)
        write_rgb(photos / f"{name}.png", np.repeat(grey[..., None], 3, axis=2))
        write_bsds_mat(gts / f"{name}.mat", [a | b])
    write_bsds_mat(gts / "zz_unpaired.mat", [a])
    report = evaluate(
        photos,
        tmp_path / "out",
        metrics="ssim",
        extractor_path=lambda x: x.mean(1, keepdim=True),
        bsds_gt_dir=gts,
    )
    s = report.boundary
    # every annotated pixel is predicted, at two strengths: P=R=1 below 0.30; R=0.5 up to 0.70.
    # AP as the benchmark computes it: 0.01 * (2 * (0 + 0.01 + ... + 0.5) + 50) = 0.755
    assert s.ods_f == pytest.approx(1.0) and s.ois_f == pytest.approx(1.0)
    assert s.ap == pytest.approx(0.755, abs=1e-9)
    assert len(s.per_image) == 2
    assert report.pairing.missing_prediction == ["zz_unpaired"]
    assert report.has_problems
    md = (tmp_path / "out" / "results.md").read_text()
    assert "ODS F" in md and "| 1.0000 |" in md and "0.7550" in md and "zz_unpaired" in md
    assert sorted(p.name for p in (tmp_path / "out" / "boundaries").iterdir()) == ["100007.png", "100039.png"]


def test_bsds_folder_errors(photos_dir, tmp_path, extractor_file):
    pytest.importorskip("scipy")
    with pytest.raises(InvalidInputError, match="ground-truth folder not found"):
        evaluate(photos_dir, tmp_path / "o", extractor_path=extractor_file, bsds_gt_dir=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="no .mat files"):
        evaluate(photos_dir, tmp_path / "o", extractor_path=extractor_file, bsds_gt_dir=tmp_path / "empty")


# ------------------------------------------------------------------------------------------ CLI
def parser():
    ap = argparse.ArgumentParser(prog="diffsketch")
    add_eval_parser(ap.add_subparsers(dest="command", required=True))
    return ap


def test_eval_command(photos_dir, extractor_file, tmp_path, no_default_weights, capsys):
    out = tmp_path / "cli_out"
    args = parser().parse_args(
        ["eval", str(photos_dir), "--extractor", str(extractor_file), "--out", str(out), "--device", "cpu"]
    )
    assert args.func(args) == 1  # finished, but broken.png was skipped
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "SSIM" in captured.out
    assert (out / "results.md").is_file() and (out / "grid.png").is_file()
    assert len(read_csv(out / "results.csv")) == 3

    (photos_dir / "broken.png").unlink()
    args = parser().parse_args(
        ["eval", str(photos_dir), "--extractor", str(extractor_file), "--out", str(out), "--max-images", "2"]
        + ["--metrics", "ssim,l1", "--device", "cpu"]
    )
    assert args.func(args) == 0
    assert len(read_csv(out / "results.csv")) == 2

    args = parser().parse_args(
        ["eval", str(photos_dir), "--extractor", str(extractor_file), "--out", str(out), "--metrics", "lpips"]
        + ["--device", "cpu"]
    )
    assert args.func(args) == 2
    assert "alexnet-owt-7be5be79" in capsys.readouterr().err

    args = parser().parse_args(
        ["eval", str(photos_dir), "--extractor", str(extractor_file), "--out", str(out), "--style", "hed"]
        + ["--device", "cpu"]
    )
    assert args.func(args) == 2
    assert "hed_bsds500.safetensors" in capsys.readouterr().err
