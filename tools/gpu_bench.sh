#!/usr/bin/env bash
# GPU runs of the benchmark (docs/benchmarks/gpu.md), from the repository root on a machine with a CUDA GPU.
#
#   tools/gpu_bench.sh main      # CUDA equivalence tests, the full benchmark (ResUNet-34, 512x512), and the cost
#                                # per case of the small UNet at 256x256 (its domain-setting run)
#   tools/gpu_bench.sh options   # profile, then a domain-setting run once per speed option (cuDNN benchmark,
#                                # channels-last, bf16, torch.compile), ResUNet-34 at 512x512
#
# Results go to $OUT (default ./gpu_out), one tar.gz per stage. When a folder .whl/ of wheels is present (monai and
# pytorch-ignite for a machine that has torch but not them), they are installed into /tmp/site first.
set -uo pipefail
stage=${1:-main}
OUT=${OUT:-$PWD/gpu_out}
CACHE=${CACHE:-/tmp/monai_tta_bench_cache}
mkdir -p "$OUT" "$CACHE"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/$stage.gpu.txt"
python3 -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'monai', monai.__version__)"

bench() {  # bench <name> <timeout seconds> <options...>
    local name=$1 limit=$2
    shift 2
    echo "=== $name: python -m monai_tta.bench $*"
    local t0=$SECONDS
    timeout "$limit" python3 -m monai_tta.bench --device cuda --cache "$CACHE" --out "$OUT/$stage/$name" "$@" \
        2>&1 | tee "$OUT/$stage/$name.log" | grep -E "cost |Error|Traceback|MISSED|\(met\)" | tail -16
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
}

mkdir -p "$OUT/$stage"
# every method, and the exact GraTa's variants (same result): the 6 views in one forward, no CUDA graph, the
# reference's one forward per view, views and strong view in one forward
methods=(source_only norm_adapt tent grata grata_batched grata_eager grata_separate grata_joint grata_approx vptta)
case $stage in
main)
    python3 -m pytest -q -p no:cacheprovider tests/test_grata_fast.py tests/test_graphs.py 2>&1 | tail -5 \
        | tee "$OUT/$stage/pytest.log"
    bench resunet34_512 420 --network resunet34 --image-size 512
    bench small_256 100 --network small --image-size 256 --settings domain --num-per-domain 4 --methods "${methods[@]}"
    ;;
options)
    python3 tools/profile_adapters.py --device cuda --network resunet34 --size 512 --calls 5 --rows 8 \
        --methods source_only norm_adapt tent grata grata_separate grata_approx vptta \
        --out "$OUT/$stage/profile_resunet34_512.txt" 2>&1 | grep -v "^USDT\|^STAGE" | tee "$OUT/$stage/profile.log" \
        | grep "ms/call"
    r34=(--network resunet34 --image-size 512 --settings domain --num-per-domain 4)
    bench r34_default 150 "${r34[@]}" --methods "${methods[@]}"
    bench r34_cudnn_benchmark 100 "${r34[@]}" --methods "${methods[@]}" --cudnn-benchmark
    bench r34_channels_last 100 "${r34[@]}" --methods "${methods[@]}" --cudnn-benchmark --channels-last
    bench r34_bf16 100 "${r34[@]}" --methods "${methods[@]}" --cudnn-benchmark --channels-last --amp bf16
    bench small_256 100 --network small --image-size 256 --settings domain --num-per-domain 4 --methods "${methods[@]}"
    bench r34_compile 150 "${r34[@]}" --cudnn-benchmark --compile --no-memory \
        --methods source_only tent grata grata_separate
    ;;
*)
    echo "unknown stage $stage (main or options)" >&2
    exit 2
    ;;
esac
tar -czf "$OUT/$stage.tar.gz" -C "$OUT" "$stage" && rm -rf "${OUT:?}/$stage"
ls -la "$OUT"
