"""Every public layer, op, kernel and model has a docstring (issue 10: shapes, options, the
paper), and so does every module that holds them."""
import importlib
import inspect
import pkgutil

import pytest

import jaxlab.kernels
import jaxlab.layers
import jaxlab.models
import jaxlab.ops

PACKAGES = [jaxlab.layers, jaxlab.ops, jaxlab.models, jaxlab.kernels]


def public_modules():
    for package in PACKAGES:
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            yield importlib.import_module(info.name)


@pytest.mark.parametrize("module", list(public_modules()), ids=lambda m: m.__name__)
def test_public_names_are_documented(module):
    assert (module.__doc__ or "").strip(), f"{module.__name__} has no module docstring"
    defined_here = {name: obj for name, obj in vars(module).items()
                    if not name.startswith("_")
                    and getattr(obj, "__module__", None) == module.__name__
                    and (inspect.isfunction(obj) or inspect.isclass(obj))}
    undocumented = [name for name, obj in defined_here.items() if not (obj.__doc__ or "").strip()]
    assert not undocumented, f"{module.__name__}: no docstring on {', '.join(undocumented)}"
