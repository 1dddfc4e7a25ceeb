#!/usr/bin/env bash
# One command that exercises every CUDA path of PASTALib once at tiny sizes, then the three benchmarks
# with small settings; one PASS / FAIL / SKIP line per step, then the benchmark ratios and MFU.
#
#   scripts/gpu_check.sh                 # on a GPU machine (about 5-8 min on one GPU)
#   scripts/gpu_check.sh --dry-run       # CPU, seconds to a minute (what the test suite runs): the environment,
#                                        # data and a tiny stage-1 run for real, every other step's command
#                                        # line parsed only ("DRY" lines), benchmark scripts byte-compiled
#   scripts/gpu_check.sh --cpu           # every step for real on the CPU at tiny sizes (minutes; the steps
#                                        # that only mean something on a GPU are SKIPped)
#   options: --work DIR (keep outputs and logs there; default a temporary folder, removed on success)
#            --device cuda:N (default cuda)
#
# Needs the real CT fixtures that scripts/fetch_test_data.sh fetches (run first; PASTA_TEST_DATA or its
# cache folder: totalsegmentator/example_ct*, pyradiomics lung1/lung2 for bench_refine). Every step writes WORK/logs/<step>.log; a FAIL line shows
# the log's last line. Exit status: 0 when no step failed.
set -u -o pipefail

DRY=0  # 1: on the CPU (--dry-run or --cpu)
ARGS_ONLY_DEFAULT=0  # 1 (--dry-run): steps after the tiny stage-1 run only parse their command lines
DEVICE=cuda
WORK=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1; ARGS_ONLY_DEFAULT=1 ;;
        --cpu) DRY=1 ;;
        --work) WORK="$2"; shift ;;
        --device) DEVICE="$2"; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1 (use --dry-run, --cpu, --work DIR, --device cuda:N)" >&2; exit 2 ;;
    esac
    shift
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHON
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# the fixtures' folder, as Testing/conftest.py finds it (PASTA_TEST_DATA, else the fetch script's cache)
PASTA_TEST_DATA="$("$PYTHON" "$REPO/scripts/fetch_test_data.py" --print-root)"
export PASTA_TEST_DATA
export QT_QPA_PLATFORM=offscreen
KEEP=1
if [ -z "$WORK" ]; then WORK="$(mktemp -d -t pasta_gpu_check.XXXXXX)"; KEEP=0; fi
mkdir -p "$WORK/logs"
WORK="$(cd "$WORK" && pwd)"
export WORK REPO DRY

if [ "$DRY" = 1 ]; then
    DEVICE=cpu
    # tiny everything: 1 CPU thread, 16-32 voxel patches, a few iterations
    export NET="--base-channels 4 --max-channels 16 --stages 5" PATCH=32 ITER=2 SPACING=3 THREADS="--threads 1"
    export COMPILE="--compile --compile-backend eager --channels-last --num-workers 1" STEP_TIMEOUT=300
else
    export NET="--base-channels 8 --max-channels 64 --stages 5" PATCH=32 ITER=6 SPACING=2 THREADS=""
    export COMPILE="--compile --channels-last --num-workers 2" STEP_TIMEOUT=420
fi
export DEVICE
export ARGS_ONLY=0

pasta() {  # the CLI, or with ARGS_ONLY=1 only its argument parser (a renamed or removed option fails here)
    if [ "$ARGS_ONLY" = 1 ]; then
        "$PYTHON" -c 'import sys; from PASTALib.cli.main import build_parser; build_parser().parse_args(sys.argv[1:])' "$@"
    else
        "$PYTHON" -m PASTALib "$@"
    fi
}
verify() { [ "$ARGS_ONLY" = 1 ] || "$@"; }  # a check of a step's outputs (none when only parsing)
bench() {  # bench SCRIPT ARGS...: a benchmark, or with ARGS_ONLY=1 only parsed as Python (imports torch: slow)
    if [ "$ARGS_ONLY" = 1 ]; then
        "$PYTHON" -c 'import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])' "$REPO/benchmarks/$1"
    else
        "$PYTHON" "$REPO/benchmarks/$@"
    fi
}
export -f pasta verify bench

PASSED=0; FAILED=0; SKIPPED=0; PARSED=0
T_START=$SECONDS

