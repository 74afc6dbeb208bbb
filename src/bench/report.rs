//! The benchmark's reports as Markdown, and the comparison of two.

use super::*;

pub(crate) fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

pub(crate) fn row(r: &BenchResult, with_mse: bool) -> String {
    let mut s = format!(
        "| {} | {:?} | {:.3} | {:.2} | {:.2} | {:.0}% |",
        r.loss,
        r.shape,
        r.ms,
        r.gbps,
        r.copy_gbps,
        100.0 * r.of_copy,
    );
    if with_mse {
        s.push_str(&format!(
            " {} | {} |",
            opt(r.mse_ms, 3),
            r.of_mse
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "-".into())
        ));
    }
    s.push_str(&format!(
        " {} | {} | {} |",
        opt(r.baseline_ms, 3),
        r.speedup
            .map(|s| format!("{s:.1}x"))
            .unwrap_or_else(|| "-".into()),
        opt(r.gflops, 1)
    ));
    s
}

/// The report as a Markdown table.
pub fn markdown(r: &BenchReport) -> String {
    let with_mse = r.results.iter().any(|x| x.mse_ms.is_some());
    let suite = if r.suite.is_empty() || r.suite == "default" {
        String::new()
    } else {
        format!("suite: {}; ", r.suite)
    };
    let mut s = format!(
        "{} ({}, {}, {}); {suite}timer: {}; reductions: {}; median of {} runs; copy kernel \
         {:.2} GB/s at the start, and around each loss (\"copy GB/s\")",
        r.adapter, r.backend, r.device_type, r.driver, r.timer, r.reductions, r.runs, r.copy_gbps
    );
    if with_mse {
        s.push_str(
            "; \"MSE ms\": MSELoss over as many elements, timed in alternation with the loss; \
             \"of MSE\": the median ratio of the alternating runs",
        );
    }
    s.push_str("\n\n| loss | shape | ms | GB/s | copy GB/s | of copy |");
    if with_mse {
        s.push_str(" MSE ms | of MSE |");
    }
    s.push_str(" per-op baseline ms | fused speedup | GFLOP/s |\n|---|---|---|---|---|---|");
    if with_mse {
        s.push_str("---|---|");
    }
    s.push_str("---|---|---|\n");
    for x in &r.results {
        s.push_str(&row(x, with_mse));
        s.push('\n');
    }
    for x in r.results.iter().filter(|x| !x.products.is_empty()) {
        s.push_str(&format!(
            "\n{} {:?}, each product alone:\n\n",
            x.loss, x.shape
        ));
        for (p, ms, g) in &x.products {
            s.push_str(&format!("- `{p}`: {ms:.3} ms, {g:.1} GFLOP/s\n"));
        }
    }
    for x in r.results.iter().filter(|x| !x.steps.is_empty()) {
        let total: f64 = x.steps.iter().map(|(_, ms)| ms).sum();
        s.push_str(&format!(
            "\n{} {:?}, each step alone ({total:.3} ms in all):\n\n",
            x.loss, x.shape
        ));
        for (label, ms) in &x.steps {
            s.push_str(&format!(
                "- `{label}`: {ms:.3} ms ({:.0}%)\n",
                100.0 * ms / total.max(1e-12)
            ));
        }
    }
    s
}

/// The ratios between two reports (B over A): time and throughput per loss and shape.
pub fn compare(a: &BenchReport, b: &BenchReport) -> String {
    let with_mse = a
        .results
        .iter()
        .chain(&b.results)
        .any(|x| x.mse_ms.is_some());
    let mut s = format!(
        "A: {} ({})\nB: {} ({})\n\n",
        a.adapter, a.backend, b.adapter, b.backend
    );
    s.push_str("| loss | shape | A ms | B ms | B speedup over A | A of copy | B of copy |");
    if with_mse {
        s.push_str(" A of MSE | B of MSE |");
    }
    s.push_str("\n|---|---|---|---|---|---|---|");
    if with_mse {
        s.push_str("---|---|");
    }
    s.push('\n');
    s.push_str(&format!(
        "| copy kernel GB/s | | {:.2} | {:.2} | {:.2}x | | |{}\n",
        a.copy_gbps,
        b.copy_gbps,
        b.copy_gbps / a.copy_gbps,
        if with_mse { " | |" } else { "" }
    ));
    let x = |v: Option<f64>| v.map(|v| format!("{v:.2}x")).unwrap_or_else(|| "-".into());
    for ra in &a.results {
        // The same loss at the same shape (the segmentation suite has each loss at several).
        let Some(rb) = b
            .results
            .iter()
            .find(|r| r.loss == ra.loss && r.shape == ra.shape)
            .or_else(|| b.results.iter().find(|r| r.loss == ra.loss))
        else {
            continue;
        };
        s.push_str(&format!(
            "| {} | {:?} | {:.3} | {:.3} | {:.2}x | {:.0}% | {:.0}% |",
            ra.loss,
            ra.shape,
            ra.ms,
            rb.ms,
            ra.ms / rb.ms,
            100.0 * ra.of_copy,
            100.0 * rb.of_copy
        ));
        if with_mse {
            s.push_str(&format!(" {} | {} |", x(ra.of_mse), x(rb.of_mse)));
        }
        s.push('\n');
    }
    s
}
