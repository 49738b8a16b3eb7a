"""``fastconv report``'s page: every analysis of a trained run in one self-contained HTML file."""
from fastconv.analysis.report.page import Report, ReportSettings, build_report, write_report

__all__ = ["Report", "ReportSettings", "build_report", "write_report"]
