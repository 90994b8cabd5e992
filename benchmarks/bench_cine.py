"""Cine throughput: reading MATLAB v7.3 k-space for training against the model's training step, and
reconstruction seconds per frame.

    python benchmarks/bench_cine.py [--preset cine_demo] [--frames 12] [--slices 2] [--ky 246] [--kx 512]
                                    [--coils 10] [--repeats 5] [--threads 1] [--device cpu|cuda]

One full-size CMRxRecon short-axis file (default ``(t 12, slices 2, coils 10, ky 246, kx 512)``, the
challenge's SAX matrix with readout oversampling) is written as MATLAB v7.3 in a temporary folder. Then,
interleaved ``--repeats`` times and reported as medians:

* read: one training sample (:class:`data.cine_datasets.CineSliceDataset`: 3 or 5 circular frames of one
  slice read lazily from the file, a uniform mask drawn, masked, the RSS target): samples/s (and the
  k-space frames/s that makes);
* step: the PromptMR+ cine training step on that sample (forward, SSIM loss, backward; no optimizer):
  samples/s;
* reconstruct: :func:`utils.inference.reconstruct_cine` over every frame of one slice: seconds/frame.

The reading rate must be at least 5x the step rate (so data loading never limits training).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cine_demo")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--slices", type=int, default=2)
    parser.add_argument("--coils", type=int, default=10)
    parser.add_argument("--ky", type=int, default=246)
    parser.add_argument("--kx", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from data.cine import write_cine_fullsample
    from data.cine_datasets import CineSliceDataset, CineTrainingTransform, to_model_layout
    from data.cine_masks import CineMaskSampler, make_cine_mask
    from data.datasets import collate_training
    from models import build_model
    from utils.inference import reconstruct_cine
    from utils.objectives import ReconstructionObjective

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    shape = (args.frames, args.slices, args.coils, args.ky, args.kx)
    with tempfile.TemporaryDirectory() as tmp:
        set_dir = Path(tmp) / "MultiCoil" / "Cine" / "TrainingSet"
        kspace = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
        path = write_cine_fullsample(set_dir, "P001", "sax", kspace)
        print(f"file: {path.stat().st_size / 2**20:.0f} MiB, k-space {shape}")
        model = build_model("promptmr", args.preset).to(device)
        num_adj = model.config.num_adj_slices
        ds = CineSliceDataset([set_dir], num_adj, CineTrainingTransform(CineMaskSampler("uniform", (4, 8, 10), 0)))
        objective = ReconstructionObjective("ssim")
        mask = make_cine_mask("uniform", (1, args.ky, args.kx), 8)[0]
        k_model = to_model_layout(torch.from_numpy(kspace[:, :1] * mask))
        m_model = to_model_layout(torch.from_numpy(np.ascontiguousarray(mask[:, :1])))  # (1, ky)
        read_t, step_t, recon_t = [], [], []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            sample = ds[r % len(ds)]
            read_t.append(time.perf_counter() - t0)
            batch = collate_training([sample])
            batch = type(batch)(**{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in vars(batch).items()})
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            objective(model, batch, device).backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            step_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            reconstruct_cine(model, k_model, m_model, num_adj, batch_size=4, device=device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            recon_t.append((time.perf_counter() - t0) / args.frames)
    read_sps = 1 / statistics.median(read_t)
    step_sps = 1 / statistics.median(step_t)
    print(f"{'what':<40}{'median':>12}")
    print(f"{'read (samples/s; frames/s)':<40}{read_sps:>12.2f}; {read_sps * num_adj:.1f}")
    print(f"{'training step (samples/s)':<40}{step_sps:>12.3f}   ({args.preset}, {args.threads} thread(s), {device})")
    print(f"{'reading / step rate':<40}{read_sps / step_sps:>12.1f}x  (must be >= 5x)")
    print(f"{'reconstruction (s/frame)':<40}{statistics.median(recon_t):>12.4f}")
    return 0 if read_sps >= 5 * step_sps else 1


if __name__ == "__main__":
    sys.exit(main())
