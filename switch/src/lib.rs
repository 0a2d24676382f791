//! Tapestry cell switch.
