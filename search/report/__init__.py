"""Looking at a study: the HTML report (``html.py``) and the label-issue finder (``label_issues.py``).

``report`` and ``label_issues`` here are the functions (the faces of ``maskopt report`` and
``maskopt label-issues``); import the module's other names from ``maskopt.search.report.label_issues``.
"""

from maskopt.search.report.html import report
from maskopt.search.report.label_issues import label_issues

__all__ = ["label_issues", "report"]
