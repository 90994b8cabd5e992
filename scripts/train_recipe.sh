#!/usr/bin/env bash
# The challenge's staged recipe, shared by the 13 train_*.sh wrappers.
#   usage: bash scripts/train_recipe.sh {brain|knee} {4|8} {1|2|3} [extra train.py flags...]
#          bash scripts/train_recipe.sh cnn                       [extra train.py flags...]
#          bash scripts/train_recipe.sh cine {1|2|3}              [extra train.py flags...]
#          bash scripts/train_recipe.sh titok {1|2|3}             [extra train.py flags...]
# Environment: DATA_ROOT (default ../Data), RESULT_ROOT (default ../result), PRESET (challenge | demo |
# tiny: model preset and epoch budget), MODEL (default promptmr), NUM_WORKERS (default 4),
# NUM_GPUS (>1: run under the deepspeed launcher), SEED (default 430), KEEP_CHECKPOINTS (default 1).
#
# Step 1: epochs 1-15, lr 3e-4, cosine planned over 20 epochs, warm-up 1, fixed masks, no augmentation.
# Step 2: from step 1's last epoch, lr 2e-4, cosine planned over 35, stop at 30, MRAugment (fliph,
#         translation 5%, shearing 5 deg, scaling 10%, weight 0.5 each, delay 15, exp_decay 10).
# Step 3: from step 2's last epoch, lr 1e-4 -> 0 at 45; brain adds flipv (delay 30, exp_decay 100);
#         knee: no augmentation, random masks (random_spaced at acc 4, random_offset at acc 8).
# Cine (CMRxRecon, $DATA_ROOT/CMRxRecon/MultiCoil/Cine/TrainingSet): one model for R 4/8/10
# (net ${MODEL}_cine, preset cine_$PRESET), CINE_MASK masks (default uniform: the 2023 task), circular
# neighbouring frames; step 1 lr LR1, step 2 from step 1 at LR2, step 3 from step 2 at LR3 -> 0, the
# epochs C1/C2/C3 (the PromptMR+ reference trains 12 epochs at 2e-4 for CMRxRecon).
# TiTok-MRI codec (ACDC, $DATA_ROOT/ACDC/training; models/titok.py, models/dit.py, scripts/codec.py):
#   step 1  the tokenizer (net titok_tokenizer: pixel l2 + VQ loss), preset paper|demo|tiny for PRESET
#           challenge|demo|tiny, TITOK_TOKENS=32|64|128 overrides K;
#   step 2  the 2-D segmenter (net titok_seg, nnmamba_seg acdc2d|acdc_demo|acdc_tiny: cross-entropy + Dice on
#           the ED/ES labels), then the DiT decoder (net titok_dit) with both frozen: flow + pixel + Dice of the
#           decoded ED/ES frames + LV/RV area terms;
#   step 3  the DiT fine-tuned through its few-step sampler (--sampler_steps), lower learning rate, then the
#           three networks exported to CODEC_WEIGHTS (default $RESULT_ROOT/titok_weights) for scripts/codec.py.
#   TITOK_MOTION_WEIGHT=A (default TMW of the preset row) weights the tokenizer's pixel loss (step 1) by
#   1 + A s / mean(s), s the temporal std of the frame's slice over its cine (train.py --motion_weight);
#   TITOK_DIT_MOTION_WEIGHT (default DMW) does the same for the DiT's decoded-frame pixel term (steps 2-3).
#   TITOK_SEGMENTER=<a titok_seg checkpoint folder> skips the segmenter's training in step 2 and uses it in
#   steps 2 and 3 (it does not depend on K: train it once for the K = 32/64/128 codecs).
#   Extra flags go to every train.py run of the step.
# demo/tiny shrink the epoch counts (E1/E2/E3 below) and keep the same shape of schedule; demo raises the
# learning rates (LR1..LR3) for its small model.
# MODEL=kgmgt (cine): KGMgT's recipe (shared/research/cine_tokenizer.md §1.4): L1 loss, Adam without weight
# decay or gradient clipping, the offset layers at their scaled learning rates (model config), challenge
# learning rates 1e-3/5e-4/2e-4 (the released lr_g is 1e-3); PERCEPTUAL_VGG=<local VGG19 weights> adds the
# relu5_1 perceptual loss (1e-4), KGMGT_GAN=1 the WGAN-GP term (1e-6, penalty 10) with a width-32 critic.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
PRESET="${PRESET:-challenge}"
MODEL="${MODEL:-promptmr}"
NUM_WORKERS="${NUM_WORKERS:-4}"
NUM_GPUS="${NUM_GPUS:-1}"
SEED="${SEED:-430}"

