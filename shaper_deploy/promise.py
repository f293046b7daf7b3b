"""What a latency budget promises: a percentile of request latency (no numpy, no torch, so
the CLI can declare its options without loading either)."""

TAIL_LEVELS = (50, 75, 90, 95, 99)  # the percentiles a profile's tail model keeps
# p90: the usual serving SLO, estimable from the ~80 runs of one measurement, and less
# hostage to a single hiccup than p99.
DEFAULT_PERCENTILE = 90.0
