"""KGMgT training through the one engine at tiny scale: the objective's terms (L1+SSIM, perceptual from a
local VGG19 file, WGAN-GP with the critic inside the model), per-group learning rates, MODEL=kgmgt through
scripts/train_cine_step1.sh, resume bit-exact, export to an artifact and reconstruct.py --task cine."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import build_model
from utils.engine import parameter_groups
from utils.objectives import _VGG19_CONVS, ReconstructionObjective, VGG19Features

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory):
    """Random VGG19 ``features`` weights in torchvision's naming (plus a classifier key that is ignored)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    state = {"classifier.0.weight": torch.zeros(2, 2)}
    for index, cin, cout in _VGG19_CONVS:
        state[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        state[f"features.{index}.bias"] = torch.zeros(cout)
    path = tmp_path_factory.mktemp("vgg") / "vgg19.safetensors"
    save_file(state, str(path))
    return path


class _Batch:
    def __init__(self, kspace, mask, target):
        self.masked_kspace, self.mask, self.target = kspace, mask, target
        self.max_value = target.flatten(1).amax(1)
        self.foreground = torch.ones_like(target, dtype=torch.bool)
        self.fname, self.slice_index = ["a.mat", "b.mat"], torch.tensor([3, 4])


def _batch(cine_batch):
    kspace, mask = cine_batch()
    target = torch.rand(2, 24, 20) + 0.5
    return _Batch(kspace, mask, target)


def test_parameter_groups_follow_the_models_learning_rate_scales():
    model = build_model("kgmgt", "tiny", discriminator_width=4)
    groups = parameter_groups(model, 1e-4)
    assert sorted({g["lr_scale"] for g in groups}) == [1e-3, 1e-2, 0.1, 1.0]
    assert groups[0]["lr_scale"] == 1.0 and groups[0]["weight_decay"] == 1e-4
    by_id = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_id[id(named["net.agg_up_small.offset_conv1.weight"])] == 1e-3
    assert by_id[id(named["net.agg_up_medium.dcn.conv_offset_mask.weight"])] == 1e-2
    assert by_id[id(named["discriminator.head.weight"])] == 0.1
    assert sum(len(g["params"]) for g in groups) == len(named)
    plain = parameter_groups(build_model("varnet", "tiny"), 1e-4)  # models without scales: as before
    assert [(g["weight_decay"], g["lr_scale"]) for g in plain] == [(1e-4, 1.0), (0.0, 1.0)]


def test_perceptual_loss_loads_vgg19_from_a_local_file_only(vgg19_file, tmp_path, cine_batch):
    vgg = VGG19Features(vgg19_file)
    assert vgg(torch.rand(1, 3, 32, 32)).shape == (1, 512, 2, 2)
    assert not any(p.requires_grad for p in vgg.parameters())
    objective = ReconstructionObjective("l1", perceptual_weight=1.0, perceptual_vgg=str(vgg19_file))
    batch = _batch(cine_batch)
    same = batch.target.clone().requires_grad_(True)
    assert float(objective.perceptual_loss(same, batch).detach()) == 0.0
    assert float(objective.perceptual_loss(same * 1.5, batch).detach()) > 0
    with pytest.raises(ValueError, match="not found"):
        VGG19Features(tmp_path / "none.pth")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing"):
        VGG19Features(tmp_path / "bad.pth")


def test_adversarial_terms_reach_each_network_only_through_its_own_objective(cine_batch):
    torch.manual_seed(0)
    model = build_model("kgmgt", "tiny", discriminator_width=4)
    batch = _batch(cine_batch)
    critic = [p for n, p in model.named_parameters() if n.startswith("discriminator.")]
    generator = [p for n, p in model.named_parameters() if not n.startswith("discriminator.")]

    def grads(weight):
        model.zero_grad(set_to_none=True)
        output = model(batch.masked_kspace, batch.mask)
        ReconstructionObjective("l1", adversarial_weight=weight).adversarial_terms(model, output, batch).backward()
        return [p.grad.clone() if p.grad is not None else None for p in critic], \
               [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in generator]

    critic0, gen0 = grads(0.0)  # critic objective only: the generator gets nothing from it
    assert all(float(g.abs().sum()) == 0 for g in gen0)
    assert all(g is not None for g in critic0) and any(float(g.abs().sum()) > 0 for g in critic0)
    critic1, gen1 = grads(1.0)  # + the generator term: the critic's gradients do not change
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(critic0, critic1))
    assert any(float(g.abs().sum()) > 0 for g in gen1)
    first = ReconstructionObjective("l1_ssim", adversarial_weight=1e-6)(model, batch, torch.device("cpu"))
    assert torch.equal(first, ReconstructionObjective("l1_ssim", adversarial_weight=1e-6)(model, batch, torch.device("cpu")))


# ------------------------------------------------------------------------------------------- engine runs


