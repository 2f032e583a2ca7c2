"""The agent's results: metrics over a date range, the report (terminal
table, JSON, a self-contained HTML page with charts) and the weekly summary."""