step() {  # step NAME FUNCTION: run FUNCTION (exported) with a timeout, log to WORK/logs/NAME.log
    local name=$1 fn=$2 t0=$SECONDS rc
    timeout "$STEP_TIMEOUT" bash -c "$fn" >"$WORK/logs/$name.log" 2>&1
    rc=$?
    if [ $rc = 0 ] && [ "$ARGS_ONLY" = 1 ]; then
        printf 'DRY  %-22s %4d s  command lines parsed, not run\n' "$name" $((SECONDS - t0)); PARSED=$((PARSED + 1))
    elif [ $rc = 0 ]; then
        printf 'PASS %-22s %4d s\n' "$name" $((SECONDS - t0)); PASSED=$((PASSED + 1))
    else
        local why; why="$(grep -v '^\s*$' "$WORK/logs/$name.log" | tail -n 1 | cut -c1-220)"
        [ $rc = 124 ] && why="timed out after ${STEP_TIMEOUT} s; $why"
        printf 'FAIL %-22s %4d s  exit %s: %s (log %s)\n' "$name" $((SECONDS - t0)) "$rc" "$why" "$WORK/logs/$name.log"
        FAILED=$((FAILED + 1))
    fi
}

skip() { printf 'SKIP %-22s        %s\n' "$1" "$2"; SKIPPED=$((SKIPPED + 1)); }

# --- the steps (each a function run in its own bash; all state lives under WORK) ------------------

