"""Markdown tables for docs/benchmarks.md from results files of `python -m proxyattn.bench`'s
pytorch, attention and cp suites (printed; the numbers in the document are these, unedited).
The cp files of several world sizes make one scaling table together."""
import json
import math


def _ms(entry):
    return entry["ms"] if entry and "ms" in entry else float("nan")


def _f(x, digits=3):
    """Milliseconds and ratios: 3 decimals below 100, one from 100 on; NaN as '-'."""
    return "-" if x != x else (f"{x:.1f}" if x >= 100 else f"{x:.{digits}f}")


def _cudnn_ms(case, row):
    """cuDNN's dense time next to a ProxyAttn row: timed in the same rounds as the row (results
    from 2026-11-24 on), else the case's dense measurement."""
    return row.get("cudnn_ms", _ms(case["dense"]["cudnn"]))


def compare_tables(doc):
    lines = []
    for shape, (hq, hkv, d, g) in doc["compare"]["shapes"].items():
        if not any(c.get("shape") == shape for c in doc["compare"]["cases"]):
            continue  # a run on captured inputs only
        lines += [f"**{shape}** ({hq} Q / {hkv} KV heads, d = {d}, g = {g}), structured input:", "",
                  "| N | γ | density | estimate ms | attention ms | total ms | cuDNN ms | FA2 ms | Flex dense ms | "
                  "Flex on our mask ms | x cuDNN (total) | x Flex-mask (attention) | PyTorch estimate / ours | recall |",
                  "|" + "---|" * 14]
        for c in (c for c in doc["compare"]["cases"] if c.get("shape") == shape and "dense" in c):
            for r in c["proxyattn"]:
                lines.append("| %dK | %.2f | %.3f | %s | %s | %s | %s | %s | %s | %s | %.2f | %s | %s | %.3f |" % (
                    c["N"] // 1024, r["gamma"], r["density"], _f(r["estimate_ms"]), _f(r["attend_ms"]),
                    _f(r["total_ms"]), _f(_cudnn_ms(c, r)), _f(_ms(c["dense"].get("fa2"))),
                    _f(_ms(c["dense"].get("flex"))), _f(r.get("flex_masked_ms", float("nan"))),
                    r["speedup_vs_cudnn"], _f(r.get("speedup_attend_vs_flex_masked", float("nan")), 2),
                    _f(r.get("torch_estimate_over_ours", float("nan")), 1), r["mass_recall_mean"]))
        lines.append("")
    captured = [c for c in doc["compare"]["cases"] if c.get("shape") == "captured"]
    if captured:
        lines += ["Captured activations:", "",
                  "| source | N | heads | g | γ | density | estimate ms | attention ms | total ms | cuDNN ms | "
                  "Flex on our mask ms | x cuDNN (total) | x cuDNN (attention) | recall (mean / worst head) |",
                  "|" + "---|" * 14]
        for c in captured:
            for r in c["proxyattn"]:
                cudnn = _cudnn_ms(c, r)
                lines.append("| %s | %dK | %d/%d, d=%d | %d | %.2f | %.3f | %s | %s | %s | %s | %s | %.2f | %.2f | "
                             "%.3f / %.3f |" % (
                                 c["input"], c["N"] // 1024, c["num_q_heads"], c["num_kv_heads"], c["head_dim"], c["g"],
                                 r["gamma"], r["density"], _f(r["estimate_ms"]), _f(r["attend_ms"]), _f(r["total_ms"]),
                                 _f(cudnn), _f(r.get("flex_masked_ms", float("nan"))), r["speedup_vs_cudnn"],
                                 cudnn / r["attend_ms"], r["mass_recall_mean"], r["mass_recall_min_head"]))
        lines.append("")
    return lines


