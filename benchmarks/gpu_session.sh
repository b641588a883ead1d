#!/usr/bin/env bash
# The GPU checks of the kernels and training issues on one GPU: parity of the compiled kernels
# (Triton and Mosaic GPU) with the XLA references, then the kernel benchmark (the Mosaic GPU
# launch sweep, the TFLOP/s table, the fused norm's GB/s with a rows × warps × steps sweep,
# the linear-attention crossover), optionally the Triton launch sweep and the MFU table.
#
#   bash benchmarks/gpu_session.sh [OUT_DIR]      # logs land in OUT_DIR (default gpu_results)
#
# Each part has its own time limit in seconds (PARITY_S, MOSAIC_S, ATTENTION_S, NORM_S,
# LINEAR_S, SWEEP_S, MFU_S; 0 skips a part) so one slow part cannot starve the next. All of it
# does not fit one 10-minute call (stop 17: the Mosaic GPU parity tests about 120 s on 8
# workers, a sweep row about 4 s, a table cell about 10 s, the norm sweep over 60 s per
# shape). The defaults (550 s) are the first call: the Mosaic sweep at T=8192, then the whole
# table (head dim 64 and 128, T 1k–16k; CANDIDATES, default mosaic, the cuDNN path and XLA)
# whose mosaic rows take the sweep's best settings, passed on in OUT/mosaic_settings.json so
# that a sweep cut by its limit still hands over the best rows it finished. The second call
# compiles the parity tests of the options built since stop 17 (PARITY_K selects tests by
# pytest's -k), then the norm sweep (about 60 s per shape, widest rows first):
#   MOSAIC_S=0 ATTENTION_S=0 PARITY_S=90 NORM_S=150 \
#     PARITY_K="meet or centered or dq_in or pingpong or three or heaviest or accurate" \
#     bash benchmarks/gpu_session.sh OUT
# A session has 900 s of device time, starts included (about 60 s), and each call spends
# about 10 s on device.txt: give the first call timeout_s 580, and run the second at once,
# while the machine is still warm (it goes back after 30 s idle), with what is left.
# The sweep times the Mosaic GPU kernels' launch settings and options: ping-pong
# (mosaic_gpu.PINGPONG) and the ways the dK/dV kernel adds dQ (mosaic_backward.DQ_SHARES:
# "keys", the default at head dim 64 since stop 17; "columns" at 128 and "alternate" at 64,
# built in stop 18 and not yet run on a GPU, timed last; "split" keeps the dQ kernel) and
# the forward's three compute warpgroups at head dim 64 (mosaic_gpu.FORWARD_WARPGROUPS,
# stop 19, also timed last), and the programs' order (mosaic_gpu.HEAVIEST_FIRST, stop 19).
# Its error column checks each against the cuDNN path; the parity part compiles those
# options too (test_gradients_with_dq_shares_that_meet, test_forward_with_three_warpgroups,
# test_heaviest_first_...), and LayerNorm's dQ in the dK/dV kernel through centered keys
# (mosaic_backward.LAYERNORM_DQ, off until that passes), and the kernels without a qk-norm,
# which since stop 22 keep q exact and scale the scores (test_without_a_norm_...: "accurate").
# Extra arguments: PARITY_K, PARITY_ARGS, KERNELS_ARGS (every kernels.py part), MFU_ARGS. To time a GPT
# with each attention kernel: MFU_S=300 MFU_ARGS="--sizes 125M --settings
# bf16,bf16+auto,bf16+mosaic".
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
  timeout -k 10 "$seconds" "$@" 2>&1 | tee "$out/$name.txt"  # -k: a kernel that hangs
  echo "$name exit ${PIPESTATUS[0]}"
}

if [ "${PARITY_S:-0}" != 0 ]; then
  echo "== parity: compiled kernels vs XLA references (fp32 at full precision, bf16)"
  # -v names every test in the log, so a run cut by its limit still says what passed
  JAX_PLATFORMS=cuda JAXLAB_TEST_KERNELS=pallas JAX_DEFAULT_MATMUL_PRECISION=highest \
    timeout "$PARITY_S" python -m pytest -v -p no:cacheprovider -n 8 --timeout 150 \
    ${PARITY_K:+-k "$PARITY_K"} ${PARITY_ARGS:-} tests/kernels > "$out/parity.txt" 2>&1
  echo "parity exit $?"; grep -E "FAILED|ERROR|passed|failed" "$out/parity.txt" | tail -25
fi

settings="$out/mosaic_settings.json"
part mosaic "${MOSAIC_S:-150}" python benchmarks/kernels.py --parts mosaicsweep --sweep-length 8192 --mosaic-settings "$settings" --rounds 5 --calls 3 ${KERNELS_ARGS:-}
part attention "${ATTENTION_S:-400}" python benchmarks/kernels.py --parts attention --mosaic-settings "$settings" --candidates "${CANDIDATES:-mosaic,xla-norm+cudnn,xla}" --rounds 5 --calls 3 ${KERNELS_ARGS:-}
part norm "${NORM_S:-0}" python benchmarks/kernels.py --parts norm,normsweep --rounds 5 --calls 3 ${KERNELS_ARGS:-}
part linear "${LINEAR_S:-0}" python benchmarks/kernels.py --parts linear --rounds 5 --calls 3 ${KERNELS_ARGS:-}
part sweep "${SWEEP_S:-0}" python benchmarks/kernels.py --parts blocks --rounds 5 --calls 3 ${KERNELS_ARGS:-}
part mfu "${MFU_S:-0}" python benchmarks/mfu.py ${MFU_ARGS:-}
