"""flows/config.py, graph.toml node levels: a level is expiry, instrument or underlying; each
level names only its own built-ins and the levels it may read; errors name the node and the fix."""

from __future__ import annotations

import pytest

from flows.config import ConfigError, load_config

FN = 'fn = "operators.kernels.analytics:atm_vol"\n'


def toml(*nodes):
    return "".join(f"[nodes.{name}]\n{FN}inputs = {list(inputs)!r}\nlevel = \"{level}\"\n".replace("'", '"')
                   for name, level, inputs in nodes)


@pytest.mark.parametrize("nodes, match", [
    ([("x", "strike", ["fit"])], r"\[nodes.x\] level = 'strike'; use one of 'expiry', 'instrument', 'underlying'"),
    ([("x", "expiry", ["fits"])], r"\[nodes.x\] \(level = 'expiry'\) reads 'fits', a built-in of level 'underlying'"
                                  r" only; a expiry node's built-ins are fit, quotes: use one of them, or set level"
                                  r" = 'underlying'"),
    ([("x", "underlying", ["fit"])], r"\[nodes.x\] \(level = 'underlying'\) reads 'fit', a built-in of level "
                                     r"'expiry' / 'instrument' only"),
    ([("x", "expiry", ["strike"])], r"reads 'strike', a built-in of level 'instrument' only.*set level = 'instrument'"),
    ([("u", "underlying", ["fits"]), ("x", "expiry", ["u"])],
     r"\[nodes.x\] \(level = 'expiry'\) reads \[nodes.u\] \(level = 'underlying'\); a expiry node reads only "
     r"'expiry' nodes .*: remove 'u' from its inputs, or change one of the levels"),
    ([("u", "underlying", ["fits"]), ("i", "instrument", ["u"])],
     r"\[nodes.i\] \(level = 'instrument'\) reads \[nodes.u\] \(level = 'underlying'\); a instrument node reads "
     r"only 'expiry' and 'instrument' nodes"),
    ([("i", "instrument", ["strike"]), ("x", "expiry", ["i"])], r"\[nodes.x\] \(level = 'expiry'\) reads \[nodes.i\]"),
    ([("i", "instrument", ["strike"]), ("u", "underlying", ["i"])], r"\[nodes.u\] \(level = 'underlying'\) reads "
                                                                   r"\[nodes.i\] \(level = 'instrument'\)"),
    ([("a", "underlying", ["b"]), ("b", "underlying", ["a"])], r"cycle: a → b → a"),
    ([("a", "instrument", ["strik"])], r"\[nodes.a\] has unknown input 'strik' — did you mean 'strike'\?"),
    ([("fits", "expiry", ["fit"])], r"node name 'fits' is reserved for a built-in input"),
])
def test_inconsistent_levels_fail_naming_the_node_and_the_fix(tmp_path, nodes, match):
    path = tmp_path / "graph.toml"
    path.write_text(toml(*nodes))
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_each_level_is_ordered_and_reads_what_it_may(tmp_path):
    path = tmp_path / "graph.toml"
    path.write_text(toml(("u2", "underlying", ["u1", "atm_vol"]), ("u1", "underlying", ["fits"]),
                         ("i2", "instrument", ["i1", "atm_vol"]), ("i1", "instrument", ["fit", "strike"]),
                         ("e", "expiry", ["fit", "quotes"])))
    names = [n.name for n in load_config(path).nodes]
    for before, after in (("u1", "u2"), ("i1", "i2"), ("atm_vol", "u2"), ("atm_vol", "i2")):
        assert names.index(before) < names.index(after)
    levels = {n.name: n.level for n in load_config().nodes}  # the shipped graph.toml has every level
    assert set(levels.values()) == {"expiry", "instrument", "underlying"}