def model_table(doc):
    m = doc["model"]
    lines = [f"Whole model ({m['parameters'] / 1e9:.2f} B parameters, {m['weights']}; dense: {m['dense']}; "
             f"ProxyAttn: {m['proxyattn']}):", "",
             "| N | attention input | density (layer 0) | dense TTFT ms | dense attention ms | ProxyAttn TTFT ms | "
             "ProxyAttn attention ms | rest of the model ms (dense / ProxyAttn) | TTFT speedup | attention speedup |",
             "|" + "---|" * 10]
    for r in m["results"]:
        dn, pa = r["dense_cudnn"], r["proxyattn"]
        lines.append("| %dK | %s | %.3f | %s | %s | %s | %s | %s / %s | %.2f | %.2f |" % (
            r["N"] // 1024, r["attention_input"], r["density_layer0"], _f(dn["ttft_ms"]), _f(dn["attention_ms"]),
            _f(pa["ttft_ms"]), _f(pa["attention_ms"]), _f(dn["rest_ms"]), _f(pa["rest_ms"]),
            r["ttft_speedup"], r["attention_speedup"]))
    return lines + [""]


def _geomean(values):
    return math.exp(sum(math.log(x) for x in values) / len(values))


def attention_table(doc):
    """The kernel table of the attention suite's results (benchmark "attention"); with
    --baseline results, the baseline build's times and baseline / ours per point, and their
    geometric mean in a line above the table."""
    variants = [("sm90_row_major_ms", "sm90 row-major order ms"), ("sm90_no_turns_ms", "sm90 without turns ms"),
                ("sm90_item_per_cta_ms", "sm90 one item per CTA ms"), ("sm90_unranked_ms", "sm90 heads unranked ms"),
                ("sm80_row_major_ms", "sm80 row-major order ms")]
    variants = [(key, title) for key, title in variants if any(key in r for r in doc["results"])]
    baseline = all("baseline_ms" in r for r in doc["results"])
    equal_rows = all("cudnn_equal_rows_ms" in r for r in doc["results"])
    header = ["N", "density", "ours ms", "TFLOP/s eff.", *(title for _, title in variants),
              *(["baseline ms", "baseline / ours"] if baseline else []), "sm80 ms", "sm80 / ours",
              "cuDNN dense ms", "cuDNN TFLOP/s", "eff. / cuDNN rate",
              *(["cuDNN at equal rows: L, TFLOP/s", "eff. / that rate"] if equal_rows else []),
              "Flex ms", "x cuDNN", "x Flex"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    if baseline:
        ratios = [r["baseline_ms"] / r["ours_ms"] for r in doc["results"]]
        mean = _geomean(ratios)
        head = [f"Baseline: {doc.get('baseline') or 'a second build'}; baseline / ours, geometric mean over "
                f"{len(ratios)} points: {mean:.3f} ({min(ratios):.2f}-{max(ratios):.2f})."]
        if all("baseline_sm80_ms" in r for r in doc["results"]):
            sm80 = [r["baseline_sm80_ms"] / r["sm80_ms"] for r in doc["results"]]
            head.append(f"The sm80 kernels, baseline / ours: {_geomean(sm80):.3f} ({min(sm80):.2f}-{max(sm80):.2f}).")
        lines = [" ".join(head), ""] + lines
    for r in doc["results"]:
        cells = [f"{r['N'] // 1024}K", "%.3f" % r["density"], _f(r["ours_ms"]), "%.0f" % r["ours_tflops_effective"]]
        cells += [_f(r.get(key, float("nan"))) for key, _ in variants]
        if baseline:
            cells += [_f(r["baseline_ms"]), "%.3f" % (r["baseline_ms"] / r["ours_ms"])]
        cells += [_f(r["sm80_ms"]), "%.2f" % (r["sm80_ms"] / r["ours_ms"]), _f(r["cudnn_dense_ms"]),
                  "%.0f" % r["cudnn_tflops"], "%.2f" % (r["ours_tflops_effective"] / r["cudnn_tflops"])]
        if equal_rows:
            cells += ["%d, %.0f" % (r["cudnn_equal_rows_len"], r["cudnn_equal_rows_tflops"]),
                      "%.2f" % (r["ours_tflops_effective"] / r["cudnn_equal_rows_tflops"])]
        cells += [_f(r.get("flex_ms", float("nan"))), "%.2f" % r["speedup_vs_cudnn"],
                  _f(r.get("speedup_vs_flex", float("nan")), 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


CP_BENCHMARK = "proxyattn.bench cp"


def cp_scaling(docs):
    """Rows of one layer's distributed call over the world sizes of cp files (one-layer runs of
    one input and settings): per (N, exchange, world) the slowest rank's time, the speedup over
    the single-process call of the world-1 file at that N and its efficiency, the most bytes a
    rank received, the largest share of a rank's step time in communication, the ranks' mean
    density, and PyTorch's dense ring (cuDNN) at that world size. Dicts, sorted by N, exchange,
    world."""
    runs = {json.dumps([d.get("input", "gaussian"), d["settings"], d["shape"]], sort_keys=True) for d in docs}
    if len(runs) > 1:
        raise ValueError(f"cp files of different inputs, settings or shapes: {sorted(runs)}")
    cases = [c for d in docs for c in d["cases"]]
    single = {c["seq_len"]: c["single_process_s"] for c in cases if "single_process_s" in c}
    rows = []
    for n in sorted({c["seq_len"] for c in cases}):
        for world in sorted({c["world"] for c in cases if c["seq_len"] == n}):
            ranks = [c for c in cases if c["seq_len"] == n and c["world"] == world]
            exchanges = [e for e in ("gather", "fetch") if all(e in c for c in ranks)]
            ring = [c["dense_ring_cudnn"]["total_s"] for c in ranks if "dense_ring_cudnn" in c]
            for exchange in exchanges:
                entries = [c[exchange] for c in ranks]
                seconds = max(e["total_s"] for e in entries)
                comm = max(sum(t for s, t in e["steps_s"].items() if s.startswith("communication")) /
                           max(sum(e["steps_s"].values()), 1e-12) for e in entries)
                rows.append({"seq_len": n, "exchange": exchange, "world": world, "seconds": seconds,
                             "speedup": single[n] / seconds if n in single else float("nan"),
                             "bytes_received": max(e["bytes_received"] for e in entries), "communication_share": comm,
                             "density": sum(e.get("density", float("nan")) for e in entries) / len(entries),
                             "dense_ring_seconds": max(ring) if len(ring) == len(ranks) else float("nan")})
    for r in rows:
        r["efficiency"] = r["speedup"] / r["world"]
        r["vs_dense_ring"] = r["dense_ring_seconds"] / r["seconds"]
    return rows


def cp_scaling_table(docs):
    lines = ["| N | exchange | GPUs | ms (slowest rank) | speedup | efficiency | MiB received per rank | "
             "communication share | density | dense ring ms | x dense ring |", "|" + "---|" * 11]
    for r in cp_scaling(docs):
        lines.append("| %dK | %s | %d | %s | %s | %s | %.1f | %.2f | %s | %s | %s |" % (
            r["seq_len"] // 1024, r["exchange"], r["world"], _f(r["seconds"] * 1e3), _f(r["speedup"], 2),
            _f(r["efficiency"], 2), r["bytes_received"] / 2**20, r["communication_share"], _f(r["density"]),
            _f(r["dense_ring_seconds"] * 1e3), _f(r["vs_dense_ring"], 2)))
    return lines + [""]


def main(results):
    cp_docs, cp_paths = [], []
    for path in results:
        with open(path) as f:
            doc = json.load(f)
        if doc.get("benchmark") == CP_BENCHMARK and "model" not in doc:
            cp_docs.append(doc)
            cp_paths.append(path)
            continue
        print(f"<!-- {path} -->")
        if "compare" in doc:
            print("\n".join(compare_tables(doc)))
        if "model" in doc:
            print("\n".join(model_table(doc)))
        if doc.get("benchmark") == "attention":
            print("\n".join(attention_table(doc)))
    if cp_docs:
        print(f"<!-- {', '.join(cp_paths)} -->")
        print("\n".join(cp_scaling_table(cp_docs)))
