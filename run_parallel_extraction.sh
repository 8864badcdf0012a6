#!/usr/bin/env bash
# Run one extractor process per shard on this machine, one GPU each (round-robin), and
# report how each shard did. See usage() below.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"

usage() {
    cat >&2 <<'EOF'
usage: run_parallel_extraction.sh INPUT OUTPUT_DIR NUM_GPUS [extra args...]

  INPUT       image folder (vjepa2_extractor.py); with --sequential: a frame folder,
              a video file, or a text file listing videos (vjepa2_sequential_extractor.py)
  OUTPUT_DIR  feature folder shared by all shards (chunk files, manifest.jsonl,
              logs/shard_<i>.log)
  NUM_GPUS    number of processes (shards) N; shard i runs on GPU i % (GPUs found),
              or on the CPU when nvidia-smi lists no GPU
  extra args  passed to every process (e.g. --model, --batch_size, --image_frames,
              --spatial full);
              --sequential selects the sequential (video / frame folder) extractor

Environment: PYTHON (interpreter, default python); CUDA_VISIBLE_DEVICES, when set,
restricts the GPUs used to the ones it lists.

Exit status: 0 if every shard exited 0, else the first non-zero shard exit code
(3: finished, but some inputs failed, see OUTPUT_DIR/manifest.jsonl or, for several
videos or folders, OUTPUT_DIR/<name>/manifest.jsonl); 2: bad usage or an unusable
OUTPUT_DIR (nothing started). Each failed shard's reason is printed from its log.
Rerunning the same command resumes: complete outputs are skipped.
EOF
}

