"""Train a registry model with the DeepSpeed engine (utils/engine.py).

Reconstruction models train on one anatomy's fully sampled training volumes with masks drawn on the
fly and optional MRAugment; classifiers (``--model anatomy_cnn``) train on whole-volume images of both
anatomies with labels from the file names. Strict CLI: a misspelt flag is an error. Model
hyperparameters are flags named after the model's config fields (``--cascade 8 --feature_dim 64 80 96``)
on top of ``--preset``. Example::

    python train.py --net_name brain_acc4 --step 1 --model promptmr --preset challenge --task brain \\
        --acceleration 4 --mask_type fixed --num_epochs 20 --stop_epoch 15 --max_lr 3e-4

Cine (``--task cine``): samples over (subject, view, slice, frame) of the CMRxRecon FullSample files under
``--data_path_train`` (a set folder or one above it), the neighbouring time frames as the adjacent
slices (circular), masks drawn on the fly from ``--mask_type uniform|kt_uniform|kt_gaussian|kt_radial``
and ``--acceleration`` (one or more R: one is drawn per sample; default 4 8 10, one model for all, as
the PromptMR+ reference trains for CMRxRecon), SSIM loss on the magnitude image::

    python train.py --net_name promptmr_cine --model promptmr --preset cine_demo --task cine \\
        --data_path_train Data/CMRxRecon/MultiCoil/Cine/TrainingSet --mask_type uniform --acceleration 4 8 10
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
import dataclasses
from typing import Any, Dict, Optional, Sequence

from utils.cli import add_dataclass_flags, finite_float, given_values, str2bool  # noqa: F401 - stdlib-only helpers

REPO = Path(__file__).resolve().parent


def _default_root(env: str, leaf: str) -> str:
    return os.environ.get(env) or str(REPO.parent / leaf)


def build_parser(model_name: Optional[str]) -> argparse.ArgumentParser:
    from data.augment import AugmentConfig
    from data.cine_masks import CINE_FAMILIES
    from data.masks import CHALLENGE_KINDS, FASTMRI_KINDS
    from utils.objectives import RECONSTRUCTION_LOSSES

    from utils.engine import RUN_FLAGS, EngineConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False,
                                     usage="%(prog)s --net_name NAME [--model NAME] [--task {brain,knee,cine}] [FLAG VALUE ...] "
                                           "(--help lists every flag)")
    run = parser.add_argument_group("run")
    run.add_argument("--net_name", required=True, help="run name: outputs go to <result_path>/<net_name>/")
    run.add_argument("--model", default="promptmr", help="registry name (models/__init__.py)")
    run.add_argument("--preset", default=None, help="named preset of the model's config")
    run.add_argument("--result_path", default=_default_root("RESULT_ROOT", "result"))
    run.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    engine_fields = {f.name for f in dataclasses.fields(EngineConfig)}
    add_dataclass_flags(run, EngineConfig, exclude=("result_path", "net_name", *(engine_fields - set(RUN_FLAGS))))
    data = parser.add_argument_group("data")
    data.add_argument("--task", choices=("brain", "knee", "cine", "acdc"),
                      help="anatomy (reconstruction models), cine (CMRxRecon), or acdc (TiTok-MRI codec networks on ACDC frames)")
    data.add_argument("--acceleration", type=int, nargs="+", default=None,
                      help="SNU: one R (default 4); cine: one or more R drawn per sample (default 4 8 10)")
    data.add_argument("--mask_type", choices=CHALLENGE_KINDS + FASTMRI_KINDS + CINE_FAMILIES, default=None,
                      help=f"SNU: {'|'.join(CHALLENGE_KINDS)} (default fixed); fastMRI data (convert-fastmri): "
                           f"{'|'.join(FASTMRI_KINDS)} (acceleration = W / sampled columns); "
                           f"cine: {'|'.join(CINE_FAMILIES)} (default uniform)")
    data.add_argument("--cine_views", nargs="+", default=None, help="cine: views to train on (default all, e.g. sax lax)")
    data.add_argument("--data_path_train", default=str(Path(_default_root("DATA_ROOT", "Data")) / "train"))
    data.add_argument("--data_path_val", default=None, help="leaderboard-style folder (kspace/ image/) for a per-epoch SSIM")
    data.add_argument("--loss", choices=RECONSTRUCTION_LOSSES, default="ssim")
    data.add_argument("--perceptual_vgg", default=None,
                      help="local VGG19 weights (.safetensors or weights-only .pth): adds the relu5_1 perceptual loss")
    data.add_argument("--perceptual_weight", type=finite_float, default=1e-4, help="weight of the perceptual loss")
    data.add_argument("--adversarial_weight", type=finite_float, default=0.0,
                      help="WGAN-GP generator weight (KGMgT: 1e-6; needs a model with a discriminator)")
    data.add_argument("--gradient_penalty_weight", type=finite_float, default=10.0, help="WGAN-GP gradient penalty weight")
    codec = parser.add_argument_group("TiTok-MRI codec (--task acdc: --model titok | nnmamba_seg | titok_dit)")
    codec.add_argument("--tokenizer", default=None,
                       help="trained titok weights (artifact .safetensors or checkpoint .../stepK/epoch-N): frozen for titok_dit, "
                            "frame size for nnmamba_seg")
    codec.add_argument("--segmenter", default=None, help="trained nnmamba_seg weights (artifact or checkpoint), frozen, for titok_dit")
    codec.add_argument("--frame_size", type=int, nargs=2, default=None, metavar=("H", "W"),
                       help="nnmamba_seg: the codec's frame size (default: the --tokenizer's image_size)")
    codec.add_argument("--pixel_loss", choices=("l1", "l2"), default="l2", help="titok: pixel loss of stage 1")
    codec.add_argument("--motion_weight", type=finite_float, default=0.0, metavar="A",
                       help="titok, titok_dit: weight the pixel loss by 1 + A s / mean(s), s the temporal std of the frame's "
                            "slice over its cine (the moving heart); 0 (default) = the plain loss")
    codec.add_argument("--pixel_weight", type=finite_float, default=1.0, help="titok_dit: weight of the decoded-frame L1 loss")
    codec.add_argument("--dice_weight", type=finite_float, default=None,
                       help="titok_dit: weight of 1 - Dice of the decoded ED/ES frames' segmentation (default 0.1); "
                            "nnmamba_seg: weight of the Dice loss beside cross-entropy (default 1.0)")
    codec.add_argument("--volume_weight", type=finite_float, default=0.1, help="titok_dit: weight of the LV/RV area preservation term")
    codec.add_argument("--sampler_steps", type=int, default=0,
                       help="titok_dit: 0 = one-step estimate for the decoded-frame terms; 1..8 = decode through the sampler (step 3)")
    opt = parser.add_argument_group("optimisation")
    add_dataclass_flags(opt, EngineConfig, exclude=("result_path", "net_name", *RUN_FLAGS))
    AugmentConfig.add_argparse_args(parser.add_argument_group("MRAugment"))
    if model_name is not None:
        from models import model_entry

        _, config_cls = model_entry(model_name)
        add_dataclass_flags(parser.add_argument_group(f"{model_name} hyperparameters"), config_cls, show_defaults=False)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--model", default="promptmr")
    known, _ = pre.parse_known_args(argv)
    from models import MODEL_REGISTRY

    if known.model not in MODEL_REGISTRY:
        build_parser(None).error(f"unknown --model {known.model!r}; registered: {sorted(MODEL_REGISTRY)}")
    parser = build_parser(known.model)
    return resolve_task_defaults(parser, parser.parse_args(argv))


def resolve_task_defaults(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Mask family and acceleration defaults per task, checked against it: SNU tasks take one SNU mask
    kind and one acceleration (kept an int), cine one of the cine families and one or more R."""
    from data.cine_masks import CINE_FAMILIES

    if args.task == "acdc":
        if args.mask_type or args.acceleration:
            parser.error("--task acdc trains on fully sampled frames: --mask_type/--acceleration do not apply")
        return args
    if args.task == "cine":
        args.mask_type = args.mask_type or "uniform"
        if args.mask_type not in CINE_FAMILIES:
            parser.error(f"--task cine: --mask_type must be one of {list(CINE_FAMILIES)}, got {args.mask_type}")
        accs = args.acceleration or [4, 8, 10]
        args.acceleration = accs[0] if len(accs) == 1 else list(accs)
    else:
        args.mask_type = args.mask_type or "fixed"
        if args.mask_type in CINE_FAMILIES:
            parser.error(f"--mask_type {args.mask_type} is a cine mask family: use it with --task cine")
        accs = args.acceleration or [4]
        if len(accs) != 1:
            parser.error(f"--acceleration takes one value for --task {args.task}, got {accs}")
        args.acceleration = accs[0]
    for acc in (args.acceleration if isinstance(args.acceleration, list) else [args.acceleration]):
        if acc < 2:
            parser.error(f"--acceleration must be >= 2, got {acc}")
    return args


