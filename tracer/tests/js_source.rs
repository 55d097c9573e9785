//! Source locations of JIT frames on real Bun output (src/symbolizer/js_source.rs).

// The module is pure (it depends on no other part of the tracer), so the test compiles it in directly;
// its own unit tests run here too.
#[path = "../src/symbolizer"]
#[allow(dead_code)]
mod symbolizer {
    pub mod js_source;
}
