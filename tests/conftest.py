"""Suite-wide test settings and shared fixtures (tests never import each other)."""
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _single_thread():
    """One intra-op thread per test worker: the suite's tensors are tiny, and OpenMP threads
    oversubscribing a shared 2-core machine make small ops 10-100x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# Tiny data shared by test modules (build once per session; tests copy what they change).
TINY_VOLUMES = (("train", "brain", 4, 1), ("leaderboard", "brain", 4, 1), ("leaderboard", "knee", 4, 1),
                ("leaderboard", "brain", 8, 1), ("leaderboard", "knee", 8, 1))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A ``Data`` root from the simulator's ``tiny`` preset (2 slices, 4 coils, 400 x 396 k-space):
    ``train/brain/{kspace,image}/brain_acc4_1.h5`` and ``leaderboard/acc{4,8}/{kspace,image}/
    {brain,knee}_test1.h5``; about 3 s. Read-only: copy before changing anything."""
    from data.simulate import PRESETS, VolumeSpec, write_volume

    root = tmp_path_factory.mktemp("tiny") / "Data"
    for split, anatomy, acc, index in TINY_VOLUMES:
        write_volume(root, VolumeSpec(split, anatomy, acc, index), PRESETS["tiny"], seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory):
    """An ``artifacts`` folder for ``reconstruct.py --weights artifacts``: four tiny VarNets (random
    weights, correct metadata) and the shipped classifier (it routes the ``tiny_data`` volumes right).
    Read-only: copy before changing anything."""
    import shutil
    from pathlib import Path

    from models import build_model
    from utils.artifacts import CLASSIFIER_ARTIFACT, RECON_ROLES, SUFFIX, ArtifactInfo, recon_artifact_name, save_artifact

    out = tmp_path_factory.mktemp("artifacts")
    for i, (anatomy, acc) in enumerate(RECON_ROLES):
        torch.manual_seed(i)
        model = build_model("varnet", "tiny")
        info = ArtifactInfo("varnet", model.config.to_dict(), "tests/conftest.py", 1, 1, anatomy, acc)
        save_artifact(model, out / f"{recon_artifact_name(anatomy, acc)}{SUFFIX}", info)
    shipped = Path(__file__).resolve().parents[1] / "artifacts" / f"{CLASSIFIER_ARTIFACT}{SUFFIX}"
    shutil.copy(shipped, out / shipped.name)
    return out


def _smooth_volume(rng, slices, coils, height, width):
    """Complex coil images with smooth structure -> fully sampled k-space ``(S, C, H, W)`` complex64."""
    from utils.physics import fft2c

    yy, xx = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    obj = ((yy / 0.5) ** 2 + (xx / 0.8) ** 2 < 1).astype(np.float32) * (1 + 0.3 * np.cos(6 * yy))
    s, c = np.arange(slices)[:, None, None, None], np.arange(coils)[None, :, None, None]
    images = obj * (1 + 0.2 * s) * np.exp(1j * (c + 0.5 * xx)) * (1 + 0.3 * (c % 2) * yy)
    images = images.astype(np.complex64) * 1e-4
    images += (rng.standard_normal(images.shape) + 1j * rng.standard_normal(images.shape)).astype(np.complex64) * 1e-7
    return fft2c(torch.from_numpy(images)).numpy()


def make_micro_data(root: Path, volumes=2, slices=2, coils=2, height=384, width=48) -> Path:
    """A micro training set in the challenge layout under ``root`` (returned): ``train/{brain,knee}/
    {kspace,image}/{anatomy}_acc4_{i}.h5`` for i = 1..volumes, narrow k-space so a training step takes
    milliseconds; labels are the RSS of the fully sampled coil images."""
    from data.formats import write_image_file, write_kspace_file
    from data.masks import make_mask
    from data.transforms import rss_target
    from utils.physics import ifft2c

    rng = np.random.default_rng(0)
    for anatomy in ("brain", "knee"):
        for i in range(1, volumes + 1):
            name = f"{anatomy}_acc4_{i}.h5"
            k = _smooth_volume(rng, slices, coils, height, width)
            mask = make_mask("fixed", width, 4)
            images = ifft2c(torch.from_numpy(k))
            label = torch.stack([rss_target(images[s]) for s in range(slices)]).numpy()
            write_kspace_file(root / "train" / anatomy / "kspace" / name, k, mask)
            write_image_file(root / "train" / anatomy / "image" / name, label, label, label)
    return root


@pytest.fixture(scope="session")
def micro_data():
    """:func:`make_micro_data`, the builder of micro training sets: ``micro_data(root, volumes=2, ...)``."""
    return make_micro_data


# Cine data shared by the cine test modules.
CINE_T, CINE_S, CINE_C, CINE_KY, CINE_KX = 4, 1, 2, 40, 24  # frames, slices, coils, ky, kx of cine_fullsample


