#!/usr/bin/env bash
# IGGT GPU suite: one script, one GPU (H100/H200), at most 8 minutes. Run from anywhere:
#
#   bash benchmarks/gpu_suite.sh                  # GPU: writes benchmarks/gpu_suite.json
#   bash benchmarks/gpu_suite.sh --cpu            # no GPU: a miniature of every step (~30 s), writes
#                                                 #   benchmarks/results/gpu_suite_cpu.json (never the GPU file)
#   IGGT_GPU_SUITE_BUDGET=300 bash benchmarks/gpu_suite.sh      # or --budget 300
#   bash benchmarks/gpu_suite.sh --steps forward,train_step     # a subset; --help lists every size flag
#
# What it runs (python -m benchmarks.gpu_suite; random weights, nothing downloaded):
#   1 forward     vggt-large and iggt-large, aggregator only and full model, eval + inference mode + bf16
#                 autocast, 1/10/50/100/200 frames at 336x518: median CUDA-synchronised time and
#                 torch.cuda.max_memory_allocated, beside VGGT's published H100 table with ratios.
#   2 max frames  the largest frame count whose iggt-large full forward fits in GPU memory at 336x518, exact
#                 global attention and merged many-view attention ({"kind": "merged", "ratio": 0.9};
#                 "unavailable" if the model does not take it): doubling from 128, then bisection; each probe
#                 at most 60 s (aborted past it, and not started when predicted to take longer), OOM caught.
#                 Near the limit one forward takes minutes, so within 8 minutes this is usually a measured
#                 lower bound plus a linear prediction from the peaks; for a measured bracket run
#                 `bash benchmarks/gpu_suite.sh --steps max_frames --budget 1800 --probe-limit 400`.
#   3 train step  forward + backward + AdamW step of configs/iggt_large.yaml's model (iggt-large, gradient
#                 checkpointing, bf16 autocast, that config's loss) on an 8-view 336x518 synthetic scene.
#   4 FSDP2 fit   iggt fit --config configs/synthetic_tiny.yaml --config configs/strategies/fsdp.yaml on 1 GPU,
#                 2 steps, validation off: whether it ran and how long it took.
#
# How long: a budget of 450 s (--budget / $IGGT_GPU_SUITE_BUDGET), counted from this script's start. The steps
# run as 1, 3, 4, 2 (the open-ended search last) with 50/10/15/25 % of what is left each (what one step leaves
# goes to the next); work not started in time is reported as skipped, with the reason. A run ends by the
# budget, give or take the one forward in flight; a hard stop (SIGINT, then SIGKILL 8 s later) comes 20 s
# after it, and as the JSON is rewritten after every step, even then the finished steps are kept.
#
# How to read the output: stdout is one Markdown table, one row per measurement:
#   step | model | what (aggregator/full, exact/merged, ...) | frames | time s | peak GB (10^9 bytes, incl. the
#   fp32 weights) | VGGT H100 s | VGGT GB | time x | memory x (ours / published) | status.
# VGGT's table (facebookresearch/vggt README, "Runtime and GPU Memory", Flash Attention 3) is of the
# aggregator alone, so the "aggregator" rows are the like-for-like comparison; "full" rows add the heads.
# Max-frames rows: "fits N, fails M (why the search stopped)" plus a straight-line prediction from the
# probes' peaks (a prediction, not a measurement). Progress goes to stderr. The JSON holds every run, the
# environment (GPU, torch, git commit), the published table with its source, and each skip's reason.
# Exit status: 0 when every step ran or was skipped, 1 when a step failed, 130 when interrupted.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -n "${VIRTUAL_ENV:-}" ]]; then
        python="$VIRTUAL_ENV/bin/python"
    elif [[ -x "$repo/.venv/bin/python" ]]; then
        python="$repo/.venv/bin/python"
    else
        python="python3"
    fi
fi

# The budget the driver will use (its --budget flag wins over the environment), for the hard stop.
budget="${IGGT_GPU_SUITE_BUDGET:-450}"
prev=""
for arg in "$@"; do
    case "$arg" in
        --budget=*) budget="${arg#--budget=}" ;;
        *) if [[ "$prev" == "--budget" ]]; then budget="$arg"; fi ;;
    esac
    prev="$arg"
done
if ! [[ "$budget" =~ ^[0-9]+([.][0-9]*)?$ ]]; then
    echo "gpu_suite.sh: --budget must be a number of seconds; got '$budget'" >&2
    exit 2
fi
hard_limit="$(awk -v b="$budget" 'BEGIN { printf "%d", b + 20.999 }')"

# The driver counts its budget from here, so interpreter start-up and imports are part of it.
IGGT_SUITE_T0="$(date +%s.%N)"
export IGGT_SUITE_T0
cd "$repo"   # python -m benchmarks.gpu_suite: the repository root is where the benchmarks package is found
exec timeout --signal=INT --kill-after=8 "$hard_limit" "$python" -m benchmarks.gpu_suite "$@"
