"""attn_implementation="paged|proxyattn": ProxyAttn in transformers' continuous-batching engine
(model.generate_batch, the serving app).

Each forward of the engine packs its requests' new tokens (prefill chunks and decode steps
alike) into one sequence: q [1, Hq, total_q, d], the lengths cu_seq_lens_q / cu_seq_lens_k
(each request's keys are its cached prefix plus its new tokens: bottom-right causal), and the
paged cache with the slots to write (write_index) and read (read_index). cache.update writes
the new K/V into the pages and gathers each request's keys. Per sequence:

- a prefill chunk of at least a block of queries and `dense_below` keys runs ProxyAttn: over
  the cache's pages with the layer's estimation state (attention_with_kvcache) when every
  earlier position of its request went through the state, else over the gathered K/V
  (attention_varlen, the prefix pooled again);
- everything else (decode steps, short chunks, dense_layers, sliding-window layers, what the
  library refuses) runs transformers' paged SDPA, with the block-diagonal causal mask the
  engine builds for "paged|sdpa" (it builds none for other names), one warning per reason.

The estimation state of a layer is a ProxyState over the layer's cache pages: the same page
ids, allocated with the first routed chunk and freed with the cache (kept in a
WeakKeyDictionary keyed by the cache). A request's proxies are trusted only while the engine
still holds its blocks: what the state holds per request is dropped when transformers frees
the request's blocks (its allocator's block_table no longer names it), and a page handed to
another request is written again by that request's first chunk before it is read.
"""
import dataclasses
import warnings
import weakref

from . import _api
from ._C import ProxyAttnUnsupported
from ._settings import settings_of

NAME = "paged|proxyattn"

# The engine's names of its per-forward arguments (PagedAttentionArgs).
_ENGINE_ARGUMENTS = ("cache", "cu_seq_lens_q", "cu_seq_lens_k", "read_index", "write_index")
_FULL_ATTENTION = "full_attention"


@dataclasses.dataclass
class _Proxied:
    """What a layer's estimation state holds for one request: the proxies of its first
    `positions` tokens, written into the pages `blocks`."""
    positions: int
    blocks: tuple


class _CacheStates:
    """The estimation states of one PagedAttentionCache, one per layer, and which request
    prefixes each holds."""

    def __init__(self):
        self.states = {}  # layer_idx -> ProxyState (None: could not be allocated)
        self.proxied = {}  # layer_idx -> {request_id: _Proxied}

    def state(self, cache, layer_idx, settings):
        if layer_idx not in self.states:
            group, in_group = cache.layer_index_to_group_indices[layer_idx]
            try:
                self.states[layer_idx] = _api.ProxyState(_pages(cache, cache.key_cache[in_group]), settings=settings)
            except (RuntimeError, ValueError, ProxyAttnUnsupported) as e:  # out of memory, pages not a stride multiple
                _warn_once(f"no estimation state for layer {layer_idx} ({e}): its chunks pool their prefix again")
                self.states[layer_idx] = None
        return self.states[layer_idx]

    def forget_freed(self, live_requests):
        """Drops what the states hold for requests whose blocks transformers freed."""
        for held in self.proxied.values():
            for request_id in [r for r in held if r not in live_requests]:
                del held[request_id]


_cache_states = weakref.WeakKeyDictionary()  # PagedAttentionCache -> _CacheStates
_warned = set()


def _warn_once(reason):
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"proxyattn: {reason}", stacklevel=3)


def states_of(cache):
    """The _CacheStates of a PagedAttentionCache (made on first use)."""
    states = _cache_states.get(cache)
    if states is None:
        states = _cache_states[cache] = _CacheStates()
    return states


def _pages(cache, layer_cache):
    """A layer's cache [num_slots, Hkv, d] as pages [num_pages, block_size, Hkv, d]."""
    return layer_cache.view(-1, cache.block_size, cache.num_key_value_heads, cache.head_dim)


