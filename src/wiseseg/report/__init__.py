"""Tables, plots, overlays and the HTML report."""
