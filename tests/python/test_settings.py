"""proxyattn.Settings: made once, checked by the library's pa_config_validate when made,
taken by every entry point (as an object or keyword arguments) with the same results, and
the one place the package writes the settings' names."""
import dataclasses
import importlib.util
import inspect
import math
import os
import re

import numpy as np
import pytest

import proxyattn
import proxyattn.hf
from proxyattn import _C, _api, _settings

PACKAGE = os.path.join(os.path.dirname(__file__), "..", "..", "python", "proxyattn")
NAMES = [field.name for field in dataclasses.fields(proxyattn.Settings)]
HAS_TORCH = importlib.util.find_spec("torch") is not None

# field -> invalid values, each with the error it raises and the message naming the field.
INVALID = {
    "gamma": [(2, proxyattn.ProxyAttnError, r"config\.gamma = 2: must lie in \(0, 1\]"),
              (0.0, proxyattn.ProxyAttnError, r"config\.gamma = 0"),
              (float("nan"), proxyattn.ProxyAttnError, r"config\.gamma = nan"),
              ("0.9", TypeError, r"gamma = '0\.9' is not a number")],
    "block_size": [(96, proxyattn.ProxyAttnUnsupported, r"config\.block_size = 96: supported block sizes"),
                   (64.0, TypeError, r"block_size = 64\.0 is not an integer")],
    "stride": [(3, proxyattn.ProxyAttnUnsupported, r"config\.stride = 3"),
               (32, proxyattn.ProxyAttnUnsupported, r"config\.stride = 32")],
    "min_budget_tokens": [(-1, proxyattn.ProxyAttnError, r"config\.min_budget_tokens = -1: must be >= 0"),
                          (2**40, ValueError, r"min_budget_tokens = 1099511627776: beyond pa_config's int32")],
    "num_proxy_groups": [(0, proxyattn.ProxyAttnError, r"config\.num_proxy_groups = 0: must be >= 1"),
                         (True, TypeError, r"num_proxy_groups = True is not an integer")],
    "force_sink": [(2, proxyattn.ProxyAttnError, r"config\.force_sink = 2"),
                   ("yes", TypeError, r"force_sink = 'yes' is not an integer")],
    "force_local": [(-1, proxyattn.ProxyAttnError, r"config\.force_local = -1")],
    "budget_mode": [("relative", ValueError, r"budget_mode: 'relative' is not one of \['absolute', 'proportional'\]"),
                    (0, ValueError, r"budget_mode: 0 is not one of")],
    "dense_below": [(-5, proxyattn.ProxyAttnError, r"config\.dense_below = -5: must be >= 0")],
    "softmax_scale": [(0.0, proxyattn.ProxyAttnError, r"config\.softmax_scale = 0: must be finite and > 0"),
                      (float("inf"), proxyattn.ProxyAttnError, r"config\.softmax_scale = inf"),
                      (-1, proxyattn.ProxyAttnError, r"config\.softmax_scale = -1")],
    "anchor_blocks": [(9, proxyattn.ProxyAttnError, r"config\.anchor_blocks = 9: must lie in \[0, 8\]"),
                      ("many", ValueError, r"anchor_blocks: 'many' is neither \"auto\" nor an integer")],
    "anchor_mode": [("counted", ValueError, r"anchor_mode: 'counted' is not one of \['in_budget', 'on_top'\]"),
                    (1, ValueError, r"anchor_mode: 1 is not one of")],
    "budget_rows": [(0, proxyattn.ProxyAttnError, r"config\.budget_rows = 0: must lie in \[1, 16\]"),
                    (17, proxyattn.ProxyAttnError, r"config\.budget_rows = 17")],
    "budget_rule": [("sorted", ValueError, r"budget_rule: 'sorted' is not one of \['paper', 'ranked'\]"),
                    (0, ValueError, r"budget_rule: 0 is not one of")],
    "ranked_slack": [(0.5, proxyattn.ProxyAttnError, r"config\.ranked_slack = 0\.5: must be finite and >= 1"),
                     (float("nan"), proxyattn.ProxyAttnError, r"config\.ranked_slack = nan")],
}
CASES = [(name, *case) for name, cases in INVALID.items() for case in cases]

