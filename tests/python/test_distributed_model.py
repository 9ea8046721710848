"""proxyattn.distributed.prefill: a whole transformers model's prefill over 2 and 3 gloo
processes gives the next-token logits of the single-process "proxyattn" forward on the whole
prompt (float32 rounding), both exchanges, with and without a dense layer; bad calls raise. On
GPUs through NCCL (marked gpu): the same in bf16 for world sizes as the GPUs allow."""
import tempfile

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import proxyattn.hf  # noqa: E402
from proxyattn import distributed as pad  # noqa: E402
from process_group import spawn  # noqa: E402

BLOCK = 64
N = 1000
SETTINGS = dict(block_size=BLOCK, min_budget_tokens=128, dense_below=256, gamma=0.9)


def tiny_llama(attn_implementation):
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=4096, attn_implementation=attn_implementation)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def _last_logits(model, ids):
    with torch.no_grad():
        return model(ids[None]).logits[0, -1].float()


def _relative(a, b):
    return ((a - b).norm() / b.norm()).item()


def _check_prefill(rank, world, tmp):
    torch.set_num_threads(1)
    proxyattn.set_num_threads(1)
    ids = torch.randint(0, 512, (N,), generator=torch.Generator().manual_seed(4))
    dense = _last_logits(tiny_llama("sdpa"), ids)
    model = tiny_llama("sdpa")
    for dense_layers in ((), (1,)):  # (layer 0 carries the sparse-dense difference of this model)
        proxyattn.hf.enable(dense_layers=dense_layers, **SETTINGS)
        single = _last_logits(tiny_llama("proxyattn"), ids)
        for exchange in pad.EXCHANGES:
            logits = pad.prefill(model, pad.shard(ids, rank, world, BLOCK), N, exchange=exchange,
                                 dense_layers=dense_layers, **SETTINGS)
            err, sparse = _relative(logits, single), _relative(single, dense)
            assert err < 1e-5, f"{exchange}, dense layers {dense_layers}: {err} from the single-process call"
            assert sparse > 100 * err, f"sparse and dense differ by {sparse} only: the input tests nothing"
    assert model.config._attn_implementation == "sdpa"  # restored
    with pytest.raises(ValueError, match=r"input_ids: \d+ tokens, but the zigzag layout"):
        pad.prefill(model, ids[:10], N, **SETTINGS)
    with pytest.raises(ValueError, match=r"seq_len = 70: ranks \[.*\] of \d would hold no token"):
        pad.prefill(model, ids[:70], 70, **SETTINGS)
    with pytest.raises(ValueError, match="dense_layers"):
        pad.prefill(model, ids, N, dense_layers=[-1], **SETTINGS)


@pytest.mark.parametrize("world", [2, 3])
def test_prefill_matches_single_process(world):
    with tempfile.TemporaryDirectory() as tmp:
        spawn(world, "gloo", _check_prefill, tmp)


def test_attention_outside_prefill_raises():
    from proxyattn.distributed import model as cp_model
    q = torch.zeros(1, 4, 8, 64)
    with pytest.raises(RuntimeError, match="runs inside proxyattn.distributed.prefill"):
        cp_model.attention_forward(None, q, q[:, :2], q[:, :2], None)


def _check_prefill_nccl(rank, world, tmp):
    device = torch.device("cuda", rank)
    ids = torch.randint(0, 512, (N,), generator=torch.Generator().manual_seed(4)).to(device)
    proxyattn.hf.enable(**SETTINGS)
    single = _last_logits(tiny_llama("proxyattn").to(device, torch.bfloat16), ids)
    model = tiny_llama("sdpa").to(device, torch.bfloat16)
    for exchange in pad.EXCHANGES:
        logits = pad.prefill(model, pad.shard(ids, rank, world, BLOCK), N, exchange=exchange, **SETTINGS)
        assert _relative(logits, single) < 2e-2, exchange


@pytest.mark.gpu
@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_prefill_nccl(world):
    """One process per GPU through NCCL, bf16: the single-process GPU forward's logits."""
    if torch.cuda.device_count() < world:
        pytest.skip(f"{world} GPUs needed, {torch.cuda.device_count()} here")
    with tempfile.TemporaryDirectory() as tmp:
        spawn(world, "nccl", _check_prefill_nccl, tmp)