# ---- the batch of one forward --------------------------------------------------------------------
@dataclasses.dataclass
class _Batch:
    """One forward's sequences, read once on the host (one synchronising copy) and shared by
    its layers: lengths, which sequences are ProxyAttn prefill chunks, and for those their
    request ids and the cache pages holding their keys."""
    cu_q: list
    cu_k: list
    proxy: list  # sequence indices routed to ProxyAttn
    requests: dict  # sequence index -> request_id (routed sequences)
    blocks: dict  # sequence index -> page ids of its keys (routed sequences)


def _read_batch(cache, group, cu_seq_lens_q, cu_seq_lens_k, write_index, block_size, dense_below):
    import torch

    lengths = torch.stack([cu_seq_lens_q.to(torch.int64), cu_seq_lens_k.to(cu_seq_lens_q.device, torch.int64)])
    cu_q, cu_k = lengths.tolist()
    proxy = [s for s in range(len(cu_q) - 1)
             if cu_q[s + 1] - cu_q[s] >= block_size and cu_k[s + 1] - cu_k[s] >= dense_below]
    batch = _Batch(cu_q, cu_k, proxy, {}, {})
    allocator = cache.group_cache_managers[group]
    known = _cache_states.get(cache)
    if known is not None:
        known.forget_freed(allocator.block_table)
    if proxy:
        owner = {block: request_id for request_id, blocks in allocator.block_table.items() for block in blocks}
        last_rows = torch.tensor([cu_q[s + 1] - 1 for s in proxy], device=write_index.device)
        last_slots = write_index.index_select(0, last_rows).tolist()
        for s, slot in zip(proxy, last_slots):
            request_id = owner[slot // cache.block_size]  # the page written now: this request's own
            pages = -(-(cu_k[s + 1] - cu_k[s]) // cache.block_size)
            batch.requests[s] = request_id
            batch.blocks[s] = tuple(allocator.block_table[request_id][:pages])
    return batch


class _Forwards:
    """The _Batch of the forward in progress: read by the first layer that sees it (layers
    run in increasing layer_idx, so a layer_idx not above the last one starts a forward)."""

    def __init__(self):
        self.last_layer = None
        self.batch = None

    def batch_of(self, layer_idx, read):
        if self.batch is None or self.last_layer is None or layer_idx <= self.last_layer:
            self.batch = read()
        self.last_layer = layer_idx
        return self.batch


_forwards = _Forwards()


# ---- the two paths ---------------------------------------------------------------------------------
def _causal_mask(cu_q, cu_k, sequences, device, sliding_window=None):
    """The engine's "paged|sdpa" mask of `sequences` packed together: query i of sequence s
    sees key j of s when j <= i + kv_len - q_len (and, with a sliding window, j > that minus
    the window). Boolean [1, 1, sum q_len, sum kv_len], True where attended."""
    import torch

    q_lens = torch.tensor([cu_q[s + 1] - cu_q[s] for s in sequences], device=device)
    kv_lens = torch.tensor([cu_k[s + 1] - cu_k[s] for s in sequences], device=device)
    ids = torch.arange(len(sequences), device=device)
    q_seq, k_seq = ids.repeat_interleave(q_lens), ids.repeat_interleave(kv_lens)
    q_start = torch.cumsum(q_lens, 0) - q_lens
    k_start = torch.cumsum(kv_lens, 0) - kv_lens
    q_pos = torch.arange(q_seq.numel(), device=device) - q_start[q_seq] + (kv_lens - q_lens)[q_seq]
    k_pos = torch.arange(k_seq.numel(), device=device) - k_start[k_seq]
    mask = (q_seq[:, None] == k_seq[None, :]) & (k_pos[None, :] <= q_pos[:, None])
    if sliding_window:
        mask &= k_pos[None, :] > q_pos[:, None] - sliding_window
    return mask[None, None]


def _rows(cu, sequences):
    return [(cu[s], cu[s + 1]) for s in sequences]


def _gather(x, ranges):
    """The rows `ranges` of x (dimension 0) packed, a view when they are one range."""
    import torch

    if len(ranges) == 1:
        return x[ranges[0][0]:ranges[0][1]]
    return torch.cat([x[a:b] for a, b in ranges])


def _packed_cu(ranges):
    cu = [0]
    for a, b in ranges:
        cu.append(cu[-1] + b - a)
    return cu


def _stock(q, k, v, batch, sequences, scaling, dropout, sliding_window):
    """transformers' paged SDPA over `sequences`: q [total_q, Hq, d], gathered k/v [total_k,
    Hkv, d] -> [their q rows, Hq, d]. All the batch's sequences are its whole rows."""
    import torch

    if len(sequences) == len(batch.cu_q) - 1:
        q_rows, k_rows = [(0, batch.cu_q[-1])], [(0, batch.cu_k[-1])]
    else:
        q_rows, k_rows = _rows(batch.cu_q, sequences), _rows(batch.cu_k, sequences)
    qs = _gather(q, q_rows).transpose(0, 1).unsqueeze(0)
    ks, vs = (_gather(t, k_rows).transpose(0, 1).unsqueeze(0) for t in (k, v))
    mask = _causal_mask(batch.cu_q, batch.cu_k, sequences, q.device, sliding_window)
    out = torch.nn.functional.scaled_dot_product_attention(
        qs, ks, vs, attn_mask=mask, dropout_p=dropout, scale=scaling, enable_gqa=qs.shape[1] != ks.shape[1])
    return out.squeeze(0).transpose(0, 1)


def _proxy_with_state(module, q, cache, batch, sequences, state, settings):
    """ProxyAttn over the layer's cache pages with its estimation state."""
    import torch

    _, in_group = cache.layer_index_to_group_indices[module.layer_idx]
    k_pages, v_pages = (_pages(cache, c[in_group]) for c in (cache.key_cache, cache.value_cache))
    width = max(len(batch.blocks[s]) for s in sequences)
    table = torch.tensor([list(batch.blocks[s]) + [0] * (width - len(batch.blocks[s])) for s in sequences],
                         dtype=torch.int32)
    q_rows = _rows(batch.cu_q, sequences)
    return _api.attention_with_kvcache(
        _gather(q, q_rows), k_pages, v_pages, [batch.cu_k[s + 1] - batch.cu_k[s] for s in sequences], table,
        _packed_cu(q_rows), proxy_state=state, settings=settings)


def _proxy_gathered(q, k, v, batch, sequences, settings):
    """ProxyAttn over the gathered K/V (no state: each call pools its prefix again)."""
    q_rows, k_rows = _rows(batch.cu_q, sequences), _rows(batch.cu_k, sequences)
    return _api.attention_varlen(_gather(q, q_rows), _gather(k, k_rows), _gather(v, k_rows), _packed_cu(q_rows),
                                 _packed_cu(k_rows), settings=settings)


# ---- the attention function ---------------------------------------------------------------------------
def make_attention(non_paged_forward, settings_fn, dense_layers):
    """The "paged|proxyattn" attention function. non_paged_forward: proxyattn.hf's function for
    calls without the engine's arguments (model.generate on a model loaded with this name);
    settings_fn(): enable()'s Settings; dense_layers: the layer_idx that always run dense."""

    def paged_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        """query [1, Hq, total_q, d], key/value [1, Hkv, total_q, d] with the engine's
        arguments -> (output [1, total_q, Hq, d], None)."""
        if kwargs.get("cache") is None:
            return non_paged_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                     **kwargs)
        missing = [name for name in _ENGINE_ARGUMENTS if name not in kwargs]
        if missing:
            raise ValueError(f"{NAME}: called with a paged cache but without {missing} (the continuous-batching "
                             f"engine's arguments)")
        import torch

        cache = kwargs["cache"]
        layer_idx = module.layer_idx
        group, _ = cache.layer_index_to_group_indices[layer_idx]
        sliding_window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
        cu_seq_lens_k = kwargs["cu_seq_lens_k"]
        if isinstance(cu_seq_lens_k, dict):
            cu_seq_lens_k = cu_seq_lens_k["sliding_attention" if sliding_window else _FULL_ATTENTION]
        settings = settings_fn()
        if scaling is not None:
            settings = settings_of(settings, softmax_scale=float(scaling))
        values = settings.resolve(query.shape[-1])
        dense_below = max(values.dense_below, 1)
        batch = _forwards.batch_of(layer_idx, lambda: _read_batch(
            cache, group, kwargs["cu_seq_lens_q"], cu_seq_lens_k, kwargs["write_index"][group], values.block_size,
            dense_below))
        dropout = dropout if module.training else 0.0

        k, v = cache.update(key_states=key, value_states=value, layer_idx=layer_idx,
                            read_index=kwargs["read_index"], write_index=kwargs["write_index"])
        q = query.squeeze(0).transpose(0, 1)  # [total_q, Hq, d]
        out = torch.empty_like(q)
        num_seqs = len(batch.cu_q) - 1
        proxy = batch.proxy
        if proxy and layer_idx in dense_layers:
            _warn_once(f"layer {layer_idx} is one of dense_layers: it runs transformers' paged SDPA")
            proxy = []
        if proxy and sliding_window:
            _warn_once("sliding-window layers run transformers' paged SDPA")
            proxy = []
        if proxy and dropout:
            _warn_once("attention dropout (training) runs transformers' paged SDPA")
            proxy = []
        if len(proxy) < num_seqs:
            _warn_once(f"decode steps, prefill chunks of fewer than {values.block_size} queries and sequences of "
                       f"fewer than {dense_below} keys run transformers' paged SDPA")

        try:
            _run_proxy(module, q, k, v, cache, batch, proxy, settings, out)
        except ProxyAttnUnsupported as e:  # raised before any output or state is written
            _warn_once(f"running transformers' paged SDPA instead: {e}")
            proxy = []
        routed = set(proxy)
        stock = [s for s in range(num_seqs) if s not in routed and batch.cu_q[s + 1] > batch.cu_q[s]]
        if stock:
            _scatter(out, _rows(batch.cu_q, stock), _stock(q, k, v, batch, stock, scaling, dropout, sliding_window))
        out[batch.cu_q[-1]:] = 0  # the engine's padding rows, if any
        return out.unsqueeze(0), None

    return paged_attention_forward


def _scatter(out, rows, result):
    offset = 0
    for a, b in rows:
        out[a:b] = result[offset:offset + b - a]
        offset += b - a


def _run_proxy(module, q, k, v, cache, batch, proxy, settings, out):
    """Runs the routed sequences: those whose prefix is in the layer's state (or that have no
    prefix) over the pages with the state, the others over the gathered K/V."""
    if not proxy:
        return
    states = states_of(cache)
    layer_idx = module.layer_idx
    state = states.state(cache, layer_idx, settings)
    held = states.proxied.setdefault(layer_idx, {})
    with_state, gathered = [], []
    for s in proxy:
        past = (batch.cu_k[s + 1] - batch.cu_k[s]) - (batch.cu_q[s + 1] - batch.cu_q[s])
        known = held.get(batch.requests[s])
        prefix_pages = batch.blocks[s][:-(-past // cache.block_size)] if past else ()
        if state is not None and (past == 0 or (known is not None and known.positions == past
                                                and known.blocks[:len(prefix_pages)] == prefix_pages)):
            with_state.append(s)
        else:
            gathered.append(s)
    if gathered and state is not None:
        _warn_once("chunks whose prefix is not in the estimation state (prefix-shared, forked or restored blocks, "
                   "or an earlier chunk on the stock path) pool their prefix again")
    results = []
    if with_state:
        results.append((with_state, _proxy_with_state(module, q, cache, batch, with_state, state, settings)))
    if gathered:
        results.append((gathered, _proxy_gathered(q, k, v, batch, gathered, settings)))
    for sequences, result in results:
        _scatter(out, _rows(batch.cu_q, sequences), result)
    for s in with_state:
        held[batch.requests[s]] = _Proxied(batch.cu_k[s + 1] - batch.cu_k[s], batch.blocks[s])
    for s in gathered:
        held.pop(batch.requests[s], None)
