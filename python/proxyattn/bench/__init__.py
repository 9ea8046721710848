"""proxyattn's benchmark suite against PyTorch baselines, one entry point:

    python -m proxyattn.bench --out bench/results            # everything (GPU machine, ~8 min)
    python -m proxyattn.bench --suite compare --sizes 8192,32768 --shapes llama3.1-8b
    python -m proxyattn.bench --suite model --model-layers 32
    python -m proxyattn.bench plot bench/results/<file>.json [more files] --img docs/img

Suites: `compare` (compare.py: dense cuDNN / FlashAttention-2 / FlexAttention / ours, and
per gamma ProxyAttn's estimation, attention and total against FlexAttention on the same mask
and the plain PyTorch estimation, on the structured input and on captured activations) and
`model` (model.py: time to first token of a Llama-3.1-8B-shaped model). One results file
<date>-<device>.json holds the machine (device, clocks, versions) and every measurement.
Needs torch with CUDA; `model` needs transformers; `plot` needs matplotlib.
"""
