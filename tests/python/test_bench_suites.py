"""The benchmark command line (python -m proxyattn.bench) where it needs no GPU: every suite
imports and parses its options, the kernel suites' masks and plans run on the CPU backend
(also through a second library, _C.Library: the A/B path), and the cpu-dispatch suite runs
end to end and writes its results file."""
import argparse
import json
import os

import numpy as np
import pytest

import proxyattn
from proxyattn import _C
from proxyattn.bench import __main__ as cli
from proxyattn.bench import arguments, masks, results, tables

torch = pytest.importorskip("torch")

from proxyattn.bench import kernel_plan  # noqa: E402  (imports torch)

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
SHAPE = arguments.Shape(4, 2, 64)
N = 4096  # 32 query blocks of 128


@pytest.mark.parametrize("name", list(cli.SUITES))
def test_every_suite_parses_its_defaults(name):
    args, argv = cli.parse([name] + (["here=python"] if name == "cpu-dispatch" else []))
    assert args.command == name and argv[0] == name
    assert args.out == cli.DEFAULT_OUT and args.prefix is None
    assert callable(cli.suite_module(name).run)


def test_without_a_command_the_default_suite_runs():
    args, argv = cli.parse(["--suite", "model", "--sizes", "", "--activation-groups", "1,2"])
    assert argv[0] == cli.DEFAULT_SUITE == args.command
    assert args.parts == ["model"] and args.sizes == [] and args.activation_groups == [1, 2]
    assert cli.parse([])[0].command == cli.DEFAULT_SUITE


def test_kernel_suite_options():
    args, _ = cli.parse(["attention", "--sizes", "8192,32768", "--shape", "14,2,64", "--budget-spread",
                         "0.1,4,geometric", "--baseline", "build-base", "--baseline-label", "abc v1"])
    assert args.sizes == [8192, 32768] and args.shape == arguments.Shape(14, 2, 64)
    assert args.budget_spread == masks.BudgetSpread(0.1, 4.0, True)
    assert arguments.baseline_label(args) == "abc v1"
    args, _ = cli.parse(["chunked", "--only-estimation", "--n", "65536", "--paged-chunk", "8192"])
    assert args.only_estimation and args.n == 65536 and args.paged_chunk == 8192
    args, _ = cli.parse(["energy", "--points", "65536:1,131072:0.5"])
    assert args.points == [(65536, 1.0), (131072, 0.5)]
    args, _ = cli.parse(["profile", "--kernel", "sm80", "--density", "1"])
    assert args.kernel == "sm80" and args.density == 1.0


@pytest.mark.parametrize("argv", [["attention", "--shape", "6,4,128"], ["attention", "--shape", "32,8,96"],
                                  ["attention", "--budget-spread", "2,1"], ["energy", "--points", "1000:0.5"],
                                  ["energy", "--points", "8192:0"], ["cpu-dispatch", "nolabel"]])
def test_bad_options_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        cli.parse(argv)
    assert "error" in capsys.readouterr().err


def test_unknown_names_are_refused():
    with pytest.raises(SystemExit, match=r"--shapes: \['gpt'\] not among"):
        arguments.known("--shapes", ["llama", "gpt"], {"llama": 1})


def test_gpu_suites_need_a_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="attention: needs a CUDA device"):
        cli.main(["attention"])


