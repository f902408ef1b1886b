//! The Wrenn control plane (being written).
