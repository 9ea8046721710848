"""proxyattn's benchmarks, one entry point (run from the repository root, PYTHONPATH=python
for the in-tree module; results files go to --out, default bench/results):

    python -m proxyattn.bench SUITE [options]      # python -m proxyattn.bench SUITE --help
    python -m proxyattn.bench table FILE...        # the markdown tables of docs/benchmarks.md
    python -m proxyattn.bench plot FILE... --img docs/img

Suites (the table SUITES in __main__.py; each is one module here with add_arguments and run):
  pytorch       (the default) dense cuDNN / FlashAttention-2 / FlexAttention / ours and, per
                gamma, ProxyAttn against FlexAttention on the same mask and the plain PyTorch
                estimation (compare.py, baselines.py), and a whole model's TTFT (model.py)
  attention     the attention kernel at controlled densities (masks.py) against cuDNN, Flex
                and our sm80 kernel; --baseline DIR times a second build in the same rounds
  estimate      pa_estimate per stage (CUPTI) against cuDNN dense; --baseline as above
  call          one call's device and host time as a transformers model makes it
  energy        joules per call and SM clock (NVML, nvml.py)
  chunked       chunked prefill, paged K/V and a chunk after a long prefix against dense
  profile       one attention point for Nsight Compute (scripts/gpu-check's profile step)
  cpu-dispatch  the CPU forward of several builds of the module (no GPU, no torch)

Shared: timing.py (CUDA-event timing, interleaved rounds, the machine), results.py (the
results file), kernel_plan.py (device plans on this module's library or a second build's,
_C.Library), masks.py (ProxyAttn-shaped indexes), arguments.py (argument types), config.py
(shapes and sizes). The GPU suites need torch with CUDA; `model` transformers; `plot`
matplotlib. C++ users have `proxyattn bench` (tools/bench.cpp): the library alone.
"""