# LR1..LR3: the steps' max learning rates. The demo's small model learns faster with larger steps
# (brain acc 4, demo data: validation SSIM 0.912/0.925 after epochs 1/2 at 1e-3 vs 0.894/0.913 at 3e-4).
# tiny takes the demo's rates without warm-up: its 12 steps per model must beat zero-filled (tiny demo
# leaderboard: 0.850 vs 0.828; at 3e-4 with a warm-up epoch 0.78-0.81). Cine keeps its own tiny rates.
case "$PRESET" in
    challenge) E1=15 P1=20 E2=30 P2=35 E3=45 WARM=1 CNN_EPOCHS=5 CNN_PRESET=default LR1=3e-4 LR2=2e-4 LR3=1e-4
               C1=6 CP1=8 C2=10 CP2=12 C3=12 ;;
    demo)      E1=3  P1=4  E2=6  P2=7  E3=9  WARM=1 CNN_EPOCHS=3 CNN_PRESET=default LR1=1e-3 LR2=7e-4 LR3=3e-4
               C1=2 CP1=3 C2=4 CP2=5 C3=6 ;;
    tiny)      E1=1  P1=2  E2=2  P2=3  E3=3  WARM=0 CNN_EPOCHS=6 CNN_PRESET=default LR1=1e-3 LR2=7e-4 LR3=3e-4
               C1=1 CP1=2 C2=2 CP2=3 C3=3 ;;
    *) echo "error: PRESET must be challenge, demo or tiny, got '$PRESET'" >&2; exit 2 ;;
esac

if [[ "$NUM_GPUS" -gt 1 ]]; then
    launch=(deepspeed --num_gpus "$NUM_GPUS" train.py)
else
    launch=("$MRI_PYTHON" train.py)
fi
# KEEP_CHECKPOINTS (default 1): epoch tags kept per step; the last one is what the next step restarts
# from (and what export/reconstruct read). 0 keeps every epoch (about 0.5 GB each for PromptMR+).
KEEP_CHECKPOINTS="${KEEP_CHECKPOINTS:-1}"
common=(--result_path "$RESULT_ROOT" --seed "$SEED" --num_workers "$NUM_WORKERS" --keep_last_checkpoints "$KEEP_CHECKPOINTS")

if [[ "${1:-}" == "cnn" ]]; then
    shift
    exec "${launch[@]}" --net_name anatomy_cnn --step 1 --model anatomy_cnn --preset "$CNN_PRESET" \
        --data_path_train "$DATA_ROOT/train" --num_epochs "$CNN_EPOCHS" --warmup_epochs 0 \
        --max_lr 1e-3 --min_lr 0 --gradient_accumulation_steps 1 --gradient_clipping 1.0 "${common[@]}" "$@"
fi

