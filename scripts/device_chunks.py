#!/usr/bin/env python3
"""Moves a file larger than the GPU machine's carry limit (64 MiB a call, the working tree
included) there in parts, one part per call of the device tool, while the machine stays
warm (ignored files a call carried stay there for the next call).

Here:   scripts/device_chunks.py split FILE NAME [--part-bytes N]
          writes .weights/NAME/part-00, part-01, ... and .weights/NAME/manifest.json (sizes
          and sha256 of every part and of the whole file), and prints the carry list of each
          call: the manifest travels with the first part.
There:  scripts/device_chunks.py join NAME TARGET
          checks every part against the manifest, concatenates them into TARGET and checks the
          whole file's sha256; a missing part (the machine was given back between calls, so
          the earlier parts are gone) is named in the error.
The tracked result files travel with every call (eval/results alone is 17 MB on 2026-12-07):
a series of calls that needs no results may leave them out of the index for its duration
(`git rm -r -q --cached eval/results bench/results` with both folders in .git/info/exclude,
undone by `git reset -q eval/results bench/results`) and carry parts of 54.6 MB: the
0.5B model's 491 MB GGUF then took 9 calls of about 5 s each (H100, 2026-12-07).
"""
import argparse
import hashlib
import json
import pathlib
import sys

ROOT = pathlib.Path(".weights")            # ignored by git (.gitignore)
DEFAULT_PART_BYTES = 40_000_000            # + the working tree (23 MB on 2026-12-07) under 64 MiB a call
READ_BYTES = 1 << 22


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(READ_BYTES):
            h.update(chunk)
    return h.hexdigest()


def split(source, name, part_bytes):
    folder = ROOT / name
    folder.mkdir(parents=True, exist_ok=True)
    parts, whole = [], hashlib.sha256()
    with open(source, "rb") as f:
        while data := f.read(part_bytes):
            whole.update(data)
            part = folder / f"part-{len(parts):02d}"
            part.write_bytes(data)
            parts.append({"name": part.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"file": pathlib.Path(source).name, "bytes": sum(p["bytes"] for p in parts),
                "sha256": whole.hexdigest(), "parts": parts}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{source}: {manifest['bytes']} bytes in {len(parts)} parts under {folder}")
    for i, p in enumerate(parts):
        carry = [str(folder / p["name"])] + ([str(folder / "manifest.json")] if i == 0 else [])
        print(f"call {i}: carry {json.dumps(carry)}")


def join(name, target):
    folder = ROOT / name
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        sys.exit(f"join: {manifest_path} is missing (carry it with the first part)")
    manifest = json.loads(manifest_path.read_text())
    missing = [p["name"] for p in manifest["parts"] if not (folder / p["name"]).exists()]
    if missing:
        sys.exit(f"join: parts {missing} of {name} are not here (the machine was given back between calls?)")
    for p in manifest["parts"]:
        got = sha256_of(folder / p["name"])
        if got != p["sha256"]:
            sys.exit(f"join: {folder / p['name']}: sha256 {got}, the manifest says {p['sha256']}")
    target = pathlib.Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        for p in manifest["parts"]:
            out.write((folder / p["name"]).read_bytes())
    got = sha256_of(target)
    if got != manifest["sha256"]:
        sys.exit(f"join: {target}: sha256 {got}, the manifest says {manifest['sha256']}")
    print(f"join: {target} ({manifest['bytes']} bytes, {len(manifest['parts'])} parts), sha256 matches")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("split", help="cut FILE into .weights/NAME/part-NN and a manifest")
    s.add_argument("file")
    s.add_argument("name")
    s.add_argument("--part-bytes", type=int, default=DEFAULT_PART_BYTES)
    j = sub.add_parser("join", help="check the parts of NAME and concatenate them into TARGET")
    j.add_argument("name")
    j.add_argument("target")
    args = ap.parse_args()
    if args.command == "split":
        split(args.file, args.name, args.part_bytes)
    else:
        join(args.name, args.target)


if __name__ == "__main__":
    main()
