#!/usr/bin/env bash
# GPU check of the ONNX scorer: onnxruntime-gpu with CUDAExecutionProvider on the
# lent device machine, verified (per-node provider profile + CUDA-vs-CPU parity)
# and benchmarked on CPU and CUDA side by side. Results land in $OUT.
#
# The onnxruntime-gpu wheel (~256 MB) is larger than one device call may carry
# (64 MiB), so it travels in parts across consecutive calls. A carried path
# does not survive the next call's tree sync, so `have` copies its part to
# /tmp/ortparts on the device (kept while the machine stays warm, ~30 s after
# each call: issue the calls back to back) and `run` restores them from there.
#
#   1. Here (after `recstream train` + `recstream export`):
#        bash benchmarks/gpu_check.sh prepare [MODEL_DIR]
#      -> .gpucheck/part1 .. partN (git-excluded), .gpucheck/small (model + small
#         wheels); it prints the exact device calls to make.
#   2. Device calls k = 1 .. N-1:  command "bash benchmarks/gpu_check.sh have",
#                                  carry [".gpucheck/partk"]
#   3. Last call: command "bash benchmarks/gpu_check.sh run",
#                 carry [".gpucheck/partN", ".gpucheck/small"], timeout_s 420
#      If it reports missing parts (the machine went cold), redo the calls it names.
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.31.1
WHEEL=onnxruntime_gpu-${ORT_VERSION}-cp312-cp312-manylinux_2_28_x86_64.whl
PART_MB=52
G=.gpucheck

prepare() {
    local model=${1:-.local/models/current}
    local py=${PYTHON:-python3}
    grep -qx '/.gpucheck/' .git/info/exclude 2>/dev/null || echo '/.gpucheck/' >>.git/info/exclude
    rm -rf "$G" && mkdir -p "$G/dl" "$G/small/wheels" "$G/small/model"
    # The device runs Python 3.12 (x86-64); fetch wheels for it, without deps
    # (numpy, tokenizers, protobuf, sympy, flatbuffers are in its image).
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$G/dl" \
        "onnxruntime-gpu==${ORT_VERSION}" "orjson==3.13.0" "fastjsonschema==2.22.3"
    mv "$G"/dl/orjson-*.whl "$G"/dl/fastjsonschema-*.whl "$G/small/wheels/"
    (cd "$G/dl" && sha256sum "$WHEEL" >"../small/wheel.sha256")
    split -b "${PART_MB}M" -d -a 2 "$G/dl/$WHEEL" "$G/dl/ort.part"
    local n=0
    for f in "$G"/dl/ort.part*; do
        n=$((n + 1))
        mkdir -p "$G/part$n" && mv "$f" "$G/part$n/"
    done
    echo "$n" >"$G/small/parts"
    rm -rf "$G/dl"
    # Scoring needs no text encoder (loaded on first new item): leave its 90 MB here.
    local src
    src=$(readlink -f "$model")
    for f in "$src"/*; do
        [[ $(basename "$f") == text_encoder.onnx ]] || cp "$f" "$G/small/model/"
    done
    du -sh "$G"/part* "$G/small"
    echo
    echo "Device calls, back to back (model $(basename "$src"), $n wheel parts):"
    for ((k = 1; k < n; k++)); do
        echo "  run command='bash benchmarks/gpu_check.sh have' carry=['$G/part$k']"
    done
    echo "  run command='bash benchmarks/gpu_check.sh run' carry=['$G/part$n', '$G/small'] timeout_s=420"
}

have() {
    mkdir -p /tmp/ortparts
    cp "$G"/part*/ort.part* /tmp/ortparts/ 2>/dev/null || true
    ls -la /tmp/ortparts
}

