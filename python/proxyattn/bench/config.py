"""What the suites measure by default (no torch import here, so that `table` and `plot` run
without it)."""
# name -> (Hq, Hkv, d, proxy groups g); Qwen's g = Hkv (one proxy per KV head, as issue 7 asks).
SHAPES = {"llama3.1-8b": (32, 8, 128, 1), "qwen2.5-7b": (28, 4, 128, 4)}
SIZES = (8192, 16384, 32768, 65536, 131072, 262144)
GAMMAS = (0.90, 0.95)
BLOCK_SIZE = 128  # the library's default block, used by every suite
SUITES = ("compare", "model")

# The whole-model suite: Llama-3.1-8B's shape with random weights.
LLAMA_31_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=8, head_dim=128, vocab_size=128256, rope_theta=500000.0,
                   rms_norm_eps=1e-5, tie_word_embeddings=False)
MODEL_SIZES = (32768, 131072)