if [[ "${1:-}" == "titok" ]]; then
    [[ $# -ge 2 ]] || { echo "usage: $0 titok {1|2|3} [train.py flags...]" >&2; exit 2; }
    step="$2"; shift 2
    # TE/SE/DE2/DE3: epochs of the tokenizer, segmenter, DiT step 2 and DiT step 3 (its last epoch); TB batch size;
    # TW warm-up epochs; TLR/SLR/DLR/DLR3 learning rates (TiTok: AdamW 1e-4, wd 1e-4; DiT: 1e-4, no weight decay); STEPS sampler steps;
    # TMW/DMW the motion weights A of the tokenizer's and the DiT's pixel losses; DDW3/DVW3 the Dice and LV/RV area
    # weights of step 3 (the DiT decoded through its sampler: the frames the codec scores; step 2 keeps train.py's
    # 0.1/0.1). Demo (K = 64, demo data, Dice ratio decoded/original): the tokenizer at 30 epochs without motion
    # weight and step 3 at 0.1/0.1: 0.81; motion weight 10: 0.864 (the DiT added little over the stage-1 decoder,
    # 0.863); then two step-3 epochs at Dice 1.0 / area 0.5: 0.898; this row (60 tokenizer epochs): 0.920 (0.909
    # scored by a segmenter trained apart, SEED 431), K = 32: 0.943 (0.896).
    case "$PRESET" in
        challenge) TP=paper SP=acdc2d    DP=paper TE=100 SE=50 DE2=100 DE3=120 TB=32 TW=1 TLR=1e-4 SLR=1e-3 DLR=1e-4 DLR3=2e-5 STEPS=4 TMW=0  DMW=0 DDW3=0.1 DVW3=0.1 ;;
        demo)      TP=demo  SP=acdc_demo DP=demo  TE=60  SE=50 DE2=10  DE3=12  TB=16 TW=1 TLR=1e-3 SLR=2e-3 DLR=5e-4 DLR3=1e-4 STEPS=4 TMW=10 DMW=0 DDW3=1.0 DVW3=0.5 ;;
        tiny)      TP=tiny  SP=acdc_tiny DP=tiny  TE=1   SE=1  DE2=1   DE3=2   TB=4  TW=0 TLR=1e-3 SLR=1e-3 DLR=1e-3 DLR3=1e-4 STEPS=2 TMW=0  DMW=0 DDW3=0.1 DVW3=0.1 ;;
    esac
    tok_ckpt="$RESULT_ROOT/titok_tokenizer/checkpoints/step1/epoch-$TE"
    seg_ckpt="${TITOK_SEGMENTER:-$RESULT_ROOT/titok_seg/checkpoints/step2/epoch-$SE}"
    dit_ckpt="$RESULT_ROOT/titok_dit/checkpoints/step2/epoch-$DE2"
    k_flags=()
    [[ -n "${TITOK_TOKENS:-}" ]] && k_flags=(--num_latent_tokens "$TITOK_TOKENS")
    motion=(--motion_weight "${TITOK_MOTION_WEIGHT:-$TMW}")
    dit_motion=(--motion_weight "${TITOK_DIT_MOTION_WEIGHT:-$DMW}")
    acdc=(--task acdc --data_path_train "$DATA_ROOT/ACDC/training" "${common[@]}" --batch_size "$TB"
          --gradient_accumulation_steps 1 --gradient_clipping 1.0 --min_lr 0)
    case "$step" in
        1) exec "${launch[@]}" --net_name titok_tokenizer --step 1 --model titok --preset "$TP" "${k_flags[@]}" "${acdc[@]}" "${motion[@]}" \
               --max_lr "$TLR" --warmup_epochs "$TW" --num_epochs "$TE" "$@" ;;
        2) if [[ -n "${TITOK_SEGMENTER:-}" ]]; then
               [[ -d "$TITOK_SEGMENTER" ]] || { echo "error: TITOK_SEGMENTER=$TITOK_SEGMENTER is not a checkpoint folder" >&2; exit 2; }
           else
               "${launch[@]}" --net_name titok_seg --step 2 --model nnmamba_seg --preset "$SP" --tokenizer "$tok_ckpt" "${acdc[@]}" \
                   --max_lr "$SLR" --warmup_epochs "$TW" --num_epochs "$SE" "$@" || exit $?
           fi
           exec "${launch[@]}" --net_name titok_dit --step 2 --model titok_dit --preset "$DP" "${k_flags[@]}" \
               --tokenizer "$tok_ckpt" --segmenter "$seg_ckpt" "${acdc[@]}" "${dit_motion[@]}" --weight_decay 0 \
               --max_lr "$DLR" --warmup_epochs "$TW" --num_epochs "$DE2" "$@" ;;
        3) "${launch[@]}" --net_name titok_dit --step 3 --model titok_dit --restart_from_checkpoint "$dit_ckpt" \
               --continue_lr_scheduler false \
               --tokenizer "$tok_ckpt" --segmenter "$seg_ckpt" "${acdc[@]}" "${dit_motion[@]}" --weight_decay 0 --sampler_steps "$STEPS" \
               --dice_weight "$DDW3" --volume_weight "$DVW3" --max_lr "$DLR3" --warmup_epochs 0 --num_epochs "$DE3" --stop_epoch "$DE3" "$@" || exit $?
           weights="${CODEC_WEIGHTS:-$RESULT_ROOT/titok_weights}"
           for pair in "$tok_ckpt:titok" "$seg_ckpt:titok_seg" "$RESULT_ROOT/titok_dit/checkpoints/step3/epoch-$DE3:titok_dit"; do
               "$MRI_PYTHON" -m models.artifacts export --checkpoint "${pair%:*}" --out "$weights/${pair##*:}.safetensors" || exit $?
           done ;;
        *) echo "error: step must be 1, 2 or 3" >&2; exit 2 ;;
    esac
    exit 0
fi

