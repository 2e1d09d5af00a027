//! The one progress bar of the toolkit's long work (training epochs, the
//! planner's search): on stderr, hidden when stderr is not a terminal or
//! the caller asks for quiet, so logs and pipes get no control codes.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar of `len` steps drawn with `template` (indicatif's
/// template syntax; a bad template falls back to the default bar).
pub fn progress_bar(len: u64, template: &str, quiet: bool) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if quiet || !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style =
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style.progress_chars("=> "));
    pb
}
