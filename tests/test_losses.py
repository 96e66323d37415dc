"""DiffSketch losses with random-weight LPIPS and CLIP (nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from diffsketch.errors import InvalidInputError, WeightsNotFoundError
from diffsketch.train.losses import (
    ALEXNET_FILENAME,
    CLIP_FILENAMES,
    IMAGENET_MEAN,
    TINY_CLIP_ARCHITECTURE,
    ClipImageEncoder,
    DiffSketchLoss,
    LossWeights,
    build_clip_image_tower,
    build_lpips,
    directional_losses,
    load_clip_image_encoder,
    perceptual_preprocess,
)

SIZE = 64


@pytest.fixture(scope="module")
def lpips_model():
    torch.manual_seed(0)
    return build_lpips(random_weights=True)


@pytest.fixture(scope="module")
def clip_encoder():
    torch.manual_seed(0)
    return ClipImageEncoder.random(TINY_CLIP_ARCHITECTURE)


def _pair(seed):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, SIZE, SIZE, generator=g)
    sketch = (torch.rand(1, 1, SIZE, SIZE, generator=g) > 0.2).float()
    return image, sketch


def _loss(clip_encoder, lpips_model, **weights):
    loss = DiffSketchLoss(clip_encoder, lpips_model, LossWeights(**weights))
    loss.set_example(*_pair(1))
    return loss


def test_preprocess_matches_the_released_pipeline():
    g = torch.Generator().manual_seed(0)
    gray = torch.rand(2, 1, 96, 80, generator=g, requires_grad=True)
    out = perceptual_preprocess(gray)
    assert out.shape == (2, 3, 224, 224)
    torch.testing.assert_close(out, perceptual_preprocess(gray.detach().repeat(1, 3, 1, 1)))
    out.sum().backward()
    assert gray.grad.abs().sum() > 0
    mean_image = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand(1, 3, 224, 224)
    assert perceptual_preprocess(mean_image).abs().max() < 1e-6


def test_perfect_prediction_zeroes_the_reconstruction_terms(clip_encoder, lpips_model):
    loss = _loss(clip_encoder, lpips_model)
    sketch = loss._example["sketch"]
    sample_image, sample_sketch = _pair(2)
    perfect, terms = loss(sketch.clone(), sample_sketch, sample_image)
    assert torch.isfinite(perfect)
    assert terms["l1"] == 0.0 and terms["lpips"] < 1e-6 and terms["clip_sim"] < 1e-5
    wrong = torch.rand_like(sketch)
    worse, worse_terms = loss(wrong, sample_sketch, sample_image)
    for name in ("l1", "lpips", "clip_sim"):
        assert worse_terms[name] > terms[name] + 1e-4, name
    assert float(worse) > float(perfect)
    # Logged terms add up to the total, weighted by LossWeights.
    w = LossWeights()
    assert worse_terms["l1_weighted"] == pytest.approx(w.l1 * worse_terms["l1"], rel=1e-5)
    weighted = sum(v for k, v in worse_terms.items() if k.endswith("_weighted"))
    assert weighted == pytest.approx(worse_terms["total"], rel=1e-5)
    assert set(worse_terms) >= {"lpips", "l1", "clip_sim", "across", "within", "total"}


def test_gradient_reaches_both_predictions_and_not_the_frozen_nets(clip_encoder, lpips_model):
    loss = _loss(clip_encoder, lpips_model)
    loss.train()
    assert not loss.clip.training and not loss.lpips.training
    sample_image, _ = _pair(3)
    pred_example = torch.rand(1, 1, SIZE, SIZE, requires_grad=True)
    pred_sample = torch.rand(1, 1, SIZE, SIZE, requires_grad=True)
    total, _ = loss(pred_example, pred_sample, sample_image)
    total.backward()
    assert pred_example.grad.abs().sum() > 0 and pred_sample.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())


def test_directional_losses():
    ex_image, ex_sketch = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    # Same image->sketch direction as the example, shifted along a direction shared by both domains.
    shift = torch.tensor([[0.0, 0.0, 2.0]])
    across, within = directional_losses(ex_sketch + shift, ex_image + shift, ex_sketch, ex_image)
    assert across.item() == pytest.approx(0.0, abs=1e-6) and within.item() == pytest.approx(0.0, abs=1e-6)
    # Opposite direction: 1 - cos = 2.
    across, _ = directional_losses(ex_image + shift, ex_sketch + shift, ex_sketch, ex_image)
    assert across.item() == pytest.approx(2.0, abs=1e-6)


def test_zero_weights_skip_terms_and_lpips_model():
    loss = DiffSketchLoss(
        ClipImageEncoder.random(TINY_CLIP_ARCHITECTURE), None, LossWeights(lpips=0, across=0, within=0)
    )
    loss.set_example(*_pair(4))
    total, terms = loss(torch.rand(1, 1, SIZE, SIZE))
    assert set(terms) == {"l1", "l1_weighted", "clip_sim", "clip_sim_weighted", "total"}
    with pytest.raises(InvalidInputError, match="LPIPS"):
        DiffSketchLoss(ClipImageEncoder.random(TINY_CLIP_ARCHITECTURE), None)
    assert LossWeights.from_dict(LossWeights(l1=2).to_dict()) == LossWeights(l1=2)


def test_loss_input_checks(clip_encoder, lpips_model):
    loss = DiffSketchLoss(clip_encoder, lpips_model)
    with pytest.raises(InvalidInputError, match="set_example"):
        loss(torch.rand(1, 1, SIZE, SIZE))
    loss.set_example(*_pair(5))
    with pytest.raises(InvalidInputError, match="same size"):
        loss(torch.rand(1, 1, SIZE // 2, SIZE // 2))
    with pytest.raises(InvalidInputError, match="directional"):
        loss(torch.rand(1, 1, SIZE, SIZE))


def test_missing_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFoundError) as err:
        build_lpips()
    msg = str(err.value)
    assert (
        ALEXNET_FILENAME in msg
        and str(tmp_path / "hub" / "checkpoints") in msg
        and "download.pytorch.org" in msg
    )
    with pytest.raises(WeightsNotFoundError, match="nope.pth"):
        build_lpips(tmp_path / "nope.pth")
    with pytest.raises(WeightsNotFoundError) as err:
        load_clip_image_encoder(search_dirs=[tmp_path / "clip"])
    msg = str(err.value)
    assert CLIP_FILENAMES[0] in msg and str(tmp_path / "clip") in msg and "huggingface.co" in msg
    with pytest.raises(WeightsNotFoundError, match="missing.safetensors"):
        load_clip_image_encoder(tmp_path / "missing.safetensors")


def test_lpips_trunk_comes_from_the_local_alexnet_file(tmp_path):
    from torchvision.models import alexnet

    torch.manual_seed(1)
    features = {f"features.{k}": v for k, v in alexnet(weights=None).features.state_dict().items()}
    for path in (tmp_path / "alexnet-owt-7be5be79.safetensors", tmp_path / ALEXNET_FILENAME):
        if path.suffix == ".safetensors":
            save_file(features, str(path))
        else:
            torch.save(features, str(path))
        model = build_lpips(path)
        torch.testing.assert_close(model.net.slice1[0].weight, features["features.0.weight"])
        torch.testing.assert_close(getattr(model.net.slice5, "10").bias, features["features.10.bias"])
        assert not any(p.requires_grad for p in model.parameters())
    # A folder works too (the default is the torch hub checkpoints folder): the file named there is read.
    from_folder = build_lpips(tmp_path)
    torch.testing.assert_close(from_folder.net.slice1[0].weight, features["features.0.weight"])
    save_file({"something.else": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsNotFoundError, match="not torchvision's AlexNet"):
        build_lpips(tmp_path / "bad.safetensors")


def _tiny_tower(seed):
    torch.manual_seed(seed)
    tower = build_clip_image_tower(TINY_CLIP_ARCHITECTURE)
    # Non-trivial layer norms so a wrong key mapping would show.
    for p in tower.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    return tower.eval()


def test_clip_loads_open_clip_layout(tmp_path):
    tower = _tiny_tower(2)
    pixels = perceptual_preprocess(torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0)))
    full = {f"visual.{k}": v for k, v in tower.state_dict().items()}
    full["transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(3, 3)  # a text-tower key: ignored
    save_file(full, str(tmp_path / CLIP_FILENAMES[0]))
    encoder = load_clip_image_encoder(tmp_path)
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
    with torch.no_grad():
        torch.testing.assert_close(encoder(pixels), tower(pixels))
    save_file(dict(tower.state_dict()), str(tmp_path / "tower_only.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(
            load_clip_image_encoder(tmp_path / "tower_only.safetensors")(pixels), tower(pixels)
        )
    save_file({"a": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsNotFoundError, match="not a CLIP"):
        load_clip_image_encoder(tmp_path / "other.safetensors")
    torch.save({"a": torch.zeros(1)}, str(tmp_path / "pickled.bin"))
    with pytest.raises(WeightsNotFoundError, match="never loads pickled"):
        load_clip_image_encoder(tmp_path / "pickled.bin")


def test_clip_loads_transformers_layout(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(3)
    cfg = TINY_CLIP_ARCHITECTURE["vision_cfg"]
    reference = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=cfg["width"],
            intermediate_size=4 * cfg["width"],
            num_hidden_layers=2,
            num_attention_heads=1,
            image_size=cfg["image_size"],
            patch_size=cfg["patch_size"],
            projection_dim=24,
            hidden_act="quick_gelu",
        )
    ).eval()
    for p in reference.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    state = dict(reference.state_dict())
    state["text_model.embeddings.token_embedding.weight"] = torch.zeros(4, 4)  # full-CLIP files: ignored
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "clip.safetensors"))
    encoder = load_clip_image_encoder(tmp_path / "clip.safetensors", quick_gelu=True)
    assert "transformers layout" in encoder.description
    pixels = perceptual_preprocess(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        torch.testing.assert_close(
            encoder(pixels), reference(pixel_values=pixels).image_embeds, atol=1e-5, rtol=1e-4
        )


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_clip_loads_a_hugging_face_folder(tmp_path, hidden_act):
    """What CLIP_HOW_TO_GET says to download: a transformers folder (config.json + model.safetensors).
    Its config gives what the weights do not: the head count (2 here, where the width alone would
    say 1) and the activation (LAION's gelu or OpenAI's quick_gelu)."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(4)
    cfg = TINY_CLIP_ARCHITECTURE["vision_cfg"]
    vision = dict(
        hidden_size=cfg["width"],
        intermediate_size=4 * cfg["width"],
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=cfg["image_size"],
        patch_size=cfg["patch_size"],
        hidden_act=hidden_act,
    )
    text = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64
    )
    reference = CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=24)).eval()
    for p in reference.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    folder = tmp_path / "clip-vit-base-patch32"
    reference.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    encoder = load_clip_image_encoder(folder)  # quick_gelu left at its default: the config decides
    pixels = perceptual_preprocess(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        expected = reference.get_image_features(pixel_values=pixels)
        expected = getattr(expected, "pooler_output", expected)
        torch.testing.assert_close(encoder(pixels), expected, atol=1e-5, rtol=1e-4)


def test_vit_b_32_builds_with_random_weights():
    encoder = ClipImageEncoder.random("ViT-B-32")
    with torch.no_grad():
        out = encoder(perceptual_preprocess(torch.rand(1, 1, 32, 32)))
    assert out.shape == (1, 512) and torch.isfinite(out).all()


def test_wrap_accepts_an_open_clip_model():
    from open_clip.model import CLIP

    cfg = TINY_CLIP_ARCHITECTURE
    model = CLIP(
        cfg["embed_dim"],
        cfg["vision_cfg"],
        {"context_length": 4, "vocab_size": 8, "width": 8, "heads": 1, "layers": 1},
    )
    encoder = ClipImageEncoder.wrap(model)
    pixels = perceptual_preprocess(torch.rand(1, 3, 32, 32))
    with torch.no_grad():
        torch.testing.assert_close(encoder(pixels), model.encode_image(pixels))
    assert not any(p.requires_grad for p in model.visual.parameters())
