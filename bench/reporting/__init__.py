"""From records to the report: tables, plots, formats, comparisons and trade-offs."""
