"""maskopt: hyperparameter search for image classifiers.

    >>> import maskopt
    >>> space = maskopt.load_space("spaces/demo.yaml")
    >>> result = maskopt.search(space, n_trials=12, data="demo-data")   # doctest: +SKIP
    >>> maskopt.export_best(study="demo", ensemble=5)                 # doctest: +SKIP

The names below are loaded on first use, so ``import maskopt`` (and ``maskopt --help``) stays
fast; see :mod:`maskopt.api` for the functions.
"""

from importlib.metadata import PackageNotFoundError, version

from maskopt.errors import (
    DataError,
    ExportError,
    MaskoptError,
    SpaceError,
    StorageError,
)

try:
    __version__ = version("maskopt")
except PackageNotFoundError:  # a bare checkout that was never installed
    __version__ = "0+unknown"

_API = ("search", "export_best", "load_space", "make_demo_data", "SearchSpace", "SearchResult", "ExportResult")

__all__ = [*_API, "MaskoptError", "DataError", "SpaceError", "StorageError", "ExportError", "__version__"]


def __getattr__(name: str):
    if name == "search":  # the callable sub-package (see search/__init__.py)
        import maskopt.search

        return maskopt.search
    if name in _API:
        from maskopt import api

        return getattr(api, name)
    raise AttributeError(f"module 'maskopt' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
