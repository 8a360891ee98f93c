"""MkDocs hook: the benchmark figures come from ``benchmarks/results/*.json`` at build time.

In any page, ``{{ benchmark_tables }}`` becomes every results file's tables
(``benchmarks.report.markdown``) and ``{{ fig FILE:path[:format] }}`` one figure
(``benchmarks.report.figure``, e.g. ``{{ fig bench:bars.1.value }}``). A reference that
does not resolve stops the build with the page named, so no figure is ever retyped or stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mkdocs.exceptions import PluginError  # noqa: E402

from benchmarks import report  # noqa: E402

_TABLES = re.compile(r"\{\{\s*benchmark_tables\s*\}\}")
_FIG = re.compile(r"\{\{\s*fig\s+(.+?)\s*\}\}")


def on_page_markdown(markdown: str, page, config, files) -> str:
    try:
        if _TABLES.search(markdown):
            markdown = _TABLES.sub(lambda _: report.markdown(), markdown)
        return _FIG.sub(lambda m: report.figure(m.group(1)), markdown)
    except report.ReportError as exc:
        raise PluginError(f"docs/{page.file.src_uri}: {exc}") from exc
