# Bad input gets one clear message and a non-zero exit, never a crash or a half-written output.
source "$(dirname "$0")/lib.bash"
MODEL="$FIXTURES/neox_parallel/f32"
TOKENS="$FIXTURES/neox_parallel/eval_tokens.npy"

expect_failure "no such file or directory" "$DIJIANG" eval --model "$WORK/absent" --tokens "$TOKENS" --seq-len 8
expect_failure "--seq-len" "$DIJIANG" eval --model "$MODEL" --tokens "$TOKENS" --seq-len 1
expect_failure "The following argument was not expected: --bogus" "$DIJIANG" eval --model "$MODEL" --tokens "$TOKENS" --seq-len 8 --bogus
expect_failure "eval needs --tokens FILE.npy or --text FILE" "$DIJIANG" eval --model "$MODEL" --seq-len 8
expect_failure "--dijiang-form: 'diagonal' is not parallel, chunkwise or recurrent" \
  "$DIJIANG" eval --model "$MODEL" --tokens "$TOKENS" --seq-len 8 --dijiang-form diagonal
expect_failure "--precision: 'fp16' is not f64, f32 or bf16" "$DIJIANG" eval --model "$MODEL" --tokens "$TOKENS" --seq-len 8 --precision fp16
expect_failure "train needs an experiment" "$DIJIANG" train

# Every experiment key describes itself, in --list-keys and in train --help.
keys="$("$DIJIANG" train --list-keys)"
grep -q "^model.dijiang.form  *parallel | chunkwise | recurrent, default chunkwise$" <<<"$keys" || die "--list-keys: $keys"
[ "$(grep -c '^[a-z]' <<<"$keys")" -eq 46 ] || die "--list-keys does not list 46 keys (37 and 9 of each stage)"
help="$("$DIJIANG" train --help)"  # whole: grep -q on a pipe would stop the writer early
grep -q "^distributed.zero_stage  *integer, default 0$" <<<"$help" || die "train --help lists no keys"
grep -q "^stages\[\].distill_weight  *number, default 0$" <<<"$help" || die "train --help lists no stage keys"

# Truncated weights.
mkdir -p "$WORK/truncated"
cp "$MODEL/config.json" "$WORK/truncated/"
head -c 300000 "$MODEL/model.safetensors" >"$WORK/truncated/model.safetensors"
expect_failure "model.safetensors" "$DIJIANG" eval --model "$WORK/truncated" --tokens "$TOKENS" --seq-len 8

# Bad config.json.
mkdir -p "$WORK/badconfig"
cp "$MODEL/model.safetensors" "$WORK/badconfig/"
printf '{"hidden_size": 64,' >"$WORK/badconfig/config.json"
expect_failure "config.json" "$DIJIANG" inspect --model "$WORK/badconfig"

# A config that does not match the weights.
mkdir -p "$WORK/mismatch"
cp "$MODEL/model.safetensors" "$WORK/mismatch/"
sed 's/"intermediate_size": 256/"intermediate_size": 128/' "$MODEL/config.json" >"$WORK/mismatch/config.json"
expect_failure "the config needs [128, 64]" "$DIJIANG" convert --from "$WORK/mismatch" --to "$WORK/mismatch.h5"
[ ! -e "$WORK/mismatch.h5" ] || die "a failed convert left an output file"

# Token files: wrong dtype, truncated, ids beyond the vocabulary.
write_npy "$WORK/float.npy" "<f4" 4 1 2 3 4
expect_failure "is not an integer type" "$DIJIANG" eval --model "$MODEL" --tokens "$WORK/float.npy" --seq-len 8
head -c 1000 "$TOKENS" >"$WORK/short.npy"
expect_failure "truncated" "$DIJIANG" eval --model "$MODEL" --tokens "$WORK/short.npy" --seq-len 8
write_npy "$WORK/big.npy" "<u2" 2 5 6 7 999 8
expect_failure "token id 999 at index 3 is not below the model's vocab_size 997" \
  "$DIJIANG" eval --model "$FIXTURES/neox_odd/f32" --tokens "$WORK/big.npy" --seq-len 4
write_npy "$WORK/good.npy" "<i8" 8 5 6 7 9 8
"$DIJIANG" -q eval --model "$FIXTURES/neox_odd/f32" --tokens "$WORK/good.npy" --seq-len 4 --json | grep -q "\"tokens\":3" \
  || die "hand-written i8 .npy not read back"
cp "$MODEL/config.json" "$WORK/config.npy"
expect_failure "not a .npy file" "$DIJIANG" eval --model "$MODEL" --tokens "$WORK/config.npy" --seq-len 8
expect_failure "$WORK/absent.idx" "$DIJIANG" eval --model "$MODEL" --tokens "$WORK/absent" --seq-len 8

# Not a checkpoint at all.
expect_failure "not a native checkpoint" "$DIJIANG" inspect --model "$MODEL/config.json"

# Export refuses to overwrite a non-empty directory unless asked.
mkdir -p "$WORK/taken" && touch "$WORK/taken/keep"
expect_failure "pass --force" "$DIJIANG" export --from "$MODEL" --to "$WORK/taken" --format hf
[ -f "$WORK/taken/keep" ] || die "export touched an existing directory"
expect_failure "format" "$DIJIANG" export --from "$MODEL" --to "$WORK/x" --format onnx
expect_failure "does not exist" "$DIJIANG" export --from "$MODEL" --to "$WORK/no/such/dir" --format hf
ls -A "$WORK" | grep -q '^\.' && die "temporary files left behind: $(ls -A "$WORK")"
echo "bad inputs: all refused cleanly"
