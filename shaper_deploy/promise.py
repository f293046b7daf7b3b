"""What a latency budget promises: a percentile of request latency (no numpy, no torch, so
the CLI can declare its options without loading either)."""

TAIL_LEVELS = (50, 75, 90, 95, 99)  # the percentiles a profile's tail model keeps
# p90: the usual serving SLO, estimable from the ~80 runs of one measurement, and less
# hostage to a single hiccup than p99.
DEFAULT_PERCENTILE = 90.0
# How long a plan times each candidate (and bench re-times a planned bundle) before judging it
# against its budget. A percentile needs runs enough to have a tail: a profile's own protocol
# gives a measurement a few turns (a 4-minute transfer: 2 rounds, 6 runs at 1 x 128 tokens),
# whose "p90" is its second-largest run. On the AMD Zen 2 class two clean-clone demos kept a
# plan on such a measurement and verify's 20 s (310 runs) then found p90 9-17% higher.
MEASURE_SECONDS = 10.0
# A plan keeps a model only if the percentile it promises is under the budget with this
# confidence, given the runs it timed (a one-sided order-statistic bound), not only at the
# point estimate. On the AMD Zen 2 class one run in 6-10 is a spike 40-50% above the rest
# (int8 300,120,300,300,384,384 at 1 x 128: p75 12.4 ms, p90 18.0 ms): a p90 sits on that
# gap, and a 10 s window that happened to see fewer spikes kept a model whose p90 measured
# 15.5 ms at export and 17.7 ms over verify's 60 s (budget 16.3 ms).
PLAN_CONFIDENCE = 0.95
