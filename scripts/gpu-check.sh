#!/usr/bin/env bash
# Checks a CUDA build of tqa on a machine with an NVIDIA GPU, which needs no Rust toolchain:
# the binaries come from scripts/build-cuda.sh --tests, built elsewhere and copied over.
#
#   scripts/gpu-check.sh BIN_DIR OUT_DIR [MODEL]
#
# BIN_DIR holds `tqa` and the test binaries `decoder` and `generation` (either may be left out);
# MODEL (a registry name, default smollm2-135m) must be in models/ or $TQA_MODELS_DIR. Run from
# the checkout's root.
#   GPU_CHECK_STEPS      which steps run (default: tests bench-cuda bench-cpu ask chat eval)
#   GPU_CHECK_TEST_ARGS  arguments for the decoder tests (default: --skip default_qwen2_model, the
#                        default model's greedy test; `default_qwen2_model` runs only that one)
# It runs, in this order, writing each step's output (NAME.out) and messages (NAME.log) to OUT_DIR:
#   1. the decoder and generation tests with tqa's model on the GPU (TQA_TEST_DEVICE=cuda): tiny
#      f32 models against candle-transformers on the CPU (logits within 1e-4), MODEL's greedy
#      choices against candle-transformers (the chosen token's log-probability within 0.75
#      nats), cut-back and reused caches, first run = later runs;
#   2. `tqa bench --device cuda --json` and the same on the CPU, for MODEL;
#   3. one question answered greedily on each device from the same retrieved turns (asked in the
#      transcript's language, without translation, --no-judge so that the model writes an
#      answer): whether the prompts and the answers are the same, and for how many characters;
#   4. `tqa chat` (two questions, the second a follow-up) and `tqa eval answers` on the GPU.
# The summary at the end says which steps failed; the exit status is the number of failures.
set -uo pipefail
bin="$(cd "$1" && pwd)"
out="$(mkdir -p "$2" && cd "$2" && pwd)"
model="${3:-smollm2-135m}"
cd "$(dirname "$0")/.."

# The binaries link the CUDA 13 runtime, cuBLAS and cuRAND dynamically. A system toolkit or the
# nvidia-* wheels of a PyTorch install both carry them.
for lib in libcudart.so.13 libcublas.so.13 libcurand.so.10; do
  found="$(find /usr/local /usr/lib /opt -name "$lib" 2>/dev/null | head -n 1)"
  [ -n "$found" ] && export LD_LIBRARY_PATH="$(dirname "$found")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
# The binaries' built-in defaults point into the checkout they were built in, not this one.
export TQA_MODELS_DIR="${TQA_MODELS_DIR:-$PWD/models}"
transcript=(--transcript data/transcripts/altman-20vc-devday-2024.zh.md --lexical)
# Keyword retrieval of a question in the transcript's language needs no model, so both devices
# answer from the same prompt.
question="Altman 对智能体有什么看法？"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
if ldd "$bin/tqa" | grep "not found"; then
  echo "error: libraries missing for $bin/tqa (LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-})" >&2
  exit 1
fi

failed=()
step() {  # step NAME COMMAND...: runs COMMAND, stdout to OUT_DIR/NAME.out, stderr to NAME.log
  local name="$1"; shift
  echo "== $name" >&2
  local start=$SECONDS
  if "$@" >"$out/$name.out" 2>"$out/$name.log"; then
    echo "   ok ($((SECONDS - start)) s)" >&2
  else
    echo "   FAILED ($((SECONDS - start)) s); the end of $name.log:" >&2
    tail -n 25 "$out/$name.out" "$out/$name.log" >&2
    failed+=("$name")
  fi
}

steps=" ${GPU_CHECK_STEPS:-tests bench-cuda bench-cpu ask chat eval} "
wanted() { [[ "$steps" == *" $1 "* ]]; }

if wanted tests; then
  read -ra test_args <<<"${GPU_CHECK_TEST_ARGS:---skip default_qwen2_model}"
  [ -x "$bin/decoder" ] &&
    step tests-decoder env TQA_TEST_DEVICE=cuda "$bin/decoder" --test-threads 1 "${test_args[@]}"
  [ -x "$bin/generation" ] &&
    step tests-generation env TQA_TEST_DEVICE=cuda "$bin/generation" --test-threads 1
  grep -h "test result" "$out"/tests-*.out >&2
fi
for device in cuda cpu; do
  wanted "bench-$device" &&
    step "bench-$device" "$bin/tqa" bench -m "$model" --device "$device" "${transcript[@]}" --json
done
if wanted ask; then
  for device in cuda cpu; do
    step "ask-$device" "$bin/tqa" ask "$question" -m "$model" --device "$device" \
      "${transcript[@]}" --no-translate --no-judge --json
  done
fi
wanted chat && step chat-cuda sh -c "printf '%s\n' 'What did Altman say about agents?' \
  'And about pricing?' | \"$bin/tqa\" chat -m $model --device cuda ${transcript[*]}"
wanted eval && step eval-cuda "$bin/tqa" eval answers -m "$model" --device cuda \
  "${transcript[@]}" --set data/eval/dev.jsonl --json
python3 - "$out" <<'EOF' || failed+=(compare)
import json, os, sys
out = sys.argv[1]
def load(name):
    if not os.path.exists(f"{out}/{name}.out"):  # a step not run
        return None
    try:
        with open(f"{out}/{name}.out") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"{name}: {e}")
        return None
for device in ("cuda", "cpu"):
    b = load(f"bench-{device}")
    if b:
        med = lambda s: f"{s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f})"
        ask = b.get("ask") or {}
        print(f"bench {device}: load {b['model']['load_time']:.0f} ms; "
              + "; ".join(f"prefill {p['tokens']} {med(p['tokens_per_s'])} tok/s" for p in b["prefill"]) + "; "
              + "; ".join(f"decode @{d['depth']} {med(d['tokens_per_s'])} tok/s" for d in b["decode"])
              + (f"; TTFT {med(ask['time_to_first_token_ms'])} ms, reused turns "
                 f"{med(ask['time_to_first_token_reused_turns_ms'])} ms" if ask else "")
              + f"; peak RSS {b.get('peak_rss_mib')} MiB")
answers = {d: load(f"ask-{d}") for d in ("cuda", "cpu")}
if all(a is not None for a in answers.values()):
    cuda, cpu = answers["cuda"], answers["cpu"]
    ids = lambda a: [r["turn"]["id"] for r in a["retrieved"]]
    print(f"same retrieved turns: {ids(cuda) == ids(cpu)}; prompt tokens "
          f"{cuda['timings']['prompt_tokens']} / {cpu['timings']['prompt_tokens']}")
    same = 0
    while same < min(len(cuda["answer"]), len(cpu["answer"])) and cuda["answer"][same] == cpu["answer"][same]:
        same += 1
    print(f"greedy answers identical: {cuda['answer'] == cpu['answer']}; the first {same} of "
          f"{len(cuda['answer'])} / {len(cpu['answer'])} characters agree")
    for d, a in answers.items():
        t = a["timings"]
        print(f"{d}: TTFT {t['time_to_first_token_ms']:.0f} ms, prefill {t['prefill_tokens_per_s']:.0f} tok/s, "
              f"decode {t['decode_tokens_per_s']:.1f} tok/s: {json.dumps(a['answer'], ensure_ascii=False)[:400]}")
e = load("eval-cuda")
if e:
    print("eval answers on cuda: " + json.dumps(e["overall"]))
EOF

echo "failed steps: ${failed[*]:-none}" >&2
exit "${#failed[@]}"
