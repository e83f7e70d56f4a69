"""Post-hoc analysis of runs, used only by the commands (compare, eval, report).

    results.py     find and read run folders; the tidy metrics table
    summarize.py   bands over problems and seeds, pass@k per problem, the collapse decomposition
    comparison.py  every variant at its final evaluation against the base/reference model
    plots.py       figures (matplotlib object API, no pyplot)
    page.py        tables and the one-page Markdown/HTML report
    build.py       ``build_report``: all of the above written into one folder
"""

from rl_div.report.build import build_report
from rl_div.report.comparison import Comparison, build_comparison

__all__ = ["Comparison", "build_comparison", "build_report"]
