//! How long-running library calls tell their caller where they are, without printing.

/// Receives the progress of a long-running call: named steps with a length, and lines of
/// news for the user. Every method has an empty default, so [`Silent`] needs no code.
pub trait Progress {
    /// A step named `what` with `len` units of work begins.
    fn begin(&mut self, what: &str, len: usize) {
        let _ = (what, len);
    }
    /// `done` units of the current step are finished (`len` may change, e.g. gradients then
    /// blocks).
    fn advance(&mut self, done: usize, len: usize) {
        let _ = (done, len);
    }
    /// The current step is over.
    fn end(&mut self) {}
    /// A line for the user (a sweep cell starting, its result).
    fn note(&mut self, line: &str) {
        let _ = line;
    }
}

/// Progress that goes nowhere.
pub struct Silent;

impl Progress for Silent {}

/// Run `f` as one step named `what` of `len` units, handing it a callback for the units done.
pub fn step<T>(
    progress: &mut dyn Progress,
    what: &str,
    len: usize,
    f: impl FnOnce(&mut dyn FnMut(usize)) -> T,
) -> T {
    progress.begin(what, len);
    let out = f(&mut |done| progress.advance(done, len));
    progress.end();
    out
}
