"""Human-readable output: the HTML report and the terminal table."""
