"""proxyattn.Settings: ProxyAttn's settings (pa_config, ALGORITHM.md "Parameters"), made once
and checked by the library's own pa_config_validate when made.

Every entry point takes them as keyword arguments (gamma=0.9, ...) or as settings=Settings(...)
(with keyword arguments, a changed copy). This module is the one place their names, defaults
and conversions are written: a Settings holds what the caller gave (budget_mode and anchor_mode by
name, dense_below and softmax_scale None for their defaults, anchor_blocks "auto"), and its values
(ConfigValues: pa_config's fields in the C struct's order, as the library takes them) resolve
the head_dim-dependent softmax_scale when bound to a head_dim (resolve). config_of makes the
module's Config of those values; the torch custom ops take them as their arguments."""
import collections
import dataclasses
import math
import operator
import sys
from typing import Optional, Union

import numpy as np

from . import _C

_INT32 = (-2**31, 2**31 - 1)


def index(name, x):
    """x as a Python int: ints, numpy and torch integers; never a bool, a float or a string."""
    try:
        if isinstance(x, (bool, np.bool_)):
            raise TypeError
        return operator.index(x)
    except TypeError:
        raise TypeError(f"{name} = {x!r} is not an integer") from None


# ---- one setting's conversion: (name, value) -> (the value kept, its pa_config value) ----------
def _integer(name, x):
    n = index(name, x)
    if not _INT32[0] <= n <= _INT32[1]:
        raise ValueError(f"{name} = {n}: beyond pa_config's int32")
    return n, n


def _real(name, x):
    """A float from any real number (numpy and torch scalars too); never a bool or a string."""
    if isinstance(x, (bool, np.bool_, str, bytes)) or not hasattr(x, "__float__"):
        raise TypeError(f"{name} = {x!r} is not a number")
    value = float(x)
    return value, value


def _flag(name, x):
    """A bool or an integer 0/1 (the library checks it is one of them)."""
    if isinstance(x, (bool, np.bool_)):
        return bool(x), int(x)
    n, _ = _integer(name, x)
    return bool(n), n


def _budget_mode(name, x):
    if not isinstance(x, str) or x not in _C.BUDGET_MODES:
        raise ValueError(f"{name}: {x!r} is not one of {sorted(_C.BUDGET_MODES)}")
    return x, _C.BUDGET_MODES[x]


def _anchor_mode(name, x):
    if not isinstance(x, str) or x not in _C.ANCHOR_MODES:
        raise ValueError(f"{name}: {x!r} is not one of {sorted(_C.ANCHOR_MODES)}")
    return x, _C.ANCHOR_MODES[x]


def _budget_rule(name, x):
    if not isinstance(x, str) or x not in _C.BUDGET_RULES:
        raise ValueError(f"{name}: {x!r} is not one of {sorted(_C.BUDGET_RULES)}")
    return x, _C.BUDGET_RULES[x]


def _anchor_blocks(name, x):
    """"auto" (or None): PA_ANCHOR_BLOCKS_AUTO; else an integer."""
    if x is None or (isinstance(x, str) and x == "auto"):
        return "auto", _C.ANCHOR_BLOCKS_AUTO
    if isinstance(x, str):
        raise ValueError(f"{name}: {x!r} is neither \"auto\" nor an integer")
    return _integer(name, x)


def _optional(convert):
    """convert, or None kept as None (a default the values resolve)."""
    def optional(name, x):
        return (None, None) if x is None else convert(name, x)
    return optional


def _setting(default, convert, doc):
    return dataclasses.field(default=default, metadata={"convert": convert, "doc": doc})


