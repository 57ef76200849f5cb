"""maskopt.search: from a search space to finished trials and an exported model.

Calling the package runs a search: ``maskopt.search(space, trials=12)`` is
:func:`maskopt.api.search`. Users type ``maskopt.search(...)``, and the package that holds the
search code has the same name, so the package itself is made callable; its modules stay
reachable as ``maskopt.search.study.runner`` and so on.
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from maskopt.api import search

        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
