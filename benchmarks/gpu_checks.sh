#!/usr/bin/env bash
# The GPU checks in one run, for a machine with one CUDA GPU and PyTorch, transformers and accelerate installed
# (the repository is used in place, not installed):
#
#     bash benchmarks/gpu_checks.sh [OUT_DIR]      # default: $OUT, else benchmarks/results
#
# In order of importance, each part time-boxed so that one stuck part leaves the others their time:
#   1. the GPU tests: DeviceStep's CUDA-graph and eager steps follow the schedule, a failed capture runs eagerly,
#      no synchronising call between stage entries (torch.cuda.set_sync_debug_mode("error")), meta-training with the
#      model on the GPU and the schedule on the host gives the CPU run's LRs and theta;
#   2. benchmarks/sync_profile.py: device synchronisations per optimizer step, from a profile;
#   3. benchmarks/speed.py --only overhead: transfer mode vs Trainer + cosine, us per step and steps/s ratio;
#   4. benchmarks/speed.py --only meta: the meta step's cost in plain steps, and its memory;
#   5. FSDP2 under accelerate on the GPU (tests/test_engines.py).
# Everything printed goes to OUT_DIR/gpu_checks.log; the benchmarks write their .json/.md there.
# PARTS="tests overhead" runs only those parts; OVERHEAD_REPEATS (default 7) sets the overhead's interleaved rounds.
set -u
out=${1:-${OUT:-benchmarks/results}}
mkdir -p "$out"
log="$out/gpu_checks.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
py=${PYTHON:-python3}

part() {  # part SECONDS NAME COMMAND...
    local seconds=$1 name=$2
    shift 2
    [[ -z "${PARTS:-}" || " $PARTS " == *" $name "* ]] || return 0
    echo "=== $name ($(date +%T), at most ${seconds}s)" | tee -a "$log"
    local start=$SECONDS
    timeout "$seconds" "$@" 2>&1 | tee -a "$log"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start))s" | tee -a "$log"
}

part 30 environment bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; $py -c \
'import torch, transformers, accelerate; print(torch.__version__, torch.version.cuda, transformers.__version__, \
accelerate.__version__, torch.cuda.get_device_name())'"
part 150 tests $py -m pytest -q -p no:cacheprovider -rs tests/test_device_step.py tests/test_host_reads.py \
    tests/test_meta_horizon.py::test_meta_training_next_to_a_gpu_steps_the_schedule_on_the_host_as_a_cpu_run_does
part 150 sync-profile $py benchmarks/sync_profile.py --out "$out"
part 240 overhead $py benchmarks/speed.py --device cuda --only overhead --repeats "${OVERHEAD_REPEATS:-7}" \
    --out "$out"
part 120 meta-step $py benchmarks/speed.py --device cuda --only meta --out "$out"
part 150 fsdp2 $py -m pytest -q -p no:cacheprovider -rs tests/test_engines.py -k fsdp2