def test_masks_reach_the_density():
    rng = np.random.default_rng(0)
    nqb = 64
    order = masks.make_order(nqb, rng)
    for m in (0, 1, 5, nqb - 1):
        row = order[m * (m + 1) // 2:(m + 1) * (m + 2) // 2]
        assert row[0] == m and sorted(row.tolist()) == list(range(m + 1))
        assert m < 1 or row[1] == 0
    for spread in (masks.DEFAULT_BUDGET_SPREAD, masks.budget_spread("0.1,4,geometric")):
        count = masks.make_count(nqb, 8, 0.2, rng, spread)
        assert count.shape == (nqb, 8) and count.dtype == np.int32
        assert abs(count.sum() / (8 * nqb * (nqb + 1) / 2) - 0.2) < 0.02
        assert (count <= np.arange(1, nqb + 1)[:, None]).all()
    rows, counts = masks.chunk_index(order, count, 10, 20)
    assert len(rows) == 20 * 21 // 2 - 10 * 11 // 2 and np.array_equal(counts, count[10:20])


def host_inputs():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(N, SHAPE.hq, SHAPE.d, generator=g)
    k = torch.randn(N, SHAPE.hkv, SHAPE.d, generator=g)
    v = torch.randn(N, SHAPE.hkv, SHAPE.d, generator=g)
    return q, k, v


def indexed(q, library=None):
    config = kernel_plan.index_config(SHAPE.d)
    nqb = N // config.block_size
    rng = np.random.default_rng(1)
    plan = kernel_plan.plan(SHAPE, N, q, config, library=library)
    plan.set_index(masks.make_order(nqb, rng), masks.make_count(nqb, SHAPE.hq, 0.3, rng))
    plan.check()
    return plan


def test_indexed_plan_attends_on_the_host_and_through_a_second_library():
    """The kernel suites' plans on the CPU backend: the written index is the plan's, attend_call
    gives proxyattn.attend's output, and a plan of a second library loaded by path (here the
    module itself, which carries the C API) gives the same."""
    q, k, v = host_inputs()
    ours = indexed(q)
    stats = ours.stats()
    assert 0.25 < stats["density"] < 0.35
    o = torch.empty_like(q)
    kernel_plan.attend_call(ours, q, k, v, o, 0)()
    assert torch.equal(o, proxyattn.attend(ours, q, k, v))
    other = indexed(q, library=_C.Library(_C.__file__))
    assert other.stats() == stats
    o2 = torch.empty_like(q)
    kernel_plan.attend_call(other, q, k, v, o2, 0)()
    assert torch.equal(o, o2)


def test_a_missing_library_is_named():
    with pytest.raises(ValueError, match="no-such-build"):
        kernel_plan.load_library("no-such-build")


def test_tuned_changes_the_tuning_for_its_call_only():
    q, _, _ = host_inputs()
    plan = indexed(q)
    before = plan.tuning()
    seen = []
    call = kernel_plan.tuned(plan, lambda: seen.append(plan.tuning()), **kernel_plan.SM80, attn_persistent=0)
    call()
    assert seen[0]["attn_kernel"] == _C.TUNING_KERNEL_SM80 and seen[0]["attn_persistent"] == 0
    assert plan.tuning() == before
    with pytest.raises(TypeError, match="unknown field 'rows'"):
        kernel_plan.tuned(plan, lambda: None, rows=1)
    assert plan.tuning() == before


def test_results_file_names_the_machine_and_the_command(tmp_path):
    doc = {"machine": {"device": "NVIDIA H100 80GB HBM3"}, "value": 1}
    path = results.write_result(str(tmp_path), doc, "attention-")
    name = os.path.basename(path)
    assert name.startswith("attention-") and name.endswith("-nvidia-h100-80gb-hbm3.json")
    with open(path) as f:
        assert json.load(f) == doc
    assert results.machine_name({"machine": {"model_name": "AMD EPYC"}}) == "AMD EPYC"
    assert results.command_line(["attention", "--out", "/tmp/x"], "/tmp/x") == \
        "python -m proxyattn.bench attention --out OUT"


def test_cpu_dispatch_runs_and_writes_its_fields(tmp_path, capsys):
    module_folder = os.path.join(ROOT, "python")
    cli.main(["cpu-dispatch", f"here={module_folder}", "--n", "256", "--q-heads", "4", "--kv-heads", "2",
              "--head-dim", "64", "--repeats", "1", "--rounds", "1", "--threads", "1", "--out", str(tmp_path)])
    (name,) = os.listdir(tmp_path)
    assert name.startswith("cpu-dispatch-")
    with open(tmp_path / name) as f:
        doc = json.load(f)
    assert set(doc) == {"benchmark", "date", "workload", "timing", "machine", "python", "results", "command"}
    assert doc["workload"]["N"] == 256 and doc["workload"]["threads"] == 1
    (row,) = doc["results"]
    assert row["label"] == "here" and row["ratio_to_here"] == 1.0 and row["median_s"] > 0
    assert row["cpu_kernels"] == _C.cpu_kernels() and len(row["times_s"]) == 1
    assert doc["command"].startswith("python -m proxyattn.bench cpu-dispatch here=") and doc["command"].endswith("OUT")
    assert "wrote" in capsys.readouterr().out


def test_parser_type_errors_are_argparse_errors():
    for parse, text in ((arguments.shape, "1,2"), (masks.budget_spread, "x"), (arguments.shape, "3,2,64")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_cp_runs_two_cpu_processes_and_refuses_more_processes_than_gpus(tmp_path, monkeypatch):
    cli.main(["cp", "--world", "2", "--cpu", "--sizes", "1024", "--heads", "4,2", "--head-dim", "32", "--repeats",
              "1", "--out", str(tmp_path)])
    (name,) = os.listdir(tmp_path)
    assert name.startswith("cp-w2-")
    with open(tmp_path / name) as f:
        doc = json.load(f)
    assert doc["machine"]["backend"] == "gloo" and sorted(c["rank"] for c in doc["cases"]) == [0, 1]
    for case in doc["cases"]:
        assert case["seq_len"] == 1024 and case["world"] == 2
        assert case["gather"]["total_s"] > 0 and case["fetch"]["bytes_received"] >= 0
        assert 0 < case["gather"]["density"] <= 1 and case["gather"]["density"] == case["fetch"]["density"]
    assert doc["input"] == "gaussian"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SystemExit, match=r"--world 2: this machine has 1 GPUs"):
        cli.main(["cp", "--world", "2", "--sizes", "1024", "--out", str(tmp_path)])


def test_cp_structured_input_is_sparse(tmp_path):
    """--input structured: the speed benchmarks' input, whose rows keep a part of their blocks
    where the Gaussian input keeps them all."""
    densities = {}
    for kind in ("gaussian", "structured"):
        out = tmp_path / kind
        cli.main(["cp", "--cpu", "--input", kind, "--sizes", "8192", "--heads", "4,2", "--head-dim", "32",
                  "--gamma", "0.8", "--exchange", "gather", "--repeats", "1", "--out", str(out)])
        (name,) = os.listdir(out)
        with open(out / name) as f:
            doc = json.load(f)
        assert doc["input"] == kind
        densities[kind] = doc["cases"][0]["gather"]["density"]
    assert densities["structured"] < 0.7 * densities["gaussian"], densities


def test_cp_scaling_table_over_world_sizes(tmp_path, capsys):
    """The scaling table of cp files of world sizes 1 and 2: speedup over the world-1 file's
    single-process call, efficiency, bytes per rank; files of other settings refused."""
    for world in (1, 2):
        cli.main(["cp", "--cpu", "--world", str(world), "--sizes", "2048", "--heads", "4,2", "--head-dim", "32",
                  "--exchange", "gather", "--repeats", "1", "--out", str(tmp_path)])
    paths = sorted(str(tmp_path / name) for name in os.listdir(tmp_path))
    docs = []
    for path in paths:
        with open(path) as f:
            docs.append(json.load(f))
    single = next(c["single_process_s"] for d in docs for c in d["cases"] if "single_process_s" in c)
    rows = tables.cp_scaling(docs)
    assert [(r["seq_len"], r["exchange"], r["world"]) for r in rows] == [(2048, "gather", 1), (2048, "gather", 2)]
    for r in rows:
        ranks = [c["gather"] for d in docs for c in d["cases"] if c["world"] == r["world"]]
        assert r["seconds"] == max(e["total_s"] for e in ranks)
        assert r["speedup"] == pytest.approx(single / r["seconds"]) and r["efficiency"] == r["speedup"] / r["world"]
        assert 0 <= r["communication_share"] <= 1 and 0 < r["density"] <= 1
    assert rows[0]["bytes_received"] == 0 and rows[1]["bytes_received"] > 0  # K and V of the other rank
    capsys.readouterr()
    cli.main(["table"] + paths)
    assert "| 2K | gather | 2 |" in capsys.readouterr().out
    docs[1]["settings"]["gamma"] = 0.5
    with pytest.raises(ValueError, match="different inputs, settings or shapes"):
        tables.cp_scaling(docs)


def test_cp_dense_ring_refuses_the_cpu_and_unknown_backends(tmp_path):
    with pytest.raises(SystemExit, match=r"--dense-ring: PyTorch's ring attention runs on CUDA devices only"):
        cli.main(["cp", "--cpu", "--sizes", "1024", "--dense-ring", "cudnn", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"--dense-ring: \['math'\] not among \['cudnn', 'flash'\]"):
        cli.main(["cp", "--cpu", "--sizes", "1024", "--dense-ring", "cudnn,math", "--out", str(tmp_path)])
    assert os.listdir(tmp_path) == []


def test_cp_model_times_a_whole_model_on_one_and_two_processes(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "model")
    for world in (1, 2):
        out = tmp_path / f"w{world}"
        cli.main(["cp", "--world", str(world), "--cpu", "--sizes", "1024", "--model", str(tmp_path / "model"),
                  "--repeats", "1", "--out", str(out)])
        (name,) = os.listdir(out)
        with open(out / name) as f:
            doc = json.load(f)
        assert doc["model"]["layers"] == 2 and doc["model"]["prompt"] == "random token ids" and "shape" not in doc
        assert sorted(c["rank"] for c in doc["cases"]) == list(range(world))
        for case in doc["cases"]:
            tokens = {case[e]["next_token"] for e in ("gather", "fetch")}
            assert case["gather"]["total_s"] > 0 and len(tokens) == 1
            if world == 1:  # 1024 tokens run dense: the same next token as the single-process forwards
                assert {case[f"single_process_{i}"]["next_token"] for i in ("proxyattn", "sdpa")} == tokens
    with pytest.raises(SystemExit, match="--dense-ring times one layer"):
        cli.main(["cp", "--model", "x", "--dense-ring", "cudnn", "--out", str(tmp_path)])
