#!/usr/bin/env bash
# One prepared pass over everything that needs a GPU, for a machine lent for a few minutes (docs/benchmarks.md):
# the CUDA tests (AMP, fast paths under cuDNN, the bundle commands on the GPU), whole-volume inference of a
# 512x512x100 CT, the network benchmark at the KiTS patch (fp16 and bf16 AMP, memory, the GPU levers), the operator
# profile (where the time goes), the training loop and, last, torch.compile (compiling MNet took more than 90 s on
# the H200 on 2026-11-28, so it gets the longest cap and goes last).
# Every step has its own time cap so one slow step cannot eat the others. Logs and JSON go to $WORK (default
# gpu_results/); after every step they are also packed into $OUT/gpu_results.tar.gz when OUT is set (the lent
# machine returns only a few files).
# Usage: bash benchmarks/gpu_check.sh [STEP ...]   (python3 must import torch with CUDA and the bundle's
# requirements). With step names only those run: all steps together are capped at 705 s, more than one 600 s
# command on the lent machine, so run e.g. "network_fp16 inference inference_overlap profile network_memory
# network_bf16" first and "tests pipeline compile" second.
set -u
ONLY=" $* "
WORK=${WORK:-gpu_results}
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
PATCH="224 224 32"  # the paper's KiTS patch (32x224x224, thick axis last here), batch 2
step() {  # step NAME SECONDS COMMAND...: run with a cap, keep its log, print its tail and status
    local name=$1 cap=$2
    shift 2
    if [ "$ONLY" != "  " ] && [[ "$ONLY" != *" $name "* ]]; then return; fi
    local start=$SECONDS
    timeout "$cap" "$@" >"$WORK/$name.log" 2>&1
    local rc=$?
    echo "=== $name: rc=$rc in $((SECONDS - start)) s (cap $cap s)"
    tail -n 14 "$WORK/$name.log"
    if [ -n "${OUT:-}" ]; then tar -czf "$OUT/gpu_results.tar.gz" -C "$WORK" .; fi
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__, torch.cuda.get_device_name())"
step network_fp16 60 python3 -m benchmarks.network --device cuda --patch $PATCH --repeats 5 --no-memory \
    --models dynunet mnet mnet+channels_last mnet+group_norm mnet+merge_first mnet+cpu \
    mnet+channels_last+thick_first --out "$WORK/network_fp16.json"
step inference 60 python3 -m benchmarks.inference --shape "[512,512,100]" --patch "[224,224,32]" \
    --sw_batch_size 8 --repeats 2 --threads 16 --out "$WORK/inference.json"
# the same volume at overlap 0.25 (36 windows instead of 96): the sliding window's share of the < 2 s goal
step inference_overlap 45 python3 -m benchmarks.inference --shape "[512,512,100]" --patch "[224,224,32]" \
    --sw_batch_size 8 --repeats 2 --threads 16 --sw_overlap 0.25 --out "$WORK/inference_overlap.json"
step profile 45 python3 -m benchmarks.op_profile --device cuda --patch $PATCH --models dynunet mnet \
    --out "$WORK/op_profile.json"
# memory subprocesses re-run cuDNN's autotuning; deterministic kernels keep them short
# with cuDNN's workspace capped at 1 GiB: on 2026-11-28 checkpointing did not lower the peak on the H200
step network_memory 60 env CUDNN_CONV_WSCAP_DBG=1024 python3 -m benchmarks.network --device cuda --patch $PATCH \
    --repeats 2 --cudnn deterministic \
    --models mnet mnet+checkpointing --out "$WORK/network_memory.json"
step network_bf16 60 python3 -m benchmarks.network --device cuda --patch $PATCH --repeats 5 \
    --no-memory --amp-dtype bfloat16 --models dynunet mnet mnet+channels_last mnet+channels_last+thick_first \
    --out "$WORK/network_bf16.json"
step tests 200 python3 -m pytest -q --tb=short -p no:cacheprovider tests/test_gpu.py tests/test_workflows.py
step pipeline 60 python3 -m benchmarks.pipeline --device cuda --patch "[224,224,32]" --batch 2 --workers 12 \
    --threads 4 --cases 12 --steps 6 --repeats 2 --out "$WORK/pipeline.json"
step compile 115 python3 -m benchmarks.network --device cuda --patch $PATCH --repeats 3 --no-memory \
    --models dynunet mnet mnet+compile --out "$WORK/network_compile.json"
