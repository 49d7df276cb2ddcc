"""What a run shows: the summary table, report.html and plots."""
