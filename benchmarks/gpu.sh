#!/usr/bin/env bash
# One script for a CUDA machine, in under 8 minutes: the torch tests that parametrize CUDA, then
# the overhead report (whole training step; default wrapper, eager kernels, SmoothedAdamW; bf16)
# as one table. From the repository root, with the test extra installed:
#
#   bash benchmarks/gpu.sh            # on a machine with a CUDA device
#   bash benchmarks/gpu.sh --dry      # anywhere: the same steps on the CPU at toy sizes (a check of
#                                     # the script itself; its numbers mean nothing)
#
# Writes gpu-report/ (the test log, overhead.json and report.md) and prints report.md.
set -euo pipefail
dry=0
case "${1:-}" in
  --dry) dry=1 ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu.sh [--dry]" >&2; exit 2 ;;
esac
out=${GPU_REPORT_DIR:-gpu-report}
mkdir -p "$out"
if [ "$dry" = 0 ] && ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device here: run 'bash benchmarks/gpu.sh --dry' to check the script on a CPU" >&2
  exit 2
fi
if [ "$dry" = 1 ]; then
  tests=(python -m pytest -q -p no:randomly tests/backends/torch/test_native.py -k "cuda or cpu" -x)
  sizes=(--blocks 2 --dim 32 --repeats 1 --training-repeats 1 --no-memory --context 8 --vocab 64)
else
  tests=(python -m pytest -q -p no:randomly tests/backends/torch -k cuda)
  sizes=(--blocks 12 --dim 768)
fi
echo "== tests: ${tests[*]}"
set +e
"${tests[@]}" > "$out/tests.log" 2>&1
status=$?
set -e
tail -n 3 "$out/tests.log"
echo "== overhead: python -m benchmarks.overhead ${sizes[*]}"
python -m benchmarks.overhead "${sizes[@]}" --json "$out/overhead.json" > "$out/overhead.md"
echo "== bfloat16: python -m benchmarks.overhead ${sizes[*]} --dtype bfloat16 --no-training --no-memory"
{ echo; python -m benchmarks.overhead "${sizes[@]}" --dtype bfloat16 --no-training --no-memory | sed 1,2d; } >> "$out/overhead.md"
{
  echo "# GPU report ($( [ "$dry" = 1 ] && echo "DRY RUN on the CPU, toy sizes" || echo "CUDA" ))"
  echo
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); tests: $(tail -n 1 "$out/tests.log")"
  echo
  cat "$out/overhead.md"
} > "$out/report.md"
cat "$out/report.md"
exit $status
