"""The published diffusers configs of SD 1.5, SD 2.1 (768-v) and SDXL base (unet/config.json,
vae/config.json), reduced to the fields that differ from UNet2DConditionModel's / AutoencoderKL's
defaults. Tests build them on the meta device; benchmarks build them with random weights."""

SD15_UNET = dict(
    sample_size=64,
    cross_attention_dim=768,
    attention_head_dim=8,
    block_out_channels=(320, 640, 1280, 1280),
)
SD21_UNET = dict(
    sample_size=96,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    block_out_channels=(320, 640, 1280, 1280),
    use_linear_projection=True,
    upcast_attention=True,
)
SDXL_UNET = dict(
    sample_size=128,
    cross_attention_dim=2048,
    attention_head_dim=(5, 10, 20),
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SD_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
)

# Diffusion transformers (transformer/config.json, vae/config.json of the published diffusers folders).
#: Tongyi-MAI/Z-Image-Turbo (Z-Image base has the same transformer shape).
ZIMAGE_TURBO_TRANSFORMER = dict(
    all_patch_size=(2,),
    all_f_patch_size=(1,),
    in_channels=16,
    dim=3840,
    n_layers=30,
    n_refiner_layers=2,
    n_heads=30,
    n_kv_heads=30,
    norm_eps=1e-5,
    qk_norm=True,
    cap_feat_dim=2560,
    rope_theta=256.0,
    t_scale=1000.0,
    axes_dims=(32, 48, 48),
    axes_lens=(1536, 512, 512),
)
#: stabilityai/stable-diffusion-3.5-medium (MMDiT-X: dual attention in the first 13 blocks).
SD35_MEDIUM_TRANSFORMER = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=384,
    dual_attention_layers=tuple(range(13)),
    qk_norm="rms_norm",
)
#: stabilityai/stable-diffusion-3.5-large.
SD35_LARGE_TRANSFORMER = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=38,
    attention_head_dim=64,
    num_attention_heads=38,
    joint_attention_dim=4096,
    caption_projection_dim=2432,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=192,
    qk_norm="rms_norm",
)
#: The 16-channel VAE of SD 3.x (no quant convs); Z-Image uses Flux's, the same shape with
#: another latent scale and shift (ZIMAGE_VAE).
SD3_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=16,
    sample_size=1024,
    scaling_factor=1.5305,
    shift_factor=0.0609,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
ZIMAGE_VAE = SD3_VAE | dict(scaling_factor=0.3611, shift_factor=0.1159)
#: black-forest-labs/FLUX.1-dev (guidance-distilled: a guidance embedding).
FLUX_DEV_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
#: black-forest-labs/FLUX.1-schnell (timestep-distilled: no guidance embedding).
FLUX_SCHNELL_TRANSFORMER = FLUX_DEV_TRANSFORMER | dict(guidance_embeds=False)
#: Flux.1's VAE (ae.safetensors; Z-Image decodes with it too).
FLUX_VAE = ZIMAGE_VAE