def _cine_fullsample(seed: int) -> np.ndarray:
    """A beating-disc FullSample k-space ``(t, slices, coils, ky, kx)`` complex64 of the CINE_* sizes."""
    from utils.physics import fft2c

    rng = np.random.default_rng(seed)
    t, s, c, ky, kx = CINE_T, CINE_S, CINE_C, CINE_KY, CINE_KX
    yy, xx = np.meshgrid(np.linspace(-1, 1, ky), np.linspace(-1, 1, kx), indexing="ij")
    radius = 0.5 + 0.15 * np.cos(2 * np.pi * np.arange(t) / t)[:, None, None, None, None]
    obj = (yy ** 2 + xx ** 2 < radius ** 2) * 1.0 + 0.3 * (np.abs(yy) < 0.8)
    coils = np.exp(1j * np.arange(c)[None, None, :, None, None] * (xx + 0.5 * yy)) * (1 + 0.3 * np.arange(c))[None, None, :, None, None]
    images = (obj * coils * np.ones((1, s, 1, 1, 1))).astype(np.complex64)
    images += (rng.standard_normal(images.shape) * 1e-3).astype(np.complex64)
    return fft2c(torch.from_numpy(images)).numpy()


@pytest.fixture(scope="session")
def cine_fullsample():
    """Builder ``cine_fullsample(seed) -> (t, slices, coils, ky, kx)`` complex64 k-space (sizes CINE_*)."""
    return _cine_fullsample


def _cine_batch(b=2, c=3, h=24, w=20, seed=0, two_d=False):
    """A model batch of 3 adjacent frames: masked k-space ``(b, 3, c, h, w)`` and a kt line mask ``(b, 3, w)``
    (``two_d``: a 2-D mask ``(b, 3, h, w)`` with a sampled 6 x 6 centre)."""
    from utils import physics

    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    frames = torch.stack([((yy ** 2 + xx ** 2) < (0.4 + 0.05 * t) ** 2).float() + 0.2 for t in range(3)])  # (3, H, W)
    coils = torch.exp(1j * (torch.arange(c).view(c, 1, 1) + 1) * (0.5 * xx + 0.3 * yy)).to(torch.complex64)
    images = frames.view(1, 3, 1, h, w) * coils.view(1, 1, c, h, w) * torch.ones(b, 1, 1, 1, 1)
    images = images + 0.01 * torch.randn(images.shape, generator=g, dtype=torch.complex64)
    kspace = physics.fft2c(images)
    if two_d:
        mask = (torch.rand(b, 3, h, w, generator=g) > 0.6).float()
        mask[..., h // 2 - 3:h // 2 + 3, w // 2 - 3:w // 2 + 3] = 1
        return kspace * mask.unsqueeze(2), mask
    mask = (torch.rand(b, 3, w, generator=g) > 0.6).float()  # a different line pattern per frame (kt)
    mask[..., w // 2 - 2:w // 2 + 2] = 1
    return kspace * mask[:, :, None, None, :], mask


@pytest.fixture(scope="session")
def cine_batch():
    """Builder ``cine_batch(b=2, c=3, h=24, w=20, seed=0, two_d=False) -> (masked k-space, mask)``."""
    return _cine_batch


# TiTok-MRI codec data and weights shared by tests/test_titok_codec.py and tests/test_codec_demo.py.
def _perturb_dit(model, seed: int) -> None:
    """Non-zero values in the DiT's zero-initialised layers, so decoding depends on the tokens."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name or name.startswith("final.linear"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def make_codec_weights(folder: Path, seed: int = 0, decoder=None, **tokenizer_hparams) -> Path:
    """A codec weights folder (models/titok_mri.py CODEC_ARTIFACTS) of ``tiny`` presets under ``folder``:
    the tokenizer (``tokenizer_hparams`` override its preset), and unless ``decoder`` is False a DiT with
    its zero-initialised layers perturbed and an ``acdc_tiny`` segmenter (``decoder`` defaults to True
    without overrides, False with them). The DiT follows the tokenizer's K."""
    from models import build_model
    from models.titok_mri import CODEC_ARTIFACTS
    from utils.artifacts import ArtifactInfo, save_artifact

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok = build_model("titok", "tiny", **tokenizer_hparams)
    parts = {"tokenizer": ("titok", tok)}
    if decoder is None:
        decoder = not tokenizer_hparams
    if decoder:
        dit = build_model("titok_dit", "tiny", num_latent_tokens=tok.config.num_latent_tokens)
        _perturb_dit(dit, seed)
        parts["decoder"] = ("titok_dit", dit)
        parts["segmenter"] = ("nnmamba_seg", build_model("nnmamba_seg", "acdc_tiny"))
    for role, (name, model) in parts.items():
        save_artifact(model, folder / CODEC_ARTIFACTS[role], ArtifactInfo(name, model.config.to_dict(), "tests", 1, 1, "acdc"))
    return folder


@pytest.fixture(scope="session")
def codec_weights_builder():
    """:func:`make_codec_weights`: ``codec_weights_builder(folder, seed=0, decoder=None, **tokenizer_hparams)``."""
    return make_codec_weights


@pytest.fixture(scope="session")
def tiny_cine(tmp_path_factory):
    """The tiny cine simulator's first subject (seed 0): ACDC training/patient001 (labelled ED/ES) and
    CMRxRecon TrainingSet P001 (sax, lax). Read-only: copy before changing anything."""
    from data.simulate_cine import generate_dataset

    root = tmp_path_factory.mktemp("cine")
    generate_dataset(root, "tiny", seed=0, progress=False, subjects=[1])
    return root


@pytest.fixture(scope="session")
def codec_weights(tmp_path_factory):
    """Tiny codec weights (K 8, codebook 128: 7 bytes of ids per frame) with a DiT and a segmenter (seed 0)."""
    return make_codec_weights(tmp_path_factory.mktemp("codec_w") / "weights")