if [[ "${1:-}" == "cine" ]]; then
    [[ $# -ge 2 ]] || { echo "usage: $0 cine {1|2|3} [train.py flags...]" >&2; exit 2; }
    step="$2"; shift 2
    [[ "$PRESET" == tiny ]] && LR1=3e-4 LR2=2e-4 LR3=1e-4 WARM=1
    net="${MODEL}_cine"
    ckpt="$RESULT_ROOT/$net/checkpoints"
    model_flags=() first_flags=()
    if [[ "$MODEL" == kgmgt ]]; then
        model_flags=(--loss l1 --weight_decay 0 --gradient_clipping 0)
        [[ "$PRESET" == challenge ]] && LR1=1e-3 LR2=5e-4 LR3=2e-4
        [[ -n "${PERCEPTUAL_VGG:-}" ]] && model_flags+=(--perceptual_vgg "$PERCEPTUAL_VGG" --perceptual_weight 1e-4)
        if [[ "${KGMGT_GAN:-0}" == 1 ]]; then
            model_flags+=(--adversarial_weight 1e-6 --gradient_penalty_weight 10)
            first_flags=(--discriminator_width 32)  # a model config field: steps 2 and 3 take it from the checkpoint
        fi
    fi
    run=("${launch[@]}" --net_name "$net" --model "$MODEL" --task cine --mask_type "${CINE_MASK:-uniform}"
         --acceleration 4 8 10 --data_path_train "$DATA_ROOT/CMRxRecon/MultiCoil/Cine/TrainingSet" "${common[@]}"
         "${model_flags[@]}")
    case "$step" in
        1) exec "${run[@]}" --step 1 --preset "cine_$PRESET" "${first_flags[@]}" --max_lr "$LR1" --min_lr 0 \
               --warmup_epochs "$WARM" --num_epochs "$CP1" --stop_epoch "$C1" "$@" ;;
        2) exec "${run[@]}" --step 2 --restart_from_checkpoint "$ckpt/step1/epoch-$C1" --continue_lr_scheduler false \
               --max_lr "$LR2" --min_lr 0 --warmup_epochs 0 --num_epochs "$CP2" --stop_epoch "$C2" "$@" ;;
        3) exec "${run[@]}" --step 3 --restart_from_checkpoint "$ckpt/step2/epoch-$C2" --continue_lr_scheduler false \
               --max_lr "$LR3" --min_lr 0 --warmup_epochs 0 --num_epochs "$C3" --stop_epoch "$C3" "$@" ;;
        *) echo "error: step must be 1, 2 or 3" >&2; exit 2 ;;
    esac
fi

[[ $# -ge 3 ]] || { echo "usage: $0 {brain|knee} {4|8} {1|2|3} [train.py flags...]" >&2; exit 2; }
anatomy="$1" acc="$2" step="$3"; shift 3
[[ "$anatomy" == brain || "$anatomy" == knee ]] || { echo "error: anatomy must be brain or knee" >&2; exit 2; }
[[ "$acc" == 4 || "$acc" == 8 ]] || { echo "error: acceleration must be 4 or 8" >&2; exit 2; }
net="${MODEL}_${anatomy}_acc${acc}"
ckpt="$RESULT_ROOT/$net/checkpoints"
run=("${launch[@]}" --net_name "$net" --model "$MODEL" --task "$anatomy" --acceleration "$acc"
     --data_path_train "$DATA_ROOT/train" "${common[@]}")
aug=(--aug_on --aug_strength 0.55 --aug_weight_fliph 0.5 --aug_weight_translation 0.5
     --aug_max_translation_x 0.05 --aug_max_translation_y 0.05 --aug_weight_shearing 0.5
     --aug_max_shearing_x 5 --aug_max_shearing_y 5 --aug_weight_scaling 0.5 --aug_max_scaling 0.1)

case "$step" in
    1) exec "${run[@]}" --step 1 --preset "$PRESET" --mask_type fixed --max_lr "$LR1" --min_lr 0 \
           --warmup_epochs "$WARM" --num_epochs "$P1" --stop_epoch "$E1" "$@" ;;
    2) exec "${run[@]}" --step 2 --restart_from_checkpoint "$ckpt/step1/epoch-$E1" --continue_lr_scheduler false \
           --mask_type fixed --max_lr "$LR2" --min_lr 0 --warmup_epochs 0 --num_epochs "$P2" --stop_epoch "$E2" \
           "${aug[@]}" --aug_delay "$E1" --aug_exp_decay 10 "$@" ;;
    3) if [[ "$anatomy" == brain ]]; then
           extra=("${aug[@]}" --aug_weight_flipv 0.5 --aug_delay "$E2" --aug_exp_decay 100 --mask_type fixed)
       elif [[ "$acc" == 4 ]]; then
           extra=(--mask_type random_spaced)
       else
           extra=(--mask_type random_offset)
       fi
       exec "${run[@]}" --step 3 --restart_from_checkpoint "$ckpt/step2/epoch-$E2" --continue_lr_scheduler false \
           --max_lr "$LR3" --min_lr 0 --warmup_epochs 0 --num_epochs "$E3" --stop_epoch "$E3" "${extra[@]}" "$@" ;;
    *) echo "error: step must be 1, 2 or 3" >&2; exit 2 ;;
esac
