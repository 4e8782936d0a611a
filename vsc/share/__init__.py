"""Share a local reader into a remote session: relay, broker, pairing, TLS.

An adapter (see docs/share.md): the local side is a PC/SC client (pyscard),
the remote side is a vpcd card, and between them runs a TLS 1.3 link with
mutually pinned certificates. The engine never imports this package.

* :mod:`.protocol` -- the link: wire values, messages, and the sans-IO connection
* :mod:`.pairing`, :mod:`.tls`, :mod:`.home` -- identities, pairing, pins, TLS contexts
* :mod:`.broker` -- stable reader names, states, the one-session-per-reader lock
* :mod:`.service` -- the local share service (PC/SC side): listener, monitor, leases;
  :mod:`.handler` runs one link of it, :mod:`.holder` holds the leased card
* :mod:`.endpoint` -- the remote endpoint (vpcd side)
* :mod:`.client`, :mod:`.cli` -- short requests and the ``vsc share`` verbs
* :mod:`.latency` -- :func:`measure_relay_latency`, for benchmarks
"""
