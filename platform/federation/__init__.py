"""Federation: participants that keep their data, a coordinator that learns only sums.

``pki`` (project CA, short-lived certificates, revocation by allowlist), ``secagg`` (pairwise
masking with dropout recovery, distributed discrete Gaussian noise; pure, no network),
``wire`` (protobuf conversions, nonces, limits), ``coordinator`` (gRPC server over mutual TLS)
and ``participant`` (pull-based client owning its policy, budget and ledger).
"""
