"""Compare and report: the comparison table and the HTML report. Reads run folders, never trains.

- :mod:`vjepa_adapt.report.summary` — every arm's probe result, paired Δ vs the reference arm with
  discordant counts, per class, per tag → ``summary.json`` / ``summary.md`` / the printed table.
- :mod:`vjepa_adapt.report.html` — the self-contained ``index.html`` (figures inlined).
- :mod:`vjepa_adapt.report.run_files` — reading stage records, training logs and images of a run.
"""

from vjepa_adapt.report.html import REPORT_FILE, render_html, write_report
from vjepa_adapt.report.summary import (
    build_summary,
    discover_arms,
    format_markdown,
    format_table,
    write_summary,
)

__all__ = ["REPORT_FILE", "build_summary", "discover_arms", "format_markdown", "format_table", "render_html",
           "write_report", "write_summary"]
