"""maskopt: hyperparameter search for image classifiers.

    >>> import maskopt
    >>> space = maskopt.load_space("spaces/demo.yaml")
    >>> result = maskopt.search(space, trials=12, data="demo-data")   # doctest: +SKIP
    >>> maskopt.export_best(study="demo", ensemble=5)                # doctest: +SKIP

Every command of the ``maskopt`` command line is a function here, with the command's options as
keyword arguments of the same names (see :mod:`maskopt.api`). The functions are loaded on first
use, so ``import maskopt`` (and ``maskopt --help``) stays fast; the error classes are here at once.
"""

from importlib.metadata import PackageNotFoundError, version

from maskopt.errors import (
    DataError,
    ExportError,
    LabelIssuesError,
    MaskoptError,
    NotAMaskoptStudy,
    SearchInterrupted,
    SpaceError,
    StorageError,
)

try:
    __version__ = version("maskopt")
except PackageNotFoundError:  # a bare checkout that was never installed
    __version__ = "0+unknown"

_API = ("search", "export_best", "export_onnx_folder", "predict", "score", "report", "label_issues", "studies",
        "dashboard", "import_weights", "eda", "make_demo_data", "load_space", "load_study", "replay", "SearchSpace",
        "SearchResult", "ExportResult")
_ERRORS = ("MaskoptError", "DataError", "SpaceError", "StorageError", "ExportError", "NotAMaskoptStudy",
           "LabelIssuesError", "SearchInterrupted")

__all__ = [*_API, *_ERRORS, "__version__"]


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
