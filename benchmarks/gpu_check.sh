#!/usr/bin/env bash
# One short GPU check (under 8 minutes on one GPU): a subset of the smollm-gpu setting
# (SmolLM2-135M with LoRA on MovieLens-100K, K=10, the most recent 6,000 samples), the original
# trained to convergence (at most 3 epochs), then Retrain and E2URec; prints each stage's
# seconds, samples/s and peak GPU memory, E2URec / Retrain, and the step throughput lines.
#
#   benchmarks/gpu_check.sh                    # on the GPU machine (ml-100k from recbole)
#   benchmarks/gpu_check.sh --raw FOLDER       # ml-100k's three files from FOLDER instead
#   benchmarks/gpu_check.sh --tiny             # the same steps on CPU with the tiny T5, 300 samples
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RUN=${RUN:-runs/gpu_check}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1 HF_HUB_OFFLINE=1
RAW=()
[[ "${1:-}" == "--raw" ]] && RAW=(--raw "$2")
if [[ "${1:-}" == "--tiny" ]]; then
  DATA=(--dataset movielens --last 300 --history 3)
  MODEL=(--model tiny --set epochs=2 batch_size=16 "tiny.vocab_size=600" "tiny.d_model=32" "tiny.d_ff=64" "tiny.heads=2" "tiny.encoder_layers=1" "tiny.decoder_layers=1")
  E2UREC=(epochs=2 lr=0.003 aug_lr=0.003 lora_rank=4 lora_alpha=8)
  TPUT_MODELS=(tiny)
  TPUT_DATA=()
else
  DATA=(--dataset ml-100k "${RAW[@]}" --last 6000 --history 10)
  MODEL=(--model smollm2 --set lora=true epochs=3 lr=0.0005 batch_size=32 eval_batch_size=128)
  E2UREC=(epochs=3 lr=0.0005 batch_size=32 aug_lr=0.0005)
  TPUT_MODELS=(tiny smollm2)
  TPUT_DATA=(--dataset ml-100k "${RAW[@]}")
fi
rm -rf "$RUN"
start=$SECONDS
$PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
stage() {  # one command, its wall seconds printed as it ends: a run cut short still tells
  local name=$1 t=$SECONDS
  shift
  $PY -m e2urec.cli "$@" > /dev/null
  echo "$name: command $((SECONDS - t)) s (loading, training, evaluating)"
}
stage prepare prepare --out "$RUN/data" "${DATA[@]}"
stage original train --data "$RUN/data" --out "$RUN/original" "${MODEL[@]}"
stage retrain unlearn --data "$RUN/data" --model "$RUN/original" --method retrain --out "$RUN/retrain"
stage e2urec unlearn --data "$RUN/data" --model "$RUN/original" --method e2urec --out "$RUN/e2urec" --set "${E2UREC[@]}"
$PY - "$RUN" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
train = json.loads((out / "original" / "train_report.json").read_text())
rows = {"original": (train["seconds"], train["peak_gpu_mb"], train["peak_rss_mb"])}
for name in ("retrain", "e2urec"):
    r = json.loads((out / name / "unlearn_report.json").read_text())
    rows[name] = (r["seconds"], r["info"].get("peak_gpu_mb", 0.0), r["peak_rss_mb"])
    if name == "e2urec":
        print(f"e2urec augmented forget loss {r['info']['aug_forget_loss']:.4f}, original's {r['info']['orig_forget_loss']:.4f}")
n = json.loads((out / "original" / "e2urec.json").read_text())["trained_on"]
print(f"original: {train['epochs_run']} epochs, {n * train['epochs_run'] / train['seconds']:.1f} train samples/s")
for name, (sec, gpu, rss) in rows.items():
    print(f"{name}: {sec:.1f} s, peak GPU {gpu:.0f} MB, peak RSS {rss:.0f} MB")
print(f"e2urec / retrain seconds: {rows['e2urec'][0] / rows['retrain'][0]:.3f}")
PYEOF
for model in "${TPUT_MODELS[@]}"; do
  $PY benchmarks/step_throughput.py --model "$model" "${TPUT_DATA[@]}"
done
echo "gpu_check wall: $((SECONDS - start)) s"
