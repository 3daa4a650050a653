//! Tests of the slot protocol (see the parent module).
