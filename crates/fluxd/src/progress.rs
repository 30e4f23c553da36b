//! Progress bars for long CLI work. indicatif hides them when stderr is not a terminal, so
//! scripts and tests see only the final output.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar for `total` units with a message prefix.
pub fn bar(total: u64, prefix: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    pb.set_style(style);
    pb.set_prefix(prefix.to_string());
    pb
}