# ---- the settings ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Settings:
    """ProxyAttn's settings, pa_config's fields by their names; invalid values raise when the
    Settings is made: ProxyAttnError from the library's pa_config_validate naming the field
    (ProxyAttnUnsupported for a block_size or stride the library does not run), TypeError or
    ValueError for what never reaches it (a string for a number, an unknown budget_mode).
    Whether num_proxy_groups divides a call's K/V heads is checked at the call.

    Immutable and hashable; dataclasses.replace(s, gamma=0.9) or settings=s with keyword
    arguments at a call make changed copies, checked again.

    Fields (ALGORITHM.md, "Parameters"):
"""

    gamma: float = _setting(0.95, _real, "attention mass each head's budget covers, in (0, 1]")
    block_size: int = _setting(128, _integer, "query and key block, 64 or 128")
    stride: int = _setting(4, _integer, "sampling stride of the proxies, 1, 2, 4, 8 or 16, at most block_size")
    min_budget_tokens: int = _setting(2048, _integer, "floor of every head's budget, >= 0")
    num_proxy_groups: int = _setting(1, _integer, "proxy heads g, dividing the K/V heads")
    force_sink: bool = _setting(True, _flag, "block 0 always kept")
    force_local: bool = _setting(True, _flag, "the diagonal block always kept")
    budget_mode: str = _setting("absolute", _budget_mode, "\"absolute\" (the paper's K) or \"proportional\"")
    dense_below: Optional[int] = _setting(None, _optional(_integer),
                                          "sequences shorter run dense, >= 0 (None: min_budget_tokens)")
    softmax_scale: Optional[float] = _setting(None, _optional(_real), "> 0 (None: 1 / sqrt(head_dim))")
    anchor_blocks: Union[str, int] = _setting("auto", _anchor_blocks,
                                              "blocks of largest last-block mass each head forces for its group, "
                                              "0-8 or \"auto\" (32 / Q heads per group, within [1, 8])")
    anchor_mode: str = _setting("on_top", _anchor_mode,
                                "\"in_budget\" (anchors counted in the budget) or \"on_top\" (each head keeps its "
                                "anchor-free blocks plus the group's anchors: recall >= gamma at small floors)")
    budget_rows: int = _setting(1, _integer,
                                "query blocks step 5's count is the largest over (round(Nqb j / R) - 1, "
                                "j = 1..R), 1-16; 1: the last block only (the paper's rule)")
    budget_rule: str = _setting("ranked", _budget_rule,
                                "\"ranked\" (each head's count also reaches 1 - ranked_slack (1 - gamma) of its "
                                "last-row mass along the group's proxy ranking) or \"paper\" (the head's sorted "
                                "masses only)")
    ranked_slack: float = _setting(2.5, _real, "s >= 1 of the ranked rule's target 1 - s (1 - gamma)")

    def __post_init__(self):
        values = {}
        for name, convert in _CONVERSIONS:
            kept, values[name] = convert(name, getattr(self, name))
            object.__setattr__(self, name, kept)
        if values["dense_below"] is None:
            values["dense_below"] = values["min_budget_tokens"]
        values = ConfigValues(**values)
        object.__setattr__(self, "_values", values)  # softmax_scale None until resolve()
        if not _compiling():  # torch.compile cannot trace the module; the plan's creation checks then
            _C.validate_config(config_of(values if self.softmax_scale is not None else _with_scale(values, 1.0)))

    def resolve(self, head_dim):
        """pa_config's values (ConfigValues) for heads of head_dim."""
        values = self._values
        return values if self.softmax_scale is not None else _with_scale(values, 1.0 / math.sqrt(head_dim))


if Settings.__doc__:  # (python -OO has none)
    Settings.__doc__ += "".join(f"        {field.name} = {field.default!r}: {field.metadata['doc']}\n"
                                for field in dataclasses.fields(Settings))
# (name, its conversion) of each field, out of the fields' metadata (a mappingproxy, which
# torch.compile does not trace).
_CONVERSIONS = tuple((field.name, field.metadata["convert"]) for field in dataclasses.fields(Settings))

# pa_config's fields in the C struct's order (the module's CONFIG_FIELDS), the names of Settings'.
ConfigValues = collections.namedtuple("ConfigValues", [name for name, *_ in _C.CONFIG_FIELDS])
if set(ConfigValues._fields) != {field.name for field in dataclasses.fields(Settings)}:
    raise ImportError(f"proxyattn._C's pa_config fields {ConfigValues._fields} are not proxyattn.Settings' "
                      f"(a module built from other sources than the package)")
_SCALE = ConfigValues._fields.index("softmax_scale")


def _with_scale(values, scale):
    fields = list(values)  # (torch 2.7's torch.compile fails on slices of a namedtuple)
    fields[_SCALE] = scale
    return ConfigValues(*fields)


def config_of(values):
    """The module's Config of pa_config values (a ConfigValues, or a tuple in its order: a custom
    op's arguments): the one place a Config is made."""
    config = _C.Config(1)
    for name, value in zip(ConfigValues._fields, values):
        setattr(config, name, value)
    return config


def _compiling():
    """Whether torch.compile traces this call (in a form it traces itself)."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.compiler.is_compiling()


DEFAULT = Settings()

# Settings made from a call's keyword arguments, by (settings, changes) with the changes' types:
# an eager call made with the same ones again costs a lookup, not a check by the library.
_MADE = collections.OrderedDict()
_MADE_SIZE = 64


def settings_of(settings=None, **changes):
    """The Settings of a call: `settings` (a Settings; None: the defaults) with `changes` (keyword
    settings), checked (made) once per distinct (settings, changes)."""
    if settings is not None and not isinstance(settings, Settings):
        raise TypeError(f"settings: expected a proxyattn.Settings, got {type(settings).__name__}")
    base = DEFAULT if settings is None else settings
    if not changes:
        return base
    if _compiling():
        return dataclasses.replace(base, **changes)
    key = (base, tuple((name, type(value), value) for name, value in changes.items()))
    try:
        made = _MADE.get(key)
    except TypeError:  # an unhashable value: made each time
        return dataclasses.replace(base, **changes)
    if made is None:
        made = _MADE[key] = dataclasses.replace(base, **changes)
        if len(_MADE) > _MADE_SIZE:
            _MADE.popitem(last=False)
    else:
        _MADE.move_to_end(key)
    return made
