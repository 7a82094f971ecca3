#!/usr/bin/env bash
# Side by side with llama.cpp on the same GGUF files and thread count, interleaved rounds:
# llama-bench (pp512 prefill, tg128 decode) against tqa bench (prefill 512, decode 128 tokens
# from an empty context), then the medians and the tqa/llama.cpp ratios.
#
# llama.cpp comes from a package registry: the llama-cpp-python source distribution on PyPI
# carries its sources. It is built once, CPU only, outside the repository
# (TQA_LLAMA_CPP_DIR, default ~/.cache/tqa/llama.cpp). This is a benchmark, not a test: CI does
# not run it.
#
#   benches/compare-llama-cpp.sh [MODEL ...]     (registry names or .gguf paths; ROUNDS=3 THREADS=2)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${TQA_LLAMA_CPP_DIR:-$HOME/.cache/tqa/llama.cpp}"
rounds="${ROUNDS:-3}"
threads="${THREADS:-2}"
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(smollm2-135m qwen2.5-coder-0.5b)

# GGML_NATIVE=ON dies with "Illegal instruction" on these virtual machines (their CPUs may report
# AMX, which the guest may not use), so the SIMD kernels are switched on by hand, for the
# features this CPU reports; the build folder is named after them, so a build made on another
# kind of CPU is not reused.
flags=$(grep -m1 '^flags' /proc/cpuinfo)
has() { [[ " $flags " == *" $1 "* ]]; }
simd=(-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON)
tag=avx2
if has avx512f; then
  simd+=(-DGGML_AVX512=ON)
  tag=avx512
  has avx512_vbmi && simd+=(-DGGML_AVX512_VBMI=ON) && tag+=-vbmi
  has avx512_vnni && simd+=(-DGGML_AVX512_VNNI=ON) && tag+=-vnni
  has avx512_bf16 && simd+=(-DGGML_AVX512_BF16=ON) && tag+=-bf16
fi
has avx_vnni && simd+=(-DGGML_AVX_VNNI=ON) && tag+=-avxvnni
build="$dir/build-$tag"
bench_bin="$build/bin/llama-bench"
if [ ! -x "$bench_bin" ]; then
  echo "building llama-bench ($tag) from the llama-cpp-python sdist (once) …" >&2
  mkdir -p "$dir"
  command -v cmake >/dev/null || python3 -m pip install --quiet cmake
  [ -d "$dir"/llama_cpp_python-0.3.36 ] || {
    python3 -m pip download --quiet --no-deps --no-binary=llama-cpp-python llama-cpp-python==0.3.36 -d "$dir/sdist"
    tar -xzf "$dir"/sdist/llama_cpp_python-*.tar.gz -C "$dir"
  }
  src=$(echo "$dir"/llama_cpp_python-0.3.36/vendor/llama.cpp)
  cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF \
        "${simd[@]}" -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >&2
  cmake --build "$build" --target llama-bench -j "$(nproc)" >&2
fi
cargo build --release --quiet

out=$(mktemp -d)
for model in "${models[@]}"; do
  path=$(target/release/tqa models fetch "$model" 2>/dev/null || echo "$model")
  for round in $(seq "$rounds"); do
    echo "$model round $round/$rounds" >&2
    # GNU time's peak resident set (KiB), the figure tqa bench reports for itself.
    /usr/bin/time -f %M -o "$out/llama-$(basename "$path")-$round.rss" \
      "$bench_bin" -m "$path" -t "$threads" -p 512 -n 128 -r 1 -o json > "$out/llama-$(basename "$path")-$round.json"
    target/release/tqa bench --model "$path" --threads "$threads" --prefill 512 --depths 0 \
      --decode-tokens 128 --reps 1 --lexical --no-ask --json 2>/dev/null > "$out/tqa-$(basename "$path")-$round.json"
  done
done

python3 - "$out" <<'PY'
import glob, json, os, statistics, sys
out = sys.argv[1]
models = sorted({os.path.basename(p)[4:].rsplit("-", 1)[0] for p in glob.glob(f"{out}/tqa-*.json")})
print(f"{'model':42} {'llama pp512':>12} {'tqa pp512':>10} {'ratio':>6} {'llama tg128':>12} {'tqa tg128':>10} {'ratio':>6} {'llama RSS MiB':>14} {'tqa RSS MiB':>12} {'ratio':>6}")
for m in models:
    lp, lt, tp, tt, rss, lrss = [], [], [], [], [], []
    for p in glob.glob(f"{out}/llama-{m}-*.rss"):
        lrss.append(int(open(p).read().split()[-1]) / 1024)
    for p in glob.glob(f"{out}/llama-{m}-*.json"):
        for row in json.load(open(p)):
            (lp if row["n_prompt"] > 0 else lt).append(row["avg_ts"])
    for p in glob.glob(f"{out}/tqa-{m}-*.json"):
        r = json.load(open(p))
        tp.append(r["prefill"][0]["tokens_per_s"]["median"])
        tt.append(r["decode"][0]["tokens_per_s"]["median"])
        rss.append(r["peak_rss_mib"] or 0)
    med = statistics.median
    print(f"{m:42} {med(lp):12.1f} {med(tp):10.1f} {med(tp)/med(lp):6.2f} {med(lt):12.1f} {med(tt):10.1f} {med(tt)/med(lt):6.2f} {med(lrss):14.0f} {med(rss):12.0f} {med(rss)/med(lrss):6.2f}")
PY