run() {
    local out=${OUT:-/tmp/gpucheck-out}
    mkdir -p "$out"
    exec > >(tee "$out/gpu_check.log") 2>&1
    local n missing=()
    n=$(cat "$G/small/parts")
    for ((k = 1; k <= n; k++)); do  # parts carried by earlier calls wait in /tmp/ortparts
        local part
        part=$(printf '/tmp/ortparts/ort.part%02d' $((k - 1)))
        [[ -f $part ]] && mkdir -p "$G/part$k" && cp -n "$part" "$G/part$k/"
    done
    for ((k = 1; k <= n; k++)); do
        ls "$G/part$k"/ort.part* >/dev/null 2>&1 || missing+=("$k")
    done
    if ((${#missing[@]})); then
        echo "MISSING wheel parts: ${missing[*]} (machine went cold?) - redo those carries, then run"
        exit 3
    fi
    cat "$G"/part*/ort.part* >"/tmp/$WHEEL"
    (cd /tmp && sha256sum -c "$OLDPWD/$G/small/wheel.sha256")
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "/tmp/$WHEEL" "$G"/small/wheels/*.whl
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
    nvidia-smi | tee "$out/nvidia-smi.txt" || true
    python3 - "$G/small/model" "$out" <<'PY'
import json, sys, time
from pathlib import Path
import numpy as np
import onnxruntime as ort
from workers.model import ModelSettings
from workers.model.manifest import load_manifest
from workers.model.runtime import open_session

model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
print("onnxruntime", ort.__version__, ort.__file__)
print("available providers:", ort.get_available_providers())
m = load_manifest(model_dir)
cuda = open_session(m.path("scorer"), ModelSettings(model_dir=model_dir, device="cuda"))
cpu = open_session(m.path("scorer"), ModelSettings(model_dir=model_dir, device="cpu",
                                                    intra_op_threads=2))
print("cuda session providers:", cuda.get_providers())
inp, joint = np.load(m.path("item_input")), np.load(m.path("item_joint"))
rng = np.random.default_rng(0)
feeds = {"histories": rng.integers(1, inp.shape[0], (256, m.max_len)),
         "candidates": rng.integers(1, inp.shape[0], (256, 1000)),
         "item_input": inp, "item_joint": joint}
gpu_scores, cpu_scores = cuda.run(None, feeds)[0], cpu.run(None, feeds)[0]
diff = float(np.abs(gpu_scores - cpu_scores).max())
# CUDA matmuls may use TF32 on Hopper (10-bit mantissa): compare relative to the scale.
rel = diff / float(np.abs(cpu_scores).max())
# Which provider actually ran each node: profile one run.
opts = ort.SessionOptions()
opts.enable_profiling = True
opts.profile_file_prefix = str(out / "ort_profile")
prof = ort.InferenceSession(str(m.path("scorer")), opts,
                            providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
prof.run(None, feeds)
trace = json.loads(Path(prof.end_profiling()).read_text())
counts = {}
for ev in trace:
    provider = ev.get("args", {}).get("provider")
    if ev.get("cat") == "Node" and provider:
        counts[provider] = counts.get(provider, 0) + 1
report = {"providers": cuda.get_providers(), "node_runs_by_provider": counts,
          "cuda_vs_cpu_max_abs_diff": diff, "cuda_vs_cpu_max_rel_diff": rel}
print(json.dumps(report, indent=2))
(out / "verify.json").write_text(json.dumps(report, indent=2))
assert cuda.get_providers()[0] == "CUDAExecutionProvider", "CUDA provider not active"
assert counts.get("CUDAExecutionProvider", 0) > 0, "no node ran on CUDA"
assert rel <= 1e-3, f"CUDA vs CPU scores differ by {diff} ({rel:.2e} relative)"
print("VERIFIED: scorer runs on CUDAExecutionProvider")
PY
    rm -f "$out"/ort_profile*.json
    echo "== CPU, 2 threads (the acceptance setting) =="
    python3 benchmarks/bench_scorer.py --model-dir "$G/small/model" --device cpu --threads 2 \
        --json "$out/bench_cpu_2threads.json"
    echo "== CPU, all cores =="
    python3 benchmarks/bench_scorer.py --model-dir "$G/small/model" --device cpu --threads 0 \
        --seconds 1 --json "$out/bench_cpu_allcores.json"
    echo "== CUDA =="
    python3 benchmarks/bench_scorer.py --model-dir "$G/small/model" --device cuda \
        --json "$out/bench_cuda.json"
}

case "${1:-}" in
prepare) shift && prepare "$@" ;;
have) have ;;
run) run ;;
*)
    echo "usage: $0 prepare [MODEL_DIR] | have | run" >&2
    exit 2
    ;;
esac
