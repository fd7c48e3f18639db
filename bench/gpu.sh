#!/usr/bin/env bash
# The figures BENCHMARKS.md marks "GPU: pending", in one pass on a CUDA machine, each step
# under its own time limit so that one slow or failing step leaves the others' figures.
#
#   bash bench/gpu.sh OUTDIR ROOT DATE
#
# ROOT holds DATE's ingested day (`sleep.py --root ROOT --date DATE --only ingest`, which can
# run elsewhere: these steps need no FFmpeg). Each step's output goes to OUTDIR/STEP.log and
# the last lines of it to stdout:
#   fragments  bench/fragments.py --device cuda (completion latency at 1M stored patterns)
#   night      vision, reconstruct and dream with configs/default.yaml on DATE (dream
#              training capped by GPU_DREAM_MINUTES, default 2; unset it for the config's own)
#   quality    bench/quality.py on that night: every frame, 5 damaged views of each
#   jepa       bench/jepa.py (our I-JEPA step against a stock timm ViT, bf16; eager unless
#              GPU_JEPA_COMPILE=1, which compiles both, ours with static masks)
#   cpc        bench/cpc.py (CPC training and embedding throughput)
# bench/reembed.py is left out: it makes its keyframes with FFmpeg.
#
# GPU_STEPS=fragments,night,... runs only those steps (a night's retry counts as night).
# GPU_SMOKE=1 shrinks every step to seconds, for a check of this script on a CPU.
set -u
OUTDIR=${1:?usage: bash bench/gpu.sh OUTDIR ROOT DATE}
ROOT=${2:?usage: bash bench/gpu.sh OUTDIR ROOT DATE}
DATE=${3:?usage: bash bench/gpu.sh OUTDIR ROOT DATE}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
mkdir -p "$OUTDIR"

rc=0
step() {  # step NAME SECONDS COMMAND...; leaves the command's exit status in rc
    local name=$1 limit=$2 started
    shift 2
    case ",${GPU_STEPS:-fragments,night,quality,jepa,cpc}," in
        *",${name%%-*},"*) ;;
        *) echo "== $name: not in GPU_STEPS"; rc=0; return ;;
    esac
    echo "== $name (limit ${limit}s, $(date +%T))"
    started=$(date +%s)
    timeout "$limit" "$@" >"$OUTDIR/$name.log" 2>&1
    rc=$?
    echo "   rc=$rc after $(( $(date +%s) - started )) s"
    tail -n "${GPU_TAIL:-25}" "$OUTDIR/$name.log"
}

night_sets=()
if [ -n "${GPU_DREAM_MINUTES-2}" ]; then night_sets+=(--set "dream.max_minutes=${GPU_DREAM_MINUTES-2}"); fi
# torch 2.11 on an H200 failed to compile the JEPA loss at its second step (the first graph with
# dynamic token counts; the trainer went on eagerly after 50 s). GPU_JEPA_COMPILE=1 compiles
# with models.jepa.static_masks (one shape every step, one graph: it compiles on torch 2.9.1's
# CPU inductor, where dynamic shapes fail too).
if [ "${GPU_JEPA_COMPILE:-0}" != 1 ]; then night_sets+=(--set models.jepa.compile=false)
else night_sets+=(--set models.jepa.static_masks=true); fi
if [ "${GPU_SMOKE:-0}" = 1 ]; then
    device=cpu
    fragments_args=(--patterns 20000 --queries 3)
    night_sets+=(--set models.jepa.steps=3 --set models.jepa.batch_size=8 --set models.jepa.warmup_steps=1
                 --set models.reconstruct.min_fragments=64 --set models.reconstruct.min_steps=5
                 --set models.reconstruct.max_steps=5 --set dream.steps=3 --set dream.warmup_steps=1
                 --set dream.image_size=16 --set dream.sample_steps=2 --set dream.dreams=2)
    jepa_args=(--tiny --steps 2 --warmup 1 --no-compile)
    cpc_args=(--tiny --steps 2 --warmup 1)
else
    device=cuda
    fragments_args=()
    jepa_args=(--steps 50 --warmup 20)
    if [ "${GPU_JEPA_COMPILE:-0}" = 1 ]; then jepa_args+=(--static-masks); else jepa_args+=(--no-compile); fi
    cpc_args=()
fi

"$PYTHON" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__,
      "cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")
EOF

step fragments "${GPU_LIMIT_FRAGMENTS:-60}" "$PYTHON" bench/fragments.py --device "$device" "${fragments_args[@]}"
night_limit=${GPU_LIMIT_NIGHT:-240}
night_started=$(date +%s)
step night "$night_limit" "$PYTHON" sleep.py --root "$ROOT" --date "$DATE" \
    --only vision,reconstruct,dream "${night_sets[@]}"
night_left=$(( night_limit - ($(date +%s) - night_started) ))
if [ "$rc" != 0 ] && [ "$night_left" -gt 30 ] && grep -q "vision: failed" "$OUTDIR/night.log"; then
    # A vision stage that diverges should not cost the other figures: once more at a third of the lr.
    night_sets+=(--set models.jepa.lr=0.0003)
    step night-lr3e-4 "$night_left" "$PYTHON" sleep.py --root "$ROOT" --date "$DATE" \
        --only vision,reconstruct,dream "${night_sets[@]}"
fi
quality_sets=()
for s in "${night_sets[@]}"; do [ "$s" = --set ] || quality_sets+=(--set "$s"); done
step quality "${GPU_LIMIT_QUALITY:-80}" "$PYTHON" bench/quality.py "$ROOT" --date "$DATE" \
    --frames all --views 5 "${quality_sets[@]}"
step jepa "${GPU_LIMIT_JEPA:-80}" "$PYTHON" bench/jepa.py --device "$device" "${jepa_args[@]}"
step cpc "${GPU_LIMIT_CPC:-40}" "$PYTHON" bench/cpc.py --device "$device" "${cpc_args[@]}"
