"""The benchmarks' ctypes binding (bench/capi.py), where it needs no GPU: its pa_tuning
matches the C header's, its pa_config the module's (the struct the library was built with),
and the environment it gives libraries built before the tuning."""
import ctypes
import os
import re
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "bench"))
import capi  # noqa: E402

from proxyattn import _C  # noqa: E402


def test_tuning_fields_match_the_header():
    with open(os.path.join(ROOT, "include", "proxyattn", "proxyattn_tuning.h")) as f:
        header = f.read()
    body = re.search(r"typedef struct pa_tuning \{(.*?)\} pa_tuning;", header, re.S).group(1)
    fields = re.findall(r"^\s*int32_t (\w+);", body, re.M)
    assert [(name, "c_int") for name in fields] == [(name, t.__name__) for name, t in capi.Tuning._fields_]
    assert set(capi.LEGACY_ENVIRONMENT) == set(fields)
    for name in ("TUNING_KERNEL_AUTO", "TUNING_KERNEL_SM80", "TUNING_PACKING_CHUNKS_OF_HEAD",
                 "TUNING_PACKING_HEADS_OF_CHUNK"):
        assert re.search(r"#define PA_%s (\d+)" % name, header).group(1) == str(getattr(capi, name))


def test_legacy_environment():
    assert capi.legacy_environment({"attn_kernel": capi.TUNING_KERNEL_SM80, "est_block_logits": 0,
                                    "attn_rows_per_chunk": 1, "attn_max_ctas": 3}) == {
        "PROXYATTN_ATTN_KERNEL": "sm80", "PROXYATTN_EST_BLOCK_LOGITS": "0", "PROXYATTN_ATTN_ROW_CHUNK": "1",
        "PROXYATTN_ATTN_MAX_CTAS": "3"}
    assert capi.legacy_environment({"attn_packing": capi.TUNING_PACKING_HEADS_OF_CHUNK, "attn_persistent": 0,
                                    "attn_consumer_turns": 0, "attn_rank_heads": 0}) == {
        "PROXYATTN_ATTN_PACKING": "heads", "PROXYATTN_ATTN_PERSISTENT": "0", "PROXYATTN_ATTN_PINGPONG": "0",
        "PROXYATTN_ATTN_RANK_HEADS": "0"}
    defaults = {name: getattr(capi.Tuning(), name) for name in capi.LEGACY_ENVIRONMENT}
    defaults.update(attn_persistent=1, attn_consumer_turns=1, attn_rank_heads=1, est_block_logits=1)
    assert capi.legacy_environment(defaults) == {}  # the defaults: no variable
    with pytest.raises(TypeError, match="unknown tuning field 'rows'"):
        capi.legacy_environment({"rows": 1})


def test_with_environment_sets_and_restores():
    os.environ.pop("PROXYATTN_TEST_A", None)
    os.environ["PROXYATTN_TEST_B"] = "before"
    seen = capi.with_environment({"PROXYATTN_TEST_A": "1", "PROXYATTN_TEST_B": "2"},
                                 lambda: (os.environ["PROXYATTN_TEST_A"], os.environ["PROXYATTN_TEST_B"]))()
    assert seen == ("1", "2")
    assert "PROXYATTN_TEST_A" not in os.environ and os.environ["PROXYATTN_TEST_B"] == "before"

    def fails():
        raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        capi.with_environment({"PROXYATTN_TEST_A": "1", "PROXYATTN_TEST_B": "2"}, fails)()
    assert "PROXYATTN_TEST_A" not in os.environ and os.environ.pop("PROXYATTN_TEST_B") == "before"


def test_config_matches_the_module():
    """capi.Config, a hand-made ctypes copy of pa_config (the benchmarks load library builds
    without the package), has the fields, offsets and sizes the module was compiled with."""
    fields = [(name, getattr(capi.Config, name).offset, getattr(capi.Config, name).size, t is ctypes.c_float)
              for name, t in capi.Config._fields_]
    assert fields == list(_C.CONFIG_FIELDS)
    assert ctypes.sizeof(capi.Config) == _C.CONFIG_BYTES
    assert (capi.PA_BUDGET_ABSOLUTE, capi.PA_BUDGET_PROPORTIONAL) == (_C.BUDGET_MODES["absolute"],
                                                                     _C.BUDGET_MODES["proportional"])


def test_config_refuses_unknown_fields():
    class Library(capi.Library):
        def __init__(self):  # no shared library: config() on a default-constructed struct
            self.lib = type("Lib", (), {"pa_config_default": staticmethod(lambda d: capi.Config())})()

    assert Library().config(64, gamma=0.5).gamma == 0.5
    with pytest.raises(TypeError, match="unknown config field 'gama'"):
        Library().config(64, gama=0.5)
