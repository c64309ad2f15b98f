//! Unit tests of the loader and the plan.
