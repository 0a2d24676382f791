//! Tapestry control plane.
