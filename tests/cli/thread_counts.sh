# The same bits on any number of threads: three training steps of a DiJiang and a softmax model
# (the demo teacher's shape: 4 layers, 4 heads, vocabulary 50304) on 1, 2 and 3 OpenMP threads
# write byte-identical checkpoints and log identical losses and gradient norms; eval and sampled
# generation agree too. So does a run on 2 threads with the 4-lane SIMD code forced
# (DIJIANG_SIMD=sse2), where the others run the CPU's widest (AVX2 where it has it).
source "$(dirname "$0")/lib.bash"
cd "$SOURCE_DIR"
TOKENS=data/tiny-neox/eval_tokens.npy
write_npy "$WORK/prompt.npy" '<i4' 4 17 212 9 540 33 871 5 64

# losses RUN_DIR: the loss and gradient norm of every logged step, one line each.
losses() { grep '"loss"' "$1/metrics.jsonl" | while read -r line; do grep -oE '"(loss|grad_norm)":[^,}]*' <<<"$line" | paste -sd' '; done; }

for model in tiny-dijiang teacher-softmax teacher-dijiang; do
  case "$model" in
    tiny-dijiang) args=() ;;
    teacher-*) args=(model.source=configs/demo/teacher-config.json model.attention="${model#teacher-}" data.seq_len=128) ;;
  esac
  for threads in 1 2 3 2-sse2; do
    simd=()
    [ "$threads" = 2-sse2 ] && simd=(DIJIANG_SIMD=sse2)
    # The same directory name every time: the checkpoint's metadata holds the experiment.
    rm -rf "$WORK/run"
    env "${simd[@]}" "$DIJIANG" --threads "${threads%-sse2}" train configs/micro/tiny-dijiang.yaml "${args[@]}" schedule.steps=3 \
      schedule.warmup=1 checkpoint.every=3 logging.every=1 checkpoint.dir="$WORK/run" >"$WORK/train.log" 2>&1 \
      || { cat "$WORK/train.log" >&2; die "$model on $threads threads: training failed"; }
    mv "$WORK/run/ckpt-00000003.h5" "$WORK/$model-$threads.h5"
    losses "$WORK/run" >"$WORK/$model-$threads.losses"
    [ "$(wc -l <"$WORK/$model-$threads.losses")" -eq 3 ] || die "$model: $(cat "$WORK/$model-$threads.losses")"
  done
  for threads in 2 3 2-sse2; do
    cmp -s "$WORK/$model-1.h5" "$WORK/$model-$threads.h5" || die "$model: the checkpoints of 1 and $threads threads differ"
    cmp -s "$WORK/$model-1.losses" "$WORK/$model-$threads.losses" \
      || die "$model: losses on 1 thread $(cat "$WORK/$model-1.losses"), on $threads $(cat "$WORK/$model-$threads.losses")"
  done
  one=$("$DIJIANG" -q --threads 1 eval --model "$WORK/$model-1.h5" --tokens "$TOKENS" --seq-len 128 --json)
  three=$("$DIJIANG" -q --threads 3 eval --model "$WORK/$model-1.h5" --tokens "$TOKENS" --seq-len 128 --json)
  [ "$one" = "$three" ] || die "$model: eval on 1 thread $one, on 3 $three"
  sse2=$(DIJIANG_SIMD=sse2 "$DIJIANG" -q --threads 1 eval --model "$WORK/$model-1.h5" --tokens "$TOKENS" --seq-len 128 --json)
  [ "$one" = "$sse2" ] || die "$model: eval $one, with DIJIANG_SIMD=sse2 $sse2"
  # Sampled at temperature 1, so that the draws follow the probabilities' bits closely.
  for threads in 1 3; do
    "$DIJIANG" -q --threads "$threads" generate --model "$WORK/$model-1.h5" --prompt-tokens "$WORK/prompt.npy" \
      --max-new-tokens 48 --temperature 1 --seed 3 --json | grep -oE '"tokens":\[[0-9,]*\]' >"$WORK/generated-$threads"
  done
  cmp -s "$WORK/generated-1" "$WORK/generated-3" \
    || die "$model: generated on 1 thread $(cat "$WORK/generated-1"), on 3 $(cat "$WORK/generated-3")"
  echo "$model: 3 steps on 1, 2 and 3 threads and on 2 with SSE2, checkpoints byte-identical; losses $(tr '\n' ' ' <"$WORK/$model-1.losses")"
done
