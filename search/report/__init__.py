"""Report: what a finished search prints (its summary and timings) and the study reports it writes."""
