set -u
STEPS=build scripts/gpu-check "$OUT" >/dev/null 2>&1 || { echo build failed; exit 1; }
rep=$OUT/prof
ncu --clock-control none -k regex:proxy_scores --launch-count 2 \
  --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
  --section WarpStateStats --section SchedulerStats --section SourceCounters --section LaunchStats --section Occupancy \
  -o $rep -f python3 bench/estimate_bench.py --build build-gpu --out /tmp/x --shapes qwen2.5-coder-0.5b --sizes 131072 --no-stages > $OUT/prof.log 2>&1
tail -5 $OUT/prof.log
ncu --import $rep.ncu-rep --page details --csv > $OUT/details.csv 2>&1
ncu --import $rep.ncu-rep --page source --csv --print-source sass > $OUT/sass.csv 2>&1
rm -f $rep.ncu-rep
python3 - <<'PY'
import csv, os
rows = list(csv.DictReader(open(os.environ["OUT"] + "/details.csv")))
keys = ("Duration", "Compute (SM) Throughput", "Registers Per Thread", "Achieved Occupancy", "Theoretical Occupancy",
        "Issue Slots Busy", "No Eligible", "Active Warps Per Scheduler", "Eligible Warps Per Scheduler", "Warp Cycles Per Issued Instruction", "Executed Ipc Active", "SM Frequency", "Block Limit Registers", "Block Limit Shared Mem", "L1/TEX Hit Rate", "L2 Hit Rate", "Memory Throughput")
for r in rows:
    if r.get("Metric Name") in keys:
        print(r["ID"], r["Kernel Name"][:60], r["Metric Name"], r["Metric Value"], r["Metric Unit"])
PY
