"""The results tables (proxyattn.bench.tables): the kernel table's A/B columns."""
from proxyattn.bench import tables


def attention_doc(with_baseline):
    results = []
    for n, ours, base in [(8192, 0.5, 0.55), (32768, 2.0, 1.8)]:
        row = {"N": n, "density": 0.1, "ours_ms": ours, "ours_tflops_effective": 400.0, "sm80_ms": 1.0,
               "cudnn_dense_ms": 4.0, "cudnn_tflops": 600.0, "speedup_vs_cudnn": 4.0 / ours}
        if with_baseline:
            row["baseline_ms"] = base
            row["baseline_sm80_ms"] = 2.0 * row["sm80_ms"]
        results.append(row)
    return {"benchmark": "attention", "results": results, "baseline": "abc1234 v9" if with_baseline else None}


def test_attention_table_baseline_columns():
    lines = tables.attention_table(attention_doc(True))
    header = next(line for line in lines if line.startswith("| N |"))
    assert "baseline ms" in header and "baseline / ours" in header
    rows = [line for line in lines if line.startswith("| 8K") or line.startswith("| 32K")]
    assert "| 0.550 | 1.100 |" in rows[0] and "| 1.800 | 0.900 |" in rows[1]
    # geometric mean of 1.1 and 0.9
    assert lines[0].startswith("Baseline: abc1234 v9;") and "0.995 (0.90-1.10)" in lines[0]
    assert "The sm80 kernels, baseline / ours: 2.000 (2.00-2.00)." in lines[0]


def test_attention_table_without_baseline():
    lines = tables.attention_table(attention_doc(False))
    assert all("baseline" not in line for line in lines)
    assert len(lines[0].split("|")) == len(lines[2].split("|"))  # header and rows have the same columns


def test_compare_tables_captured_only():
    row = {"gamma": 0.9, "density": 0.08, "estimate_ms": 1.5, "attend_ms": 6.0, "total_ms": 7.5,
           "speedup_vs_cudnn": 60.0 / 7.5, "mass_recall_mean": 0.93, "mass_recall_min_head": 0.86}
    case = {"shape": "captured", "input": "model, layer 6", "N": 131072, "num_q_heads": 14, "num_kv_heads": 2,
            "head_dim": 64, "g": 2, "dense": {"cudnn": {"ms": 60.0}}, "proxyattn": [row]}
    doc = {"compare": {"shapes": {"llama3.1-8b": [32, 8, 128, 1]}, "cases": [case]}}
    lines = tables.compare_tables(doc)
    assert not any("llama3.1-8b" in line for line in lines)  # no empty table of a shape not run
    (data,) = [line for line in lines if line.startswith("| model, layer 6")]
    cells = [c.strip() for c in data.strip("|").split("|")]
    assert cells[:5] == ["model, layer 6", "128K", "14/2, d=64", "2", "0.90"]
    assert cells[11:13] == ["8.00", "10.00"]  # x cuDNN: whole call, attention alone


def test_compare_tables_use_cudnn_of_the_same_rounds():
    row = {"gamma": 0.9, "density": 0.08, "estimate_ms": 1.5, "attend_ms": 6.0, "total_ms": 7.5, "cudnn_ms": 75.0,
           "speedup_vs_cudnn": 10.0, "mass_recall_mean": 0.93, "mass_recall_min_head": 0.86}
    case = {"shape": "captured", "input": "model, layer 6", "N": 131072, "num_q_heads": 14, "num_kv_heads": 2,
            "head_dim": 64, "g": 1, "dense": {"cudnn": {"ms": 60.0}}, "proxyattn": [row]}
    doc = {"compare": {"shapes": {}, "cases": [case]}}
    (data,) = [line for line in tables.compare_tables(doc) if line.startswith("| model, layer 6")]
    cells = [c.strip() for c in data.strip("|").split("|")]
    assert cells[9] == "75.000" and cells[11:13] == ["10.00", "12.50"]  # the row's cuDNN, not the case's


def test_attention_table_equal_rows_columns():
    doc = attention_doc(False)
    for row in doc["results"]:
        row.update({"cudnn_equal_rows_len": 3328, "cudnn_equal_rows_batch": 10, "cudnn_equal_rows_ms": 1.0,
                    "cudnn_equal_rows_tflops": 500.0})
    lines = tables.attention_table(doc)
    header = next(line for line in lines if line.startswith("| N |"))
    assert "cuDNN at equal rows: L, TFLOP/s" in header
    (row,) = [line for line in lines if line.startswith("| 8K")]
    assert "| 3328, 500 | 0.80 |" in row  # ours 400 effective TFLOP/s against 500
    assert len(row.split("|")) == len(header.split("|"))
