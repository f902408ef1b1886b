//! Tests of network slots against real namespaces (run as root).
