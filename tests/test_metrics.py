"""Metrics on cases with answers known in closed form or computed by hand, plus independent
references (scikit-image, scipy, pytorch-fid: the test extra installs them)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffsketch.errors import FileFormatError, InvalidInputError, WeightsNotFoundError
from diffsketch.eval.bsds import evaluate_boundaries, load_pair, pair_files, read_bsds_ground_truth
from diffsketch.eval.metrics.boundaries import (
    boundary_scores,
    boundary_thresholds,
    evaluate_boundary_image,
    match_boundaries,
    thin_boundaries,
)
from diffsketch.eval.metrics.fid import (
    FID_WEIGHTS_FILE,
    FIDInceptionV3,
    fid_from_features,
    frechet_distance,
    load_fid_inception,
)
from diffsketch.eval.metrics.perceptual import clip_image_similarity
from diffsketch.eval.metrics.ssim import l1_distance, ssim

C1, C2 = 0.01**2, 0.03**2


# ============================================================================ SSIM / L1
def test_ssim_identical_is_one():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 20, 24)
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("a,b", [(0.2, 0.7), (0.5, 0.5), (0.0, 1.0)])
def test_ssim_constant_images_closed_form(a, b):
    # no variance: SSIM = (2ab + C1) / (a^2 + b^2 + C1) * (C2 / C2)
    x, y = torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b)
    expected = (2 * a * b + C1) / (a * a + b * b + C1)
    assert ssim(x, y).item() == pytest.approx(expected, abs=1e-6)


def test_ssim_single_window_by_hand():
    # an 11x11 image has exactly one valid window: compute the weighted statistics directly
    rng = np.random.default_rng(1)
    x, y = rng.random((11, 11)), rng.random((11, 11))
    d = np.arange(11) - 5
    g = np.exp(-(d**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * x * x).sum() - mx**2, (w * y * y).sum() - my**2
    cxy = (w * x * y).sum() - mx * my
    expected = (2 * mx * my + C1) * (2 * cxy + C2) / ((mx**2 + my**2 + C1) * (vx + vy + C2))
    got = ssim(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None]).item()
    assert got == pytest.approx(expected, abs=1e-12)


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip(
        "skimage.metrics", reason="scikit-image not installed; SSIM cross-check skipped"
    )
    torch.manual_seed(2)
    x = torch.rand(2, 1, 30, 37, dtype=torch.float64)
    y = (x + 0.3 * torch.rand(2, 1, 30, 37, dtype=torch.float64)).clamp(0, 1)
    got = ssim(x, y)
    for i in range(2):
        ref = metrics.structural_similarity(
            x[i, 0].numpy(),
            y[i, 0].numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        assert got[i].item() == pytest.approx(ref, abs=1e-10)


def test_ssim_and_l1_reject_bad_shapes():
    with pytest.raises(InvalidInputError, match="at least 11x11"):
        ssim(torch.rand(1, 1, 8, 30), torch.rand(1, 1, 8, 30))
    with pytest.raises(InvalidInputError, match="same shape"):
        ssim(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 17))
    with pytest.raises(InvalidInputError):
        l1_distance(torch.rand(1, 16, 16), torch.rand(1, 16, 16))


def test_l1_known_value():
    x = torch.zeros(2, 1, 4, 4)
    y = torch.zeros(2, 1, 4, 4)
    y[0] = 0.5  # every pixel differs by 0.5
    y[1, :, :2] = 1.0  # half the pixels differ by 1
    assert l1_distance(x, y).tolist() == [0.5, 0.5]
    assert l1_distance(x, x).tolist() == [0.0, 0.0]


# ============================================================================ CLIP similarity
class MeanColourEncoder:
    """Stand-in CLIP model: the embedding is the mean normalised colour."""

    def encode_image(self, pixels):
        return pixels.mean(dim=(2, 3))


def test_clip_similarity_known_cosines():
    mean = np.array([0.48145466, 0.4578275, 0.40821073])
    std = np.array([0.26862954, 0.26130258, 0.27577711])
    ca, cb = np.array([0.9, 0.1, 0.2]), np.array([0.1, 0.8, 0.3])
    a = torch.tensor(ca, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, 40, 56).contiguous()
    b = torch.tensor(cb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, 40, 56).contiguous()
    fa, fb = (ca - mean) / std, (cb - mean) / std
    expected = fa @ fb / np.linalg.norm(fa) / np.linalg.norm(fb)
    got = clip_image_similarity(MeanColourEncoder(), torch.cat([a, a]), torch.cat([b, a]), size=32)
    assert got[0].item() == pytest.approx(expected, abs=1e-5)
    assert got[1].item() == pytest.approx(1.0, abs=1e-6)


def test_clip_similarity_needs_encode_image():
    with pytest.raises(InvalidInputError, match="encode_image"):
        clip_image_similarity(object(), torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


# ============================================================================ Frechet distance
def test_frechet_identical_is_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 5))
    cov = a.T @ a / 20
    assert frechet_distance(np.ones(5), cov, np.ones(5), cov) == pytest.approx(0.0, abs=1e-9)


def test_frechet_isotropic_closed_form():
    # N(m1, a^2 I) vs N(m2, b^2 I) in n dims: |m1 - m2|^2 + n (a - b)^2
    n, a, b = 7, 1.5, 0.4
    m1, m2 = np.arange(n, dtype=float), np.arange(n, dtype=float)[::-1]
    expected = float(((m1 - m2) ** 2).sum() + n * (a - b) ** 2)
    got = frechet_distance(m1, a * a * np.eye(n), m2, b * b * np.eye(n))
    assert got == pytest.approx(expected, rel=1e-12)


def test_frechet_two_by_two_non_commuting_closed_form():
    # for 2x2: tr sqrt(S1 S2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2))
    s1 = np.array([[2.0, 0.5], [0.5, 1.0]])
    s2 = np.array([[1.0, -0.7], [-0.7, 3.0]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    tr_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = 8.0 + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)


def test_frechet_matches_scipy_sqrtm_formula():
    linalg = pytest.importorskip("scipy.linalg", reason="scipy not installed; sqrtm cross-check skipped")
    rng = np.random.default_rng(3)
    f1, f2 = rng.normal(size=(60, 6)), rng.normal(size=(60, 6)) @ rng.normal(size=(6, 6)) + 0.5
    mu1, s1, mu2, s2 = f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert fid_from_features(f1, f2) == pytest.approx(expected, rel=1e-9)


def test_frechet_singular_covariances_stay_finite():
    rng = np.random.default_rng(4)
    f1, f2 = rng.normal(size=(3, 10)), rng.normal(size=(4, 10))  # fewer samples than dimensions
    d = fid_from_features(f1, f2)
    assert math.isfinite(d) and d > 0
    assert fid_from_features(f1, f1) == pytest.approx(0.0, abs=1e-8)


def test_frechet_rejects_bad_shapes():
    with pytest.raises(InvalidInputError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(InvalidInputError, match="N >= 2"):
        fid_from_features(np.zeros((1, 3)), np.zeros((5, 3)))


# ============================================================================ FID Inception
@pytest.fixture(scope="module")
def fid_model():
    torch.manual_seed(0)
    model = FIDInceptionV3(resize_to=None).eval()
    for m in model.modules():
        # scale-preserving convs (PyTorch's default init shrinks activations to slow denormals over
        # 90 layers) and non-trivial BatchNorm statistics, as trained weights have
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def test_fid_weights_missing_names_file_and_folder(tmp_path):
    with pytest.raises(WeightsNotFoundError) as err:
        load_fid_inception(tmp_path)
    msg = str(err.value)
    assert FID_WEIGHTS_FILE in msg and str(tmp_path) in msg and "pytorch-fid" in msg


def test_fid_weights_refuses_pickles(tmp_path):
    bad = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    bad.write_bytes(b"\x80\x04 not read")
    with pytest.raises(FileFormatError, match="safetensors"):
        load_fid_inception(bad)


def test_fid_weights_round_trip_and_wrong_file(tmp_path, fid_model):
    from safetensors.torch import save_file

    state = {k: v for k, v in fid_model.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"], state["fc.bias"] = (
        torch.zeros(1008, 2048),
        torch.zeros(1008),
    )  # as in pytorch-fid's file
    save_file(state, str(tmp_path / FID_WEIGHTS_FILE))
    loaded = load_fid_inception(tmp_path)
    loaded.resize_to = None
    x = torch.rand(2, 3, 75, 75)
    with torch.no_grad():
        expected = fid_model(x)
        got = loaded(x)
    assert got.shape == (2, 2048)
    assert torch.allclose(got, expected, atol=1e-5)

    wrong = tmp_path / "wrong.safetensors"
    save_file({"conv.weight": torch.zeros(3, 3)}, str(wrong))
    with pytest.raises(FileFormatError, match="FID Inception"):
        load_fid_inception(wrong)


def test_fid_blocks_pool_like_the_tf_graph(fid_model):
    from torchvision.models.inception import InceptionA, InceptionE

    # Block A: average pooling ignores padding, so only border positions differ from torchvision's.
    tv_a = InceptionA(192, pool_features=32).eval()
    tv_a.load_state_dict(fid_model.Mixed_5b.state_dict())
    x = torch.rand(1, 192, 7, 7)
    with torch.no_grad():
        ours, theirs = fid_model.Mixed_5b(x), tv_a(x)
    assert torch.allclose(ours[..., 1:-1, 1:-1], theirs[..., 1:-1, 1:-1], atol=1e-6)
    assert not torch.allclose(ours, theirs, atol=1e-4)
    # Last block: max pooling in the pool branch, so interior positions differ too.
    tv_e = InceptionE(2048).eval()
    tv_e.load_state_dict(fid_model.Mixed_7c.state_dict())
    x = torch.rand(1, 2048, 4, 4)
    with torch.no_grad():
        ours, theirs = fid_model.Mixed_7c(x), tv_e(x)
    assert not torch.allclose(ours[..., 1:-1, 1:-1], theirs[..., 1:-1, 1:-1], atol=1e-4)


def test_fid_network_equals_pytorch_fids_own_model(fid_model, monkeypatch):
    """Our assembly (stem, pools, block order, resize, scaling) against pytorch-fid's InceptionV3 with
    the same weights. pytorch-fid's model downloads its weights when built: the download function
    is replaced by one that hands over ours, so nothing is fetched."""
    inception = pytest.importorskip(
        "pytorch_fid.inception", reason="pytorch-fid not installed (the eval extra)"
    )
    state = dict(fid_model.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)

    def no_download(url, *args, **kwargs):
        assert url == inception.FID_WEIGHTS_URL
        return state

    monkeypatch.setattr(inception, "load_state_dict_from_url", no_download)
    theirs = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    x = torch.rand(2, 3, 64, 80)
    fid_model.resize_to = 299
    try:
        with torch.no_grad():
            ours, reference = fid_model(x), theirs(x)[0].flatten(1)
    finally:
        fid_model.resize_to = None
    assert ours.shape == reference.shape == (2, 2048)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def test_fid_model_resizes_input(fid_model):
    x = torch.rand(1, 3, 50, 60)
    with torch.no_grad():
        expected = fid_model(F.interpolate(x, size=(80, 80), mode="bilinear", align_corners=False))
        fid_model.resize_to = 80
        try:
            got = fid_model(x)
        finally:
            fid_model.resize_to = None
    assert torch.allclose(got, expected, atol=1e-6)


# ============================================================================ BSDS: thinning and matching
def line_map(shape, row, cols):
    m = np.zeros(shape, bool)
    m[row, cols[0] : cols[1]] = True
    return m


def test_thinning_bar_becomes_line_and_lines_stay():
    bar = np.zeros((15, 30), bool)
    bar[6:9, 3:27] = True  # 3 pixels thick
    thin = thin_boundaries(bar)
    assert thin.sum() < bar.sum() and (thin & ~bar).sum() == 0
    assert (thin[:, 6:24].sum(axis=0) == 1).all()  # one pixel per column away from the ends
    line = line_map((15, 30), 7, (3, 27))
    np.testing.assert_array_equal(thin_boundaries(line), line)


def test_thinning_keeps_each_shape_connected():
    ndimage = pytest.importorskip("scipy.ndimage", reason="scipy not installed; connectivity check skipped")
    rng = np.random.default_rng(5)
    for _ in range(4):
        blobs = F.interpolate(torch.rand(1, 1, 6, 8), size=(30, 40), mode="bilinear").numpy()[0, 0] > 0.5
        for m in (blobs, rng.random((25, 25)) > 0.45):
            thin = thin_boundaries(m)
            eight = np.ones((3, 3), bool)
            assert (thin & ~m).sum() == 0 and thin.sum() <= m.sum()
            assert ndimage.label(thin, eight)[1] == ndimage.label(m, eight)[1]


def test_match_boundaries_tolerance():
    pytest.importorskip("scipy", reason="scipy not installed; BSDS matching needs it")
    gt = line_map((20, 20), 10, (2, 18))
    mp, mg = match_boundaries(gt, gt, 1.5)
    assert mp.sum() == mg.sum() == 16
    shifted = np.roll(gt, 1, axis=0)
    mp, mg = match_boundaries(shifted, gt, 1.5)
    assert mp.sum() == 16 and mp[shifted].all()
    mp, mg = match_boundaries(np.roll(gt, 2, axis=0), gt, 1.5)
    assert mp.sum() == mg.sum() == 0
    # one-to-one: a double line next to a single GT line can only match 16 pixels
    double = gt | shifted
    mp, mg = match_boundaries(double, gt, 1.5)
    assert mp.sum() == mg.sum() == 16


def dense_matching_size(pred, gt, max_dist_px: float) -> int:
    """The largest one-to-one matching within ``max_dist_px``, from scipy's dense assignment solver:
    allowed pairs cost 0 and the others 1, so the cheapest assignment uses as many allowed pairs
    as a matching can."""
    optimize = pytest.importorskip("scipy.optimize")
    p, g = np.argwhere(pred), np.argwhere(gt)
    if not len(p) or not len(g):
        return 0
    distance = np.sqrt(((p[:, None, :] - g[None, :, :]) ** 2).sum(-1))
    allowed = distance <= max_dist_px
    rows, cols = optimize.linear_sum_assignment(np.where(allowed, 0.0, 1.0))
    return int(allowed[rows, cols].sum())


def check_matching(pred, gt, max_dist_px):
    mp, mg = match_boundaries(pred, gt, max_dist_px)
    assert mp.sum() == mg.sum() == dense_matching_size(pred, gt, max_dist_px)
    assert not (mp & ~pred).any() and not (mg & ~gt).any()
    # every matched predicted pixel has a matched ground-truth pixel within reach, and back
    for a, b in ((mp, mg), (mg, mp)):
        for y, x in np.argwhere(a):
            near = np.argwhere(b)
            assert (((near - (y, x)) ** 2).sum(-1) <= max_dist_px**2).any()


def test_matching_equals_the_dense_assignment_on_hand_made_and_random_maps():
    pytest.importorskip("scipy", reason="scipy not installed; BSDS matching needs it")
    gt = line_map((20, 20), 10, (2, 18))
    cross = gt | gt.T  # two lines crossing: pixels near the crossing compete for partners
    comb = np.zeros((20, 20), bool)
    comb[4:16, 3:17:2] = True  # vertical teeth 2 px apart: every tooth can reach its neighbours
    check_matching(cross, gt, 1.5)
    check_matching(gt, cross, 1.5)
    check_matching(comb, cross, 2.0)
    check_matching(np.zeros_like(gt), gt, 1.5)
    rng = np.random.default_rng(0)
    for density, radius in ((0.1, 1.5), (0.3, 2.0), (0.5, 3.0)):
        pred, truth = rng.random((18, 22)) < density, rng.random((18, 22)) < density / 2
        check_matching(pred, truth, radius)


def test_matching_agrees_with_scipys_hopcroft_karp_on_dense_maps():
    """On maps too large for the dense solver: the matching's size equals that of scipy's
    ``maximum_bipartite_matching`` (an independent algorithm; fast on these maps, not on all)."""
    pytest.importorskip("scipy", reason="scipy not installed; BSDS matching needs it")
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    rng = np.random.default_rng(1)
    for n, radius in ((48, 1.5), (64, 2.5)):
        field = F.interpolate(torch.rand(1, 1, n // 4, n // 4), size=(n, n), mode="bilinear").numpy()[0, 0]
        noise = rng.random((n, n))
        pred, truth = thin_boundaries(noise * field > 0.15), thin_boundaries(noise > 0.5)
        mp, mg = match_boundaries(pred, truth, radius)
        p, g = np.argwhere(pred), np.argwhere(truth)
        near = ((p[:, None, :] - g[None, :, :]) ** 2).sum(-1) <= radius**2
        reference = maximum_bipartite_matching(csr_matrix(near.astype(np.int8)), perm_type="column")
        assert mp.sum() == mg.sum() == (reference >= 0).sum() > 0.5 * truth.sum()


# ============================================================================ BSDS: scores with known answers
SHAPE = (120, 160)  # diagonal 200 -> tolerance 0.0075 * 200 = 1.5 px


def counts_for(pred, gts, **kw):
    return evaluate_boundary_image(pred, gts, **kw)


def test_thresholds_default_grid():
    t = boundary_thresholds()
    assert t.size == 99 and t[0] == pytest.approx(0.01) and t[-1] == pytest.approx(0.99)


def test_identical_prediction_scores_one():
    pytest.importorskip("scipy")
    gt = line_map(SHAPE, 30, (20, 60)) | line_map(SHAPE, 80, (10, 150))
    scores = boundary_scores([counts_for(gt.astype(float), [gt])])
    assert scores.ods_f == pytest.approx(1.0) and scores.ois_f == pytest.approx(1.0)
    assert scores.ods_p == pytest.approx(1.0) and scores.ods_r == pytest.approx(1.0)
    # the benchmark's AP is 0 when the curve has a single recall value (binary map): kept on purpose
    assert scores.ap == 0.0


@pytest.mark.parametrize("shift,expected", [(1, 1.0), (2, 0.0), (5, 0.0)])
def test_shift_within_and_beyond_tolerance(shift, expected):
    pytest.importorskip("scipy")
    gt = line_map(SHAPE, 30, (20, 60))
    pred = np.roll(gt, shift, axis=0).astype(float)
    c = counts_for(pred, [gt])
    assert (c.cnt_p / c.sum_p == expected).all() and (c.cnt_r / c.sum_r == expected).all()
    assert boundary_scores([c]).ods_f == pytest.approx(expected)


def test_known_precision_and_recall():
    pytest.importorskip("scipy")
    gt = line_map(SHAPE, 30, (20, 60))  # 40 pixels
    pred = line_map(SHAPE, 30, (20, 40)) | line_map(SHAPE, 90, (100, 110))  # 20 on GT + 10 far away
    c = counts_for(pred.astype(float), [gt])
    np.testing.assert_array_equal(c.cnt_p, 20)
    np.testing.assert_array_equal(c.sum_p, 30)
    np.testing.assert_array_equal(c.cnt_r, 20)
    np.testing.assert_array_equal(c.sum_r, 40)
    s = boundary_scores([c])
    assert s.ods_p == pytest.approx(2 / 3) and s.ods_r == pytest.approx(0.5)
    assert s.ods_f == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))


def test_recall_sums_over_annotators_and_precision_uses_any():
    pytest.importorskip("scipy")
    a = line_map(SHAPE, 30, (20, 60))  # 40 px
    b = line_map(SHAPE, 90, (20, 80))  # 60 px, another annotator's line
    s = boundary_scores([counts_for(a.astype(float), [a, b])])
    assert s.ods_r == pytest.approx(40 / 100) and s.ods_p == pytest.approx(1.0)


def test_ods_and_ois_differ_as_computed_by_hand():
    pytest.importorskip("scipy")
    # image 1: true line (20 px) at 0.305, a false line (20 px) at 0.805 -> best threshold <= 0.30
    gt1 = line_map(SHAPE, 30, (20, 40))
    p1 = 0.305 * gt1 + 0.805 * line_map(SHAPE, 90, (20, 40))
    # image 2: true line (40 px) at 0.905, a false line (40 px) at 0.505 -> best threshold in (0.505, 0.905]
    gt2 = line_map(SHAPE, 30, (20, 60))
    p2 = 0.905 * gt2 + 0.505 * line_map(SHAPE, 90, (20, 60))
    s = boundary_scores([counts_for(p1, [gt1], name="one"), counts_for(p2, [gt2], name="two")])
    # OIS: (20 + 40) matched of (20 + 40) GT; (20 + 40) correct of (40 + 40) predicted
    assert s.ois_r == pytest.approx(1.0) and s.ois_p == pytest.approx(0.75)
    assert s.ois_f == pytest.approx(6 / 7)
    # ODS: best common threshold is in (0.805, 0.905]: image 1 predicts nothing, image 2 is perfect
    assert s.ods_f == pytest.approx(0.8) and s.ods_r == pytest.approx(2 / 3) and s.ods_p == pytest.approx(1.0)
    assert 0.805 < s.ods_threshold <= 0.905
    assert [row[0] for row in s.per_image] == ["one", "two"]
    assert s.per_image[1][4] == pytest.approx(1.0)


def test_ois_takes_the_highest_of_tied_thresholds():
    pytest.importorskip("scipy")
    gt = line_map(SHAPE, 30, (20, 60))  # 40 px
    half = line_map(SHAPE, 30, (20, 40))
    pred = 0.905 * half + 0.305 * (gt & ~half) + 0.305 * line_map(SHAPE, 90, (20, 60))
    # t <= 0.30: P = 40/80, R = 1; 0.30 < t <= 0.90: P = 1, R = 20/40. Both give F = 2/3; the
    # benchmark keeps the counts of the last (highest) tied threshold.
    s = boundary_scores([counts_for(pred, [gt])])
    assert s.ois_f == pytest.approx(2 / 3)
    assert s.ois_p == pytest.approx(1.0) and s.ois_r == pytest.approx(0.5)


def test_average_precision_by_hand():
    pytest.importorskip("scipy")
    gt = line_map(SHAPE, 30, (20, 60))
    pred = 0.705 * line_map(SHAPE, 30, (20, 40)) + 0.305 * line_map(SHAPE, 30, (40, 60))
    s = boundary_scores([counts_for(pred, [gt])])
    # PR points: R=1,P=1 (t<=0.30); R=0.5,P=1; R=0,P=0 (t>=0.71). Interpolated at R=0,0.01..1:
    # P = 2R up to 0.5, then 1 -> 0.01 * (2 * (0 + 0.01 + ... + 0.5) + 50) = 0.755
    assert s.ap == pytest.approx(0.755, abs=1e-9)
    assert s.ods_f == pytest.approx(1.0)


# ============================================================================ BSDS: files
def write_bsds_mat(path, boundaries):
    sio = pytest.importorskip("scipy.io")
    cell = np.empty((1, len(boundaries)), dtype=object)
    for k, b in enumerate(boundaries):
        cell[0, k] = {"Segmentation": np.ones(b.shape, np.uint16), "Boundaries": b.astype(np.uint8)}
    sio.savemat(str(path), {"groundTruth": cell})


def write_png(path, array01):
    Image.fromarray(np.round(np.asarray(array01) * 255).astype(np.uint8)).save(path)


def test_bsds_mat_round_trip(tmp_path):
    a = line_map((12, 17), 3, (2, 9))
    b = line_map((12, 17), 8, (0, 17))
    write_bsds_mat(tmp_path / "1.mat", [a, b])
    maps = read_bsds_ground_truth(tmp_path / "1.mat")
    assert len(maps) == 2 and all(m.dtype == bool for m in maps)
    np.testing.assert_array_equal(maps[0], a)
    np.testing.assert_array_equal(maps[1], b)


def test_bsds_mat_wrong_content(tmp_path):
    sio = pytest.importorskip("scipy.io")
    sio.savemat(str(tmp_path / "x.mat"), {"something": np.zeros(3)})
    with pytest.raises(FileFormatError, match="groundTruth"):
        read_bsds_ground_truth(tmp_path / "x.mat")
    (tmp_path / "y.mat").write_bytes(b"garbage, not MATLAB")
    with pytest.raises(FileFormatError):
        read_bsds_ground_truth(tmp_path / "y.mat")


def test_pair_files_reports_every_problem(tmp_path):
    pytest.importorskip("scipy")
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    gt = line_map(SHAPE, 30, (20, 60))
    for name in ("a", "b", "c", "d", "e", "g", "h"):
        if name != "f":
            write_bsds_mat(gt_dir / f"{name}.mat", [gt])
    write_png(pred_dir / "a.png", gt)
    write_png(pred_dir / "b.png", gt)
    write_png(pred_dir / "c.png", np.zeros((60, 80)))  # half size: resized
    (pred_dir / "d.png").write_bytes(b"not a png")  # unreadable prediction
    write_png(pred_dir / "e.png", gt)
    write_png(pred_dir / "e.jpg", gt)  # two files named e: ambiguous
    write_png(pred_dir / "f.png", gt)  # no ground truth
    write_png(pred_dir / "h.png", gt)
    (gt_dir / "h.mat").write_bytes(b"garbage")  # unreadable ground truth
    (pred_dir / "notes.txt").write_text("ignored: not an image")

    pairs, report = pair_files(pred_dir, gt_dir)
    assert [p.name for p in pairs] == ["a", "b", "c"]
    assert report.missing_prediction == ["g"]
    assert report.missing_ground_truth == ["f"]
    assert len(report.ambiguous) == 1 and "'e'" in report.ambiguous[0]
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in report.unreadable) == ["d.png", "h.mat"]
    assert report.resized == [("c", (60, 80), SHAPE)]
    assert not report.clean
    text = report.summary()
    for word in ("g", "f", "d.png", "h.mat", "resized"):
        assert word in text

    pred, gts = load_pair(pairs[2])
    assert pred.shape == SHAPE and len(gts) == 1

    scores, report2 = evaluate_boundaries(pred_dir, gt_dir, thresholds=9)
    assert report2.summary() == text
    # a and b are perfect, c predicts nothing: recall 2/3 of the GT pixels, precision 1
    assert scores.ods_r == pytest.approx(2 / 3) and scores.ods_p == pytest.approx(1.0)


def test_pair_files_clean_and_dark_lines(tmp_path):
    pytest.importorskip("scipy")
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    gt = line_map(SHAPE, 50, (30, 90))
    write_bsds_mat(gt_dir / "100.mat", [gt])
    write_png(pred_dir / "100.png", 1.0 - gt)  # a sketch: dark line on white
    pairs, report = pair_files(pred_dir, gt_dir)
    assert report.clean and report.summary() == "all files paired, none resized"
    dark, _ = evaluate_boundaries(pred_dir, gt_dir, thresholds=9, lines_are_dark=True)
    assert dark.ods_f == pytest.approx(1.0)
    bright, _ = evaluate_boundaries(pred_dir, gt_dir, thresholds=9, lines_are_dark=False)
    assert bright.ods_f < 0.5  # read the wrong way round, the white background is "boundary"


def test_pair_files_missing_folder_and_nothing_to_pair(tmp_path):
    with pytest.raises(InvalidInputError, match="folder not found"):
        pair_files(tmp_path / "nope", tmp_path)
    (tmp_path / "p").mkdir()
    (tmp_path / "g").mkdir()
    with pytest.raises(InvalidInputError, match="no prediction/ground-truth pairs"):
        evaluate_boundaries(tmp_path / "p", tmp_path / "g")
