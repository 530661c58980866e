//! The progress of a pull or push: a bar per blob when stderr is a terminal, one plain
//! line per step on stdout otherwise (logs and scripts read those).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use shoal_api::engine as pb;

use crate::output;

/// Shows a stream of progress steps.
pub enum ProgressView {
    /// Bars on stderr, one per blob, keyed by blob id.
    Bars {
        multi: MultiProgress,
        bars: HashMap<String, ProgressBar>,
    },
    /// A plain line per step on stdout.
    Lines,
}

impl ProgressView {
    /// Bars when stderr is a terminal, lines otherwise.
    pub fn new() -> ProgressView {
        if std::io::stderr().is_terminal() {
            ProgressView::bars(ProgressDrawTarget::stderr())
        } else {
            ProgressView::Lines
        }
    }

    fn bars(target: ProgressDrawTarget) -> ProgressView {
        ProgressView::Bars {
            multi: MultiProgress::with_draw_target(target),
            bars: HashMap::new(),
        }
    }

    /// Shows one step.
    pub fn show(&mut self, p: &pb::Progress) {
        match self {
            ProgressView::Lines => println!("{}", line(p)),
            ProgressView::Bars { multi, bars } => {
                if p.action == "done" {
                    for bar in bars.values() {
                        if !bar.is_finished() {
                            bar.finish();
                        }
                    }
                    // The outcome goes to stdout whatever stderr is.
                    println!("{}", line(p));
                    return;
                }
                // A manifest has no size worth a bar; a blob does.
                let style = if p.total > 0 {
                    bar_style()
                } else {
                    step_style()
                };
                let bar = bars.entry(p.id.clone()).or_insert_with(|| {
                    multi.add(
                        ProgressBar::new(p.total)
                            .with_style(style.clone())
                            .with_prefix(output::short_id(&p.id)),
                    )
                });
                bar.set_style(style);
                bar.set_length(p.total);
                bar.set_position(p.current);
                bar.set_message(p.action.clone());
                if finished(&p.action) {
                    bar.finish();
                } else {
                    bar.enable_steady_tick(Duration::from_millis(120));
                }
            }
        }
    }
}

/// Steps after which a blob has nothing more to do.
fn finished(action: &str) -> bool {
    matches!(action, "exists" | "downloaded" | "pushed" | "resolved")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:12} {spinner} {msg:11} [{bar:30}] {decimal_bytes}/{decimal_total_bytes}",
    )
    .expect("the template is valid")
    .progress_chars("=> ")
}

fn step_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:12} {spinner} {msg}").expect("the template is valid")
}

/// The plain line of one step: `0123456789ab: downloading 2.130MB`, `image: done`.
pub fn line(p: &pb::Progress) -> String {
    let id = output::short_id(&p.id);
    let id = if id.is_empty() { "image" } else { &id };
    let mut s = format!("{id}: {}", p.action);
    if p.total > 0 && p.action != "done" {
        s.push(' ');
        s.push_str(&output::size(p.total));
    }
    if !p.message.is_empty() {
        s.push_str(" (");
        s.push_str(&p.message);
        s.push(')');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(id: &str, action: &str, current: u64, total: u64) -> pb::Progress {
        pb::Progress {
            id: id.into(),
            action: action.into(),
            current,
            total,
            message: String::new(),
        }
    }

    #[test]
    fn plain_lines() {
        for (p, want) in [
            (
                step("sha256:0123456789abcdef", "downloading", 0, 2_129_920),
                "0123456789ab: downloading 2.130MB",
            ),
            (step("sha256:abc", "exists", 10, 10), "abc: exists 10B"),
            (
                step("sha256:fedcba9876543210", "done", 0, 0),
                "fedcba987654: done",
            ),
            (step("", "done", 0, 0), "image: done"),
            (
                pb::Progress {
                    message: "retrying".into(),
                    ..step("x", "downloading", 0, 0)
                },
                "x: downloading (retrying)",
            ),
        ] {
            assert_eq!(line(&p), want);
        }
    }

    #[test]
    fn bars_follow_each_blob_to_its_end() {
        let mut view = ProgressView::bars(ProgressDrawTarget::hidden());
        view.show(&step("sha256:a", "downloading", 0, 100));
        view.show(&step("sha256:b", "exists", 50, 50));
        let ProgressView::Bars { bars, .. } = &view else {
            panic!("bars expected");
        };
        assert_eq!(bars.len(), 2);
        assert!(!bars["sha256:a"].is_finished());
        assert!(bars["sha256:b"].is_finished());
        assert_eq!(bars["sha256:b"].position(), 50);
        view.show(&step("sha256:a", "downloaded", 100, 100));
        let ProgressView::Bars { bars, .. } = &view else {
            panic!("bars expected");
        };
        assert!(bars["sha256:a"].is_finished());
        assert_eq!(bars["sha256:a"].position(), 100);
        view.show(&step("sha256:c", "pushing", 0, 10));
        view.show(&step("sha256:m", "done", 0, 0));
        let ProgressView::Bars { bars, .. } = &view else {
            panic!("bars expected");
        };
        assert_eq!(bars.len(), 3, "done adds no bar");
        assert!(bars.values().all(ProgressBar::is_finished));
    }
}
