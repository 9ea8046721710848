"""The results files of the suites: <out>/<prefix><date>-<machine>.json (the bench/results
naming), holding what the suite returned and the command line that ran it."""
import datetime
import json
import os
import re

ENTRY_POINT = "python -m proxyattn.bench"
OUT_PLACEHOLDER = "OUT"  # the output folder in the recorded command (a machine's own path stays out)


def machine_name(doc):
    """The machine of a results file, as its name gives it: the GPU (timing.machine's device)
    or the CPU (cpu_dispatch.cpu_info's model_name)."""
    machine = doc["machine"]
    return machine.get("device") or machine.get("model_name") or machine.get("machine") or "unknown"


def command_line(argv, out):
    """The command that ran a suite, its output folder named OUT."""
    return " ".join([ENTRY_POINT] + [OUT_PLACEHOLDER if a == out else a for a in argv])


def write_result(out_dir, doc, prefix=""):
    """Writes doc as <out_dir>/<prefix><date>-<machine>.json and returns the path."""
    date = datetime.date.today().isoformat()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", machine_name(doc)).strip("-").lower()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{prefix}{date}-{slug}.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    return path
