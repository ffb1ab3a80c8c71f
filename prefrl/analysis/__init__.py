"""Reading finished runs: comparison tables and plots, the HTML report, videos."""