@pytest.fixture(scope="module")
def cine_root(tmp_path_factory, cine_fullsample):
    from data.cine import write_cine_fullsample, write_cine_undersampled
    from data.cine_masks import make_cine_mask

    root = tmp_path_factory.mktemp("cine") / "CMRxRecon" / "MultiCoil" / "Cine"
    write_cine_fullsample(root / "TrainingSet", "P001", "sax", cine_fullsample(0))  # one subject: 4 frames, 2 steps an epoch
    full = cine_fullsample(9)
    write_cine_fullsample(root / "ValidationSet", "P010", "sax", full)
    write_cine_undersampled(root / "ValidationSet", "P010", "sax", full, make_cine_mask("uniform", (1, *full.shape[-2:]), 4)[0], 4)
    return root


def _states(tag):
    from utils.checkpoint import load_model_states

    return load_model_states(tag)


def test_recipe_resume_export_and_reconstruct(cine_root, vgg19_file, tmp_path):
    """MODEL=kgmgt scripts/train_cine_step1.sh (PRESET=tiny, the perceptual and WGAN-GP terms on, run on to
    the plan's epoch 2); train.py resumed from its epoch 1 reproduces its epoch 2 bit for bit; the weights
    export to an artifact that reconstruct.py --task cine uses."""
    env = {**ENV, "DATA_ROOT": str(cine_root.parents[2]), "RESULT_ROOT": str(tmp_path / "a"), "PRESET": "tiny",
           "NUM_WORKERS": "0", "MODEL": "kgmgt", "PERCEPTUAL_VGG": str(vgg19_file), "KGMGT_GAN": "1",
           "KEEP_CHECKPOINTS": "0"}  # keep epoch 1 to resume from
    res = subprocess.run(["bash", "scripts/train_cine_step1.sh", "--stop_epoch", "2"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    run_a = tmp_path / "a" / "kgmgt_cine" / "checkpoints" / "step1"
    s1 = _states(run_a / "epoch-1")
    args = s1["args"]
    assert (args["loss"], args["weight_decay"], args["gradient_clipping"], args["adversarial_weight"]) == ("l1", 0.0, 0.0, 1e-6)
    assert args["perceptual_vgg"] == str(vgg19_file) and s1["model_config"]["discriminator_width"] == 32
    optim = torch.load(run_a / "epoch-1" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", map_location="cpu", weights_only=False)
    lrs = {g["lr_scale"]: g["lr"] for g in optim["optimizer_state_dict"]["base_optimizer_state"]["param_groups"]}
    assert set(lrs) == {1.0, 1e-2, 1e-3, 0.1} and all(abs(lrs[s] - s * lrs[1.0]) < 1e-12 for s in lrs)

    resume = ["--net_name", "kgmgt_cine", "--model", "kgmgt", "--task", "cine", "--mask_type", "uniform", "--acceleration",
              "4", "8", "10", "--data_path_train", str(cine_root / "TrainingSet"), "--seed", "430", "--num_workers", "0",
              "--loss", "l1", "--weight_decay", "0", "--gradient_clipping", "0", "--perceptual_vgg", str(vgg19_file),
              "--perceptual_weight", "1e-4", "--adversarial_weight", "1e-6", "--gradient_penalty_weight", "10",
              "--max_lr", "3e-4", "--min_lr", "0", "--warmup_epochs", "1", "--num_epochs", "2", "--stop_epoch", "2",
              "--result_path", str(tmp_path / "b"), "--restart_from_checkpoint", str(run_a / "epoch-1")]
    resumed = subprocess.run([sys.executable, "train.py", *resume], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = _states(run_a / "epoch-2")["module"]
    b = _states(tmp_path / "b" / "kgmgt_cine" / "checkpoints" / "step1" / "epoch-2")["module"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["net.head.weight"], s1["module"]["net.head.weight"])  # epoch 2 did train

    art = tmp_path / "artifacts"
    exported = subprocess.run([sys.executable, "-m", "models.artifacts", "export", "--checkpoint", str(run_a / "epoch-2"),
                               "--out", str(art / "cine.safetensors")], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert exported.returncode == 0, exported.stderr[-2000:]
    from models.artifacts import load_artifact

    model, info = load_artifact(art / "cine.safetensors")
    assert info.model_name == "kgmgt" and all(torch.equal(model.state_dict()[k], a[k]) for k in a)
    import reconstruct

    out = tmp_path / "recon"
    assert reconstruct.main(["--task", "cine", "--path_data", str(cine_root / "ValidationSet"), "--result_path", str(out),
                             "--weights", "artifacts", "--artifacts_dir", str(art), "--device", "cpu", "--no_progress"]) == 0
    assert (out / "Submission" / "MultiCoil" / "Cine" / "ValidationSet" / "AccFactor04" / "P010" / "cine_sax.mat").is_file()


def test_cine_model_and_adversarial_flag_errors(tmp_path):
    base = [sys.executable, "train.py", "--net_name", "x", "--model", "kgmgt", "--result_path", str(tmp_path)]
    res = subprocess.run([*base, "--task", "brain"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "use --task cine" in res.stderr
    res = subprocess.run([*base, "--task", "cine", "--adversarial_weight", "1e-6"], cwd=REPO, env=ENV, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode != 0 and "needs a model with a discriminator" in res.stderr
    res = subprocess.run([*base, "--task", "cine", "--perceptual_vgg", str(tmp_path / "missing.pth")], cwd=REPO, env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "missing.pth: VGG19 weights file not found" in res.stderr
