#!/usr/bin/env bash
# Regenerates the comparisons under docs/results/ with the code of this checkout. Each run is
# single-threaded and deterministic on a CPU; run the two queues side by side on a 2-core machine,
# from the repository root:
#   bash docs/results/regenerate.sh vit & bash docs/results/regenerate.sh lm; wait
#   bash docs/results/regenerate.sh regimes & bash docs/results/regenerate.sh horizon; wait
# Every results.json records its own command, commit, threads, seeds and versions (a folder
# first run on a narrower grid and then widened with --resume, where an arm chose an edge of the
# grid, records both commands: provenance and resumed_from). --resume also continues a queue
# that was stopped: finished runs are kept.
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
vit=3e-4,1e-3,3e-3,1e-2  # widened below 1e-3: the base chose 1e-3, the grid's lower edge
adamw=1e-3,3e-3,1e-2
muon=1e-3,2e-3,5e-3,1e-2,2e-2,5e-2  # widened downwards three times: on the ViT both arms chose 1e-2, then the smoothed arm 5e-3, then the base 2e-3
muon_lm=5e-3,1e-2,2e-2,5e-2,1e-1  # widened above 5e-2: the smoothed arm chose 5e-2
c() { gradsmooth compare --quiet --resume "$@"; }
# A comparison left unfinished at the end of a session is committed under docs/results/running/
# (its results.json alone); it is put back where its command writes, and --resume continues it.
for kept in docs/results/running/*/results.json; do
  [ -f "$kept" ] || continue
  name=$(basename "$(dirname "$kept")")
  [ -f "docs/results/$name/results.json" ] || { mkdir -p "docs/results/$name" && cp "$kept" "docs/results/$name/"; }
done

vit() {
  c --task vit --lrs $vit --seeds 8 --out docs/results/vit-adamw                   # headline: 8 blocks
  c --task vit --lrs $vit --seeds 5 --depth 4 --out docs/results/vit-adamw-depth4
  c --task vit --lrs $vit --seeds 5 --depth 16 --out docs/results/vit-adamw-depth16
  c --task vit --optimizer muon --lrs $muon --seeds 5 --out docs/results/vit-muon
  # ablations at the headline setting, each LR-matched against the headline's own base runs
  # (--base-from: the base arm does not depend on the smoothing, and training is deterministic)
  a() { c --task vit --lrs $vit --seeds 5 --base-from docs/results/vit-adamw "$@"; }
  a --window 5 --out docs/results/vit-ablation-window5
  a --kernel gaussian --out docs/results/vit-ablation-gaussian
  a --mode gradient --out docs/results/vit-ablation-gradient
  a --alpha 0.5 --out docs/results/vit-ablation-alpha0.5
}

lm() {
  c --task lm --lrs $adamw --seeds 8 --out docs/results/lm-adamw                   # headline: 6 blocks
  c --task lm --lrs $adamw,3e-2 --seeds 5 --depth 3 --out docs/results/lm-adamw-depth3  # smoothed chose 1e-2
  c --task lm --lrs $adamw --seeds 5 --depth 12 --out docs/results/lm-adamw-depth12
  c --task lm --optimizer muon --lrs $muon_lm --seeds 5 --out docs/results/lm-muon
  # the longer horizon at the depth where smoothing did best so far (3 blocks), 4x the steps
  c --task lm --lrs $adamw,3e-2 --seeds 5 --depth 3 --steps 1200 --eval-every 100 --out docs/results/lm-adamw-depth3-long  # smoothed chose 1e-2
}

regimes() {
  # the paper's other two regimes: a class-conditional diffusion transformer on the digits, and
  # RL post-training of the small GPT on addition (phase 1 trained once per seed, reused by both arms)
  c --task diffusion --lrs 3e-3,6e-3,1e-2,2e-2,4e-2 --seeds 5 --steps 1000 --eval-every 100 --out docs/results/diffusion-adamw  # 4e-2 added while it ran: both arms gained from 3e-3 to 6e-3
  c --task rl --lrs 3e-4,1e-3,2e-3,4e-3 --seeds 8 --steps 200 --eval-every 25 --out docs/results/rl-adamw  # widened above 2e-3: the smoothed arm chose 2e-3
  c --task diffusion --optimizer muon --lrs 5e-3,1e-2,2e-2,5e-2,1e-1 --seeds 5 --steps 1000 --eval-every 100 --out docs/results/diffusion-muon  # 5e-3 added while it ran: the base led at 1e-2, the grid's lowest rate
  # the depth structure (adjacent_cka, adjacent_update_cosine) of the ViT and the GPT at their
  # headline settings, which were published before it was recorded: the same runs, 5 seeds
  c --task vit --lrs $vit --seeds 5 --out docs/results/structure-vit
  c --task lm --lrs $adamw --seeds 5 --out docs/results/structure-lm
}

horizon() {
  # the GPT at 4x the headline steps, 6 and 12 blocks: constant alpha, and alpha decaying
  # linearly to 0, each against the same base runs
  long() { c --task lm --seeds 5 --steps 1200 --eval-every 100 "$@"; }
  long --lrs $adamw --out docs/results/lm-adamw-long
  long --lrs $adamw --alpha-schedule linear --alpha-final 0 --base-from docs/results/lm-adamw-long \
    --out docs/results/lm-adamw-long-alpha-linear
  # widened below 1e-3: the 12-block base chose 1e-3, the grid's lower edge
  long --lrs 3e-4,$adamw --depth 12 --out docs/results/lm-adamw-depth12-long
  long --lrs 3e-4,$adamw --depth 12 --alpha-schedule linear --alpha-final 0 \
    --base-from docs/results/lm-adamw-depth12-long --out docs/results/lm-adamw-depth12-long-alpha-linear
}

case "${1:-all}" in
  vit) vit ;;
  lm) lm ;;
  regimes) regimes ;;
  horizon) horizon ;;
  all) vit; lm; regimes; horizon ;;
  *) echo "usage: bash docs/results/regenerate.sh [vit|lm|regimes|horizon|all]" >&2; exit 2 ;;
esac
