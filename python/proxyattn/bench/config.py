"""What the suites measure by default (no torch import here, so that `table` and `plot` run
without it)."""
import collections

# name -> (Hq, Hkv, d, proxy groups g); Qwen's g = Hkv (one proxy per KV head, as issue 7 asks).
SHAPES = {"llama3.1-8b": (32, 8, 128, 1), "qwen2.5-7b": (28, 4, 128, 4)}
# The real models of docs/accuracy.md, same fields (their default g = Hkv = 2).
REAL_MODEL_SHAPES = {"qwen2.5-coder-1.5b": (12, 2, 128, 2), "qwen2.5-coder-0.5b": (14, 2, 64, 2)}
SIZES = (8192, 16384, 32768, 65536, 131072, 262144)
GAMMAS = (0.90, 0.95)
BLOCK_SIZE = 128  # the library's default block, used by every suite
SUITES = ("compare", "model")

# The whole-model suite: a model's shape with random weights (transformers' config and model
# classes, the config, ProxyAttn's proxy groups g as in SHAPES). Qwen2.5-Coder-0.5B is where a
# call's fixed costs show: a small model whose layers do little besides attention at 8K-32K.
ModelSpec = collections.namedtuple("ModelSpec", "config_class model_class config groups")
LLAMA_31_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=8, head_dim=128, vocab_size=128256, rope_theta=500000.0,
                   rms_norm_eps=1e-5, tie_word_embeddings=False)
QWEN25_CODER_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                        num_key_value_heads=2, vocab_size=151936, rope_theta=1000000.0, rms_norm_eps=1e-6,
                        tie_word_embeddings=True)
MODELS = {"llama3.1-8b": ModelSpec("LlamaConfig", "LlamaForCausalLM", LLAMA_31_8B, SHAPES["llama3.1-8b"][3]),
          "qwen2.5-coder-0.5b": ModelSpec("Qwen2Config", "Qwen2ForCausalLM", QWEN25_CODER_05B,
                                          REAL_MODEL_SHAPES["qwen2.5-coder-0.5b"][3])}
MODEL_SIZES = (32768, 131072)
