//! stacks.folded: `source;root;...;leaf bytes`, one line per stack with outstanding bytes, the input
//! format of inferno and of Brendan Gregg's flamegraph.pl.

use super::stacks::ReportStack;

pub fn render(stacks: &[ReportStack]) -> String {
    let mut out = String::new();
    for stack in stacks.iter().filter(|s| s.stats.outstanding_bytes > 0) {
        out.push_str(&line_of(stack));
        out.push(' ');
        out.push_str(&stack.stats.outstanding_bytes.to_string());
        out.push('\n');
    }
    out
}

/// `[source];root;...;leaf`, without the count.
pub fn line_of(stack: &ReportStack) -> String {
    let mut line = format!("[{}]", stack.source.name());
    for frame in &stack.frames {
        line.push(';');
        line.push_str(&sanitize(frame));
    }
    line
}

/// `;` separates frames and a newline ends the line; neither may appear inside a frame name.
fn sanitize(frame: &str) -> String {
    frame.replace(';', ":").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Source, StackStats};

    fn stack(source: Source, frames: &[&str], outstanding: u64) -> ReportStack {
        ReportStack {
            source,
            frames: frames.iter().map(|f| (*f).into()).collect(),
            runtime_frames: vec![],
            stats: StackStats { outstanding_bytes: outstanding, allocated_bytes: outstanding, ..Default::default() },
            threads: 0,
        }
    }

    #[test]
    fn one_line_per_stack_with_the_source_as_root() {
        let stacks = [stack(Source::Mmap, &["main", "leak"], 8192), stack(Source::Brk, &["main", "grow"], 100)];
        assert_eq!(render(&stacks), "[mmap];main;leak 8192\n[brk];main;grow 100\n");
    }

    #[test]
    fn stacks_with_nothing_outstanding_are_left_out_and_separators_escaped() {
        let stacks = [stack(Source::Mmap, &["a;b", "c\nd"], 1), stack(Source::Mmap, &["gone"], 0)];
        assert_eq!(render(&stacks), "[mmap];a:b;c d 1\n");
    }
}
