#!/usr/bin/env bash
# The training runs of Yu et al. (NeurIPS 2024), "Advancing Training
# Efficiency of Deep Spiking Neural Networks through Rate-based
# Backpropagation", as snnc commands: one per model, data set and mode.
#
# The settings are the official code's (github.com/Tab-ct/rate-based-
# backpropagation, experiment/*/config/config.py and main.py):
#   SGD with momentum 0.9; weight decay on conv/linear weights only (biases
#   and batch norm are not decayed); cosine annealing to 0 stepped once per
#   epoch (CosineAnnealingLR, T_max = epochs); cross-entropy without label
#   smoothing;
#   CIFAR-10/100:  lr 0.1, weight decay 5e-4, batch 128, 300 epochs, T = 4
#   CIFAR10-DVS:   lr 0.1, weight decay 5e-4, batch 128, 300 epochs, T = 10
#   ImageNet:      lr 0.2, weight decay 2e-5, batch 512, 100 epochs, T = 4
# In rate mode `--paper-grad-scale` divides the gradients by T, as the
# official code's loss wrapper does.
#
# Differences left: the official CIFAR runs also use AutoAugment's CIFAR-10
# policy and Cutout (one 16×16 hole), which snnc does not implement (snnc
# crops with 4-pixel padding and flips); their normalisation divides by
# other standard deviations (CIFAR-10: 0.2023, 0.1994, 0.2010, the mean of
# per-image stds; CIFAR-100: 0.2675, 0.2565, 0.2761) where snnc uses the
# per-channel population std, a scale the first batch norm absorbs.
# ImageNet runs use snnc's image folder loader (random resized crop and
# flip; resize to 256 and centre crop 224 for validation, as the official
# code does).
#
# Data (none can be downloaded by snnc):
#   CIFAR-10:    the binary version, DIR = cifar-10-batches-bin
#   CIFAR-100:   the binary version, DIR = cifar-100-binary (train.bin, test.bin)
#   CIFAR10-DVS: event files per class, DIR/Train/<label>/ and DIR/Test/<label>/
#                (see `snnc data --help` and the README's event-camera section)
#   ImageNet:    DIR/train/<class>/*.JPEG and DIR/val/<class>/*.JPEG
#
# Usage: scripts/paper.sh [list]             print every command (default)
#        scripts/paper.sh run NAME [DATA_DIR] run one (NAME as listed)
set -euo pipefail
cd "$(dirname "$0")/.."

SNNC="${SNNC:-target/release/snnc}"
CIFAR="--epochs 300 --batch 128 --lr 0.1 --optimizer sgd --momentum 0.9 --weight-decay 5e-4 --schedule cosine-epochs"
IMAGENET="--epochs 100 --batch 512 --lr 0.2 --optimizer sgd --momentum 0.9 --weight-decay 2e-5 --schedule cosine-epochs"

# name | model | data | T | settings
runs() {
    for mode in bptt rate; do
        for model in resnet18 resnet19 vgg11 vgg13; do
            echo "${model}-cifar10-${mode}|${model}|cifar10|4|${CIFAR}|${mode}"
            echo "${model}-cifar100-${mode}|${model}|cifar100|4|${CIFAR}|${mode}"
        done
        echo "vggsnn_dvs-cifar10dvs-${mode}|vggsnn_dvs|events|10|${CIFAR}|${mode}"
        for model in sew_resnet34 preact_resnet34; do
            echo "${model}-imagenet-${mode}|${model}|images|4|${IMAGENET}|${mode}"
        done
    done
}

command_for() {
    local name="$1" dir="${2:-DATA_DIR}"
    local line model data steps settings mode scale=""
    line="$(runs | grep "^${name}|" || true)"
    if [ -z "$line" ]; then
        echo "paper.sh: no run named '${name}'; \`scripts/paper.sh list\` lists them" >&2
        exit 2
    fi
    IFS='|' read -r _ model data steps settings mode <<<"$line"
    [ "$mode" = rate ] && scale=" --paper-grad-scale"
    local file="examples/models/${model}.snn" prep=""
    # CIFAR-100's classifier has 100 outputs: the examples are written for
    # CIFAR-10, so the run trains a copy whose last `linear 10` says 100.
    if [ "$data" = cifar100 ]; then
        file="runs/paper-models/${model}_cifar100.snn"
        prep="mkdir -p runs/paper-models && sed 's/^linear 10\$/linear 100/' examples/models/${model}.snn > ${file} && "
    fi
    case "$data" in
        cifar10) data="--data cifar10 --data-dir ${dir}" ;;
        cifar100) data="--data cifar100 --data-dir ${dir}" ;;
        events) data="--data events:${dir}" ;;
        images) data="--data images:${dir}" ;;
    esac
    echo "${prep}${SNNC} train ${file} ${data} --mode ${mode} -T ${steps} ${settings}${scale} --out runs/paper-${name}"
}

case "${1:-list}" in
    list)
        runs | while IFS='|' read -r name _; do
            command_for "$name"
        done
        ;;
    run)
        [ $# -ge 2 ] || { echo "usage: scripts/paper.sh run NAME [DATA_DIR]" >&2; exit 2; }
        cmd="$(command_for "$2" "${3:-DATA_DIR}")"
        echo "$cmd"
        exec bash -c "$cmd"
        ;;
    *)
        echo "usage: scripts/paper.sh [list | run NAME [DATA_DIR]]" >&2
        exit 2
        ;;
esac
