#!/usr/bin/env bash
# The GPU checks of the kernels and training issues in one run on one GPU: parity of the
# compiled Pallas kernels with the XLA references, the MFU table, then the kernel benchmark.
#
#   bash benchmarks/gpu_session.sh [OUT_DIR]      # logs land in OUT_DIR (default gpu_results)
#
# Each part has its own time limit (PARITY_S, MFU_S, KERNELS_S seconds) so one slow part
# cannot starve the next; extra arguments for the parts: PARITY_ARGS, MFU_ARGS, KERNELS_ARGS.
set -u
out=${1:-gpu_results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python -c "import jax, flax, sys; print('python', sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
} 2>&1 | tee "$out/device.txt"

echo "== parity: compiled kernels vs XLA references (fp32 at full precision, bf16)"
JAX_PLATFORMS=cuda JAXLAB_TEST_KERNELS=pallas JAX_DEFAULT_MATMUL_PRECISION=highest \
  timeout "${PARITY_S:-150}" python -m pytest -q -p no:cacheprovider -n 8 ${PARITY_ARGS:-} \
  tests/kernels > "$out/parity.txt" 2>&1
echo "parity exit $?"; tail -25 "$out/parity.txt"

echo "== MFU"
timeout "${MFU_S:-170}" python benchmarks/mfu.py ${MFU_ARGS:-} 2>&1 | tee "$out/mfu.txt"

echo "== kernels"
timeout "${KERNELS_S:-200}" python benchmarks/kernels.py ${KERNELS_ARGS:-} 2>&1 | tee "$out/kernels.txt"
