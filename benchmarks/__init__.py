"""vsc's benchmarks (issue 7): ``make bench`` / ``python -m benchmarks``.

Groups (``--only NAME``): ``engine`` (``Card.transmit`` in-process per APDU
kind, against the raw crypto, an echo card and vicc's engine), ``e2e``
(through a private pcscd + vpcd with pyscard, against a bare vpcd card and
vicc as shipped), ``cards`` (100 cards in one process: memory and
throughput), ``tpm`` (card open time and the key backend on the hot path).
Each prints a table with medians, ratios against anchors measured in the
same run and the issue's targets; the run is recorded as JSON in
``benchmarks/results/``. See docs/performance.md.
"""
