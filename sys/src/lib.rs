//! System calls for Tapestry.
