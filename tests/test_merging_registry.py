"""The merge-method registry: parameter defaults are declared once, in the method's signature."""

import inspect

import pytest

from core.merging import METHODS, Param, get_method, merge_method


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_param_default_is_the_signature_default(name):
    m = METHODS[name]
    sig = inspect.signature(m.fn).parameters
    assert [p.name for p in m.params] == list(sig)[1:]  # every argument after the task vectors is declared
    for p in m.params:
        assert sig[p.name].default is not inspect.Parameter.empty
        assert p.default == sig[p.name].default, (name, p.name)
    assert m.defaults() == {p.name: sig[p.name].default for p in m.params}


def test_known_defaults_are_unchanged():
    assert get_method("task_arithmetic").defaults() == {"coefficients": 0.3}
    assert get_method("dare").defaults() == {
        "p": 0.5,
        "seed": 0,
        "then": "task_arithmetic",
        "k": 0.2,
        "coefficients": 0.3,
    }
    assert get_method("consensus").defaults() == {
        "k": 2,
        "tall_lambda": 0.4,
        "base_method": "task_arithmetic",
        "coefficients": 0.4,
    }
    assert get_method("weight_average").defaults() == {}


def _register(fn, params):
    return merge_method("__test_method__", params=params, reference="test", description="test")(fn)


def test_a_param_without_a_signature_default_is_a_registration_error():
    def no_default(tvs, x):
        raise AssertionError

    with pytest.raises(ValueError, match="'x' has no default in the signature of no_default"):
        _register(no_default, (Param("x", "float"),))
    assert "__test_method__" not in METHODS


def test_declaring_a_default_twice_or_a_param_the_function_lacks_is_an_error():
    def fn(tvs, x=1.0):
        raise AssertionError

    with pytest.raises(ValueError, match="declares a default in its Param"):
        _register(fn, (Param("x", "float", default=2.0),))
    with pytest.raises(ValueError, match="'y' is not an argument of fn"):
        _register(fn, (Param("x", "float"), Param("y", "float")))
    with pytest.raises(ValueError, match=r"argument\(s\) \['x'\] of fn are not declared"):
        _register(fn, ())
    with pytest.raises(ValueError, match="unknown kind"):
        _register(fn, (Param("x", "slider"),))

    def choice(tvs, how="c"):
        raise AssertionError

    with pytest.raises(ValueError, match="is not one of"):
        _register(choice, (Param("how", "choice", choices=("a", "b")),))
    assert "__test_method__" not in METHODS


def test_registering_a_name_twice_is_an_error():
    def fn(tvs, coefficients=1.0):
        raise AssertionError

    with pytest.raises(ValueError, match="registered twice"):
        merge_method("ties", params=(Param("coefficients", "float"),), reference="", description="")(fn)
    assert METHODS["ties"].fn is not fn


def test_unknown_method_names_the_available_ones():
    with pytest.raises(KeyError, match="unknown merge method 'nope'; available: .*task_arithmetic"):
        get_method("nope")


def test_lambda_methods_are_the_registered_methods_with_a_global_lambda_in_registry_order():
    from core.merging import lambda_methods

    names = lambda_methods()
    assert names == tuple(m for m in METHODS if "coefficients" in METHODS[m].defaults())
    assert names[0] == "task_arithmetic" and "weight_average" not in names
    assert {"ties", "tsv_m", "iso_c", "iso_cts", "cart", "breadcrumbs", "magmax", "pcb"} <= set(names)
