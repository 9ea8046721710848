#!/usr/bin/env bash
# Checks the proxyattn command line: a small demo prints every metric, a small bench writes
# its JSON, help lists every command and --help works, long commands report their steps on
# stderr (--quiet: not), --device gpu without a GPU says so plainly, and bad options fail with
# exit status 2 and a message naming the option.
set -u
cli=$1
fail=0
expect() {  # expect <status> <pattern> -- args...
  local want=$1 pattern=$2
  shift 3
  out=$("$cli" "$@" 2>&1)
  got=$?
  if [ "$got" != "$want" ] || ! grep -q -- "$pattern" <<<"$out"; then
    echo "FAIL: proxyattn $* -> status $got (want $want), output lacks '$pattern':"
    echo "$out" | head -20
    fail=1
  fi
}
lacks() {  # lacks <pattern> -- args...: the output of a run (any status) lacks the pattern
  local pattern=$1
  shift 2
  out=$("$cli" "$@" 2>&1)
  if grep -q -- "$pattern" <<<"$out"; then
    echo "FAIL: proxyattn $* prints '$pattern':"
    echo "$out" | head -20
    fail=1
  fi
}
small=(demo --seq-len 3000 --q-heads 4 --kv-heads 2 --head-dim 64 --min-budget 256 --block 64)
expect 0 "density" -- "${small[@]}"
expect 0 "recall" -- "${small[@]}" --gamma 0.9 --groups 2 --budget-mode proportional --dtype fp16
expect 0 "speedup" -- "${small[@]}"
expect 0 "8 anchor blocks a head" -- "${small[@]}"
expect 0 "0 anchor blocks a head" -- "${small[@]}" --anchors 0
expect 0 "usage: proxyattn demo" -- demo --help
json=$(mktemp)
expect 0 "x dense" -- bench --device cpu --sizes 1024,1500 --gammas 0.9 --out "$json"
for field in '"dense_ms"' '"density"' '"estimate_ms"' '"attend_ms"' '"forward_ms"' '"mass_recall"'; do
  [ "$(grep -o "$field" "$json" | wc -l)" -ge 2 ] || { echo "FAIL: bench JSON lacks $field twice"; fail=1; }
done
expect 0 "x dense" -- bench --device cpu --sizes 1500 --gammas 0.9 --anchor-mode on_top --budget-rows 4 --out "$json"
grep -q '"anchor_mode": "on_top", "budget_rows": 4' "$json" || { echo "FAIL: bench JSON lacks the rules"; fail=1; }
rm -f "$json"
expect 2 "--anchor-mode first: expected in_budget or on_top" -- bench --anchor-mode first
expect 2 "budget-rows" -- bench --budget-rows 17
expect 0 "usage: proxyattn bench" -- bench --help
expect 2 "--device tpu" -- bench --device tpu
expect 2 "'x' is not an integer" -- bench --sizes 1024,x
expect 2 "'1500.5' is not an integer" -- bench --sizes 1500.5
expect 2 "'0' is not a number in (0, 1]" -- bench --gammas 0
expect 0 "commands:" -- help
for command in demo bench; do  # every command in the help, and its own --help
  expect 0 "^  $command " -- help
  expect 0 "^  $command " -- --help
  expect 0 "usage: proxyattn $command" -- $command --help
done
# Progress: each step on stderr with its time, none with --quiet (stdout keeps the results).
expect 0 "proxyattn demo: estimating \.\.\. [0-9.]* s" -- "${small[@]}"
expect 0 "proxyattn demo: dense attention \.\.\. [0-9.]* s" -- "${small[@]}"
lacks "proxyattn demo: estimating" -- "${small[@]}" --quiet
expect 0 "proxyattn bench: N=1024: dense attention \.\.\. [0-9.]* s" -- bench --device cpu --sizes 1024 --gammas 0.9
lacks "proxyattn bench: N=" -- bench --device cpu --sizes 1024 --gammas 0.9 --quiet
expect 0 "CPU (host memory, the library's CPU backend, [a-z0-9]* kernels)" -- bench --device cpu --sizes 1024 --gammas 0.9
# --device gpu where there is no GPU (or no CUDA backend): status 1 and the reason in words,
# not the CUDA runtime's "driver version is insufficient".
gpu_out=$("$cli" bench --device gpu --sizes 1024 --gammas 0.9 --repeats 1 --warmup 0 --no-dense 2>&1)
gpu_status=$?
if [ $gpu_status != 0 ]; then
  if [ $gpu_status != 1 ] || ! grep -q -- "--device gpu: \(no CUDA GPU on this machine\|this build has no CUDA backend\)" <<<"$gpu_out" ||
     grep -qi "insufficient" <<<"$gpu_out"; then
    echo "FAIL: proxyattn bench --device gpu without a GPU -> status $gpu_status:"
    echo "$gpu_out" | head -5
    fail=1
  fi
fi
expect 2 "unknown option --bogus" -- demo --bogus 1
expect 2 "--gamma 1.5" -- demo --gamma 1.5
expect 2 "--dtype int8" -- demo --dtype int8
expect 2 "--anchors 9" -- demo --anchors 9
expect 2 "needs a value" -- demo --seq-len
expect 2 "--seq-len 0: expected an integer in \[1," -- demo --seq-len 0
# Sizes the machine cannot hold: a message and status 1, not an uncaught std::bad_alloc. Not
# under AddressSanitizer, whose shadow memory cannot be mapped under a virtual-memory limit.
if ! grep -q __asan_init "$cli"; then
  oom_out=$( (ulimit -v 2000000; "$cli" demo --seq-len 4194304 --dtype fp32 --quiet) 2>&1)
  oom_status=$?
  if [ $oom_status != 1 ] || ! grep -q "out of host memory" <<<"$oom_out"; then
    echo "FAIL: proxyattn demo --seq-len 4194304 under a 2 GB limit -> status $oom_status:"
    echo "$oom_out" | head -5
    fail=1
  fi
fi
expect 2 "unknown command" -- frobnicate
expect 1 "num_proxy_groups = 3" -- "${small[@]}" --groups 3
expect 1 "block_size = 32" -- "${small[@]}" --block 32
[ $fail = 0 ] && echo "cli: all checks passed"
exit $fail