environment() {
    "$PYTHON" - <<'EOF'
import os, torch
from PASTALib.runtime import amp_dtype, resolve_device
device = resolve_device(os.environ["DEVICE"])
print("torch", torch.__version__, "CUDA build", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
if device.type == "cuda":
    print("device", device, torch.cuda.get_device_name(device), "capability", torch.cuda.get_device_capability(device),
          "GPUs", torch.cuda.device_count(), "AMP dtype", amp_dtype(device, True))
else:
    print("device cpu (dry run)")
EOF
}

prepare() {
    "$PYTHON" - <<'EOF'
import csv, json, os
from pathlib import Path
import numpy as np
import SimpleITK as sitk
from PASTALib.train.toydata import make_toy_dataset

work, dry = Path(os.environ["WORK"]), os.environ["DRY"] == "1"
ts = Path(os.environ["PASTA_TEST_DATA"]) / "totalsegmentator"
ct, seg = ts / "example_ct.nii.gz", ts / "example_seg_fast_force_split.nii.gz"
if not ct.is_file():
    raise SystemExit(f"error: {ct} not found; run `bash scripts/fetch_test_data.sh` first")
toy = work / "toy"
make_toy_dataset(toy, ct, seg, n_cases=3 if dry else 4, crop=(48, 48, 48) if dry else (64, 64, 64),
                 radius_vox=(4.5, 6.5), density_delta_hu=150, lesions_per_case=2, seed=0)
cases = sorted(toy.iterdir())
# few-shot folder (the PASTA module's export layout), liver lesions only
fs = work / "fewshot"
(fs / "imagesTr").mkdir(parents=True, exist_ok=True)
(fs / "labelsTr").mkdir(parents=True, exist_ok=True)
rows = []
for case in cases:
    cid = f"patient_{case.name[-3:]}"
    label = sitk.ReadImage(str(case / "label.nii.gz"))
    keep = sitk.GetImageFromArray((sitk.GetArrayFromImage(label) == 12).astype(np.uint8) * 12)
    keep.CopyInformation(label)
    sitk.WriteImage(sitk.ReadImage(str(case / "img.nii.gz")), str(fs / "imagesTr" / f"{cid}_0000.nii.gz"), True)
    sitk.WriteImage(keep, str(fs / "labelsTr" / f"{cid}.nii.gz"), True)
    rows.append({"id": cid, "image": f"imagesTr/{cid}_0000.nii.gz", "label": f"labelsTr/{cid}.nii.gz",
                 "segments": ["liver lesion"]})
(fs / "pasta_fewshot.json").write_text(json.dumps({"format": "pasta-fewshot/1", "labels": {"liver lesion": 12},
                                                   "cases": rows}, indent=1))
# lesion tables: classify (roi task; labels alternate - a plumbing check, not a learning check) and embed
lesions = [(case, r) for case in cases for r in json.loads((case / "report.json").read_text())]
with open(work / "roi.csv", "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["id", "image", "coordX", "coordY", "coordZ", "label"])
    for i, (case, r) in enumerate(lesions):
        w.writerow([f"lesion{i}", str(case / "img.nii.gz"), *r["centre_mm"], i % 2])
with open(work / "embed.csv", "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["image_path", "coordX", "coordY", "coordZ"])
    for case, r in lesions:
        w.writerow([str(case / "img.nii.gz"), *r["centre_mm"]])
# refiner training data: the real CT with its TotalSegmentator organs
(work / "refine_data" / "case01").mkdir(parents=True, exist_ok=True)
for name, src in (("ct.nii.gz", ct), ("organs.nii.gz", seg)):
    link = work / "refine_data" / "case01" / name
    if not link.exists():
        link.symlink_to(src)
print(f"{len(cases)} toy cases, {len(lesions)} lesions under {work}")
EOF
}

s1() {  # s1 OUT EXTRA...: a tiny stage-1 run on the toy data (lesion weight 4: the class-weight buffers)
    local out=$1; shift
    pasta train stage1 --data "$WORK/toy" --out "$WORK/$out" --iterations "$ITER" --checkpoint-every 2 \
        --patch-size "$PATCH" --batch-size 2 $NET --lesion-weight 4 --device "$DEVICE" $THREADS \
        --no-progress-bar --no-tensorboard "$@"
}
export -f s1

stage1_amp() { s1 s1_amp && verify test -s "$WORK/s1_amp/model_final.pth"; }
stage1_fp32() { s1 s1_fp32 --no-amp; }
stage1_fp16_scaler() {
    s1 s1_fp16 --amp-dtype fp16 && verify "$PYTHON" - <<'EOF'
import os, torch
state = torch.load(os.path.join(os.environ["WORK"], "s1_fp16", "checkpoint_last.pt"), weights_only=True)
if os.environ["DEVICE"] != "cpu":
    assert state["scaler"] is not None, "fp16 run saved no GradScaler state"
    print("GradScaler scale", state["scaler"]["scale"])
else:
    print("CPU: no autocast, no GradScaler (dry run checks the plumbing only)")
EOF
}
stage1_resume() {
    ITER=1 s1 s1_resume && s1 s1_resume --progress-lines | tee "$WORK/logs/resume_stdout.txt" &&
        verify grep -q "stage1 start at iteration 1/$ITER" "$WORK/logs/resume_stdout.txt" &&
        verify "$PYTHON" -c "
import os, torch
state = torch.load(os.path.join(os.environ['WORK'], 's1_resume', 'checkpoint_last.pt'), weights_only=True)
assert state['iteration'] == int(os.environ['ITER']), state['iteration']
print('resumed at 1, finished at', state['iteration'])"
}
stage1_compile_cl_workers() {  # compiled, not the eager fallback
    s1 s1_compile $COMPILE && verify test -z "$(grep 'not compiling\|compile failed' "$WORK/logs/stage1_compile_cl_workers.log")"
}
stage1_ddp() {
    OMP_NUM_THREADS=1 "$PYTHON" -m torch.distributed.run --nproc_per_node 2 --standalone -m PASTALib train stage1 \
        --data "$WORK/toy" --out "$WORK/s1_ddp" --iterations "$ITER" --checkpoint-every 2 --patch-size "$PATCH" \
        --batch-size 1 $NET --lesion-weight 4 --device "$DEVICE" --no-progress-bar --no-tensorboard
}
stage2() {
    pasta train stage2 --data "$WORK/toy" --out "$WORK/s2" --init "$WORK/s1_amp/model_final.pth" --crop-size 32 \
        --iterations "$ITER" --batch-size 2 --eval-every 2 --checkpoint-every 2 --standardize-features \
        --device "$DEVICE" $THREADS --no-progress-bar --no-tensorboard
}
seg() {  # seg OUT EXTRA...
    local out=$1; shift
    pasta segment --ct "$WORK/toy/case_000/img.nii.gz" --out "$WORK/$out" --checkpoint "$WORK/s1_amp/model_final.pth" \
        --device "$DEVICE" --patch-size 32 --crop-size 32 --spacing "$SPACING" $THREADS --no-progress-bar --json "$@"
}
export -f seg
segment() { seg seg; }
segment_mirror() { seg seg_mirror --mirror; }
refine_train() {
    pasta refine train --data "$WORK/refine_data" --out "$WORK/refiner" --labels-kind totalsegmentator \
        --iterations "$ITER" --batch 1 --crop 16 --channels 8,8,16 --val-every 1 --val-crops 1 --checkpoint-every 2 \
        --device "$DEVICE" --amp $THREADS
}
refine_apply() {
    pasta refine apply --ct "$WORK/toy/case_000/img.nii.gz" --labels "$WORK/toy/case_000/label.nii.gz" \
        --out "$WORK/refined" --checkpoint "$WORK/refiner/refiner.pt" --margin 4 --steps 2 --device "$DEVICE" --amp \
        $THREADS && verify test -s "$WORK/refined/refine.json"
}
finetune() {
    pasta finetune --data "$WORK/fewshot" --out "$WORK/ft" --init "$WORK/s1_amp/model_final.pth" --k 2 --folds 3 \
        --fold 0 --iterations "$ITER" --patch-size 32 --spacing 3 --batch-size 2 --checkpoint-every 2 \
        --device "$DEVICE" $THREADS --no-progress-bar && verify test -s "$WORK/ft/model_final.pth"
}
classify() {  # a linear probe (frozen encoder, pooled fp32 features), a fine-tune, and predict
    pasta classify train --task roi --table "$WORK/roi.csv" --out "$WORK/cls_probe" --folds 2 --input-size 32 \
        --iterations "$ITER" --batch-size 2 --init "$WORK/s1_amp/model_final.pth" --freeze-encoder --n-boot 20 \
        --checkpoint-every 2 --device "$DEVICE" $THREADS --no-progress-bar &&
    pasta classify train --task roi --table "$WORK/roi.csv" --out "$WORK/cls_ft" --folds 2 --input-size 32 \
        --iterations "$ITER" --batch-size 2 --init "$WORK/s1_amp/model_final.pth" --n-boot 20 \
        --checkpoint-every 2 --device "$DEVICE" $THREADS --no-progress-bar &&
    pasta classify predict --model "$WORK/cls_ft/fold_0/model.pth" --table "$WORK/roi.csv" \
        --out "$WORK/cls_ft/applied.csv" --device "$DEVICE"
}
embed() {
    pasta embed extract --csv "$WORK/embed.csv" --out "$WORK/embeddings.csv" --weights "$WORK/s1_amp/model_final.pth" \
        --crop 32 --batch-size 2 --device "$DEVICE" $THREADS && verify test -s "$WORK/embeddings.csv"
}
cuda_tests() { "$PYTHON" -m pytest -m cuda "$REPO/Testing" -q -p no:cacheprovider -rs; }
bench_train() {
    if [ "$DRY" = 1 ]; then
        bench bench_train.py --device cpu --patch 32 --iterations 2 --warmup 1 --threads 1 \
            --base-channels 4 --max-channels 16 --stages 5 --toy-cases 1 --json "$WORK/bench_train.json"
    else
        bench bench_train.py --device "$DEVICE" --full --patch 64 --batch 2 --iterations 10 \
            --warmup 3 --json "$WORK/bench_train.json"
    fi
}
bench_train_channels_last() {
    bench bench_train.py --device "$DEVICE" --full --patch 64 --batch 2 --iterations 10 \
        --warmup 3 --channels-last --json "$WORK/bench_train_cl.json"
}
bench_refine() { bench bench_refine.py --device "$DEVICE" --skip-realism --baseline-steps 2; }
bench_infer() {
    if [ "$DRY" = 1 ]; then
        bench bench_infer.py --device cpu --smoke --skip-end-to-end --skip-nnunet --threads 1 \
            --json "$WORK/bench_infer.json"
    else
        bench bench_infer.py --device "$DEVICE" --width full --max-size 160 160 160 \
            --json "$WORK/bench_infer.json"
    fi
}
export -f environment prepare stage1_amp stage1_fp32 stage1_fp16_scaler stage1_resume stage1_compile_cl_workers \
    stage1_ddp stage2 segment segment_mirror refine_train refine_apply finetune classify embed cuda_tests \
    bench_train bench_train_channels_last bench_refine bench_infer

# --- run ----------------------------------------------------------------------------------------
echo "gpu_check: device $DEVICE$([ "$DRY" = 1 ] && echo ' (dry run)'), work $WORK"
if [ "$DRY" = 0 ] && ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: CUDA is not available here (torch.cuda.is_available() is False); run with --dry-run on a CPU machine" >&2
    exit 2
fi
N_GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)

step environment environment
step prepare prepare
step stage1_amp stage1_amp
ARGS_ONLY=$ARGS_ONLY_DEFAULT  # --dry-run: from here on the command lines are parsed only
if [ "$DRY" = 1 ] && [ "$ARGS_ONLY" = 0 ]; then skip stage1_fp32 "CPU runs in fp32 anyway (stage1_amp)"
else step stage1_fp32 stage1_fp32; fi
step stage1_fp16_scaler stage1_fp16_scaler
step stage1_resume stage1_resume
step stage1_compile_cl_workers stage1_compile_cl_workers
if [ "$DRY" = 0 ] && [ "$N_GPUS" -ge 2 ]; then step stage1_ddp stage1_ddp
else skip stage1_ddp "needs 2 GPUs (here $N_GPUS); gloo DDP on CPU: Testing/test_train.py::test_torchrun_two_processes"; fi
step stage2 stage2
step segment segment
if [ "$DRY" = 1 ] && [ "$ARGS_ONLY" = 0 ]; then skip segment_mirror "8x the segment step on the CPU"
else step segment_mirror segment_mirror; fi
step refine_train refine_train
step refine_apply refine_apply
step finetune finetune
step classify classify
step embed embed
if [ "$DRY" = 1 ]; then skip cuda_tests "no CUDA: the cuda-marked tests skip themselves"; else step cuda_tests cuda_tests; fi
step bench_train bench_train
if [ "$DRY" = 1 ] && [ "$ARGS_ONLY" = 0 ]; then
    skip bench_train_channels_last "a full-width CPU run takes minutes"
    skip bench_refine "128 mm windows of the default refiner take minutes on the CPU"
else
    step bench_train_channels_last bench_train_channels_last
    step bench_refine bench_refine
fi
step bench_infer bench_infer

# --- summary ------------------------------------------------------------------------------------
echo "--- benchmarks"
"$PYTHON" - <<'EOF'
import json, os, re
from pathlib import Path
work = Path(os.environ["WORK"])

def load(name):
    p = work / name
    return json.loads(p.read_text()) if p.is_file() else None

def fmt(v, spec=".3g"):
    return "n/a" if v is None else format(v, spec)

for name, label in (("bench_train.json", "bench_train"), ("bench_train_cl.json", "bench_train --channels-last")):
    r = load(name)
    if r:
        print(f"{label}: {r['device']}, {r.get('amp_dtype')}, patch {r['patch']}, batch {r['batch']}: ours "
              f"{r['ours_it_per_s']:.3g} it/s vs reference {r['reference_it_per_s']:.3g} it/s = ratio "
              f"{r['ratio_ours_over_reference']:.3f}; {r['achieved_tflops_ours']:.3g} TFLOP/s, MFU "
              f"{fmt(r.get('mfu_ours'), '.1%')} (peak {fmt(r.get('peak_tflops'))} TFLOP/s)")
log = work / "logs" / "bench_refine.log"
if log.is_file():
    for line in log.read_text().splitlines():
        if line.startswith("RATIO") or line.startswith("lesion 25 mm"):
            print("bench_refine:", line)
r = load("bench_infer.json")
if r:
    med = r.get("median_s", {})
    ratios = ", ".join(f"{k}/ours {v / med['ours']:.2f}" for k, v in med.items() if k != "ours" and med.get("ours"))
    print(f"bench_infer: {r['hardware']}, width {r['width']}, {r['windows']} windows of {r['patch']}: median s "
          f"{med}; {ratios or 'no baseline'}")
EOF
echo "gpu_check: $PASSED passed, $FAILED failed, $PARSED parsed only, $SKIPPED skipped in $((SECONDS - T_START)) s (device $DEVICE$([ "$DRY" = 1 ] && echo ', dry run'); logs in $WORK/logs)"
if [ "$FAILED" = 0 ] && [ "$KEEP" = 0 ]; then rm -rf "$WORK"; fi
[ "$FAILED" = 0 ]
