#!/usr/bin/env bash
# The GPU checks of the kernels and training issues in one run on one GPU: parity of the
# compiled Pallas kernels with the XLA references, then the kernel benchmark (the TFLOP/s
# table at the default launch settings, the fused norm's GB/s with a rows × warps × steps sweep,
# the linear-attention crossover), optionally the norm-attention launch sweep and the MFU table.
#
#   bash benchmarks/gpu_session.sh [OUT_DIR]      # logs land in OUT_DIR (default gpu_results)
#
# Each part has its own time limit in seconds (PARITY_S, ATTENTION_S, NORM_S, LINEAR_S,
# SWEEP_S, MFU_S; 0 skips a part) so one slow part cannot starve the next. The defaults, 565 s
# in all, fit a 10-minute call: parity took about 95 s before the Mosaic GPU tests joined it,
# table rows about 25 s before the mosaic row did. Extra arguments: PARITY_ARGS, KERNELS_ARGS
# (every kernels.py part), MFU_ARGS. The parity part includes the Mosaic GPU norm-attention
# kernels (tests/kernels/test_mosaic_gpu.py), never yet compiled for a GPU; to time a GPT with
# them: MFU_S=300 MFU_ARGS="--sizes 125M --settings bf16,bf16+auto,bf16+mosaic".
set -u
out=${1:-gpu_results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python -c "import jax, flax, sys; print('python', sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
} 2>&1 | tee "$out/device.txt"

part() {  # part NAME SECONDS COMMAND...: run unless SECONDS is 0, log to OUT/NAME.txt
  local name=$1 seconds=$2; shift 2
  [ "$seconds" = 0 ] && return
  echo "== $name (limit ${seconds}s)"
  timeout "$seconds" "$@" 2>&1 | tee "$out/$name.txt"
  echo "$name exit ${PIPESTATUS[0]}"
}

echo "== parity: compiled kernels vs XLA references (fp32 at full precision, bf16)"
JAX_PLATFORMS=cuda JAXLAB_TEST_KERNELS=pallas JAX_DEFAULT_MATMUL_PRECISION=highest \
  timeout "${PARITY_S:-160}" python -m pytest -q -p no:cacheprovider -n 8 ${PARITY_ARGS:-} \
  tests/kernels > "$out/parity.txt" 2>&1
echo "parity exit $?"; tail -25 "$out/parity.txt"

part attention "${ATTENTION_S:-250}" python benchmarks/kernels.py --parts attention --rounds 5 --calls 3 ${KERNELS_ARGS:-}
part norm "${NORM_S:-95}" python benchmarks/kernels.py --parts norm,normsweep --rounds 5 --calls 3 ${KERNELS_ARGS:-}
part linear "${LINEAR_S:-60}" python benchmarks/kernels.py --parts linear --rounds 5 ${KERNELS_ARGS:-}
part sweep "${SWEEP_S:-0}" python benchmarks/kernels.py --parts blocks --rounds 5 --calls 3 ${KERNELS_ARGS:-}
part mfu "${MFU_S:-0}" python benchmarks/mfu.py ${MFU_ARGS:-}