def model_hparams(args: argparse.Namespace) -> Dict[str, Any]:
    """Model hyperparameters given explicitly on the command line."""
    from models import model_entry

    return given_values(args, model_entry(args.model)[1])


def leaderboard_validation(folder, anatomy: str, num_adj_slices: int):
    """``validate(model, epoch) -> {"ssim": mean leaderboard SSIM}`` over the ``anatomy`` volumes of a
    leaderboard-style folder (``kspace/`` with undersampled k-space, ``image/`` with labels)."""
    import numpy as np
    import torch

    from data.formats import anatomy_from_name, read_image_file, read_kspace_file
    from data.transforms import undersampled_model_input
    from utils.inference import reconstruct_volume
    from utils.metrics import leaderboard_foreground_mask, leaderboard_ssim

    folder = Path(folder)
    files = [p for p in sorted((folder / "kspace").glob("*.h5")) if anatomy_from_name(p) == anatomy]
    if not files:
        raise FileNotFoundError(f"{folder / 'kspace'}: no {anatomy} volumes for validation")
    labels = {p: read_image_file(folder / "image" / p.name, keys=("image_label",)) for p in files}

    def validate(model, epoch: int):
        device = next(model.parameters()).device
        scores = []
        for path in files:
            vol = read_kspace_file(path)
            mask = torch.from_numpy(vol.mask)
            kspace = undersampled_model_input(torch.from_numpy(vol.kspace), mask, anatomy)
            recon = reconstruct_volume(model, kspace, mask, num_adj_slices, device=device).numpy()
            target, max_value = labels[path]["image_label"], labels[path]["max"]
            fg = leaderboard_foreground_mask(target, anatomy)
            scores.append(leaderboard_ssim(recon, target, max_value, fg))
        return {"ssim": float(np.concatenate(scores).mean())}

    return validate


