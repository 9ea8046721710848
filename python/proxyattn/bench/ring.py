"""Dense context parallelism, the peer of proxyattn.distributed: PyTorch's ring attention
(torch.distributed.tensor.experimental.context_parallel) over one SDPA backend, on the same
head-tail sharding as ZigzagLayout (rank r holds pieces r and 2W - 1 - r of N / 2W tokens, the
same pieces whenever 2W blocks divide N). CUDA only: PyTorch registers the ring for its CUDA
SDPA kernels alone. Those kernels take no GQA, so K and V are expanded to the query heads
before sharding (what a user of context_parallel writes): the ring moves Hq / Hkv times the
bytes of the K and V it stands for."""
import torch
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.experimental import context_parallel
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}


def ring_refusal(device, backends):
    """Why the ring cannot run here (a message), or None."""
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        return f"--dense-ring: {unknown} not among {sorted(BACKENDS)}"
    if backends and device.type != "cuda":
        return "--dense-ring: PyTorch's ring attention runs on CUDA devices only"
    return None


class DenseRing:
    """The ring over the world's ranks for whole-sequence q [N, Hq, d], k, v [N, Hkv, d] given
    on every rank; call() returns this rank's causal output [N / W, Hq, d] in head-tail order.
    Holds the sharded buffers [1, Hq, N / W, d] between calls, so that timing repeats only the
    ring (its communication and its SDPA calls)."""

    def __init__(self, q, k, v, world, backend):
        if q.shape[0] % (2 * world):
            raise ValueError(f"seq_len {q.shape[0]}: the ring's head-tail sharding needs a multiple of 2 * world "
                             f"({2 * world})")
        group = q.shape[1] // k.shape[1]
        as_bhsd = lambda t: t.transpose(0, 1).unsqueeze(0).contiguous()  # noqa: E731  [N, H, d] -> [1, H, N, d]
        self.q = as_bhsd(q)
        self.k = as_bhsd(k.repeat_interleave(group, dim=1))
        self.v = as_bhsd(v.repeat_interleave(group, dim=1))
        self.mesh = init_device_mesh(q.device.type, (world,))
        self.backend = BACKENDS[backend]
        self._context = None

    def __enter__(self):
        buffers = [self.q, self.k, self.v]
        self._context = context_parallel(self.mesh, buffers=buffers, buffer_seq_dims=[2, 2, 2],
                                         no_restore_buffers=set(buffers))
        self._context.__enter__()
        return self

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)

    def __call__(self):
        with sdpa_kernel(self.backend):
            out = F.scaled_dot_product_attention(self.q, self.k, self.v, is_causal=True)
        return out[0].transpose(0, 1)  # [N / W, Hq, d]

    def bytes_received(self):
        """K and V bytes this rank receives from the others in one call (all of them, once)."""
        world = self.mesh.size()
        return (world - 1) * (self.k.numel() + self.v.numel()) * self.k.element_size()