# Every setting off its default, each a value the library runs.
CHANGED = dict(gamma=0.8, block_size=64, stride=2, min_budget_tokens=128, num_proxy_groups=2, force_sink=False,
               force_local=True, budget_mode="proportional", dense_below=256, softmax_scale=0.2, anchor_blocks=1,
               anchor_mode="in_budget", budget_rows=2, budget_rule="paper", ranked_slack=3.0)
B, N, HQ, HKV, D = 2, 640, 4, 2, 32


def qkv(fw, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = ((rng.standard_normal((B, N, h, D)) * s).astype(np.float32) for h, s in ((HQ, 1.5), (HKV, 1.5),
                                                                                        (HKV, 1.0)))
    if fw == "torch":
        import torch

        return tuple(torch.from_numpy(t) for t in (q, k, v))
    return q, k, v


def as_numpy(x):
    return x.detach().numpy() if hasattr(x, "detach") else np.asarray(x)


def test_every_field_has_invalid_cases():
    assert sorted(INVALID) == sorted(NAMES) and len(NAMES) == 15


@pytest.mark.parametrize("name, value, error, message", CASES, ids=[f"{c[0]}={c[1]!r}" for c in CASES])
def test_an_invalid_setting_raises_when_made_naming_it(name, value, error, message):
    with pytest.raises(error, match=message):
        proxyattn.Settings(**{name: value})
    with pytest.raises(error, match=message):  # a changed copy is checked too
        dataclasses.replace(proxyattn.Settings(gamma=0.5), **{name: value})


@pytest.mark.parametrize("name, value, error, message", CASES[:1] + CASES[-2:])
def test_entry_points_raise_before_any_work(fw, name, value, error, message):
    q, k, v = qkv(fw)
    flat = [t[0] for t in (q, k, v)]
    calls = [lambda: proxyattn.attention(q, k, v, **{name: value}),
             lambda: proxyattn.attention_varlen(*flat, [0, N], **{name: value}),
             lambda: proxyattn.estimate(q, k, **{name: value}),
             lambda: proxyattn.attention(q, k, v, settings=proxyattn.Settings(gamma=0.5), **{name: value})]
    for call in calls:
        with pytest.raises(error, match=message):
            call()


def test_unknown_settings_and_objects_are_refused():
    with pytest.raises(TypeError, match="unexpected keyword argument 'gama'"):
        proxyattn.Settings(gama=0.9)
    q, k, v = qkv("numpy")
    with pytest.raises(TypeError, match="unexpected keyword argument 'gama'"):
        proxyattn.attention(q, k, v, gama=0.9)
    with pytest.raises(TypeError, match="settings: expected a proxyattn.Settings, got dict"):
        proxyattn.attention(q, k, v, settings=dict(gamma=0.9))


def test_hf_enable_raises_at_enable_time():
    """An invalid setting raises at enable(), with the library's message (transformers is
    not needed to see it), and leaves the settings enabled before untouched."""
    before = proxyattn.hf._settings
    with pytest.raises(proxyattn.ProxyAttnError, match=r"config\.gamma = 2: must lie in \(0, 1\]"):
        proxyattn.hf.enable(gamma=2)
    with pytest.raises(proxyattn.ProxyAttnUnsupported, match=r"config\.block_size = 96"):
        proxyattn.hf.enable(settings=proxyattn.Settings(gamma=0.9), block_size=96)
    with pytest.raises(TypeError, match="unexpected keyword argument 'gama'"):
        proxyattn.hf.enable(gama=0.9)
    assert proxyattn.hf._settings is before


def test_settings_are_values():
    s = proxyattn.Settings(**CHANGED)
    assert s == proxyattn.Settings(**CHANGED) and hash(s) == hash(proxyattn.Settings(**CHANGED))
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.gamma = 0.5
    # Normalised: the same settings however given.
    assert proxyattn.Settings(force_sink=1, anchor_blocks=None, gamma=1, block_size=np.int64(64)) == \
        proxyattn.Settings(force_sink=True, anchor_blocks="auto", gamma=1.0, block_size=64)
    assert dataclasses.replace(s, gamma=0.9) == proxyattn.Settings(**dict(CHANGED, gamma=0.9))
    assert _settings.settings_of(s, gamma=0.9) == dataclasses.replace(s, gamma=0.9)
    assert _settings.settings_of() is _settings.DEFAULT and _settings.settings_of(s) is s
    assert _settings.settings_of(gamma=0.7) is _settings.settings_of(gamma=0.7)  # made once
    assert "gamma = 0.95: attention mass" in proxyattn.Settings.__doc__


@pytest.mark.parametrize("d", [32, 64, 128])
def test_defaults_are_the_library_defaults(d):
    """Settings() resolves to pa_config_default(head_dim), field by field (float32 as the
    library keeps them)."""
    ours, library = _settings.config_of(proxyattn.Settings().resolve(d)), _C.Config(d)
    for name in NAMES:
        assert getattr(ours, name) == pytest.approx(getattr(library, name), rel=1e-7), name


def test_resolve_binds_the_head_dim_dependent_fields():
    s = proxyattn.Settings(min_budget_tokens=512)
    values = s.resolve(64)
    assert values._fields == tuple(name for name, *_ in _C.CONFIG_FIELDS)  # the C struct's order
    assert values.softmax_scale == 1 / math.sqrt(64) and s.resolve(16).softmax_scale == 0.25
    assert values.dense_below == 512 and values.budget_mode == _C.BUDGET_MODES["absolute"]
    assert values.anchor_blocks == _C.ANCHOR_BLOCKS_AUTO and values.force_sink == 1
    assert proxyattn.Settings(**CHANGED).resolve(64).softmax_scale == 0.2


def test_the_same_settings_give_the_same_results_through_each_entry_point(fw):
    """One Settings (every field off its default) through attention, attention_varlen,
    estimate + attend and attention_with_kvcache, as an object and as keyword arguments: the
    same bits (the paged call: its rows to rounding), and the plans' config is the
    Settings'."""
    s = proxyattn.Settings(**CHANGED)
    q, k, v = qkv(fw)
    proxyattn.clear_plan_cache()
    out = as_numpy(proxyattn.attention(q, k, v, settings=s))
    assert np.array_equal(out, as_numpy(proxyattn.attention(q, k, v, **CHANGED)))
    assert np.array_equal(out, as_numpy(proxyattn.attention(q, k, v, settings=proxyattn.Settings(), **CHANGED)))
    assert np.array_equal(out, as_numpy(proxyattn.attention(q, k, v, settings=dataclasses.replace(s, gamma=0.5),
                                                            gamma=0.8)))
    plan = proxyattn.estimate(q, k, settings=s)
    assert np.array_equal(out, as_numpy(proxyattn.attend(plan, q, k, v)))
    assert all(getattr(plan.config, f) == getattr(_settings.config_of(s.resolve(D)), f) for f in NAMES)
    assert plan.density < 1  # the settings make it sparse: the comparison means something
    packed = [t.reshape((B * N,) + tuple(t.shape[2:])) for t in (q, k, v)]
    varlen = as_numpy(proxyattn.attention_varlen(*packed, [0, N, 2 * N], settings=s))
    assert np.array_equal(out, varlen.reshape(out.shape))
    assert np.array_equal(varlen, as_numpy(proxyattn.attention_varlen(*packed, [0, N, 2 * N], **CHANGED)))
    # A paged cache holding each whole prompt, pages of 64 tokens: the whole prompt as one chunk.
    pages = N // 64
    k_cache, v_cache = (t.reshape((B * pages, 64) + tuple(t.shape[2:])) for t in (k, v))
    table = np.arange(B * pages, dtype=np.int32).reshape(B, pages)
    state = proxyattn.ProxyState(k_cache, settings=s)
    assert (state.num_proxy_groups, state.stride) == (2, 2)
    paged = as_numpy(proxyattn.attention_with_kvcache(q, k_cache, v_cache, [N, N], table, settings=s,
                                                      proxy_state=state))
    assert np.allclose(paged, out, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="proxy_state: made with num_proxy_groups = 2 but the call has "
                                         "num_proxy_groups = 1"):
        proxyattn.attention_with_kvcache(q, k_cache, v_cache, [N, N], table, settings=s, num_proxy_groups=1,
                                         proxy_state=state)


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_the_custom_ops_and_compile_take_the_same_settings():
    """The custom ops (calls autograd records, fake tensors) and torch.compile(fullgraph=True)
    with a Settings object or keyword settings give the direct call's bits; the ops' last
    arguments are pa_config's fields, named and typed by the module."""
    import torch

    s = proxyattn.Settings(**CHANGED)
    q, k, v = qkv("torch")
    with torch.no_grad():
        direct = proxyattn.attention(q, k, v, settings=s)
    recorded = [t.clone().requires_grad_() for t in (q, k, v)]
    assert torch.equal(direct, proxyattn.attention(*recorded, settings=s).detach())
    packed = [t.reshape((B * N,) + tuple(t.shape[2:])).clone().requires_grad_() for t in (q, k, v)]
    assert torch.equal(direct.reshape(B * N, HQ, D),
                       proxyattn.attention_varlen(*packed, [0, N, 2 * N], settings=s).detach())

    def with_object(q, k, v):
        return proxyattn.attention(q, k, v, settings=s) * 2

    def with_keywords(q, k, v):
        return proxyattn.attention(q, k, v, **CHANGED) * 2

    def with_both(q, k, v):
        return proxyattn.attention(q, k, v, settings=proxyattn.Settings(gamma=0.5), **CHANGED) * 2

    for f in (with_object, with_keywords, with_both):
        assert torch.equal(torch.compile(f, fullgraph=True)(q, k, v), direct * 2), f.__name__
    for op in (torch.ops.proxyattn.attention, torch.ops.proxyattn.attention_varlen,
               torch.ops.proxyattn.attention_with_kvcache):
        arguments = op.default._schema.arguments[-len(_C.CONFIG_FIELDS):]
        assert [(a.name, str(a.type)) for a in arguments] == \
            [(name, "float" if is_float else "int") for name, _, _, is_float in _C.CONFIG_FIELDS]


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_compiled_calls_with_invalid_settings_raise_the_library_error():
    """Under torch.compile the check waits for the plan's creation: the same library message
    when the compiled call runs."""
    import torch

    q, k, v = qkv("torch")
    compiled = torch.compile(lambda q, k, v: proxyattn.attention(q, k, v, gamma=2.0), fullgraph=True)
    with pytest.raises(proxyattn.ProxyAttnError, match=r"config\.gamma = 2: must lie in \(0, 1\]"):
        compiled(q, k, v)


def test_the_setting_names_are_written_in_one_place():
    """Only _settings.py lists the settings: no other module of the package names all of them
    (the package had them in seven lists: signatures, dicts, op schemas), and the entry points
    take them as **changes (and a Settings as settings=), no setting of their own."""
    listing = []
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(root, name)) as f:
                    text = f.read()
                if all(re.search(r"\b%s\b" % setting, text) for setting in NAMES):
                    listing.append(os.path.relpath(os.path.join(root, name), PACKAGE))
    assert listing == ["_settings.py"]
    for fn in (proxyattn.attention, proxyattn.attention_varlen, proxyattn.attention_with_kvcache,
               proxyattn.estimate, proxyattn.hf.enable, proxyattn.ProxyState):
        parameters = inspect.signature(fn).parameters
        assert parameters["settings"].kind is inspect.Parameter.KEYWORD_ONLY, fn.__name__
        own = set(parameters) & set(NAMES)
        assert own <= ({"num_proxy_groups", "stride"} if fn is proxyattn.ProxyState else set()), fn.__name__
        assert fn is proxyattn.ProxyState or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    assert not hasattr(_api, "make_config") and not hasattr(_api, "SETTING_DEFAULTS")


def test_module_enum_values_are_any_int_checked_by_the_library():
    """Issue 26 (UBSan): _C.Config.budget_mode stored an int outside pa_budget_mode by converting
    it to the enum (undefined behaviour in C++), and _C.Problem did the same with a dtype code.
    Config keeps the int as a C caller's struct would, and pa_config_validate names it; Problem
    refuses a code that is no pa_dtype before converting it."""
    config = _C.Config(64)
    for value in (2, 99, -1, 2**31 - 1):
        config.budget_mode = value
        assert config.budget_mode == value
        with pytest.raises(proxyattn.ProxyAttnError, match=rf"config\.budget_mode = {value}:"):
            _C.validate_config(config)
    for code in (3, 9, -1):
        with pytest.raises(ValueError, match=rf"dtype = {code}: not a dtype code"):
            _C.Problem([0, 4], 1, 1, 8, code, None, 0, 0, 0)
