"""Suite-wide test settings."""
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
