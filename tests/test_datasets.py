"""Training samples: adjacent slices, height cut, on-the-fly masks, augmentation, sharded sampling."""
import pytest
import torch

from data.augment import AugmentConfig, MRAugment
from data.datasets import SliceDataset, VolumeImageDataset, collate_training
from data.masks import MaskSampler
from data.transforms import HEIGHT_CUT, TrainingTransform
from utils.engine import EpochShardSampler
from utils.inference import adjacent_indices, adjacent_stack_index
from utils.lr_schedule import LRSchedule


@pytest.fixture(scope="module")
def micro(tmp_path_factory, micro_data):
    return micro_data(tmp_path_factory.mktemp("ds") / "Data", volumes=2, slices=3, coils=2, height=400, width=40)


def _dataset(micro, kind="fixed", augment=None, anatomy="brain", adj=3):
    sampler = MaskSampler(kind, 4, seed=430)
    return SliceDataset(micro / "train", anatomy, adj, TrainingTransform(sampler.sample, augment=augment, seed=430))


def test_sample_contract(micro):
    ds = _dataset(micro)
    assert len(ds) == 2 * 3
    s = ds[0]
    assert s.masked_kspace.shape == (3, 2, HEIGHT_CUT["brain"], 40) and s.masked_kspace.dtype == torch.complex64
    assert s.target.shape == (384, 384) and s.foreground.dtype == torch.bool and s.foreground.any()
    off = s.mask == 0
    assert torch.all(s.masked_kspace[..., off] == 0) and s.mask.sum() < 40
    knee = _dataset(micro, anatomy="knee")[0]
    assert knee.masked_kspace.shape[-2] == HEIGHT_CUT["knee"] and knee.anatomy == "knee"
    batch = collate_training([ds[0], ds[1]])
    assert batch.masked_kspace.shape[0] == 2 and batch.max_value.shape == (2,)


def test_adjacent_slices_clamped():
    assert adjacent_indices(0, 5, 3).tolist() == [0, 0, 1]
    assert adjacent_indices(4, 5, 5).tolist() == [2, 3, 4, 4, 4]
    assert adjacent_stack_index(3, 3).tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 2]]
    with pytest.raises(ValueError):
        adjacent_indices(0, 5, 2)


def test_random_masks_depend_on_epoch_and_index_only(micro):
    ds = _dataset(micro, kind="random_spaced")
    ds.set_epoch(1)
    a, b = ds[0].mask, ds[1].mask
    assert not torch.equal(a, b)
    ds.set_epoch(2)
    assert not torch.equal(ds[0].mask, a)
    ds.set_epoch(1)
    assert torch.equal(ds[0].mask, a)


def test_augmentation_changes_input_and_target_reproducibly(micro):
    cfg = AugmentConfig(aug_on=True, aug_strength=1.0, aug_schedule="constant", aug_weight_fliph=1.0,
                        aug_weight_translation=1.0, aug_max_translation_x=0.1, num_epochs=3)
    plain, aug = _dataset(micro), _dataset(micro, augment=MRAugment(cfg))
    for d in (plain, aug):
        d.set_epoch(2)
    p, a1, a2 = plain[1], aug[1], aug[1]
    assert not torch.equal(p.target, a1.target) and not torch.equal(p.masked_kspace, a1.masked_kspace)
    # the schedule sees MRAugment's 0-based epoch index: with a ramp over T = 3 epochs, engine epoch 1 is
    # t = 0 (p = 0: unaugmented) and epoch 2 is t = 1 (p = 1/3; weight 3 makes the flip certain)
    ramp = _dataset(micro, augment=MRAugment(AugmentConfig(aug_on=True, aug_strength=1.0, aug_schedule="ramp",
                                                           aug_weight_fliph=3.0, num_epochs=3)))
    plain.set_epoch(1), ramp.set_epoch(1)
    assert torch.equal(ramp[1].target, plain[1].target)
    ramp.set_epoch(2)
    assert torch.equal(ramp[1].target, torch.flip(p.target, dims=(-1,)))
    assert torch.equal(a1.target, a2.target) and torch.equal(a1.masked_kspace, a2.masked_kspace)
    # the recomputed target is the RSS of the augmented (horizontally flipped) images: same energy
    assert torch.allclose(a1.target.sum(), p.target.sum(), rtol=0.05)


def test_volume_image_dataset_labels_from_names(micro):
    ds = VolumeImageDataset([micro / "train"])
    labels = sorted(ds.labels)
    assert labels == [0, 0, 1, 1]
    images, label = ds[0]
    assert images.shape == (3, 384, 384) and label.dtype == torch.int64


def test_epoch_shard_sampler():
    full = list(EpochShardSampler(10, seed=1))
    assert sorted(full) == list(range(10))
    s = EpochShardSampler(10, seed=1)
    s.set_epoch(1)
    assert list(s) != full
    shards = [EpochShardSampler(10, seed=1, rank=r, world_size=3, multiple=2) for r in range(3)]
    parts = [list(x) for x in shards]
    assert all(len(p) == 4 for p in parts)  # ceil(10/3)=4 per rank, a multiple of 2
    assert set(sum(parts, [])) == set(range(10))


def test_lr_schedule_values():
    sched = LRSchedule(max_lr=3e-4, min_lr=0.0, warmup_epochs=1, num_epochs=20)
    assert sched(0) == 0 and sched(0.5) == pytest.approx(1.5e-4) and sched(1) == pytest.approx(3e-4)
    assert sched(10.5) == pytest.approx(1.5e-4)  # half-way through the cosine (epochs 1..20)
    assert sched(20) == pytest.approx(0) and sched(15) > sched(16)
    step2 = LRSchedule(max_lr=2e-4, min_lr=0.0, warmup_epochs=0, num_epochs=35, origin_epoch=15)
    assert step2(15) == pytest.approx(2e-4) and step2(25) == pytest.approx(1e-4) and step2(30) > 0
    with pytest.raises(ValueError):
        LRSchedule(max_lr=1e-4, min_lr=1e-3, warmup_epochs=0, num_epochs=5)
    with pytest.raises(ValueError):
        LRSchedule(max_lr=1e-4, min_lr=0, warmup_epochs=0, num_epochs=30, origin_epoch=30)
