#!/usr/bin/env bash
# The learning-quality ablation of issue 11 (README "What the ablation shows"): the seed pipeline, the joint
# baseline, each noisy-clip treatment and detector alone, each augmentation off in turn, the recipe, and
# combinations; 2 seeds each, on the version-1 synthetic demo data set (every test clip in the curated
# recording domain: synth --test-domain clean), one table (CSV + Markdown + HTML). The treatments of the
# noisy clips are compared on the version-2 set (mixed test domain) by benchmarks/ablation_mixed.sh.
#
#   benchmarks/ablation.sh [OUT] [JOBS] [SEEDS]
#
# OUT (default runs/ablation) is resumable: run the same command again and finished runs are skipped.
# JOBS runs at once (default 1; on a many-core GPU machine 12-16: the small models share the GPU).
# NOISYTAG overrides the command (default: the project's .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/ablation}
JOBS=${2:-1}
SEEDS=${3:-2}
NOISYTAG=${NOISYTAG:-.venv/bin/noisytag}
DATA=${DATA:-data/demo_v1}
[ -f "$DATA/sample_submission.csv" ] || $NOISYTAG synth "$DATA" --scale demo --seed 0 --test-domain clean
$NOISYTAG features "$DATA"  # once, before the parallel runs (an up-to-date cache returns at once)
NO_AUG="augment.specmix_p=0,augment.zoom_p=0,augment.brightness_p=0,augment.contrast_p=0"
# Treated stages train on every noisy clip, so their epochs are cut to keep about the seed's compute
# (examples seen per fold; the demo's seed pipeline sees about 10,000).
LATE="pipeline.stage_epochs=[12,15,4,4]"
ALL="noisy.stages=[1,2,3,4],pipeline.stage_epochs=[6,6,4,4]"
$NOISYTAG ablate "$DATA" -c configs/demo_seed.yaml -o "$OUT" --seeds "$SEEDS" --jobs "$JOBS" ${DRY_RUN:+--dry-run} \
  --variant seed \
  --variant joint=pipeline.mode=joint \
  --variant "head=noisy.treatment=head,$LATE" \
  --variant "lsoft=noisy.treatment=lsoft,$LATE" \
  --variant "relabel=noisy.treatment=relabel,$LATE" \
  --variant cleanlab=selection.method=cleanlab \
  --variant "given_all=noisy.treatment=given,$ALL" \
  --variant "head_all=noisy.treatment=head,$ALL" \
  --variant "lsoft_all=noisy.treatment=lsoft,$ALL" \
  --variant no_mixup=augment.mixup_p=0 \
  --variant no_specmix=augment.specmix_p=0 \
  --variant no_zoom=augment.zoom_p=0 \
  --variant "no_lighting=augment.brightness_p=0,augment.contrast_p=0" \
  --variant "mixup_only=$NO_AUG" \
  --variant "batch64=train.batch_size=64,train.lr=0.003" \
  --variant "epochs2x=pipeline.stage_epochs=[24,30,20,20]" \
  --variant "joint_mixup_only=pipeline.mode=joint,$NO_AUG" \
  --variant "head_all_mixup_only=noisy.treatment=head,$ALL,$NO_AUG" \
  --variant "lsoft_all_mixup_only=noisy.treatment=lsoft,$ALL,$NO_AUG" \
  --variant "lsoft_mixup_only=noisy.treatment=lsoft,pipeline.stage_epochs=[12,15,5,5],$NO_AUG" \
  --variant "cleanlab_mixup_only=selection.method=cleanlab,$NO_AUG" \
  --variant "cleanlab_mixup_only_epochs2x=selection.method=cleanlab,$NO_AUG,pipeline.stage_epochs=[24,30,20,20]" \
  --variant "no_aug=augment.mixup_p=0,$NO_AUG" \
  --variant "cleanlab_mixup_only_epochs2x_ens34=selection.method=cleanlab,$NO_AUG,pipeline.stage_epochs=[24,30,20,20],infer.stages=[3,4]"
