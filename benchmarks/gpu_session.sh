#!/usr/bin/env bash
# The GPU checks of the kernels and training issues on one GPU: parity of the compiled kernels
# (Triton and Mosaic GPU) with the XLA references, and the kernel benchmark: the table
# in one run of benchmarks/kernels.py (the fused norm's GB/s, then norm-attention's TFLOP/s at
# head dim 64 and 128, T 1k-16k, next to the cuDNN path and XLA), and optional parts.
#
#   bash benchmarks/gpu_session.sh [OUT_DIR]      # logs land in OUT_DIR (default gpu_results)
#
# Each part has its own time limit in seconds (PARITY_S, MOSAIC_S, EXAMPLE_S, TABLE_S,
# NORMSWEEP_S, CORE_S, LINEAR_S, SWEEP_S, MFU_S; 0 skips a part) so one slow part cannot starve
# the next, and each logs to OUT/<part>.txt. A session has 900 s of device time, starts included
# (about 60 s); each call spends about 10 s on device.txt. Stop 23 (H200) measured: the table's
# attention rows about 45 s each (9 of its 10 in 400 s), the norm sweep over 190 s for one shape,
# the Mosaic sweep 75 s per head dim. So the first call (the defaults) is the table alone, TABLE_S
# 540: give it timeout_s 580. Run the second at once, while the machine is still warm (it goes
# back after 30 s idle): the compiled parity suite, the Mosaic kernels' norms priced (CORE: the
# same kernels on XLA-normed q, k, next to ours and the cuDNN path, T=8192), and the
# linear-attention crossover:
#   TABLE_S=0 PARITY_S=150 CORE_S=60 LINEAR_S=50 bash benchmarks/gpu_session.sh OUT
# PARITY_K selects parity tests by pytest's -k; PARITY_ARGS, KERNELS_ARGS (every kernels.py part)
# and MFU_ARGS pass more arguments. After a change to the Mosaic GPU kernels, MOSAIC_S=150 times
# their launch settings and options at T=8192 first (FORWARD_SCHEDULE, DQ_SHARES,
# FORWARD_WARPGROUPS, HEAVIEST_FIRST: their defaults come from stop 23's sweep) and hands the
# table its best rows through OUT/mosaic_settings.json, so that a sweep cut by its limit still
# hands over the rows it finished; SWEEP_PASSES (default bwd,fwd,order) picks the sweep's passes.
# Stops 27 and 28 built options no GPU has run: the forward schedules "fenced", "overlap" and
# "pingpong+overlap", mosaic_gpu.EARLY_KEY_RELEASE and mosaic_backward.PAIRED_PRODUCTS. Stop 28
# also built the EXAMPLE part: our forward next to jax's own FlashAttention-3 kernel in Mosaic
# GPU and cuDNN on plain float16 attention, T=8192 (untimed; four forwards, causal and not, per
# head dim), which tells whether the forward's gap to cuDNN is ours or shared by the best
# Mosaic GPU kernel jax ships. The next session's first call times the options against the
# defaults (the sweep's backward and forward passes, 13 and 12 rows for d=64 and 128), then the
# example, then the table with the winners (540 s; give it timeout_s 560):
#   MOSAIC_S=200 SWEEP_PASSES=bwd,fwd EXAMPLE_S=50 TABLE_S=290 bash benchmarks/gpu_session.sh OUT
# and its second (220 s) the compiled parity of the new options and the norms' price:
#   TABLE_S=0 PARITY_S=150 PARITY_K="schedule or lower or early or paired" CORE_S=60 \
#     bash benchmarks/gpu_session.sh OUT
# which with a start (about 60 s) keeps within a session's 900 s. NORMSWEEP_S times the fused
# norm's rows × warps × steps launches (fused_norm.api.default_launches took its GPU defaults from
# stop 23's d=4096 sweep). To time a GPT with each attention kernel:
#   MFU_S=300 MFU_ARGS="--sizes 125M --settings bf16,bf16+auto,bf16+mosaic"
set -u
out=${1:-gpu_results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  # The clocks and power a run gets, and the compilers below jax: stop 23's H200 ran the
  # d=128 Mosaic forward at 309 TFLOP/s where stop 17's H100 ran the same lowered kernel
  # (checked on the CPU, stop 27) at 386, so a session records what else could differ.
  nvidia-smi --query-gpu=clocks.sm,clocks.mem,power.limit,power.draw,temperature.gpu \
    --format=csv
  python -c "import jax, flax, sys; print('python', sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
  python -m pip list 2>/dev/null | grep -i -E "^(jax|jaxlib|nvidia-cuda-nvcc|nvidia-cudnn)" \
    | tr -s ' ' | paste -sd ';'
  ptxas --version 2>/dev/null | tail -1
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
  # The GPU machine's Python may lack the training stack: leave out the modules that need it.
  skip=()
  python -c "import ml_collections" 2>/dev/null || {
    skip=(--ignore tests/kernels/test_cudnn_path.py --ignore tests/kernels/test_model_kernels.py)
    echo "ml_collections is not installed: left out ${skip[*]}"; }
  # -v names every test in the log, so a run cut by its limit still says what passed
  JAX_PLATFORMS=cuda JAXLAB_TEST_KERNELS=pallas JAX_DEFAULT_MATMUL_PRECISION=highest \
    timeout "$PARITY_S" python -m pytest -v -p no:cacheprovider -n 8 --timeout 150 ${skip[@]+"${skip[@]}"} \
    ${PARITY_K:+-k "$PARITY_K"} ${PARITY_ARGS:-} tests/kernels > "$out/parity.txt" 2>&1
  echo "parity exit $?"; grep -E "FAILED|ERROR|passed|failed" "$out/parity.txt" | tail -25
fi

settings="$out/mosaic_settings.json"
candidates="${CANDIDATES:-mosaic,xla-norm+cudnn,xla}"
# MOSAIC_GPU_DUMP_PTXAS: ptxas reports each kernel's registers and spills, and warns where it
# serializes wgmma (a product left in flight by the "overlap" schedule, say)
part mosaic "${MOSAIC_S:-0}" env MOSAIC_GPU_DUMP_PTXAS=1 python benchmarks/kernels.py --parts mosaicsweep --sweep-length 8192 --sweep-passes "${SWEEP_PASSES:-bwd,fwd,order}" --mosaic-settings "$settings" --rounds 5 --calls 3 ${KERNELS_ARGS:-}
[ -f "$out/mosaic.txt" ] && grep -iE "spill|serializ|registers" "$out/mosaic.txt" | sort | uniq -c | head -40
part example "${EXAMPLE_S:-0}" python benchmarks/kernels.py --parts example --sweep-length 8192 --mosaic-settings "$settings" --rounds 5 --calls 3 ${KERNELS_ARGS:-}
part table "${TABLE_S:-540}" python benchmarks/kernels.py --parts norm,attention --mosaic-settings "$settings" --candidates "$candidates" --rounds 5 --calls 3 ${KERNELS_ARGS:-}
part normsweep "${NORMSWEEP_S:-0}" python benchmarks/kernels.py --parts norm,normsweep --rounds 5 --calls 3 ${KERNELS_ARGS:-}
part core "${CORE_S:-0}" python benchmarks/kernels.py --parts attention --lengths 8192 --candidates mosaic,xla-norm+mosaic,xla-norm+cudnn --rounds 5 --calls 3 ${KERNELS_ARGS:-}
part linear "${LINEAR_S:-0}" python benchmarks/kernels.py --parts linear --lengths 1024,2048,4096 --rounds 5 --calls 3 ${KERNELS_ARGS:-}
part sweep "${SWEEP_S:-0}" python benchmarks/kernels.py --parts blocks --rounds 5 --calls 3 ${KERNELS_ARGS:-}
part mfu "${MFU_S:-0}" python benchmarks/mfu.py ${MFU_ARGS:-}
