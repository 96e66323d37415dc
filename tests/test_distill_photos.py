"""Distillation on your own photos: photo pairs (counts, sources, resume, other photo sets), the
photo folder loader and the extractor header, on tiny random-weight models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import test_distill
import torch
from PIL import Image
from test_distill import SAMPLING, make_generator, read_bytes, tiny_config

from diffsketch.distill import PairSet, distill, generate_pairs, pair_settings, pair_settings_digest
from diffsketch.distill.extractor import load_extractor, save_extractor
from diffsketch.distill.pairs import MANIFEST_NAME, pair_paths
from diffsketch.distill.photos import (
    check_photos,
    is_photo_pair,
    photo_pair_count,
    photo_pair_picture,
    read_photo_folder,
)
from diffsketch.errors import Cancelled, InvalidInputError
from diffsketch.images import fit_to_size

conditions = test_distill.conditions  # the fixture


def random_photos(n=2, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(80 + 8 * k, 100 - 12 * k, 3, generator=g) for k in range(n)]


class CountingBackend(test_distill.CountingBackend):
    """The tiny backend, counting sampled batches (``calls``) and captures from pictures."""

    def __init__(self, backend):
        super().__init__(backend)
        self.captures = 0

    def capture_from_image(self, *args, **kwargs):
        self.captures += 1
        return self.backend.capture_from_image(*args, **kwargs)


def manifest(folder):
    return json.loads((folder / MANIFEST_NAME).read_text())


# ------------------------------------------------------------------------------------ which pairs


@pytest.mark.parametrize("count", [1, 2, 5, 7, 10, 33])
@pytest.mark.parametrize("share", [0.0, 0.25, 0.3, 0.5, 0.9, 1.0])
def test_photo_pairs_are_the_rounded_share_of_any_count(count, share):
    photo = [i for i in range(count) if is_photo_pair(i, share)]
    assert len(photo) == photo_pair_count(count, share) == int(count * share + 0.5)
    # more pairs later keep the earlier ones' kinds: the kind of pair i depends on i and the share only
    assert photo == [i for i in range(count + 10) if is_photo_pair(i, share)][: len(photo)]


def test_a_photo_is_fitted_to_the_pair_size_and_later_variants_are_distinct_crops():
    photo = check_photos([torch.rand(90, 120, 3)])
    whole, record = photo_pair_picture(photo, 0, 1.0, 0, 64, 64)
    assert whole.shape == (1, 3, 64, 64) and record["variant"] == 0 and record["crop"] == [0, 15, 90, 90]
    assert torch.allclose(whole, fit_to_size(photo[0].image[None, :, :, 15:105], 64, 64))
    variants = [photo_pair_picture(photo, i, 1.0, 0, 64, 64) for i in range(1, 5)]
    assert {v[1]["variant"] for v in variants} == {1, 2, 3, 4}
    for picture, rec in variants:
        top, left, h, w = rec["crop"]
        assert h == w and 0.6 * 90 * 90 <= h * w <= 90 * 90 and picture.shape == (1, 3, 64, 64)
        assert not torch.equal(picture, whole)
    # deterministic in (seed, index), other for another seed
    assert torch.equal(photo_pair_picture(photo, 3, 1.0, 0, 64, 64)[0], variants[2][0])
    assert photo_pair_picture(photo, 3, 1.0, 1, 64, 64)[1]["crop"] != variants[2][1]["crop"] or (
        photo_pair_picture(photo, 3, 1.0, 1, 64, 64)[1]["flip"] != variants[2][1]["flip"]
    )


# ------------------------------------------------------------------------------------ pair folders


def test_photo_pairs_are_recorded_resumed_and_the_generated_ones_unchanged(
    tiny_backend, conditions, tmp_path
):
    generator = make_generator(tiny_backend.spec)
    photos = random_photos()
    notices = []
    one_go = tmp_path / "one_go"
    pairs = generate_pairs(
        tiny_backend, generator, conditions, one_go, 5, SAMPLING, photos=photos, notice=notices.append
    )
    # share 0.5 of 5 pairs: 3 photo pairs, interleaved (0, 2, 4), the third a variant of photo 0
    saved = manifest(one_go)
    assert sorted(saved["photo_pairs"]) == ["0", "2", "4"] and pairs.sources()["photos"] == 3
    assert [r["photo"] for r in saved["photo_pairs"].values()] == ["photos[0]", "photos[1]", "photos[0]"]
    assert [r["variant"] for r in saved["photo_pairs"].values()] == [0, 0, 1]
    listed = check_photos(photos)
    assert saved["photo_set"] == [{"name": p.name, "sha256": p.sha256} for p in listed]
    assert saved["photo_pairs"]["2"]["photo_sha256"] == listed[1].sha256
    assert all(isinstance(r["replay_psnr"], float) for r in saved["photo_pairs"].values())
    assert saved["settings"]["photo_share"] == 0.5 and saved["settings"]["photo_count"] == 2
    # the report counts the pairs and photos that replayed badly (random photos on a random model: all)
    assert notices == [pairs_report := notices[0]] and "3 of 5 pairs come from 2 photo(s)" in pairs_report
    assert "2 photo(s) replayed below 20 dB PSNR in 3 pair(s)" in pairs_report
    # a photo pair's image is the fitted photo itself
    image, sketch = pairs[2]
    expected, _ = photo_pair_picture(listed, 2, 0.5, SAMPLING.seed, 64, 64)
    assert (image - expected[0]).abs().max() <= 0.5 / 255 + 1e-6 and sketch.shape == (1, 64, 64)
    # the generated pairs are the pairs a folder without photos has at those indices
    plain = tmp_path / "plain"
    generate_pairs(tiny_backend, generator, conditions, plain, 4, SAMPLING)
    assert read_bytes(one_go, 1) == read_bytes(plain, 1) and read_bytes(one_go, 3) == read_bytes(plain, 3)
    assert "photo_pairs" not in manifest(plain) and "photo_set" not in manifest(plain)

    # Cancelled after two pairs, then continued: the same bytes, the manifest included
    counting = CountingBackend(tiny_backend)
    split = tmp_path / "split"
    after_two = dict(should_stop=lambda: counting.calls + counting.captures >= 2)
    with pytest.raises(Cancelled, match="2 of 5 pairs"):
        generate_pairs(counting, generator, conditions, split, 5, SAMPLING, photos=photos, **after_two)
    assert len(PairSet(split)) == 2 and sorted(manifest(split)["photo_pairs"]) == ["0"]
    generate_pairs(counting, generator, conditions, split, 5, SAMPLING, photos=photos)
    assert (counting.calls, counting.captures) == (2, 3)  # nothing made twice
    for i in range(5):
        assert read_bytes(split, i) == read_bytes(one_go, i)
    assert (split / MANIFEST_NAME).read_bytes() == (one_go / MANIFEST_NAME).read_bytes()
    # a photo pair whose source record is lost is made again
    data = manifest(split)
    del data["photo_pairs"]["4"]
    (split / MANIFEST_NAME).write_text(json.dumps(data))
    generate_pairs(counting, generator, conditions, split, 5, SAMPLING, photos=photos)
    assert (
        counting.captures == 4
        and (split / MANIFEST_NAME).read_bytes() == (one_go / MANIFEST_NAME).read_bytes()
    )


def test_share_zero_is_a_folder_without_photos_and_share_one_all_photos(tiny_backend, conditions, tmp_path):
    generator = make_generator(tiny_backend.spec)
    photos = random_photos()
    plain = pair_settings(tiny_backend, generator, conditions, SAMPLING)
    assert pair_settings(tiny_backend, generator, conditions, SAMPLING, photos, 0.0) == plain
    notices = []
    counting = CountingBackend(tiny_backend)
    pairs = generate_pairs(
        counting, generator, conditions, tmp_path / "zero", 2, SAMPLING, photos=photos, photo_share=0.0,
        notice=notices.append,
    )  # fmt: skip
    assert counting.captures == 0 and pairs.sources() == {"generated": 2, "photos": 0}
    assert "photo_share is 0" in notices[0] and "photo_pairs" not in manifest(tmp_path / "zero")
    assert manifest(tmp_path / "zero")["settings"] == plain

    counting = CountingBackend(tiny_backend)
    pairs = generate_pairs(
        counting, generator, conditions, tmp_path / "one", 3, SAMPLING, photos=photos, photo_share=1.0
    )
    assert counting.calls == 0 and counting.captures == 3
    assert pairs.sources() == {
        "generated": 0,
        "photos": 3,
        "photo_set": manifest(tmp_path / "one")["settings"]["photo_set"],
        "photo_share": 1.0,
    }
    with pytest.raises(InvalidInputError, match="photo_share"):
        generate_pairs(tiny_backend, generator, conditions, tmp_path / "x", 1, SAMPLING, photo_share=0.5)
    with pytest.raises(InvalidInputError, match=r"photo_share must be a number in 0\.\.1"):
        generate_pairs(
            tiny_backend, generator, conditions, tmp_path / "x", 1, SAMPLING, photos=photos, photo_share=2
        )


def test_other_photos_or_share_are_another_folder_and_never_mix(tiny_backend, conditions, tmp_path):
    generator = make_generator(tiny_backend.spec)
    photos = random_photos()

    def digest(given, share=None):
        return pair_settings_digest(
            pair_settings(tiny_backend, generator, conditions, SAMPLING, given, share)
        )

    base = digest(photos)
    assert base != digest(None) and base != digest(photos, 0.75)
    assert base != digest(list(reversed(photos))) and base != digest([photos[0]])
    changed = [photos[0], photos[1].flip(0)]
    assert base != digest(changed)
    # names do not decide the pairs: the same pixels under other names are the same folder
    assert base == digest([("a.png", photos[0]), ("b.png", photos[1])])

    folder = tmp_path / "pairs"
    generate_pairs(tiny_backend, generator, conditions, folder, 1, SAMPLING, photos=photos)
    with pytest.raises(InvalidInputError, match="photo_set: folder has"):
        generate_pairs(tiny_backend, generator, conditions, folder, 2, SAMPLING, photos=changed)
    with pytest.raises(InvalidInputError, match="photo_share: folder has 0.5, asked 0.25"):
        generate_pairs(
            tiny_backend, generator, conditions, folder, 2, SAMPLING, photos=photos, photo_share=0.25
        )
    with pytest.raises(InvalidInputError, match="photo_set: folder has"):
        generate_pairs(tiny_backend, generator, conditions, folder, 2, SAMPLING)
    assert len(PairSet(folder)) == 1


def test_bad_photos_are_refused_naming_the_photo():
    with pytest.raises(InvalidInputError, match=r"photo photos\[1\] is a batch of 2 images"):
        check_photos([torch.rand(8, 8, 3), torch.rand(2, 8, 8, 3)])
    nan = torch.rand(8, 8, 3)
    nan[0, 0, 0] = float("nan")
    with pytest.raises(InvalidInputError, match=r"photo cat\.png: NaN"):
        check_photos([("cat.png", nan)])
    with pytest.raises(InvalidInputError, match=r"photo photos\[0\]: expected 1 \(grey\)"):
        check_photos([torch.rand(1, 8, 8, 7)])
    with pytest.raises(InvalidInputError, match="photos is empty"):
        check_photos([])
    # a ComfyUI IMAGE batch is one photo per image; grey and RGBA become RGB
    assert [p.name for p in check_photos(torch.rand(3, 8, 8, 3))] == ["photos[0]", "photos[1]", "photos[2]"]
    assert check_photos([torch.rand(8, 8, 1), torch.rand(8, 8, 4)])[1].image.shape == (3, 8, 8)


def write_png(path, size=(40, 30), value=100):
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def test_a_photo_folder_reports_every_file_it_leaves_out(tmp_path):
    write_png(tmp_path / "b.png")
    write_png(tmp_path / "a.jpg", value=50)
    write_png(tmp_path / "c.png")
    write_png(tmp_path / "c.JPG")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".hidden.png").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    write_png(tmp_path / "sub" / "d.png")
    photos, skipped = read_photo_folder(tmp_path)
    assert [p.name for p in photos] == ["a.jpg", "b.png"]
    assert photos[0].image.shape == (3, 30, 40)
    text = "\n".join(skipped)
    assert "broken.png: cannot be read as an image" in text
    assert "c.JPG: skipped, another photo has the same name (c.png)" in text
    assert "c.png: skipped, another photo has the same name (c.JPG)" in text
    assert "notes.txt: not an image file" in text and len(skipped) == 4

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match=f"no readable photo in {empty}"):
        read_photo_folder(empty)
    only_broken = tmp_path / "only_broken"
    only_broken.mkdir()
    (only_broken / "x.png").write_bytes(b"garbage")
    with pytest.raises(
        InvalidInputError, match=r"no readable photo in .*only_broken.*x\.png: cannot be read"
    ):
        read_photo_folder(only_broken)
    with pytest.raises(InvalidInputError, match="photos folder not found"):
        read_photo_folder(tmp_path / "missing")


# ------------------------------------------------------------------------------------ the extractor


def test_the_extractor_header_says_what_it_was_trained_on(tiny_backend, conditions, tmp_path):
    generator = make_generator(tiny_backend.spec)
    notices = []
    config = tiny_config(iterations=1)
    student = distill(
        tiny_backend, generator, conditions, tmp_path / "pairs", 3, config, SAMPLING,
        photos=random_photos(1), photo_share=1 / 3, notice=notices.append,
    )  # fmt: skip
    fingerprint = manifest(tmp_path / "pairs")["settings"]["photo_set"]
    expected = {"generated": 2, "photos": 1, "photo_set": fingerprint, "photo_share": 1 / 3}
    path = save_extractor(tmp_path / "x.safetensors", student, student.meta)
    assert load_extractor(path).meta["pair_sources"] == expected
    assert any("1 of 3 pairs come from 1 photo(s)" in n for n in notices)
    plain = distill(tiny_backend, generator, conditions, tmp_path / "plain", 1, config, SAMPLING)
    assert plain.meta["pair_sources"] == {"generated": 1, "photos": 0}
    # an extractor saved before pair_sources existed still loads
    old = dict(plain.meta)
    del old["pair_sources"]
    assert "pair_sources" not in load_extractor(save_extractor(tmp_path / "old.safetensors", plain, old)).meta
    assert pair_paths(tmp_path / "pairs", 0)[0].is_file()
