"""The engine's optimizer steps are plain AdamW steps.

A tiny conv net trains one epoch through the real engine (DeepSpeed ZeRO 1 and 2 with the CPU Adam
offload, ReproducibleCPUAdam, micro-batch 1, gradient accumulation 2, clipping, weight decay on weights
only, a cosine LR that changes every step) and must land where ``torch.optim.AdamW`` lands from the same
initial weights on the same micro-batches in the same order: summed gradients / 2, global-norm clipping,
the LR of optimizer step ``j`` being ``schedule((j + 1) / steps_per_epoch)``, no decay on biases and
GroupNorm parameters. The engine part runs in a subprocess (it initialises torch.distributed); a few
seconds plus DeepSpeed's import.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = r"""
import copy, json, sys, tempfile
import torch
from torch import nn
sys.path.insert(0, sys.argv[1])
from utils.engine import EngineConfig, setup_training, shutdown_distributed, train_epoch

torch.set_num_threads(1)
LR, MIN_LR, WD, CLIP, N = 1e-2, 1e-3, 0.1, 0.05, 6
out = {}
for stage in (1, 2):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))
    ref, init = copy.deepcopy(model), copy.deepcopy(model)
    X, Y = torch.randn(N, 2, 6, 6), torch.randn(N, 1, 6, 6)

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return N

        def __getitem__(self, i):
            return X[i], Y[i]

    def objective(m, batch, device):
        x, y = batch
        return ((m(x) - y) ** 2).mean()

    cfg = EngineConfig(result_path=tempfile.mkdtemp(), net_name="t", num_epochs=1, warmup_epochs=0, max_lr=LR,
                       min_lr=MIN_LR, zero_stage=stage, num_workers=0, gradient_clipping=CLIP, weight_decay=WD,
                       log_every=0)
    run = setup_training(model, Data(), cfg, model_name="toy", model_config={}, run_args={})
    run.sampler.set_epoch(1)
    order = list(run.sampler)
    train_epoch(run, 1, objective, Data(), progress=False)

    # the reference: torch AdamW, decay on the conv weights only (built here, not by parameter_groups)
    decay = [ref[0].weight, ref[3].weight]
    no_decay = [ref[0].bias, ref[1].weight, ref[1].bias, ref[3].bias]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}], lr=LR)
    norms, lrs = [], []
    for j in range(run.steps_per_epoch):
        opt.zero_grad()
        for i in order[2 * j:2 * j + 2]:
            (objective(ref, (X[i:i + 1], Y[i:i + 1]), None) / 2).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(ref.parameters(), CLIP)))
        lrs.append(run.schedule((j + 1) / run.steps_per_epoch))
        for group in opt.param_groups:
            group["lr"] = lrs[-1]
        opt.step()
    rows = []
    for (name, p), q, p0 in zip(run.engine.module.named_parameters(), ref.parameters(), init.parameters()):
        rows.append({"name": name, "diff": float((p.detach() - q.detach()).abs().max()),
                     "moved": float((q.detach() - p0.detach()).abs().max())})
    out[stage] = {"rows": rows, "norms": norms, "lrs": lrs, "steps": run.steps_per_epoch}
shutdown_distributed()
print("RESULT " + json.dumps(out))
"""


def test_engine_steps_equal_torch_adamw_steps():
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _SCRIPT, str(REPO)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    for stage, result in out.items():
        assert result["steps"] == 3
        assert len(set(result["lrs"])) == 3  # the LR changes every step
        assert max(result["norms"]) > 0.05  # clipping is active
        for row in result["rows"]:
            assert row["moved"] > 1e-3, row  # every parameter was really updated
            assert row["diff"] <= 1e-5 * max(1.0, row["moved"] / 1e-2), (stage, row)