if [[ $# -lt 3 ]]; then
    echo "error: expected INPUT OUTPUT_DIR NUM_GPUS, got $# argument(s)" >&2
    usage
    exit 2
fi
INPUT=$1
OUTPUT_DIR=$2
NUM=$3
shift 3
if ! [[ "$NUM" =~ ^[0-9]+$ ]] || (( 10#$NUM < 1 )); then
    echo "error: NUM_GPUS must be a positive integer, got '$NUM'" >&2
    usage
    exit 2
fi
NUM=$((10#$NUM))
if [[ ! -e "$INPUT" ]]; then
    echo "error: INPUT $INPUT does not exist" >&2
    usage
    exit 2
fi
# "out/" and "out" are the same folder; without the slash the paths printed below read cleanly.
while [[ "$OUTPUT_DIR" == */ && "$OUTPUT_DIR" != / ]]; do OUTPUT_DIR=${OUTPUT_DIR%/}; done

SEQUENTIAL=0
EXTRA=()
for arg in "$@"; do
    if [[ "$arg" == "--sequential" ]]; then
        SEQUENTIAL=1
    else
        EXTRA+=("$arg")
    fi
done

if (( SEQUENTIAL )); then
    SCRIPT="$SCRIPT_DIR/vjepa2_sequential_extractor.py"
    if [[ -d "$INPUT" ]]; then
        INPUT_ARGS=(--frame_dir "$INPUT")
    else
        INPUT_ARGS=(--video "$INPUT")
    fi
else
    SCRIPT="$SCRIPT_DIR/vjepa2_extractor.py"
    if [[ ! -d "$INPUT" ]]; then
        echo "error: INPUT $INPUT is not a folder of images (for videos add --sequential)" >&2
        usage
        exit 2
    fi
    INPUT_ARGS=(--image_dir "$INPUT")
fi

# OUTPUT_DIR and its logs folder, made now so that an unusable OUTPUT_DIR is a one-line usage error
# (exit 2, nothing started) instead of a raw mkdir message with exit 1, or N shards whose log
# redirections fail.
out_error() {
    echo "error: OUT: $*" >&2
    exit 2
}
if ! mkdir_msg=$(mkdir -p -- "$OUTPUT_DIR/logs" 2>&1); then
    # mkdir only says "Not a directory"; name the part of the path that is in the way: the
    # nearest existing ancestor of OUTPUT_DIR/logs, when it is not a folder.
    blocker="$OUTPUT_DIR/logs"
    while [[ ! -e "$blocker" && "$blocker" != "$(dirname -- "$blocker")" ]]; do
        blocker=$(dirname -- "$blocker")
    done
    if [[ -e "$blocker" && ! -d "$blocker" ]]; then
        if [[ "$blocker" == "$OUTPUT_DIR" ]]; then
            out_error "$OUTPUT_DIR exists and is not a directory"
        fi
        out_error "cannot create $OUTPUT_DIR/logs: $blocker exists and is not a directory"
    fi
    # Anything else (permissions, read-only file system, ...): mkdir's reason, the text after its
    # last ": " (the path before it may itself contain ": ").
    out_error "cannot create $OUTPUT_DIR/logs: ${mkdir_msg##*: }"
fi
if [[ ! -w "$OUTPUT_DIR" || ! -w "$OUTPUT_DIR/logs" ]]; then
    out_error "$OUTPUT_DIR or $OUTPUT_DIR/logs is not writable"
fi

# GPUs: the ones CUDA_VISIBLE_DEVICES lists when it is set, else those nvidia-smi lists.
GPUS=()
if [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then
    IFS=',' read -r -a listed <<< "$CUDA_VISIBLE_DEVICES"
    for g in ${listed[@]+"${listed[@]}"}; do
        g="${g//[[:space:]]/}"  # "0, 1" is two GPUs, "0" and "1"
        [[ -n "$g" ]] && GPUS+=("$g")
    done
    if [[ ${#GPUS[@]} -gt 0 && "${GPUS[0]}" == "-1" ]]; then GPUS=(); fi
elif command -v nvidia-smi >/dev/null 2>&1; then
    count=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    for ((g = 0; g < ${count:-0}; g++)); do GPUS+=("$g"); done
fi
NGPUS=${#GPUS[@]}
if (( NGPUS == 0 )); then
    echo "no GPU found (nvidia-smi lists none); running $NUM process(es) on the CPU"
    if [[ -z "${OMP_NUM_THREADS:-}" ]]; then
        # Share the cores instead of every process starting one thread per core.
        cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
        export OMP_NUM_THREADS=$(( cores / NUM > 1 ? cores / NUM : 1 ))
    fi
fi

# DataLoader workers per shard on GPUs: the cores shared out among the shards, less one for the
# shard's main process (each extractor would otherwise take all the cores it sees). No cap: 1080p
# decoding, not the encoder, bounds a fast GPU (docs/extraction.md). A --num_workers in the extra args wins.
WORKER_ARGS=()
if (( NGPUS > 0 )); then
    cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
    per_shard=$(( cores / NUM - 1 ))
    (( per_shard < 1 )) && per_shard=1
    WORKER_ARGS=(--num_workers "$per_shard")
fi

PIDS=()
LOGS=()
stop_all() {
    echo "interrupted: stopping ${#PIDS[@]} shard process(es)" >&2
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill "$pid" 2>/dev/null || true; done
    wait || true
    exit 130
}
trap stop_all INT TERM

for ((i = 0; i < NUM; i++)); do
    log="$OUTPUT_DIR/logs/shard_${i}.log"
    LOGS+=("$log")
    cmd=("$PYTHON" "$SCRIPT" "${INPUT_ARGS[@]}" --output_dir "$OUTPUT_DIR" --shard "$i/$NUM")
    if (( NGPUS > 0 )); then
        gpu=${GPUS[i % NGPUS]}
        echo "shard $i/$NUM: GPU $gpu, log $log"
        # --device before the extra args, so a --device given there wins.
        CUDA_VISIBLE_DEVICES="$gpu" "${cmd[@]}" --device cuda "${WORKER_ARGS[@]}" ${EXTRA[@]+"${EXTRA[@]}"} >"$log" 2>&1 &
    else
        echo "shard $i/$NUM: CPU, log $log"
        "${cmd[@]}" --device cpu ${EXTRA[@]+"${EXTRA[@]}"} >"$log" 2>&1 &
    fi
    PIDS+=("$!")
done

CODES=()
for pid in "${PIDS[@]}"; do
    if wait "$pid"; then
        CODES+=(0)
    else
        CODES+=("$?")
    fi
done
trap - INT TERM

# Per-shard counts from the manifest lines carrying "shard": "i/N" (last record per input), in
# OUTPUT_DIR/manifest.jsonl and, for several videos or folders, OUTPUT_DIR/<input>/manifest.jsonl.
"$PYTHON" - "$OUTPUT_DIR" "$NUM" "${CODES[*]}" "${LOGS[@]}" <<'EOF' || true
import json, sys
from pathlib import Path
root, num, codes, logs = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(), sys.argv[4:]
latest = {}
for path in [root / "manifest.jsonl", *sorted(root.glob("*/manifest.jsonl"))]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and "input" in entry:
                    latest[(entry.get("shard"), entry["input"])] = entry.get("status")
    except OSError:
        pass
print(f"{'shard':>9}  {'exit':>4}  {'ok':>6}  {'skipped':>7}  {'failed':>6}  log")
for i in range(num):
    label = f"{i}/{num}"
    statuses = [s for (shard, _), s in latest.items() if shard == label]
    counts = {s: statuses.count(s) for s in ("ok", "skipped", "failed")}
    print(f"{label:>9}  {codes[i]:>4}  {counts['ok']:>6}  {counts['skipped']:>7}  {counts['failed']:>6}  {logs[i]}")
EOF

# Why each failed shard failed, so that the user need not open its log: the last line starting
# with "error:" (what the extractors print before exiting non-zero), else the last non-empty line
# (e.g. the end of a Python traceback). Progress bars redraw with carriage returns, so only the
# text after a line's last "\r" counts (what a terminal shows).
FIRST_FAILED=0
for ((i = 0; i < NUM; i++)); do
    code=${CODES[i]}
    [[ "$code" == 0 ]] && continue
    (( FIRST_FAILED == 0 )) && FIRST_FAILED=$code
    reason=$(awk '{ sub(/\r+$/, ""); sub(/.*\r/, "") }
                  /^error:/ { err = $0 }
                  /[^[:space:]]/ { last = $0 }
                  END { print (err != "" ? err : last) }' "${LOGS[i]}" 2>/dev/null || true)
    if [[ -z "$reason" ]]; then
        if [[ -f "${LOGS[i]}" ]]; then reason="(its log is empty)"; else reason="(no log: ${LOGS[i]})"; fi
    fi
    echo "shard $i/$NUM (exit $code): $reason" >&2
done

if (( FIRST_FAILED != 0 )); then
    # Point at the manifests that exist: OUTPUT_DIR/manifest.jsonl (images, one video or folder)
    # and/or OUTPUT_DIR/<name>/manifest.jsonl (several videos or folders). Shards that failed while
    # starting (e.g. a bad --model) write none, and then only the logs can tell.
    MANIFESTS=()
    for m in "$OUTPUT_DIR/manifest.jsonl" "$OUTPUT_DIR"/*/manifest.jsonl; do
        if [[ -f "$m" ]]; then MANIFESTS+=("$m"); fi
    done
    hint="see $OUTPUT_DIR/logs/"
    if (( ${#MANIFESTS[@]} == 1 )); then
        hint+=" and the manifest: ${MANIFESTS[0]}"
    elif (( ${#MANIFESTS[@]} > 1 )); then
        joined=$(printf ', %s' "${MANIFESTS[@]}")
        hint+=" and the manifests: ${joined:2}"
    fi
    echo "some shards failed or had failed inputs; $hint" >&2
    exit "$FIRST_FAILED"
fi
echo "all $NUM shard(s) finished"
exit 0