def load_codec_part(path, expected: str):
    """A trained network for the codec from an artifact file or a checkpoint tag, checked to be ``expected``."""
    from models.artifacts import load_artifact, load_checkpoint_model

    path = Path(path)
    if not path.exists():
        raise SystemExit(f"error: {path}: weights not found (--{'tokenizer' if expected == 'titok' else 'segmenter'})")
    model, info = (load_checkpoint_model if path.is_dir() else load_artifact)(path)
    if info.model_name != expected:
        raise SystemExit(f"error: {path}: holds {info.model_name!r}, expected {expected!r}")
    return model


def acdc_training(args: argparse.Namespace, config, seed: int):
    """``(dataset, objective)`` of a TiTok-MRI codec network on the ACDC patients under --data_path_train."""
    from data.acdc_datasets import AcdcFrameDataset
    from models.titok_mri import TiTokMRI, neighbour_offsets
    from utils.objectives import CodecDiTObjective, SegmentationObjective, TokenizerObjective

    roots = [args.data_path_train]
    if args.model == "titok":
        try:
            objective = TokenizerObjective(args.pixel_loss, args.motion_weight)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
        return AcdcFrameDataset(roots, config.image_size, "frames"), objective
    if args.model == "nnmamba_seg":
        if config.spatial_dims != 2 or config.num_classes != 4 or config.in_channels != 1:
            raise SystemExit("error: --model nnmamba_seg --task acdc segments 2-D magnitude frames into 4 classes: "
                             "use --preset acdc_demo|acdc_tiny|acdc2d (spatial_dims 2, num_classes 4, in_channels 1)")
        size = args.frame_size or (load_codec_part(args.tokenizer, "titok").config.image_size if args.tokenizer else None)
        if size is None:
            raise SystemExit("error: --model nnmamba_seg --task acdc needs the codec's frame size: --frame_size H W or --tokenizer")
        dice = 1.0 if args.dice_weight is None else args.dice_weight
        return AcdcFrameDataset(roots, size, "labelled"), SegmentationObjective(dice)
    if not args.tokenizer:
        raise SystemExit("error: --model titok_dit needs the trained tokenizer: --tokenizer PATH")
    tokenizer = load_codec_part(args.tokenizer, "titok")
    segmenter = None
    if config.seg_channels:
        if not args.segmenter:
            raise SystemExit(f"error: --model titok_dit with seg_channels {config.seg_channels} needs --segmenter PATH "
                             f"(or --seg_channels 0 for no segmentation guidance)")
        segmenter = load_codec_part(args.segmenter, "nnmamba_seg")
    try:
        conditioner = TiTokMRI(tokenizer, None, segmenter, dit_config=config)
        dice = 0.1 if args.dice_weight is None else args.dice_weight
        objective = CodecDiTObjective(conditioner, args.pixel_weight, dice if segmenter else 0.0,
                                      args.volume_weight if segmenter else 0.0, args.sampler_steps, seed,
                                      args.motion_weight)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    dataset = AcdcFrameDataset(roots, config.image_size, "context", neighbour_offsets(config.num_neighbours))
    return dataset, objective


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    from data.augment import AugmentConfig, MRAugment
    from data.datasets import SliceDataset, VolumeImageDataset, collate_training
    from data.masks import MaskSampler
    from data.transforms import TrainingTransform
    from models import ACDC_MODELS, CINE_MODELS, CLASSIFIERS, OTHER_MODELS, build_config, model_entry
    from utils.engine import EngineConfig, prefer_interpreter_ninja, resume_state, shutdown_distributed, train
    from utils.objectives import ClassificationObjective, ReconstructionObjective

    prefer_interpreter_ninja()  # same ninja, so CPU Adam compiles once, whether or not the venv is activated

    engine_kwargs = {"result_path": args.result_path, "net_name": args.net_name,
                     **given_values(args, EngineConfig, exclude=("result_path", "net_name"))}
    # Everything that can be wrong is checked before DeepSpeed starts or anything is written.
    try:
        engine_cfg = EngineConfig(**engine_kwargs)
    except ValueError as exc:  # the message starts with the field, i.e. the flag's name
        raise SystemExit(f"error: --{exc}") from None
    resume = resume_state(engine_cfg)
    if resume and int(resume["epoch"]) >= engine_cfg.stop_epoch:
        raise SystemExit(f"error: {args.restart_from_checkpoint}: checkpoint is at epoch {resume['epoch']}; "
                         f"--stop_epoch {engine_cfg.stop_epoch} leaves nothing to train")
    hparams = model_hparams(args)
    if resume:
        if resume["model_name"] != args.model:
            raise SystemExit(f"error: {args.restart_from_checkpoint}: checkpoint holds {resume['model_name']!r}, not --model {args.model!r}")
        config = build_config(args.model, **resume["model_config"])
        clashes = {k: v for k, v in hparams.items() if getattr(config, k) != v}
        if clashes or args.preset:
            raise SystemExit(f"error: the model config comes from the checkpoint; drop --preset/{sorted(clashes)}")
    else:
        config = build_config(args.model, args.preset, **hparams)
    model_cls, _ = model_entry(args.model)
    is_classifier = args.model in CLASSIFIERS
    if args.task == "acdc" and args.model not in ACDC_MODELS:
        raise SystemExit(f"error: --task acdc trains the TiTok-MRI codec networks {list(ACDC_MODELS)}, not --model {args.model}")
    if args.model in ACDC_MODELS and args.task != "acdc":
        raise SystemExit(f"error: --model {args.model} trains on ACDC frames: use --task acdc")
    if args.model in OTHER_MODELS and args.task != "acdc":
        raise SystemExit(f"error: --model {args.model} has no training objective in train.py")

    if not is_classifier and args.task is None:
        raise SystemExit("error: --task {brain,knee,cine} is required for reconstruction models")
    if args.model in CINE_MODELS and args.task != "cine":
        raise SystemExit(f"error: --model {args.model} reconstructs cine frames: use --task cine")
    if args.adversarial_weight > 0 and not getattr(config, "discriminator_width", 0):
        raise SystemExit(f"error: --adversarial_weight needs a model with a discriminator (e.g. --model kgmgt "
                         f"--discriminator_width 32); --model {args.model} has none")
    if not is_classifier and args.task != "acdc":
        try:
            recon_objective = ReconstructionObjective(args.loss, args.perceptual_weight, args.perceptual_vgg,
                                                      args.adversarial_weight, args.gradient_penalty_weight, engine_cfg.seed)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
    if is_classifier:
        dataset = VolumeImageDataset([args.data_path_train])
        collate_fn, objective = None, ClassificationObjective()
    elif args.task == "acdc":
        from data.acdc_datasets import collate_acdc

        if args.data_path_val:
            raise SystemExit("error: --data_path_val is not supported with --task acdc: score the codec with "
                             "python scripts/codec.py evaluate")

        dataset, objective = acdc_training(args, config, engine_cfg.seed)
        collate_fn = collate_acdc
    elif args.task == "cine":
        from data.cine_datasets import CineSliceDataset, CineTrainingTransform
        from data.cine_masks import CineMaskSampler

        if args.data_path_val:
            raise SystemExit("error: --data_path_val is not supported with --task cine yet: evaluate checkpoints with "
                             "reconstruct.py/evaluate.py --task cine")
        sampler = CineMaskSampler(args.mask_type, args.acceleration, engine_cfg.seed)
        dataset = CineSliceDataset([args.data_path_train], getattr(config, "num_adj_slices", 1),
                                   CineTrainingTransform(sampler), views=args.cine_views)
        collate_fn, objective = collate_training, recon_objective
    else:
        aug_cfg = AugmentConfig.from_mapping({**vars(args), "num_epochs": engine_cfg.num_epochs})
        sampler = MaskSampler(args.mask_type, args.acceleration, engine_cfg.seed)
        augment = MRAugment(aug_cfg) if aug_cfg.aug_on else None
        transform = TrainingTransform(sampler.sample, augment=augment, seed=engine_cfg.seed)
        dataset = SliceDataset(args.data_path_train, args.task, getattr(config, "num_adj_slices", 1), transform)
        collate_fn, objective = collate_training, recon_objective

    validate = None
    if args.data_path_val and not is_classifier:
        validate = leaderboard_validation(args.data_path_val, args.task, getattr(config, "num_adj_slices", 1))

    from utils.io import OutputError, prepare_output_dir
    from utils.seed import seed_fix

    try:
        prepare_output_dir(engine_cfg.run_dir)  # last check: --result_path/--net_name can be written
    except OutputError as exc:
        raise SystemExit(f"error: --result_path/--net_name {exc}") from None
    seed_fix(engine_cfg.seed, engine_cfg.deterministic)  # model initialisation depends only on the seed
    model = model_cls(config)
    # the arguments as run: flags left out carry the engine's and MRAugment's values, not None
    run_args = {**vars(args), **dataclasses.asdict(engine_cfg)}
    if not is_classifier and args.task not in ("cine", "acdc"):
        run_args.update(dataclasses.asdict(aug_cfg))
    try:
        result = train(
            model,
            dataset,
            objective,
            engine_cfg,
            model_name=args.model,
            model_config=config.to_dict(),
            run_args=run_args,
            collate_fn=collate_fn,
            resume=resume,
            validate=validate,
        )
    finally:
        shutdown_distributed()
    if result.rank == 0:
        print(
            f"[train] done: epochs up to {result.last_epoch}, last checkpoint {result.checkpoint}, "
            f"{result.samples_per_second:.2f} samples/s (all ranks)"
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FileNotFoundError, ValueError) as exc:  # bad input: one clear line, non-zero exit
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
